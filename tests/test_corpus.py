import gzip
import json

import numpy as np
import pytest
import yaml
from conftest import write_config

from mixopt.config.load import load_experiment
from mixopt.core.workspace import Workspace
from mixopt.data.sample import sample_corpus
from mixopt.data.tokenizer import load_tokenizer
from mixopt.errors import MixoptError


def _docs(ws: Workspace, domain: str, split: str) -> set[str]:
    tok = load_tokenizer(ws.tokenizer_path)
    ids = np.load(ws.slice_path(domain, split))
    eos = tok.token_to_id("<|endoftext|>")
    cuts = np.flatnonzero(ids == eos)
    starts = np.r_[0, cuts[:-1] + 1]
    return {tok.decode(ids[a:b].tolist()) for a, b in zip(starts, cuts)}


def test_slices_are_disjoint_sized_and_reproducible(make_config, tmp_path):
    exp = load_experiment(make_config())
    m = sample_corpus(exp)
    ws = Workspace(exp.workspace_dir)
    assert abs(sum(d["prior"] for d in m["domains"].values()) - 1) < 1e-9
    for name, d in m["domains"].items():
        assert d["val_tokens"] >= 3000 and d["train_tokens"] >= 20000
        train, val = _docs(ws, name, "train"), _docs(ws, name, "val")
        assert train and val and not (train & val), name  # no document in both slices
        assert d["train_tokens"] == np.load(ws.slice_path(name, "train")).size
    first = {n: d["train_sha256"] for n, d in m["domains"].items()}
    assert sample_corpus(exp)["reused"] is True  # up to date: nothing is recomputed
    again = sample_corpus(exp, force=True)
    assert {n: d["train_sha256"] for n, d in again["domains"].items()} == first  # same seed, same slices
    other = load_experiment(make_config("other.yaml", ws="ws1", seed=1))
    m1 = sample_corpus(other)
    assert {n: d["train_sha256"] for n, d in m1["domains"].items()} != first


def test_parquet_read_by_polars_draws_the_sample_arrow_draws(make_config, monkeypatch):
    """The sampler reads local Parquet through polars (string views) where it can: the same slices,
    counts and tokenizer as with Arrow's reader, on one worker and on two."""
    from mixopt.config.runtime import Runtime
    from mixopt.data import parquet_views

    exp = load_experiment(make_config())
    assert any(s.path.endswith(".parquet") for d in exp.domains for s in d.sources)

    def drawn(workers):
        m = sample_corpus(exp, Runtime(workers=workers), force=True, retokenize=True)
        return m["tokenizer_sha256"], {n: (d["train_sha256"], d["val_sha256"], d["documents"], d["bytes"], d["tokens"])
                                       for n, d in m["domains"].items()}

    real, used = parquet_views.polars_views, []
    monkeypatch.setattr(parquet_views, "polars_views", lambda: used.append(1) or real())
    with_polars = [drawn(1), drawn(2)]
    assert used and real() is not None
    monkeypatch.setattr(parquet_views, "polars_views", lambda: None)
    assert with_polars == [drawn(1)] * 2


def test_too_little_text_fails_and_writes_nothing(make_config, tmp_path):
    exp = load_experiment(make_config(sample={"train_tokens": 10_000_000, "val_tokens": 3000}))
    with pytest.raises(MixoptError, match=r"set sample.train_tokens <= \d+"):
        sample_corpus(exp)
    assert not (tmp_path / "ws" / "sample").exists()
    assert not list((tmp_path / "ws").glob(".sample*"))


