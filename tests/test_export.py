"""`mixopt export`: one row per run in CSV, Parquet and JSON, through the real CLI, and `fit --runs`
reading the export back to the same fit the experiment gives."""

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from conftest import small_config, write_config


def run(*args):
    return subprocess.run([sys.executable, "-m", "mixopt.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_export_formats_agree_and_fit_reads_the_export_back(swept, tmp_path):
    r = run("export", swept, "--format", "parquet")
    assert r.returncode == 2 and r.stderr.startswith("error: Parquet is binary: --format parquet needs --output")

    csv = run("export", swept)  # CSV to stdout by default
    assert csv.returncode == 0, csv.stderr
    (tmp_path / "runs.csv").write_text(csv.stdout)
    from_csv = pl.read_csv(tmp_path / "runs.csv")
    js = run("export", swept, "--format", "json")
    rows = json.loads(js.stdout)
    r = run("export", swept, "--format", "parquet", "--output", tmp_path / "runs.parquet")
    assert r.returncode == 0 and r.stdout == "" and f"runs written to {tmp_path / 'runs.parquet'}" in r.stderr
    from_parquet = pl.read_parquet(tmp_path / "runs.parquet")

    assert from_csv.columns[:8] == ["key", "origin", "status", "replicate", "code", "prose", "legal", "objective"]
    for col in ("heldout/prose/bpb", "heldout/code/loss", "train_loss", "tokens", "train_seconds"):
        assert col in from_csv.columns
    assert from_csv.height == from_parquet.height == len(rows) >= 6 + 3 + 1  # design + vertices + prior
    assert from_csv["key"].to_list() == from_parquet["key"].to_list() == [r["key"] for r in rows]
    assert set(from_csv["status"]) == {"done"} and "prior" in from_csv["origin"].to_list()
    for a, b in zip(from_csv.iter_rows(named=True), rows):
        assert a["prose"] == pytest.approx(b["prose"]) and a["objective"] == pytest.approx(b["objective"])
        assert abs(a["code"] + a["prose"] + a["legal"] - 1) < 1e-9 and a["tokens"] > 0
        # The objective under this config's suite is the prose domain's held-out BPB.
        assert a["objective"] == pytest.approx(a["heldout/prose/bpb"])

    # The experiment's own fit and a fit of its export see the same runs and cross-validate the same.
    fit = run("fit", swept, "--format", "json")
    assert fit.returncode == 0, fit.stderr
    mine = json.loads(fit.stdout)
    saved = json.loads((Path(mine["fit_dir"]) / "fit.json").read_text())  # this fit's folder (others share fits/)
    measured = dict(zip(saved["run_keys"], saved["measured"]))
    assert {k: pytest.approx(v) for k, v in measured.items()} == dict(zip(from_csv["key"], from_csv["objective"]))
    for table in ("runs.csv", "runs.parquet"):
        ext = run("fit", "--runs", tmp_path / table, "--target", "objective", "--domains", "code,prose,legal",
                  "--model", "loglinear", "--cv-folds", "4", "--bootstrap", "0", "--format", "json")
        assert ext.returncode == 0, ext.stderr
        theirs = json.loads(ext.stdout)
        assert theirs["runs"] == mine["runs"] and list(theirs["weights"]) == ["code", "prose", "legal"]
        assert theirs["cv"]["spearman"] == pytest.approx(mine["cv"]["spearman"])
        assert theirs["cv"]["r2"] == pytest.approx(mine["cv"]["r2"])
    # Without --domains, an export's weight columns are found (and its key column used).
    ext = run("fit", "--runs", tmp_path / "runs.csv", "--target", "objective", "--model", "linear", "--bootstrap", "0")
    assert ext.returncode == 0 and "fit: linear on" in ext.stdout, ext.stderr
    r = run("fit", "--runs", tmp_path / "runs.csv", "--target", "objective", "--domains", "code,poetry")
    assert r.returncode == 2 and "--domains: no column 'poetry'" in r.stderr


def test_export_before_any_sweep_is_one_line(corpora, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", small_config(corpora, tmp_path / "ws"))
    r = run("export", cfg)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "mixopt sample CONFIG" in r.stderr
    assert not (tmp_path / "ws").exists()
