"""Many domains: a 32-domain experiment runs sample -> sweep (tiny proxies) -> fit end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import _code_docs, _license_docs, _prose_docs, write_config

DOMAINS = 32


@pytest.mark.slow
def test_32_domains_sample_sweep_fit(tmp_path):
    docs = _code_docs(700_000) + _prose_docs() + _license_docs(300_000)
    (tmp_path / "data").mkdir()
    for d in range(DOMAINS):  # each domain: every 32nd document, as two Parquet shards
        mine = docs[d::DOMAINS]
        pq.write_table(pa.table({"text": mine[0::2]}), tmp_path / "data" / f"d{d:02d}-0.parquet")
        pq.write_table(pa.table({"text": mine[1::2]}), tmp_path / "data" / f"d{d:02d}-1.parquet")
    cfg = {
        "name": "many", "seed": 0, "workspace": str(tmp_path / "ws"),
        "domains": [{"name": f"d{d:02d}", "sources": [f"data/d{d:02d}-*.parquet"]} for d in range(DOMAINS)],
        "sample": {"train_tokens": 3000, "val_tokens": 600, "tokenizer": {"vocab_size": 512}},
        "proxy": {"size": "tiny", "tokens": 4096, "seq_len": 64, "batch_size": 8},
        "design": {"runs": 34, "include_vertices": False, "min_weight": 0.001, "replicates": None},
        "fit": {"model": "linear", "cv_folds": 3, "bootstrap": 0},
    }
    path = write_config(tmp_path / "many.yaml", cfg)

    def run(*args):
        r = subprocess.run([sys.executable, "-m", "mixopt.cli", *map(str, args)], capture_output=True, text=True,
                           timeout=900, cwd=tmp_path)
        assert r.returncode == 0, (args, r.stdout[-2000:], r.stderr[-2000:])
        return r.stdout

    out = run("sample", path, "--workers", "2")
    assert all(f"d{d:02d}" in out for d in range(DOMAINS))
    manifest = json.loads((tmp_path / "ws" / "sample" / "manifest.json").read_text())
    assert len(manifest["domains"]) == DOMAINS
    run("sweep", path, "--workers", "2", "--no-progress")
    out = run("fit", path)
    optimal = (tmp_path / "many.optimal.yaml").read_text()
    weights = [line for line in optimal.splitlines() if line.strip().startswith("d")]
    assert len(weights) >= DOMAINS, optimal  # the recommendation names every domain
    assert "d31" in out
