"""End to end through the CLI: sample -> sweep -> fit on real text; kill -9 mid-sweep and resume."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import yaml
from conftest import mixopt, sample_as_version_1

from mixopt.config.load import load_experiment
from mixopt.config.runtime import Runtime
from mixopt.sweep import run as sweep_module
from mixopt.sweep.run import run_sweep


def _count_training(monkeypatch):
    calls = []
    real = sweep_module.train_task

    def counting(task, progress=None):
        calls.extend(r.key for r in task.runs)  # every run of a batch, not only the first
        return real(task, progress)

    monkeypatch.setattr(sweep_module, "train_task", counting)
    return calls


@pytest.mark.slow
def test_sample_sweep_fit_end_to_end(make_config, tmp_path, monkeypatch):
    cfg = make_config()
    sample_as_version_1(cfg)  # the CV figure below is version 1's draw's (conftest); the CLI keeps it
    out = mixopt("sample", cfg).stdout
    assert "code" in out and "prior" in out
    sweep = mixopt("sweep", cfg, "--workers", "2", "--no-progress").stdout
    assert "12 runs planned: 0 already done, 0 adopted, 12 trained, 0 failed" in sweep
    fit = json.loads(mixopt("fit", cfg, "--format", "json").stdout)
    w = fit["weights"]
    assert list(w) == ["code", "prose", "legal"] and abs(sum(w.values()) - 1) < 1e-9
    assert max(w.values()) < 0.99  # not a single vertex
    assert fit["cv"]["spearman"] > 0.5  # the fit ranks held-out runs (0.85 when this was written)
    assert fit["runs"] == 12 and fit["predicted"] > 0
    assert fit["objective"] == "heldout/prose/bpb"
    written = yaml.safe_load((tmp_path / "small.optimal.yaml").read_text())
    assert written["weights"] == {k: round(v, 6) for k, v in w.items()}
    status = json.loads(mixopt("status", cfg, "--format", "json").stdout)
    assert status["design"] == {"planned": 12, "done": 12, "failed": 0, "suspect": 0, "pending": 0}
    assert status["trainings"] == 12 and status["current_suite"]["runs_lacking"] == 0
    assert {k: v["runs_scored"] for k, v in status["suites"].items()} == {status["suite"]: 12}
    assert "12 already done" in mixopt("sweep", cfg, "--no-progress").stdout  # rerun trains nothing

    # A driver that dies after a worker saved its checkpoint, before recording it: adopt, don't retrain.
    os.remove(tmp_path / "ws" / "mixopt.db")
    calls = _count_training(monkeypatch)
    report = run_sweep(load_experiment(cfg), Runtime())
    assert calls == [] and report.adopted == 12


@pytest.mark.slow
def test_kill_mid_sweep_then_resume_retrains_nothing_finished(make_config, tmp_path, monkeypatch):
    cfg = make_config()
    mixopt("sample", cfg)
    proc = subprocess.Popen([sys.executable, "-m", "mixopt.cli", "sweep", str(cfg), "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = tmp_path / "ws" / "mixopt.db"
    deadline = time.time() + 300
    done = 0
    while time.time() < deadline and done < 3:
        time.sleep(0.2)
        if db.exists():
            try:
                with sqlite3.connect(db, timeout=1) as c:
                    done = c.execute("SELECT COUNT(*) FROM runs WHERE status='done'").fetchone()[0]
            except sqlite3.OperationalError:
                pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 3 <= done < 12, "the sweep should be killed part-way"
    with sqlite3.connect(db) as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        before = dict(c.execute("SELECT key, finished FROM runs WHERE status='done'").fetchall())
    calls = _count_training(monkeypatch)
    report = run_sweep(load_experiment(cfg), Runtime())
    assert not set(calls) & set(before)  # nothing finished is trained again
    assert report.already_done + report.adopted >= len(before)
    assert len(calls) == 12 - report.already_done - report.adopted and not report.failed
    with sqlite3.connect(db) as c:
        after = dict(c.execute("SELECT key, finished FROM runs WHERE status='done'").fetchall())
    assert len(after) == 12 and all(after[k] == v for k, v in before.items())