def test_empty_corpus_is_named(make_config, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    path = make_config()
    cfg = yaml.safe_load(path.read_text())
    cfg["domains"][2]["sources"] = [{"path": str(empty)}]
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(MixoptError, match="domain 'legal' has no documents"):
        sample_corpus(load_experiment(path))


def test_large_domain_token_count_is_estimated_within_5_percent(make_config, corpora):
    # A budget far below the corpus size: the count is extrapolated from the sample's tokens/byte.
    import pyarrow.parquet as pq

    # Documents are cut at 8 kB (sample.max_document_bytes), so 400 kB of code is far above the budget.
    cap = 8192
    exp = load_experiment(make_config(sample={"train_tokens": 4000, "val_tokens": 1000, "max_document_bytes": cap,
                                              "tokenizer": {"vocab_size": 512}}))
    code = sample_corpus(exp)["domains"]["code"]
    assert not code["tokens_exact"]
    assert code["documents"] > code["train_documents"] + code["val_documents"]
    tok = load_tokenizer(Workspace(exp.workspace_dir).tokenizer_path)
    texts = pq.read_table(corpora / "code.parquet").column("text").to_pylist()
    assert code["truncated_documents"] == sum(len(t.encode()) > cap for t in texts) > 0
    texts = [t.encode()[:cap].decode("utf-8", "ignore") for t in texts]
    exact = sum(len(e.ids) + 1 for e in tok.encode_batch(texts, add_special_tokens=False))
    assert abs(code["tokens"] / exact - 1) < 0.05


def test_a_moved_corpus_is_the_same_corpus_and_changed_bytes_are_not(make_config, corpora, tmp_path):
    """Sources are identified by content: a copy at another path (mtimes not kept, path spelled with
    '..') reuses the sample; one changed byte in one file makes it stale."""
    import shutil

    from mixopt.sweep.plan import load_plan

    exp = load_experiment(make_config())
    sample_corpus(exp)
    moved = tmp_path / "elsewhere" / "corpora"
    shutil.copytree(corpora, moved, copy_function=shutil.copy)  # new mtimes and inodes
    cfg = yaml.safe_load(make_config().read_text())
    for d, name in zip(cfg["domains"], ("code.parquet", "prose.jsonl.gz", "legal")):
        d["sources"] = [{"path": str(tmp_path / "elsewhere" / ".." / "elsewhere" / "corpora" / name)}]
    path = tmp_path / "moved.yaml"
    path.write_text(yaml.safe_dump(cfg))
    moved_exp = load_experiment(path)
    assert sample_corpus(moved_exp)["reused"] is True
    load_plan(moved_exp)  # sweep and fit accept the sample too
    victim = sorted((moved / "legal").iterdir())[0]
    victim.write_text(victim.read_text() + "!")
    assert sample_corpus(moved_exp)["reused"] is False


def test_a_hugging_face_tokenizer_from_a_local_folder(make_config, corpora, tmp_path, monkeypatch):
    """`tokenizer: {name: folder}`: a tokenizer saved with save_pretrained is used as is."""
    from transformers import PreTrainedTokenizerFast

    from mixopt.data.tokenizer import train_tokenizer

    texts = [json.loads(line)["text"] for line in gzip.open(corpora / "prose.jsonl.gz", "rt")]
    hf = PreTrainedTokenizerFast(tokenizer_object=train_tokenizer(texts, 700), eos_token="<|endoftext|>")
    hf.save_pretrained(tmp_path / "my-tokenizer")
    exp = load_experiment(make_config(sample={"train_tokens": 20000, "val_tokens": 3000,
                                              "tokenizer": {"name": "my-tokenizer"}}))
    m = sample_corpus(exp)
    assert m["vocab_size"] == 700
    tok = load_tokenizer(Workspace(exp.workspace_dir).tokenizer_path)
    assert tok.encode(texts[0]).ids == hf(texts[0])["input_ids"]
    assert sample_corpus(exp)["reused"] is True
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network in the tests: fail at once, not after retries
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(MixoptError, match="tokenizer 'nowhere/none' cannot be loaded"):
        sample_corpus(load_experiment(make_config("b.yaml", ws="ws2", sample={"tokenizer": {"name": "nowhere/none"}})))


def test_a_workspace_keeps_its_sampler_version_and_a_new_one_gets_the_latest(make_config, corpora, tmp_path,
                                                                             monkeypatch):
    """Sampler version 2 (xxh3 priorities) draws other documents than version 1 (blake2b): a workspace
    sampled with version 1 stays valid, is not drawn again, and a changed domain in it is drawn with
    version 1; a new workspace gets version 2."""
    import shutil

    from mixopt.data import resample
    from mixopt.data.sample import sample_key
    from mixopt.sweep.plan import load_plan

    def legal(ws: str, name: str):  # a config whose 'legal' domain reads the folder `name`
        cfg = yaml.safe_load(make_config(f"{ws}.yaml", ws=ws).read_text())
        cfg["domains"][2]["sources"] = [{"path": str(tmp_path / name)}]
        return load_experiment(write_config(tmp_path / f"{ws}-{name}.yaml", cfg))

    shutil.copytree(corpora / "legal", tmp_path / "legal")
    with monkeypatch.context() as m:  # what a mixopt from before version 2 wrote
        m.setattr(resample, "SAMPLER_VERSION", 1)
        old = sample_corpus(legal("old", "legal"))
        shutil.copytree(corpora / "legal", tmp_path / "legal2")
        (tmp_path / "legal2" / "extra.txt").write_text("An added clause, then more words. " * 300)
        reference = sample_corpus(legal("ref", "legal2"))  # version 1 from the start
    assert old["version"] == reference["version"] == 1
    exp = legal("old", "legal")
    assert sample_key(exp) == old["key"]  # sweep's staleness check passes: the old sample is valid
    load_plan(exp)
    assert sample_corpus(exp)["reused"] is True
    forced = sample_corpus(exp, force=True)  # drawn again on request: still with version 1, same slices
    assert forced["version"] == 1
    assert {n: d["train_sha256"] for n, d in forced["domains"].items()} == \
        {n: d["train_sha256"] for n, d in old["domains"].items()}
    changed = sample_corpus(legal("old", "legal2"))  # one domain's files changed: drawn again, version 1
    assert changed["version"] == 1 and changed["changes"]["sampled"] == ["legal"]
    old_ws, ref_ws = Workspace(tmp_path / "old"), Workspace(tmp_path / "ref")
    for split in ("train", "val"):  # the documents version 1 draws (the tokenizers differ, the texts not)
        assert _docs(old_ws, "legal", split) == _docs(ref_ws, "legal", split)

    new = sample_corpus(legal("new", "legal"))
    assert new["version"] == resample.SAMPLER_VERSION == 2 and new["key"] != old["key"]
    new_ws = Workspace(tmp_path / "new")
    assert _docs(new_ws, "code", "val") != _docs(Workspace(tmp_path / "old"), "code", "val")  # other documents


def test_a_sampler_version_this_mixopt_does_not_know_is_refused(make_config):
    exp = load_experiment(make_config())
    sample_corpus(exp)
    ws = Workspace(exp.workspace_dir)
    manifest = json.loads(ws.manifest_path.read_text())
    ws.manifest_path.write_text(json.dumps({**manifest, "version": 9}))
    with pytest.raises(MixoptError, match="written by sampler version 9, which this mixopt does not know"):
        sample_corpus(exp, force=True)
    assert json.loads(ws.manifest_path.read_text())["version"] == 9  # nothing redrawn


def test_version_2_tokenizes_only_the_candidates_the_slices_take(corpora, monkeypatch):
    """The leading candidates are tokenized until both slices are full: the same ids as tokenizing all,
    and the same whatever the text tokenized per call."""
    from mixopt.data import sample
    from mixopt.data.sample import _encode
    from mixopt.data.scan import Candidates
    from mixopt.data.tokenizer import train_tokenizer

    texts = [json.loads(line)["text"] for line in gzip.open(corpora / "prose.jsonl.gz", "rt")]
    tok = train_tokenizer(texts, 512)
    c = Candidates(docs=texts, sizes=[len(t.encode()) for t in texts], documents=len(texts), duplicates=0,
                   bytes=sum(len(t.encode()) for t in texts), complete=False)
    eos = tok.token_to_id("<|endoftext|>")

    def encode(need_train, every, batch_bytes=None):
        if batch_bytes:
            monkeypatch.setattr(sample, "ENCODE_BYTES", batch_bytes)
        t = _encode(tok, c, 2000, need_train, every, eos, np.uint16)
        return [d.tolist() for d in np.split(t.stream, np.cumsum(t.lengths)[:-1])]

    every = encode(8000, True)
    assert every == [tok.encode(d, add_special_tokens=False).ids + [eos] for d in texts]  # each its own ids + EOS
    some = encode(8000, False)
    assert len(some) < len(every) and some == every[:len(some)]
    assert sum(len(i) for i in some) >= 10_000
    assert encode(10 ** 9, False) == every  # too few tokens: all of them, as before
    assert encode(8000, False, batch_bytes=3000) == some and encode(8000, True) == every  # a few documents a call


def test_candidates_past_the_memory_budget_wait_on_disk_and_draw_the_same_sample(corpora, tmp_path, monkeypatch):
    """Every domain is read before the tokenizer can train: past SPILL_BYTES, a domain's candidates
    go to an Arrow file in the workspace, so memory at that point holds about none of them, not all
    twelve domains'. The sample is the same byte for byte; the spill folder is gone after, and after a
    failure too (with the workspace the failed run made)."""
    import tracemalloc

    from mixopt.data import sample, spill

    def config(ws):
        return write_config(tmp_path / f"{ws}.yaml", {
            "name": "many", "workspace": str(tmp_path / ws),
            "domains": [{"name": f"d{i}", "sources": [{"path": str(corpora / "code.parquet")}]} for i in range(12)],
            "sample": {"train_tokens": 30_000, "val_tokens": 3000, "max_document_bytes": 20_000,
                       "tokenizer": {"vocab_size": 512, "train_bytes_per_domain": 30_000}}})

    held, real_train = {}, sample.train_tokenizer

    def train(texts, vocab):  # all domains are read by now: what memory holds of their candidates
        held[spill.SPILL_BYTES] = tracemalloc.get_traced_memory()[0]
        return real_train(texts, vocab)

    monkeypatch.setattr(sample, "train_tokenizer", train)
    monkeypatch.setattr(sample, "ENCODE_BYTES", 16_000)
    drawn = {}
    for budget in (1 << 40, 0):
        monkeypatch.setattr(spill, "SPILL_BYTES", budget)
        exp = load_experiment(config(f"ws{budget}"))
        tracemalloc.start()
        try:
            m = sample_corpus(exp)
        finally:
            tracemalloc.stop()
        drawn[budget] = (m["tokenizer_sha256"], {n: (d["train_sha256"], d["val_sha256"], d["tokens"])
                                                 for n, d in m["domains"].items()})
        assert not list((tmp_path / f"ws{budget}").glob(".sample.spill-*"))
    assert drawn[0] == drawn[1 << 40]
    assert held[0] < held[1 << 40] / 4, held  # twelve domains' candidates (~2.4 MB) in memory, or about none

    def fail(*args, **kw):
        raise MixoptError("a failure after every domain was read and spilled", "none")

    monkeypatch.setattr(sample, "_write_slices", fail)
    with pytest.raises(MixoptError, match="after every domain was read"):
        sample_corpus(load_experiment(config("ws-failed")))
    assert not (tmp_path / "ws-failed").exists()  # the spill folder, and the workspace it claimed, gone


def test_one_sample_at_a_time_per_workspace_and_killed_runs_spill_folders_go(make_config):
    """Two `sample`s on one workspace raced over its temp folders (one deleted the other's spilled
    candidates mid-run: a traceback); now the second is one line. A spill folder a killed run left, of
    any sample key, goes with the next `sample`, and so do temp and replaced samples beside a sample/."""
    from mixopt.data.spill import Spill

    exp = load_experiment(make_config())
    sample_corpus(exp)
    ws = Workspace(exp.workspace_dir)
    held = Spill(ws, "f" * 64)  # another `sample` of this workspace, running
    left = [ws.root / f".sample.{kind}-0123456789ab" for kind in ("spill", "tmp", "old")]
    for folder in left:
        folder.mkdir()
        (folder / "code.arrow").write_bytes(b"a killed run's candidates, half-built or replaced sample")
    try:
        with pytest.raises(MixoptError, match=f"another `mixopt sample` is writing the sample of workspace {ws.root}"):
            sample_corpus(exp, force=True)
        assert all(f.is_dir() for f in left)  # not the refused run's to remove
    finally:
        held.remove()
    sample_corpus(exp, force=True)
    assert not list(ws.root.glob(".sample.*"))
