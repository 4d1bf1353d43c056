"""`mixopt check`, the sweep's cheap checkpoint check, and a workspace copied elsewhere: damaged
checkpoints are found and retrained, intact results are never thrown away."""

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import small_config, write_config

from mixopt.config.load import load_experiment
from mixopt.sweep import store as store_module
from mixopt.sweep.status import experiment_status


def mixopt(*args):
    return subprocess.run([sys.executable, "-m", "mixopt.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def swept(corpora, tmp_path_factory):
    """A sampled and swept tiny workspace (7 runs); tests work on copies of it."""
    root = tmp_path_factory.mktemp("swept")
    cfg = small_config(corpora, root / "ws", design__runs=2, proxy__tokens=8000, sample__train_tokens=10000)
    config = write_config(root / "c.yaml", cfg)
    assert mixopt("sample", config).returncode == 0
    r = mixopt("sweep", config, "--no-progress")
    assert r.returncode == 0, r.stderr
    return cfg, root / "ws"


def _copy(swept, tmp_path, **changes):
    """`cp -a` of the workspace to a new path and a config pointed at the copy."""
    cfg, ws = swept
    shutil.copytree(ws, tmp_path / "copy", copy_function=shutil.copy2, symlinks=True)
    cfg = {**cfg, "workspace": str(tmp_path / "copy"), **changes}
    return write_config(tmp_path / "copy.yaml", cfg), tmp_path / "copy"


def _trainings(ws) -> dict[str, int]:
    with sqlite3.connect(ws / "mixopt.db") as db:
        return dict(db.execute("SELECT key, trainings FROM runs"))


def _key_of(ws, checkpoint) -> str:
    with sqlite3.connect(ws / "mixopt.db") as db:
        return db.execute("SELECT key FROM runs WHERE checkpoint=?", (f"checkpoints/{checkpoint.name}",)).fetchone()[0]


def test_check_finds_a_flipped_byte_and_repair_gets_it_retrained(swept, tmp_path):
    config, ws = _copy(swept, tmp_path)
    assert mixopt("check", config).returncode == 0
    ckpts = sorted((ws / "checkpoints").glob("*.safetensors"))
    victim, truncated = ckpts[0], ckpts[1]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the sha256 tells
    victim.write_bytes(bytes(data))
    bad = _key_of(ws, victim)

    r = mixopt("check", config, "--format", "json")
    report = json.loads(r.stdout)
    assert r.returncode == 1 and report["database"] == "ok" and report["checked"] == len(ckpts)
    assert [p["key"] for p in report["problems"]] == [bad] and "sha256" in report["problems"][0]["problem"]
    r = mixopt("check", config)
    assert r.returncode == 1 and bad[:12] in r.stdout and "--repair" in r.stdout

    r = mixopt("check", config, "--repair")
    assert r.returncode == 0 and bad[:12] in r.stdout
    with sqlite3.connect(ws / "mixopt.db") as db:
        assert db.execute("SELECT status FROM runs WHERE key=?", (bad,)).fetchone() == ("planned",)
        assert db.execute("SELECT COUNT(*) FROM measurements WHERE run_key=?", (bad,)).fetchone()[0] > 0  # kept

    # Truncate another checkpoint: a plain sweep notices (size) and retrains it, without `check`.
    cut = _key_of(ws, truncated)
    truncated.write_bytes(truncated.read_bytes()[:1000])
    r = mixopt("sweep", config, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "2 trained" in r.stdout and f"run {cut[:12]}: checkpoint is 1000 bytes" in r.stdout
    assert _trainings(ws) == {k: 2 if k in (bad, cut) else 1 for k in _trainings(ws)}
    assert mixopt("check", config).returncode == 0


def test_copied_workspace_evaluates_a_new_task_and_deletes_nothing(swept, tmp_path):
    cfg, _ = swept
    target = tmp_path / "extra.txt"
    target.write_text(" ".join(["the quick brown fox jumps over the lazy dog"] * 200))
    suite = {"evaluations": [{"name": "heldout/prose", "kind": "heldout", "domain": "prose", "weight": 1.0},
                             {"name": "extra", "kind": "text", "sources": [str(target)], "weight": 0.0}]}
    config, ws = _copy(swept, tmp_path, evals=suite)
    cfg_doc = yaml.safe_load(config.read_text())
    cfg_doc["fit"].pop("objective")  # the suite's weights say what is minimized
    config.write_text(yaml.safe_dump(cfg_doc))
    with sqlite3.connect(ws / "mixopt.db") as db:
        before = db.execute("SELECT COUNT(*) FROM measurements").fetchone()[0]
        runs = db.execute("SELECT COUNT(*) FROM runs WHERE status='done'").fetchone()[0]
    r = mixopt("eval", config, "--no-progress")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"evaluated {runs} checkpoints" in r.stdout and "suspect" not in r.stdout + r.stderr
    with sqlite3.connect(ws / "mixopt.db") as db:
        assert db.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall() == [("done", runs)]
        assert db.execute("SELECT COUNT(*) FROM measurements").fetchone()[0] > before
    assert _trainings(ws) == {k: 1 for k in _trainings(ws)}


def test_missing_checkpoint_is_suspect_fit_and_eval_exit_1_keeping_results(swept, tmp_path):
    config, ws = _copy(swept, tmp_path)
    victim = sorted((ws / "checkpoints").glob("*.safetensors"))[0]
    key = _key_of(ws, victim)
    victim.unlink()
    with sqlite3.connect(ws / "mixopt.db") as db:  # lacking a measurement, eval must load the checkpoint
        db.execute("DELETE FROM measurements WHERE run_key=:k AND eval=(SELECT MIN(eval) FROM measurements "
                   "WHERE run_key=:k)", {"k": key})
        kept = db.execute("SELECT COUNT(*) FROM measurements WHERE run_key=?", (key,)).fetchone()[0]
    r = mixopt("eval", config, "--no-progress")
    assert r.returncode == 1 and "1 runs left out as suspect" in r.stderr and key[:12] in r.stderr
    r = mixopt("fit", config, "--format", "json", "--no-plots")
    fit = json.loads(r.stdout)
    assert r.returncode == 1 and fit["suspect_runs"] == [key] and fit["runs"] == len(_trainings(ws)) - 1
    with sqlite3.connect(ws / "mixopt.db") as db:
        assert db.execute("SELECT status FROM runs WHERE key=?", (key,)).fetchone() == ("suspect",)
        assert db.execute("SELECT COUNT(*) FROM measurements WHERE run_key=?", (key,)).fetchone()[0] == kept
    st = json.loads(mixopt("status", config, "--format", "json").stdout)
    assert st["design"]["suspect"] == 1 and st["runs"]["suspect"] == 1


def test_status_of_a_read_only_workspace(swept, tmp_path, monkeypatch):
    """As root, chmod does not stop writes: pretend the folder is read-only (a read-only mount)."""
    config, ws = _copy(swept, tmp_path)
    monkeypatch.setattr(store_module, "read_only", lambda path: True)
    real_access = store_module.os.access  # the workspace is read-only, the config's folder is not
    monkeypatch.setattr(store_module.os, "access",
                        lambda path, mode: real_access(path, mode) and not Path(path).resolve().is_relative_to(ws.resolve()))  # -> opened immutable
    files = sorted(p.name for p in ws.iterdir())
    st = experiment_status(load_experiment(config))
    assert st["design"]["done"] == st["design"]["planned"] > 0 and st["trainings"] == st["design"]["planned"]
    assert sorted(p.name for p in ws.iterdir()) == files


def test_fit_on_a_read_only_workspace_writes_nothing_there(swept, tmp_path, monkeypatch):
    """A read-only mount (pretended, as in the status test): fit computes the recommendation from the
    stored measurements, writes optimal.yaml next to the config and nothing in the workspace."""
    from mixopt.config.runtime import Runtime
    from mixopt.fit.from_store import recommend_mixture

    config, ws = _copy(swept, tmp_path)
    monkeypatch.setattr(store_module, "read_only", lambda path: True)
    real_access = store_module.os.access  # the workspace is read-only, the config's folder is not
    monkeypatch.setattr(store_module.os, "access",
                        lambda path, mode: real_access(path, mode) and not Path(path).resolve().is_relative_to(ws.resolve()))
    before = {p: p.stat().st_mtime_ns for p in ws.rglob("*")}
    said = []
    exp = load_experiment(config)
    rec = recommend_mixture(exp, Runtime(say=said.append), plots=False)
    assert abs(rec.weights.sum() - 1) < 1e-9 and rec.runs > 0
    assert exp.optimal_path.is_file()
    assert {p: p.stat().st_mtime_ns for p in ws.rglob("*")} == before  # not one file added or touched
    assert any("read-only" in m and "not written" in m for m in said)
