"""Domains from a pool (`pools:`): one per value of a field (group_by), per tier of a score (tiers), per
cluster (cluster). The pool is built here from the conftest's real text, with a hidden label."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import _code_docs, _license_docs, _prose_docs, invoke_ok, write_config

LABELS = ("code", "prose", "legal")


def pieces(texts: list[str], size: int = 2000, n: int = 100) -> list[str]:
    """Texts cut at line ends into documents of about `size` characters (balanced kinds), the first n."""
    out = []
    for t in texts:
        cur = ""
        for line in t.splitlines(keepends=True):
            cur += line
            if len(cur) >= size:
                out.append(cur)
                cur = ""
        if cur.strip():
            out.append(cur)
    return out[:n]


@pytest.fixture(scope="module")
def pool_docs() -> list[dict]:
    """Distinct documents of three kinds, shuffled, each with its label nested under meta and a score."""
    docs = {"code": pieces(_code_docs(150_000)), "prose": pieces(_prose_docs()), "legal": pieces(_license_docs(120_000))}
    rows, seen, rng = [], set(), np.random.default_rng(1)
    for label, texts in docs.items():
        for t in texts:
            if t.strip() and t not in seen:
                seen.add(t)
                rows.append({"text": t, "meta": {"source": label, "lang": "en"}, "score": float(rng.random())})
    order = np.random.default_rng(0).permutation(len(rows))
    return [rows[i] for i in order]


@pytest.fixture(scope="module")
def pool_files(pool_docs, tmp_path_factory) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("pool")
    pq.write_table(pa.Table.from_pylist(pool_docs), root / "pool.parquet", row_group_size=100)
    (root / "jsonl").mkdir()
    half = len(pool_docs) // 2
    for i, part in enumerate((pool_docs[:half], pool_docs[half:])):
        (root / "jsonl" / f"part{i}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    return root


def config(tmp_path: Path, pools: list, domains: list | None = None, **more) -> Path:
    cfg = {"name": "pooled", "seed": 0, "workspace": str(tmp_path / "ws"), "domains": domains or [], "pools": pools,
           "sample": {"train_tokens": 3000, "val_tokens": 600, "tokenizer": {"vocab_size": 400}},
           "proxy": {"size": "tiny", "tokens": 4000, "seq_len": 32, "batch_size": 4},
           "design": {"runs": 4, "min_weight": 0.01, "replicates": None},
           "fit": {"model": "loglinear", "cv_folds": 3, "bootstrap": 0}, **more}
    return write_config(tmp_path / "pooled.yaml", cfg)


def sample(cfg: Path, *more) -> dict:
    return json.loads(invoke_ok("sample", cfg, "--format", "json", *more))


def fails(*args) -> str:
    """The real CLI in a subprocess: exit 2 and one `error:` line."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1]),
                                                                      os.environ.get("PYTHONPATH")]))}
    r = subprocess.run([sys.executable, "-m", "mixopt.cli", *map(str, args)], capture_output=True, text=True,
                       timeout=300, env=env)
    assert r.returncode == 2, (r.stdout, r.stderr[-3000:])
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    return lines[0]


def true_counts(rows, key=lambda r: r["meta"]["source"]) -> dict:
    out: dict = {}
    for r in rows:
        out[key(r)] = out.get(key(r), 0) + 1
    return out


# ---- group_by -------------------------------------------------------------------------------------

def test_group_by_a_nested_parquet_field_makes_one_domain_per_value(pool_files, pool_docs, tmp_path):
    cfg = config(tmp_path, [{"sources": [str(pool_files / "pool.parquet")], "group_by": "meta.source"}])
    m = sample(cfg)
    assert m["order"] == sorted(LABELS)  # values in sorted order
    assert {n: d["documents"] for n, d in m["domains"].items()} == true_counts(pool_docs)
    assert m["pools"][0]["values"] == sorted(LABELS) and m["pools"][0]["counts"] == true_counts(pool_docs)
    # The slices hold their own kind only: Python code has 'def ' or 'import ', licence text has neither.
    assert sample(cfg)["reused"] is True


