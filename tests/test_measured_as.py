"""Where and how a run trained (device type, precision) in its run key: CPU float32 keys as before,
other settings keyed apart, recorded in the store, and a fit or status that mixes them says so."""

import json
import sqlite3
import pytest

from mixopt.config.runtime import Runtime
from mixopt.core.keys import measurement_of, run_key
from mixopt.sweep.plan import mixed_measurements
from mixopt.sweep.store import Run
from mixopt.sweep.work import MeasurementMismatch, TrainRun, TrainTask, planned_measurement, train_task

from conftest import mixopt, small_config, write_config

SLICES = ["aa" * 32, "bb" * 32, "cc" * 32]
BF16 = "cuda/bf16-autocast"


def test_cpu_fp32_keys_are_unchanged_and_bf16_keys_differ():
    # Golden keys computed on main at 7d037ee (before precision was part of run keys) with
    # mixopt.core.keys.run_key('c0ffee', SLICES, [0.25, 0.0, 0.75]) and replicate=2: every existing
    # workspace's runs (all trained on a CPU in float32, or keyed as if) must keep them.
    old = "31265932baa00060904ac0b1ce286c0ae560e5c3016726169c16accb4d9aff90"
    old_rep2 = "9c8633e82c544e396794fafc4632e30e07d0c28803358c22ddc66dd7bfe9ff9d"
    cpu = measurement_of("cpu", "fp32")
    assert cpu == ""
    assert run_key("c0ffee", SLICES, [0.25, 0.0, 0.75], measured_as=cpu) == old
    assert run_key("c0ffee", SLICES, [0.25, 0.0, 0.75], 2, cpu) == old_rep2
    bf16 = measurement_of("cuda", "bf16-autocast")
    assert bf16 == BF16
    keys = {old, old_rep2, run_key("c0ffee", SLICES, [0.25, 0.0, 0.75], measured_as=bf16),
            run_key("c0ffee", SLICES, [0.25, 0.0, 0.75], 2, bf16),
            run_key("c0ffee", SLICES, [0.25, 0.0, 0.75], measured_as=measurement_of("cuda", "fp32"))}
    assert len(keys) == 5  # GPU fp32 is a device of its own too


def test_cpu_sweep_plans_cpu_keys_and_a_worker_refuses_other_keys(tmp_path):
    assert planned_measurement(Runtime(device="cpu")) == ""
    assert planned_measurement(Runtime(backend="ray", device="auto"), gpus=0) == ""  # CPU tasks
    assert planned_measurement(Runtime(backend="ray", device="auto"), gpus=1) == BF16  # checked on the worker
    import torch

    if not torch.cuda.is_available():
        assert planned_measurement(Runtime()) == ""
    from mixopt.proxy.model import proxy_spec

    task = TrainTask(runs=(TrainRun("k", (1.0,), str(tmp_path / "k.safetensors")),), domains=("a",), seed=0,
                     spec=proxy_spec(replace_size("tiny"), 64), sample_dir=str(tmp_path), device="cpu",
                     measured_as=BF16)
    with pytest.raises(MeasurementMismatch, match="keys say they train as cuda/bf16-autocast, but this worker "
                                                  "would train as cpu/fp32 on cpu"):
        train_task(task)
    assert not list(tmp_path.iterdir())  # refused before anything was written


def replace_size(size):
    from mixopt.config.schema import Proxy

    return Proxy(size=size, tokens=4096, seq_len=32, batch_size=4)


def _run(key, measured_as):
    return Run(key, "c", "prior", (1.0,), ("a",), "done", None, None, None, None, None, None, None, None, 0.0, None,
               1, None, None, None, None, 0, None, measured_as=measured_as)


def test_mixed_measurements_line_names_the_counts():
    assert mixed_measurements([_run("a", None), _run("b", None)]) == ""
    line = mixed_measurements([_run("a", None), _run("b", BF16), _run("c", None)])
    assert line.startswith("warning: these runs trained on different devices or precisions "
                           "(2 cpu/fp32, 1 cuda/bf16-autocast)")


@pytest.mark.slow
def test_fit_warns_and_status_counts_when_runs_mix_precisions(corpora, tmp_path):
    """Two of a CPU sweep's runs re-recorded as a GPU sweep records them (their bf16 key and measured_as,
    as a GPU worker's results would be): `fit` fits all of them, warns in one line with the counts and
    exits 0; `status` shows the counts per precision."""
    cfg = write_config(tmp_path / "c.yaml", small_config(corpora, tmp_path / "ws", design__runs=2,
                                                         proxy__tokens=8000, sample__train_tokens=10000))
    assert mixopt("sample", cfg, check=False).returncode == 0
    r = mixopt("sweep", cfg, "--no-progress", "--device", "cpu", check=False)
    assert r.returncode == 0, r.stderr
    db = sqlite3.connect(tmp_path / "ws" / "mixopt.db")
    rows = db.execute("SELECT key, context, slices, weights, replicate, measured_as FROM runs "
                      "WHERE status='done' ORDER BY key").fetchall()
    assert len(rows) >= 5 and all(m is None for *_, m in rows)  # a CPU sweep records no measured_as
    for key, context, slices, weights, rep, _ in rows[:2]:
        new = run_key(context, json.loads(slices), json.loads(weights), rep, BF16)
        db.execute("UPDATE runs SET key=?, measured_as=? WHERE key=?", (new, BF16, key))
        for table in ("measurements", "scores"):
            db.execute(f"UPDATE {table} SET run_key=? WHERE run_key=?", (new, key))
    db.commit()
    db.close()
    fit = mixopt("fit", cfg, "--no-plots", check=False)
    assert fit.returncode == 0, fit.stderr
    warn = [x for x in (fit.stdout + fit.stderr).splitlines() if "different devices or precisions" in x]
    assert warn == [f"warning: these runs trained on different devices or precisions ({len(rows) - 2} cpu/fp32, "
                    f"2 {BF16}), which changes their numbers: fitted together as they are; for one kind, sweep on one "
                    "device (`mixopt sweep CONFIG --device ...`)"]
    st = mixopt("status", cfg, check=False)
    assert st.returncode == 0, st.stderr
    assert f"trained as: {len(rows) - 2} cpu/fp32, 2 {BF16} (device and precision change the numbers" in st.stdout
    js = json.loads(mixopt("status", cfg, "--format", "json", check=False).stdout)
    assert js["precisions"] == {"cpu/fp32": len(rows) - 2, BF16: 2}
    # A CPU sweep again: the bf16 runs are not its runs (other keys), so it trains those two mixtures on the CPU.
    again = mixopt("sweep", cfg, "--no-progress", "--device", "cpu", check=False)
    assert again.returncode == 0, again.stderr
    with sqlite3.connect(tmp_path / "ws" / "mixopt.db") as db:
        cpu = db.execute("SELECT COUNT(*) FROM runs WHERE status='done' AND measured_as IS NULL").fetchone()[0]
        assert cpu == len(rows)
        assert db.execute("SELECT COUNT(*) FROM runs WHERE measured_as=?", (BF16,)).fetchone()[0] == 2
