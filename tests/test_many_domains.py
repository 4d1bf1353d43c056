"""64 domains stay readable (no proxy is trained): `fit --runs` of a 64-domain swarm prints one row per
domain and lines of bounded width, and its optimal.yaml names every domain, one line each; `sample`,
`status` and `sweep --dry-run` of a 64-domain experiment name a bounded number of domains per line."""

from __future__ import annotations

import csv

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from conftest import _code_docs, _license_docs, _prose_docs, invoke_ok, write_config

TOPICS = ["adult_content", "art_and_design", "crime_and_law", "education_and_jobs", "electronics_and_hardware",
          "entertainment", "fashion_and_beauty", "finance_and_business", "food_and_dining", "games", "health",
          "history_and_geography", "home_and_hobbies", "industrial", "literature", "politics", "religion",
          "science_math_and_technology", "social_life", "software", "software_development", "sports_and_fitness",
          "transportation", "travel_and_tourism"]
NAMES = [f"{src}_{t}" for src in ("dclm", "stack", "arxiv") for t in TOPICS][:64]  # DCLM-like topic names
WIDTH = 320  # characters: a line may hold a few long domain names, never all 64 (those lines were 1,450-2,250)


def _widest(text: str) -> int:
    return max(len(line) for line in text.splitlines())


def test_fit_of_a_64_domain_swarm_is_readable(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.dirichlet(np.full(64, 0.3), 160)
    y = 3.0 + X @ rng.normal(0, 0.3, 64) + 0.5 * (X ** 2).sum(1) + rng.normal(0, 0.01, len(X))
    with open(tmp_path / "runs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", *NAMES, "loss"])
        w.writerows([f"r{i}", *map(repr, map(float, x)), repr(float(v))] for i, (x, v) in enumerate(zip(X, y)))
    out = invoke_ok("fit", "--runs", tmp_path / "runs.csv", "--key", "run", "--target", "loss", "--model", "linear",
                    "--cv-folds", "3", "--bootstrap", "4", "--no-plots", "--save", tmp_path / "fit")
    rows = [line.split()[0] for line in out.splitlines() if line.split() and line.split()[0] in NAMES]
    assert rows == NAMES  # the recommendation table: one row per domain, in order
    assert _widest(out) <= WIDTH, out
    text = (tmp_path / "fit" / "optimal.yaml").read_text()
    doc = yaml.safe_load(text)
    assert list(doc["weights"]) == NAMES and abs(sum(doc["weights"].values()) - 1) < 1e-4
    assert list(doc["interval"]["weights"]) == NAMES
    assert all(lo <= doc["weights"][d] + 1e-6 and doc["weights"][d] <= hi + 1e-6
               for d, (lo, hi) in doc["interval"]["weights"].items())
    # One line per domain in the weights and one in the intervals (not three), none of them long; the
    # rest (cv, verdict, noise, warnings) does not grow with the domains.
    assert len(text.splitlines()) <= 2 * 64 + len(doc["constraints"]) + 40 and _widest(text) <= 100, text


def test_64_domain_experiment_sample_status_and_dry_run_are_readable(tmp_path):
    docs = [t[i:i + 1500] for t in _code_docs(1_500_000) + _prose_docs() + _license_docs(600_000)
            for i in range(0, len(t), 1500)]
    (tmp_path / "data").mkdir()
    for d, name in enumerate(NAMES):  # each domain: every 64th piece, one Parquet file
        pq.write_table(pa.table({"text": docs[d::64]}), tmp_path / "data" / f"{name}.parquet")
    cfg = write_config(tmp_path / "many.yaml", {
        "name": "many", "seed": 0, "workspace": str(tmp_path / "ws"),
        "domains": [{"name": n, "sources": [str(tmp_path / "data" / f"{n}.parquet")]} for n in NAMES],
        "sample": {"train_tokens": 3000, "val_tokens": 600, "tokenizer": {"vocab_size": 512}},
        "proxy": {"size": "tiny", "tokens": 4096, "seq_len": 64, "batch_size": 8},
        "design": {"runs": 66, "min_weight": 0.001}})
    out = invoke_ok("sample", cfg)
    rows = [line.split()[0] for line in out.splitlines() if line.split() and line.split()[0] in NAMES]
    assert rows == NAMES  # the sample table: one row per domain
    assert "domains sampled: dclm_adult_content, dclm_art_and_design, dclm_crime_and_law, ..., arxiv_politics " \
           "(64 in all)" in out
    status = invoke_ok("status", cfg)
    assert "mean of 64: heldout/*/bpb for dclm_adult_content, " in status
    dry = invoke_ok("sweep", cfg, "--dry-run")
    # prior + 64 vertices + 66 random, and seed replicates: 9 mixtures x 2 more seeds (18, within 15% of 131)
    assert "to train: 149 runs" in dry
    for text in (out, status, dry):
        assert _widest(text) <= WIDTH, text