def test_group_by_listed_values_with_the_rest_as_other_in_jsonl(pool_files, pool_docs, tmp_path):
    pool = {"name": "src", "sources": [str(pool_files / "jsonl")], "group_by": "meta.source", "values": ["code"],
            "rest": "other"}
    m = sample(config(tmp_path, [pool]))
    counts = true_counts(pool_docs)
    assert m["order"] == ["src-code", "src-other"]
    assert m["domains"]["src-code"]["documents"] == counts["code"]
    assert m["domains"]["src-other"]["documents"] == counts["prose"] + counts["legal"]


def test_group_by_a_flat_field_beside_an_ordinary_domain_and_dropped_values(pool_files, pool_docs, corpora, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    flat = [{"text": r["text"], "source": r["meta"]["source"]} for r in pool_docs]
    pq.write_table(pa.Table.from_pylist(flat), tmp_path / "flat.parquet")
    cfg = config(tmp_path, [{"sources": [str(tmp_path / "flat.parquet")], "group_by": "source",
                             "values": ["legal", "prose"]}],
                 domains=[{"name": "more-code", "sources": [str(corpora / "code.parquet")]}])
    m = sample(cfg)
    assert m["order"] == ["more-code", "legal", "prose"]
    assert m["domains"]["legal"]["documents"] == true_counts(pool_docs)["legal"]


def test_a_missing_field_is_one_line_naming_the_field_and_the_row(pool_files, tmp_path):
    cfg = config(tmp_path, [{"sources": [str(pool_files / "jsonl")], "group_by": "meta.nope"}])
    line = fails("sample", cfg)
    assert "no field 'meta.nope'" in line and "part0.jsonl" in line, line
    cfg = config(tmp_path, [{"sources": [str(pool_files / "pool.parquet")], "group_by": "nope.x"}])
    line = fails("sample", cfg)
    assert "no field 'nope.x'" in line and "pool.parquet" in line, line
    assert not (tmp_path / "ws").exists()  # nothing written


def test_a_row_without_the_field_is_named_by_its_line(tmp_path):
    rows = [{"text": f"document {i} " * 50, "meta": {"source": "a" if i % 2 else "b"}} for i in range(40)]
    rows[17] = {"text": "no meta here " * 50}
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    line = fails("sample", config(tmp_path, [{"sources": [str(tmp_path / "p.jsonl")], "group_by": "meta.source"}]))
    assert "p.jsonl:18" in line and "no field 'meta.source'" in line, line


def test_a_changed_shard_resamples_the_pool_and_keeps_the_rest(pool_files, corpora, tmp_path):
    import shutil

    shutil.copytree(pool_files / "jsonl", tmp_path / "jsonl")
    cfg = config(tmp_path, [{"name": "p", "sources": [str(tmp_path / "jsonl")], "group_by": "meta.source"}],
                 domains=[{"name": "more-code", "sources": [str(corpora / "code.parquet")]}])
    first = sample(cfg)
    with open(tmp_path / "jsonl" / "part1.jsonl", "a") as f:
        f.write(json.dumps({"text": "A new licence text. " * 40, "meta": {"source": "legal"}}) + "\n")
    second = sample(cfg)
    assert second["changes"]["kept"] == ["more-code"]
    assert sorted(second["changes"]["sampled"]) == ["p-code", "p-legal", "p-prose"]
    assert second["domains"]["p-legal"]["documents"] == first["domains"]["p-legal"]["documents"] + 1
    assert second["domains"]["p-code"]["train_sha256"] == first["domains"]["p-code"]["train_sha256"]


def test_pool_config_mistakes_are_one_line(pool_files, tmp_path):
    src = [str(pool_files / "pool.parquet")]
    line = fails("status", config(tmp_path, [{"sources": src, "group_by": "meta.source", "tiers": {
        "field": "score", "quantiles": 3}}]))
    assert "exactly one of `group_by`, `tiers` and `cluster`" in line
    line = fails("status", config(tmp_path, [{"sources": src, "group_by": "meta.source", "rest": "other"}]))
    assert "`rest: other` needs `values`" in line
    line = fails("status", config(tmp_path, [{"sources": src, "group_by": "meta.source", "values": ["code"]}]))
    assert "at least 2" in line


# ---- tiers ----------------------------------------------------------------------------------------

def test_tiers_at_given_edges(pool_files, pool_docs, tmp_path):
    cfg = config(tmp_path, [{"sources": [str(pool_files / "pool.parquet")], "tiers": {"field": "score",
                                                                                       "edges": [0.3, 0.7]}}])
    m = sample(cfg)
    assert m["order"] == ["score-t0", "score-t1", "score-t2"]
    want = true_counts(pool_docs, key=lambda r: int(np.searchsorted([0.3, 0.7], r["score"], side="right")))
    assert [m["domains"][f"score-t{i}"]["documents"] for i in range(3)] == [want[i] for i in range(3)]
    assert m["pools"][0]["edges"] == [0.3, 0.7]


def test_tiers_at_quantiles_are_computed_once_and_recorded(pool_files, pool_docs, tmp_path):
    cfg = config(tmp_path, [{"name": "q", "sources": [str(pool_files / "jsonl")],
                             "tiers": {"field": "score", "quantiles": 3}}], optimum={"target_tokens": 1e6})
    m = sample(cfg)
    scores = np.array([r["score"] for r in pool_docs])
    edges = np.quantile(np.sort(scores), [1 / 3, 2 / 3])
    assert m["pools"][0]["edges"] == pytest.approx(edges.tolist(), abs=0)
    counts = [m["domains"][f"q-t{i}"]["documents"] for i in range(3)]
    assert counts == [int((np.searchsorted(edges, scores, side="right") == i).sum()) for i in range(3)]
    assert max(counts) - min(counts) <= 2  # equal thirds
    # The edges are read back from the manifest: the second load does no pass over the pool.
    import mixopt.data.pools as pools

    pools._FOUND.clear()
    from mixopt.config.load import load_experiment

    seen = []
    real = pools._first_pass
    pools._first_pass = lambda *a: seen.append(a) or real(*a)
    try:
        exp = pools.expand_pools(load_experiment(cfg))
    finally:
        pools._first_pass = real
    assert not seen and [d.select["range"] for d in exp.domains] == [[None, edges[0]], [edges[0], edges[1]],
                                                                     [edges[1], None]]
    # Each tier is an ordinary domain: its repetition limit uses its own available tokens.
    from mixopt.core.mixtures import domain_bounds

    tokens = [m["domains"][n]["tokens"] for n in exp.domain_names]
    bounds = domain_bounds(exp.model_copy(update={"optimum": exp.optimum.model_copy(update={
        "target_tokens": 0.8 * sum(tokens), "max_epochs": 1.0})}), tokens)
    assert list(bounds.upper) == pytest.approx([t / (0.8 * sum(tokens)) for t in tokens])
    assert set(bounds.upper_reason) == {"repetition"}


# ---- clusters -------------------------------------------------------------------------------------

def _ari(a, b) -> float:
    from sklearn.metrics import adjusted_rand_score

    return adjusted_rand_score(a, b)


def test_clusters_are_named_deterministic_and_become_domains(pool_files, pool_docs, tmp_path):
    pool = {"sources": [str(pool_files / "pool.parquet")], "cluster": {"k": 3, "dims": 16}}
    runs = []
    for ws in ("a", "b"):  # two workspaces, the same seed: the same model
        (tmp_path / ws).mkdir()
        runs.append(json.loads(invoke_ok("cluster", config(tmp_path / ws, [pool]), "--format", "json")))
    assert runs[0] == runs[1]
    clusters = runs[0][0]["clusters"]
    assert [c["domain"] for c in clusters] == ["cluster-c00", "cluster-c01", "cluster-c02"]
    assert all(c["name"].count(",") == 2 and c["examples"] for c in clusters)
    m = sample(tmp_path / "a" / "pooled.yaml")
    assert m["order"] == [c["domain"] for c in clusters]
    assert sum(d["documents"] for d in m["domains"].values()) == len(pool_docs)
    # The clusters are the hidden kinds: every document's cluster against its label.
    from mixopt.config.load import load_experiment
    from mixopt.data.clusters import load_cluster_model

    model = load_cluster_model(load_experiment(tmp_path / "a" / "pooled.yaml"), runs[0][0]["model"])
    assert _ari([r["meta"]["source"] for r in pool_docs], model.assign([r["text"] for r in pool_docs])) >= 0.8
    text = invoke_ok("status", tmp_path / "a" / "pooled.yaml")
    assert "pool 1: 3 domains from clusters (k=3 given)" in text and f"[{clusters[0]['name']}]" in text, text


def test_k_is_chosen_by_silhouette_when_not_given(pool_files, tmp_path):
    pool = {"name": "topic", "sources": [str(pool_files / "pool.parquet")],
            "cluster": {"k_range": [2, 5], "dims": 16, "sample_documents": 200}}
    out = invoke_ok("cluster", config(tmp_path, [pool]))
    assert "best silhouette over k=2..5" in out and "topic-c00" in out, out
    line = fails("status", config(tmp_path, [{**pool, "cluster": {"k_range": [2, 6]}}]))
    assert "not fitted yet" in line and "mixopt cluster" in line, line


def test_a_changed_shard_is_assigned_again_not_the_pool(pool_files, tmp_path, monkeypatch):
    import shutil

    from mixopt.data.clusters import ClusterModel

    shutil.copytree(pool_files / "jsonl", tmp_path / "jsonl")
    cfg = config(tmp_path, [{"sources": [str(tmp_path / "jsonl")], "cluster": {"k": 3, "dims": 16}}])
    first = sample(cfg)  # sample fits the model when the workspace has none
    embedded = []
    real = ClusterModel.assign
    monkeypatch.setattr(ClusterModel, "assign", lambda self, texts: embedded.append(len(texts)) or real(self, texts))
    lines = (tmp_path / "jsonl" / "part1.jsonl").read_text().splitlines(keepends=True)
    with open(tmp_path / "jsonl" / "part1.jsonl", "a") as f:
        f.write(json.dumps({"text": "def added():\n    return 42\n" * 20, "meta": {"source": "code"}}) + "\n")
    second = sample(cfg)
    assert sum(embedded) == len(lines) + 1  # part1 only: part0's clusters come from the cache
    assert second["pools"][0]["model"] == first["pools"][0]["model"]  # the clusters stay where they were
    total = sum(d["documents"] for d in second["domains"].values())
    assert total == sum(d["documents"] for d in first["domains"].values()) + 1


# ---- end to end -----------------------------------------------------------------------------------

def test_a_cluster_experiment_samples_sweeps_fits_and_reports(pool_files, tmp_path):
    cfg = config(tmp_path, [{"name": "topic", "sources": [str(pool_files / "pool.parquet")],
                             "cluster": {"k": 3, "dims": 16}}],
                 design={"runs": 2, "min_weight": 0.01, "replicates": None})  # 6 runs: prior, vertices, 2
    invoke_ok("cluster", cfg)
    invoke_ok("sample", cfg)
    invoke_ok("sweep", cfg, "--no-progress")
    fit = json.loads(invoke_ok("fit", cfg, "--format", "json"))
    weights = fit["weights"]
    assert sorted(weights) == ["topic-c00", "topic-c01", "topic-c02"]
    assert sum(weights.values()) == pytest.approx(1.0)
    invoke_ok("report", cfg)
    page = (tmp_path / "ws" / "report.html").read_text()
    assert "Domains from pools" in page and "topic-c02" in page


def test_workers_read_a_pool_into_the_same_sample(pool_files, tmp_path):
    pool = {"sources": [str(pool_files / "pool.parquet")], "cluster": {"k": 3, "dims": 16}}
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = sample(config(tmp_path / "one", [pool]))
    two = sample(config(tmp_path / "two", [pool]), "--workers", "2")
    assert one["pools"][0]["model"] == two["pools"][0]["model"]
    for n, d in one["domains"].items():
        assert (d["documents"], d["train_sha256"], d["val_sha256"]) == \
            (two["domains"][n]["documents"], two["domains"][n]["train_sha256"], two["domains"][n]["val_sha256"])


def test_fields_that_cannot_split_a_pool_are_one_line(pool_files, corpora, tmp_path):
    line = fails("sample", config(tmp_path, [{"sources": [str(corpora / "legal")], "group_by": "source"}]))
    assert "a text shard has no fields" in line, line
    line = fails("sample", config(tmp_path, [{"sources": [str(pool_files / "jsonl")], "tiers": {
        "field": "meta.source", "quantiles": 2}}]))
    assert "field 'meta.source'" in line and "not a number" in line, line
    line = fails("cluster", config(tmp_path, [{"sources": [str(tmp_path / "ws" / "in")], "cluster": {"k": 2}}]))
    assert "inside the workspace" in line, line
    assert not (tmp_path / "ws").exists()


@pytest.fixture(scope="module")
def encoder(pool_docs, tmp_path_factory) -> Path:
    """A small BERT encoder saved as a user's own would be (random weights, a WordPiece vocabulary
    trained here): no download."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("encoder")
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator([r["text"] for r in pool_docs], trainers.WordPieceTrainer(
        vocab_size=800, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]").save_pretrained(folder)
    import torch

    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=800, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=512)).save_pretrained(folder)
    return folder


def test_a_local_encoder_embeds_instead_and_is_keyed_by_its_files(pool_files, pool_docs, encoder, tmp_path):
    import shutil

    shutil.copytree(encoder, tmp_path / "enc")
    pool = {"sources": [str(pool_files / "pool.parquet")], "cluster": {"k": 3, "embedder": str(tmp_path / "enc")}}
    cfg = config(tmp_path, [pool])
    first = json.loads(invoke_ok("cluster", cfg, "--format", "json"))[0]
    assert sum(c["sample_documents"] for c in first["clusters"]) == len(pool_docs)
    assert json.loads(invoke_ok("cluster", cfg, "--format", "json"))[0] == first  # kept, not fitted again
    meta = json.loads(next((tmp_path / "ws" / "clusters").glob("*/model.json")).read_text())
    assert meta["embedder"] == str(tmp_path / "enc") and "mean-pooled" in meta["embedding"]
    # Other weights in the same folder: another model (the old one is not used).
    from safetensors.torch import load_file, save_file

    weights = load_file(tmp_path / "enc" / "model.safetensors")
    save_file({k: v * 1.5 for k, v in weights.items()}, tmp_path / "enc" / "model.safetensors")
    import mixopt.data.clusters as clusters

    clusters._ENCODERS.clear()
    second = json.loads(invoke_ok("cluster", cfg, "--format", "json"))[0]
    assert second["model"] != first["model"]
    line = fails("cluster", config(tmp_path, [{**pool, "cluster": {"k": 3, "embedder": str(tmp_path)}}]))
    assert "cluster.embedder" in line and "no config.json" in line, line


def test_values_become_names_by_the_name_rule_and_a_clash_is_one_line(tmp_path):
    from mixopt.data.pools import domain_name

    assert domain_name(None, "Pile-CC") == "Pile-CC" and domain_name("src", "arxiv/math ph") == "src-arxiv_math_ph"
    assert domain_name(None, "..") == "v" + __import__("hashlib").sha256(b"..").hexdigest()[:8]
    assert domain_name(None, "日本") != domain_name(None, "中文")
    rows = [{"text": f"text number {i} " * 40, "src": ["a b", "a/b", "c"][i % 3]} for i in range(30)]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    line = fails("status", config(tmp_path, [{"sources": [str(tmp_path / "p.jsonl")], "group_by": "src"}]))
    assert "values 'a b' and 'a/b' both make the domain name 'a_b'" in line, line


def test_refit_fits_the_pool_as_it_is_now(pool_files, tmp_path):
    import shutil

    shutil.copytree(pool_files / "jsonl", tmp_path / "jsonl")
    cfg = config(tmp_path, [{"sources": [str(tmp_path / "jsonl")], "cluster": {"k": 3, "dims": 16}}])
    first = json.loads(invoke_ok("cluster", cfg, "--format", "json"))[0]
    with open(tmp_path / "jsonl" / "part0.jsonl", "a") as f:
        f.write(json.dumps({"text": "A new licence text. " * 40, "meta": {"source": "legal"}}) + "\n")
    assert json.loads(invoke_ok("cluster", cfg, "--format", "json"))[0]["model"] == first["model"]  # kept
    again = json.loads(invoke_ok("cluster", cfg, "--refit", "--format", "json"))[0]
    assert again["model"] != first["model"]
    assert sum(c["sample_documents"] for c in again["clusters"]) == sum(
        c["sample_documents"] for c in first["clusters"]) + 1
    assert len(list((tmp_path / "ws" / "clusters").glob("*/model.json"))) == 1  # replaced, not beside
