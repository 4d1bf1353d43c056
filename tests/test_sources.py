"""Sources beyond one local file: globs, lists, fsspec URLs (memory://, file://, S3 through a real moto
server on 127.0.0.1 read with s3fs), and a local folder laid out as a Hugging Face Hub dataset."""

from __future__ import annotations

import json
import socket

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
import zstandard
from conftest import small_config, write_config

from mixopt.config.load import load_experiment
from mixopt.config.runtime import Runtime
from mixopt.config.source import Source
from mixopt.data.readers import iter_documents
from mixopt.data.sample import sample_corpus
from mixopt.data.sources import list_shards
from mixopt.errors import MixoptError

DOCS = [f"document number {i}: " + "word " * (i % 7 + 1) for i in range(60)]


def _write_shards(root, docs=DOCS):
    """20 docs in each of 3 Parquet shards, 30 in two nested JSONL.zst shards, and a stray file."""
    (root / "shards").mkdir(parents=True)
    for i in range(3):
        pq.write_table(pa.table({"text": docs[i * 20:(i + 1) * 20]}), root / "shards" / f"part-{i}.parquet")
    for i, sub in enumerate(["a", "b/c"]):
        (root / "jsonl" / sub).mkdir(parents=True)
        rows = "".join(json.dumps({"text": d, "id": k}) + "\n" for k, d in enumerate(docs[i * 30:(i + 1) * 30]))
        (root / "jsonl" / sub / f"x{i}.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(rows.encode()))
    (root / "shards" / "README.md").write_text("not a shard")


def test_globs_lists_and_file_urls(tmp_path):
    _write_shards(tmp_path)
    docs = sorted(DOCS)
    for path in [str(tmp_path / "shards" / "*.parquet"), "shards/*.parquet", f"file://{tmp_path}/shards/*.parquet",
                 str(tmp_path / "shards")]:
        got = sorted(iter_documents(Source(path=path), base_dir=tmp_path))
        assert got == docs, path
    assert sorted(iter_documents(Source(path="jsonl/**/*.jsonl.zst"), base_dir=tmp_path)) == docs
    both = Source(path=["shards/part-0.parquet", "jsonl/a/*.zst", "shards/part-0.parquet"])
    assert len(list_shards(both, tmp_path)) == 2  # a file named twice is read once
    assert sorted(iter_documents(both, base_dir=tmp_path)) == sorted(DOCS[:20] + DOCS[:30])
    with pytest.raises(MixoptError, match="no file matches .*nothing-\\*.parquet"):
        list_shards(Source(path="shards/nothing-*.parquet"), tmp_path)


def test_memory_urls_are_read_through_fsspec():
    import fsspec

    fs = fsspec.filesystem("memory")
    for i in range(3):
        with fs.open(f"/corpus/part-{i}.parquet", "wb") as f:
            pq.write_table(pa.table({"text": DOCS[i * 20:(i + 1) * 20]}), f)
    try:
        source = Source(path="memory://corpus/*.parquet")
        assert [s.uri for s in list_shards(source)] == [f"memory:///corpus/part-{i}.parquet" for i in range(3)]
        assert sorted(iter_documents(source)) == sorted(DOCS)
        assert sorted(iter_documents(Source(path="memory://corpus"))) == sorted(DOCS)  # a folder
    finally:
        fs.rm("/corpus", recursive=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto():
    """A moto S3 server on a free 127.0.0.1 port, and its URL. moto keeps its buckets in this process,
    across servers: they are reset, so each test starts with an empty store."""
    import urllib.request

    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST"), timeout=60).close()
    return server, url


@pytest.fixture
def s3(monkeypatch):
    """A real S3-protocol server (moto) on 127.0.0.1, started and stopped here."""
    server, url = start_moto()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    try:
        yield url
    finally:
        server.stop()


def test_sharded_s3_domain_samples_like_its_local_copy(s3, corpora, tmp_path):
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=s3, skip_instance_cache=True)
    fs.mkdir("corpus")
    table = pq.read_table(corpora / "code.parquet")
    step = (table.num_rows + 3) // 4
    for i in range(4):  # the code domain as 4 shards in a bucket
        with fs.open(f"corpus/code/part-{i:05d}.parquet", "wb") as f:
            pq.write_table(table.slice(i * step, step), f)
    local = load_experiment(write_config(tmp_path / "local.yaml", small_config(corpora, tmp_path / "ws-local")))
    cfg = small_config(corpora, tmp_path / "ws-s3")
    cfg["domains"][0]["sources"] = [{"path": "s3://corpus/code/*.parquet", "storage_options": {"endpoint_url": s3}}]
    remote = load_experiment(write_config(tmp_path / "s3.yaml", cfg))
    a, b = sample_corpus(local), sample_corpus(remote)
    for k in ("documents", "bytes", "tokens", "train_sha256", "val_sha256"):
        assert a["domains"]["code"][k] == b["domains"]["code"][k], k  # the same documents, the same sample
    assert sample_corpus(remote)["reused"] is True  # identified by the store's ETags: nothing re-read
    with fs.open("corpus/code/part-00000.parquet", "wb") as f:  # a changed shard makes the sample stale
        pq.write_table(table.slice(0, step - 1), f)
    assert sample_corpus(remote)["reused"] is False


def test_s3_without_credentials_or_server_is_one_clear_error(s3, monkeypatch, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    src = Source(path="s3://corpus/*.parquet", storage_options={"endpoint_url": s3, "skip_instance_cache": True})
    with pytest.raises(MixoptError, match=r"s3://corpus/\*.parquet: access denied .*credentials"):
        list_shards(src)
    closed = f"http://127.0.0.1:{_free_port()}/data/part-0.parquet"
    with pytest.raises(MixoptError, match="cannot be reached"):
        list_shards(Source(path=closed))


def test_local_folder_laid_out_as_a_hub_dataset(tmp_path):
    repo = tmp_path / "org" / "corpus"
    (repo / "data").mkdir(parents=True)
    pq.write_table(pa.table({"text": DOCS[:25]}), repo / "data" / "train-00000-of-00002.parquet")
    pq.write_table(pa.table({"text": DOCS[25:50]}), repo / "data" / "train-00001-of-00002.parquet")
    pq.write_table(pa.table({"text": DOCS[50:]}), repo / "data" / "test-00000-of-00001.parquet")
    (repo / "README.md").write_text("---\nlicense: mit\n---\n# a corpus\n")
    train = Source(hub="org/corpus", split="train")
    shards = list_shards(train, tmp_path)
    assert len(shards) == 2 and all(s.fmt == "hub" for s in shards)
    assert sorted(iter_documents(train, base_dir=tmp_path)) == sorted(DOCS[:50])
    assert sorted(iter_documents(Source(hub="org/corpus", split="test"), base_dir=tmp_path)) == sorted(DOCS[50:])
    with pytest.raises(MixoptError, match="hub dataset org/corpus: .*split"):
        list_shards(Source(hub="org/corpus", split="nope"), tmp_path)
    with pytest.raises(ValueError, match="exactly one of `path` and `hub`"):
        Source(path="x", hub="org/corpus")


def test_hub_domain_in_an_experiment(corpora, tmp_path):
    repo = tmp_path / "hub" / "prose"
    (repo / "data").mkdir(parents=True)
    texts = [json.loads(line)["text"] for line in __import__("gzip").open(corpora / "prose.jsonl.gz", "rt")]
    half = len(texts) // 2
    pq.write_table(pa.table({"text": texts[:half]}), repo / "data" / "train-00000-of-00002.parquet")
    pq.write_table(pa.table({"text": texts[half:]}), repo / "data" / "train-00001-of-00002.parquet")
    cfg = small_config(corpora, tmp_path / "ws")
    cfg["domains"][1]["sources"] = [{"hub": "hub/prose", "split": "train"}]
    m = sample_corpus(load_experiment(write_config(tmp_path / "hub.yaml", cfg)))
    assert m["domains"]["prose"]["documents"] == len({t for t in texts if t.strip()})
    assert yaml.safe_load((tmp_path / "hub.yaml").read_text())["domains"][1]["sources"][0]["hub"] == "hub/prose"


def split_parquet(table, folder, shards: int, name: str = "part-{i}.parquet") -> None:
    """`table` as `shards` Parquet files of consecutive rows in `folder`."""
    folder.mkdir(exist_ok=True)
    step = (table.num_rows + shards - 1) // shards
    for i in range(shards):
        pq.write_table(table.slice(i * step, step), folder / name.format(i=i))


def test_any_number_of_workers_gives_byte_identical_samples(corpora, tmp_path, monkeypatch):
    """The bottom-k pools of separate processes and reading threads merge into the serial result: slices,
    counts and tokenizer (sampler version 2, what a new workspace gets)."""
    from mixopt.backends import local_executor

    table = pq.read_table(corpora / "code.parquet")
    split_parquet(table, tmp_path / "code", 5)
    pq.write_table(table.slice(0, 7), tmp_path / "code" / "dups.parquet")  # exact duplicates across shards
    prose = [json.loads(line)["text"] for line in __import__("gzip").open(corpora / "prose.jsonl.gz", "rt")]
    pq.write_table(pa.table({"text": prose}), tmp_path / "prose.parquet", row_group_size=16)  # one file, split
    manifests = []
    # (processes, cores): 1 process reading 1 shard at a time, or 4 (threads); 2 and 3 processes
    for workers, cores in ((1, 1), (1, 4), (2, 4), (3, 1)):
        monkeypatch.setattr(local_executor, "cores", lambda: cores)
        assert local_executor.LocalExecutor(1).threads == cores
        cfg = small_config(corpora, tmp_path / f"ws{workers}-{cores}",
                           sample={"train_tokens": 8000, "val_tokens": 2000, "max_document_bytes": 20_000,
                                   "tokenizer": {"vocab_size": 512}})
        cfg["domains"][0]["sources"] = [{"path": str(tmp_path / "code" / "*.parquet")}]
        cfg["domains"][1]["sources"] = [{"path": str(tmp_path / "prose.parquet")}]
        m = sample_corpus(load_experiment(write_config(tmp_path / f"w{workers}-{cores}.yaml", cfg)),
                          Runtime(workers=workers))
        manifests.append({k: v for k, v in m.items() if k != "reused"})
    assert manifests[0]["version"] == 2
    assert not manifests[0]["domains"]["code"]["tokens_exact"]  # the pools were trimmed
    assert manifests[0]["domains"]["code"]["duplicates_dropped"] > 0
    assert all(m == manifests[0] for m in manifests[1:])  # slices' and tokenizer's sha256, counts, estimates


def test_scan_fraction_reads_a_seeded_subset_and_estimates_the_rest(corpora, tmp_path):
    split_parquet(pq.read_table(corpora / "code.parquet"), tmp_path / "code", 12, "part-{i:02d}.parquet")
    out = {}
    for name, scan in (("all", None), ("part", {"fraction": 0.5})):
        cfg = small_config(corpora, tmp_path / f"ws-{name}",
                           sample={"train_tokens": 8000, "val_tokens": 2000, "tokenizer": {"vocab_size": 512},
                                   **({"scan": scan} if scan else {})})
        cfg["domains"][0]["sources"] = [{"path": str(tmp_path / "code")}]
        out[name] = sample_corpus(load_experiment(write_config(tmp_path / f"{name}.yaml", cfg)))["domains"]["code"]
    full, part = out["all"], out["part"]
    assert "scan" not in full and part["scan"]["shards_read"] == 6 and part["scan"]["shards"] == 12
    assert not part["tokens_exact"] and part["scan"]["bytes_stderr"] > 0
    # The estimate of the domain's text bytes is within 4 standard errors of the exact count.
    assert abs(part["bytes"] - full["bytes"]) < 4 * part["scan"]["bytes_stderr"] + 0.01 * full["bytes"]
    assert part["documents"] != full["documents"] or part["bytes"] != full["bytes"]  # it was estimated
