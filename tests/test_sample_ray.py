"""`mixopt sample --backend ray`: a domain's shard groups are read by Ray tasks (S3 shards by the tasks
themselves, through a real moto server on 127.0.0.1) and merged in the driver into the same manifest as
one local process; a bad shard is the one-line error; an address nobody answers on, nothing started.
One `ray start --head` serves the module (Ray's start-up is the cost)."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import small_config, write_config
from test_backends import RAY, _own_ray, _stop_own_ray
from test_sources import _free_port, start_moto

CLI = [sys.executable, "-m", "mixopt.cli"]
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def ray_head():
    """A one-node Ray cluster of 3 CPUs on 127.0.0.1 (its workers see the moto credentials); stopped after."""
    pytest.importorskip("ray")
    tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # socket paths must be < 108 bytes
    env = {**__import__("os").environ, **AWS, "RAY_AUTH_MODE": "disabled", "HOME": tmp, "RAY_TMPDIR": tmp,
           "RAY_USAGE_STATS_ENABLED": "0"}
    port = _free_port()
    try:
        start = subprocess.run([RAY, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                                "--num-cpus", "3", "--disable-usage-stats", "--include-dashboard", "false"],
                               capture_output=True, text=True, env=env, timeout=180)
        assert start.returncode == 0, start.stderr[-2000:]
        yield f"127.0.0.1:{port}", env, tmp
    finally:
        _stop_own_ray(tmp)


def _sample(cfg: Path, *flags, env) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "sample", str(cfg), "--format", "json", "--no-progress", *flags],
                          capture_output=True, text=True, env=env, timeout=600)


def test_ray_tasks_read_s3_and_local_shards_into_the_same_manifest(ray_head, corpora, tmp_path):
    address, env, tmp = ray_head
    server, endpoint = start_moto()
    try:
        import s3fs

        fs = s3fs.S3FileSystem(endpoint_url=endpoint, key="testing", secret="testing", skip_instance_cache=True)
        fs.mkdir("corpus")
        table = pq.read_table(corpora / "code.parquet")
        step = (table.num_rows + 4) // 5
        for i in range(5):  # code: 5 shards in a bucket, plus exact duplicates across shards
            with fs.open(f"corpus/code/part-{i}.parquet", "wb") as f:
                pq.write_table(table.slice(i * step, step), f)
        with fs.open("corpus/code/dups.parquet", "wb") as f:
            pq.write_table(table.slice(0, 7), f)
        prose = [json.loads(line)["text"] for line in __import__("gzip").open(corpora / "prose.jsonl.gz", "rt")]
        pq.write_table(pa.table({"text": prose}), tmp_path / "prose.parquet", row_group_size=16)  # one file: split
        out = {}
        for name, flags in (("one", ["--workers", "1"]), ("ray", ["--backend", "ray", "--ray-address", address])):
            cfg = small_config(corpora, tmp_path / f"ws-{name}",
                               sample={"train_tokens": 8000, "val_tokens": 2000, "max_document_bytes": 20_000,
                                       "tokenizer": {"vocab_size": 512}})
            cfg["domains"][0]["sources"] = [{"path": "s3://corpus/code/*.parquet",
                                             "storage_options": {"endpoint_url": endpoint}}]
            cfg["domains"][1]["sources"] = [{"path": str(tmp_path / "prose.parquet")}]
            r = _sample(write_config(tmp_path / f"{name}.yaml", cfg), *flags, env=env)
            assert r.returncode == 0, r.stderr[-3000:]
            out[name] = ({k: v for k, v in json.loads(r.stdout).items() if k not in ("workspace", "reused")}, r.stderr)
        again = _sample(tmp_path / "ray.yaml", *flags, env=env)  # up to date: Ray is not even joined
        assert json.loads(again.stdout)["reused"] is True and "ray:" not in again.stderr, again.stderr[-2000:]
    finally:
        server.stop()
    (one, _), (ray, said) = out["one"], out["ray"]
    assert "ray: 1 node(s), 3 CPUs; up to 3 tasks per domain" in said
    # Every domain fans out (S3 shards, a file's row groups, text files), up to 4 groups per task slot.
    ran = re.search(r"ray: (\d+) tasks ran on 1 node\(s\)", said)
    assert ran and 9 <= int(ran[1]) <= 3 * 3 * 4, said
    assert one["domains"]["code"]["duplicates_dropped"] > 0 and not one["domains"]["code"]["tokens_exact"]
    assert one == ray  # slices' and tokenizer's sha256, counts, estimates
    assert set(_own_ray(tmp))  # the head mixopt joined is still up


def test_ray_task_failure_is_one_line_and_nothing_is_written(ray_head, corpora, tmp_path):
    address, env, _ = ray_head
    (tmp_path / "code").mkdir()
    table = pq.read_table(corpora / "code.parquet")
    pq.write_table(table, tmp_path / "code" / "good.parquet")
    pq.write_table(table.slice(0, 50), tmp_path / "full.parquet")
    data = (tmp_path / "full.parquet").read_bytes()
    (tmp_path / "code" / "bad.parquet").write_bytes(data[: len(data) - 20])  # truncated
    cfg = small_config(corpora, tmp_path / "ws")
    cfg["domains"][0]["sources"] = [{"path": str(tmp_path / "code")}]
    path = write_config(tmp_path / "bad.yaml", cfg)
    r = _sample(path, "--backend", "ray", "--ray-address", address, env=env)
    assert r.returncode == 2, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "bad.parquet" in errors[0] and "on_error: skip" in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and not (tmp_path / "ws").exists()
    # An address nobody answers on: one line before anything is written or started.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    r = _sample(path, "--backend", "ray", "--ray-address", f"127.0.0.1:{closed}", env=env)
    assert r.returncode == 2 and "cannot reach the Ray cluster at 127.0.0.1:" in r.stderr, r.stderr[-2000:]
    assert len(r.stderr.strip().splitlines()) <= 2 and not (tmp_path / "ws").exists()


def test_ray_tasks_read_a_pool_into_the_same_domains(ray_head, corpora, tmp_path):
    """A pool split by a field and one split by clusters: Ray tasks route each document as one process does."""
    address, env, tmp = ray_head
    code = pq.read_table(corpora / "code.parquet").column("text").to_pylist()
    prose = [json.loads(line)["text"] for line in __import__("gzip").open(corpora / "prose.jsonl.gz", "rt")]
    rows = [(t, "code") for t in code] + [(t, "prose") for t in prose]
    (tmp_path / "pool").mkdir()
    for s in range(3):
        part = rows[s::3]
        pq.write_table(pa.table({"text": [t for t, _ in part], "meta": [{"kind": k} for _, k in part]}),
                       tmp_path / "pool" / f"p{s}.parquet", row_group_size=16)
    out = {}
    for name, flags in (("one", ["--workers", "1"]), ("ray", ["--backend", "ray", "--ray-address", address])):
        cfg = small_config(corpora, tmp_path / f"ws-{name}", domains=[], pools=[
            {"sources": [str(tmp_path / "pool")], "group_by": "meta.kind"},
            {"sources": [str(tmp_path / "pool")], "cluster": {"k": 2, "dims": 8}}],
            fit={"model": "loglinear", "cv_folds": 4})
        r = _sample(write_config(tmp_path / f"{name}.yaml", cfg), *flags, env=env)
        assert r.returncode == 0, r.stderr[-2000:]
        out[name] = json.loads(r.stdout)
    assert out["one"]["order"] == ["code", "prose", "cluster-c00", "cluster-c01"]
    for n, d in out["one"]["domains"].items():
        assert {k: d[k] for k in ("documents", "train_sha256", "val_sha256")} == \
            {k: out["ray"]["domains"][n][k] for k in ("documents", "train_sha256", "val_sha256")}
