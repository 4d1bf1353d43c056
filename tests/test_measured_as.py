"""Where and how a run trained (device type, precision) in its run key: CPU float32 keys as before,
other settings keyed apart, recorded in the store, and a fit or status that mixes them says so."""

import json
import shutil
import sqlite3
import pytest

from mixopt.config.runtime import Runtime
from mixopt.core.keys import measurement_of, run_key
from mixopt.sweep.plan import mixed_measurements
from mixopt.sweep.store import Run
from mixopt.sweep.work import MeasurementMismatch, TrainRun, TrainTask, planned_measurement, train_task

from conftest import mixopt, small_config, store_at_version, write_config

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
    with sqlite3.connect(tmp_path / "ws" / "mixopt.db") as db:
        rows = db.execute("SELECT key, measured_as FROM runs WHERE status='done'").fetchall()
    assert len(rows) >= 5 and all(m is None for _, m in rows)  # a CPU sweep records no measured_as
    _record_as(tmp_path / "ws", BF16, 2)
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
    assert (f"note: 2 runs of this design finished as {BF16}; this plan trains at cpu/fp32 (pass --device cuda "
            "--precision bf16 to use them)") in again.stdout.splitlines(), again.stdout
    with sqlite3.connect(tmp_path / "ws" / "mixopt.db") as db:
        cpu = db.execute("SELECT COUNT(*) FROM runs WHERE status='done' AND measured_as IS NULL").fetchone()[0]
        assert cpu == len(rows)
        assert db.execute("SELECT COUNT(*) FROM runs WHERE measured_as=?", (BF16,)).fetchone()[0] == 2


@pytest.fixture(scope="module")
def cpu_swept(corpora, tmp_path_factory):
    """A sampled and swept tiny workspace (7 runs on the CPU in float32); tests change copies of it."""
    root = tmp_path_factory.mktemp("cpu_swept")
    cfg = small_config(corpora, root / "ws", design__runs=2, proxy__tokens=8000, sample__train_tokens=10000)
    config = write_config(root / "c.yaml", cfg)
    mixopt("sample", config)
    mixopt("sweep", config, "--no-progress", "--device", "cpu")
    return cfg, root / "ws"


def _copy(swept, tmp_path):
    cfg, ws = swept
    shutil.copytree(ws, tmp_path / "copy", symlinks=True)
    return write_config(tmp_path / "copy.yaml", {**cfg, "workspace": str(tmp_path / "copy")}), tmp_path / "copy"


def _record_as(ws, measured_as: str, count: int | None = None) -> int:
    """Re-record `count` (None: all) of the workspace's finished runs as a GPU sweep records them: the
    key they would have trained under `measured_as`, and that measured_as; returns how many."""
    db = sqlite3.connect(ws / "mixopt.db")
    rows = db.execute("SELECT key, context, slices, weights, replicate FROM runs WHERE status='done' "
                      "ORDER BY key").fetchall()[:count]
    for key, context, slices, weights, rep in rows:
        new = run_key(context, json.loads(slices), json.loads(weights), rep, measured_as)
        db.execute("UPDATE runs SET key=?, measured_as=? WHERE key=?", (new, measured_as or None, key))
        db.execute("UPDATE measurements SET run_key=?, measured_as=? WHERE run_key=?", (new, measured_as or None, key))
        db.execute("UPDATE scores SET run_key=? WHERE run_key=?", (new, key))
    db.commit()
    db.close()
    return len(rows)


def test_status_counts_runs_done_at_the_precision_they_trained(cpu_swept, tmp_path):
    """A design trained on a GPU (its runs keyed and recorded as cuda/bf16-autocast) is done in `status`,
    not pending, with the count per precision; a mixed one too; the next CPU sweep still trains the
    GPU-keyed mixtures again (its own keys), as `sweep --dry-run --device cpu` says."""
    cfg, ws = _copy(cpu_swept, tmp_path)
    n = _record_as(ws, BF16)
    st = json.loads(mixopt("status", cfg, "--format", "json").stdout)
    assert st["design"] == {"planned": n, "done": n, "failed": 0, "suspect": 0, "pending": 0}
    assert st["design_done_as"] == {BF16: n}
    assert st["cost"]["to_train"] == 0
    out = mixopt("status", cfg).stdout
    assert f"runs in this design: {n} planned, {n} done ({n} {BF16}), 0 failed, 0 suspect, 0 pending" in out
    assert "to train: 0 runs" in out
    dry = json.loads(mixopt("sweep", cfg, "--dry-run", "--device", "cpu", "--format", "json").stdout)
    assert dry["design"]["pending"] == n and dry["cost"]["to_train"] == n  # a CPU sweep keys its runs apart

    _record_as(ws, "", 2)  # two of them back to the CPU's keys: a design done half one way, half the other
    st = json.loads(mixopt("status", cfg, "--format", "json").stdout)
    assert st["design"]["done"] == n and st["design_done_as"] == {BF16: n - 2, "cpu/fp32": 2}
    assert f"{n} done ({n - 2} {BF16}, 2 cpu/fp32)" in mixopt("status", cfg).stdout


def test_dry_run_says_when_the_design_finished_under_another_precision(cpu_swept, tmp_path):
    """A design swept only with --precision bf16 on the CPU: `status` calls it done, and `sweep --dry-run` at
    the default (float32 on a CPU) plans it all again and says why, in one line naming the flag that finds
    those runs; with that flag, nothing to train and no such line."""
    cfg, ws = _copy(cpu_swept, tmp_path)
    n = _record_as(ws, "cpu/bf16-autocast")  # as `sweep --device cpu --precision bf16` records them
    assert json.loads(mixopt("status", cfg, "--format", "json").stdout)["design"]["pending"] == 0
    dry = mixopt("sweep", cfg, "--dry-run", "--device", "cpu").stdout.splitlines()
    assert f"to train: {n} runs" in "\n".join(dry)
    notes = [x for x in dry if x.startswith("note: ")]
    assert notes == [f"note: {n} runs of this design finished as cpu/bf16-autocast; this plan trains at cpu/fp32 "
                     "(pass --precision bf16 to use them)"], dry
    js = json.loads(mixopt("sweep", cfg, "--dry-run", "--device", "cpu", "--format", "json").stdout)
    assert js["done_other_ways"] == {"cpu/bf16-autocast": n} and js["cost"]["to_train"] == n
    bf16 = mixopt("sweep", cfg, "--dry-run", "--device", "cpu", "--precision", "bf16").stdout
    assert "note: " not in bf16 and "to train: 0 runs" in bf16, bf16
    assert "done_other_ways" not in json.loads(mixopt("status", cfg, "--format", "json").stdout)  # status: done


def test_other_ways_note_names_each_way_and_the_flags_of_the_most_common():
    from mixopt.sweep.plan import other_ways_note

    assert other_ways_note({}, "") == ""
    assert other_ways_note({BF16: 4, "cpu/fp32": 2}, "cpu/bf16-autocast") == (
        f"note: 4 runs of this design finished as {BF16}, 2 as cpu/fp32; this plan trains at cpu/bf16-autocast "
        f"(pass --device cuda --precision bf16 to use the {BF16} ones)")
    assert other_ways_note({"cpu/fp32": 3}, BF16) == ("note: 3 runs of this design finished as cpu/fp32; this plan "
                                                      f"trains at {BF16} (pass --device cpu --precision fp32 to use them)")


def test_interrupted_line_counts_runs_as_the_command_keys_them(cpu_swept, tmp_path, monkeypatch, capsys):
    """Ctrl-C of a GPU sweep (its runs keyed cuda/bf16-autocast): the line counts them as finished,
    as its own sweep keys them; of a command that does not train (eval), done however they trained."""
    import typer

    from mixopt import cli
    from mixopt.config.load import load_experiment
    from mixopt.sweep import run as sweep_run

    cfg, ws = _copy(cpu_swept, tmp_path)
    n = _record_as(ws, BF16)
    exp = load_experiment(cfg)
    monkeypatch.setattr(sweep_run, "sweep_measurement", lambda exp, runtime: BF16)  # what a GPU machine plans
    for runtime in (Runtime(device="cuda"), None):
        with pytest.raises(typer.Exit) as e, cli._interrupted(exp, "sweep", cfg, runtime=runtime):
            raise KeyboardInterrupt
        assert e.value.exit_code == 130
        err = capsys.readouterr().err
        assert err.startswith(f"interrupted: {n} of {n} runs of this design are finished ({n} {BF16}) and kept in "
                              f"{ws}; 0 pending"), err
    monkeypatch.setattr(sweep_run, "sweep_measurement", lambda exp, runtime: "")  # a CPU sweep: its keys are not done
    with pytest.raises(typer.Exit), cli._interrupted(exp, "sweep", cfg, runtime=Runtime(device="cpu")):
        raise KeyboardInterrupt
    assert capsys.readouterr().err.startswith(f"interrupted: 0 of {n} runs of this design are finished and kept in "
                                              f"{ws}; {n} pending")


def test_precision_setting_keys_and_refusals(monkeypatch):
    """--precision fp32 on the CPU is today's setting (the golden keys stay); bf16 on the CPU is keyed
    as such; auto never picks an emulated bf16 and an explicit bf16 on such a GPU is one line."""
    import torch

    from mixopt.errors import MixoptError
    from mixopt.proxy import train

    for precision in ("auto", "fp32"):
        assert planned_measurement(Runtime(device="cpu", precision=precision)) == ""  # the golden keys above
        assert planned_measurement(Runtime(backend="ray", precision=precision), gpus=0) == ""
    assert planned_measurement(Runtime(device="cpu", precision="bf16")) == "cpu/bf16-autocast"
    assert planned_measurement(Runtime(backend="ray", precision="bf16"), gpus=0) == "cpu/bf16-autocast"
    assert planned_measurement(Runtime(backend="ray", precision="fp32"), gpus=1) == "cuda/fp32"
    assert planned_measurement(Runtime(backend="ray", precision="bf16"), gpus=1) == BF16
    with pytest.raises(ValueError, match="precision 'fp16' is not one of auto, fp32, bf16"):
        Runtime(precision="fp16")
    # A V100: bf16 only by emulation
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla V100-SXM2-32GB")
    assert train.precision_name("cuda:0") == "fp32" and train.precision_name("cuda:0", "fp32") == "fp32"
    with pytest.raises(MixoptError) as e:
        train.precision_name("cuda:0", "bf16")
    assert e.value.problem == ("--precision bf16: Tesla V100-SXM2-32GB has no bf16 in hardware (compute capability "
                               "7.0 < 8.0): its bf16 is emulated, slower than its float32")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # an A100, H100
    assert [train.precision_name("cuda:0", p) for p in ("auto", "fp32", "bf16")] == ["bf16-autocast", "fp32",
                                                                                      "bf16-autocast"]


@pytest.mark.slow
def test_bf16_on_the_cpu_trains_in_bf16_and_keys_it(cpu_swept, tmp_path):
    """`sweep --device cpu --precision bf16` trains in bf16 autocast (other losses than float32's) under
    keys of their own, recorded as cpu/bf16-autocast; `--precision fp32` finds the CPU sweep's runs
    done (same keys); a precision that does not exist is one line, exit 2."""
    cfg, ws = _copy(cpu_swept, tmp_path)
    fp32 = json.loads(mixopt("sweep", cfg, "--dry-run", "--device", "cpu", "--precision", "fp32",
                             "--format", "json").stdout)
    assert fp32["cost"]["to_train"] == 0 and fp32["design"]["pending"] == 0
    bad = mixopt("sweep", cfg, "--precision", "fp16", check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and bad.stderr.startswith("error: ") \
        and "'fp16' is not one of 'auto', 'fp32', 'bf16'" in bad.stderr and "Traceback" not in bad.stderr
    mixtures = write_config(tmp_path / "one.yaml", {"mixtures": [{"code": 0.5, "prose": 0.3, "legal": 0.2}]})
    with sqlite3.connect(ws / "mixopt.db") as db:
        before = dict(db.execute("SELECT key, checkpoint FROM runs WHERE status='done'"))
    r = mixopt("sweep", cfg, "--device", "cpu", "--precision", "bf16", "--no-progress", "--mixtures", mixtures,
               "--format", "json")
    assert json.loads(r.stdout)["trained"] == len(before) + 1  # the design again, and the file's mixture
    with sqlite3.connect(ws / "mixopt.db") as db:
        rows = db.execute("SELECT key, context, slices, weights, replicate, checkpoint FROM runs "
                          "WHERE status='done' AND measured_as='cpu/bf16-autocast'").fetchall()
    assert len(rows) == len(before) + 1

    def curve(checkpoint):  # every step's loss, from the result left next to the run's checkpoint
        return json.loads((ws / checkpoint).with_suffix(".json").read_text())["losses"]

    differ = []
    for key, context, slices, weights, rep, ckpt in rows:
        assert key == run_key(context, json.loads(slices), json.loads(weights), rep, "cpu/bf16-autocast")
        cpu = run_key(context, json.loads(slices), json.loads(weights), rep, "")
        if cpu in before:  # the same mixture and seed, rounded in bf16: the loss curves differ (from the
            # first step, in the 5th-7th digit; a last step's loss may coincide to the bit, as one did once)
            a, b = curve(ckpt), curve(before[cpu])
            differ.append(len(a) == len(b) and a != b and abs(a[0] - b[0]) < 1e-2 * abs(b[0]))
    assert len(differ) == len(before) and all(differ), differ
    st = json.loads(mixopt("status", cfg, "--format", "json").stdout)
    assert st["precisions"] == {"cpu/bf16-autocast": len(before) + 1, "cpu/fp32": len(before)}
    # Each mixture's float32 and bf16 runs (one seed each) are not two seeds: no replicates, no noise floor
    # measured from their difference (it is the precision's), one fitted row per mixture and precision.
    assert st["replicates"] == []
    from mixopt.config.load import load_experiment
    from mixopt.fit.from_store import experiment_swarm
    from mixopt.fit.noise import collapse_replicates

    swarm = experiment_swarm(load_experiment(cfg), reeval=False)[1]
    collapsed = collapse_replicates(swarm, swarm.replicate)
    assert collapsed.noise is None and len(collapsed.swarm.keys) == len(swarm.keys) == 2 * len(before) + 1
    fit = mixopt("fit", cfg, "--no-plots", "--format", "json")
    assert json.loads(fit.stdout)["runs"] == 2 * len(before) + 1 and "different devices or precisions" in fit.stderr


def test_evaluation_is_measured_and_keyed_at_the_precision_the_run_trained(cpu_swept, tmp_path):
    """`mixopt eval` measures each run at the precision it trained under, records where and how, and a
    measure taken at another precision (a float32 run measured in bf16 on a GPU) is not the run's: it
    is lacking, measured again as the run trained, never mixed into a fit."""
    cfg, ws = _copy(cpu_swept, tmp_path)
    _record_as(ws, "cpu/bf16-autocast", 2)  # two runs as `sweep --device cpu --precision bf16` records them
    db = sqlite3.connect(ws / "mixopt.db")
    bf16_run, fp32_run = (db.execute(f"SELECT key FROM runs WHERE status='done' AND measured_as IS {m} ORDER BY key")
                          .fetchone()[0] for m in ("NOT NULL", "NULL"))
    was = {k: dict(((e, m), v) for e, m, v in db.execute("SELECT eval, metric, value FROM measurements "
                                                        "WHERE run_key=?", (k,))) for k in (bf16_run, fp32_run)}
    db.execute("DELETE FROM measurements WHERE run_key=?", (bf16_run,))  # a suite measure it lacks
    db.execute("UPDATE measurements SET measured_as='cuda/bf16-autocast' WHERE run_key=?", (fp32_run,))
    db.commit()
    st = json.loads(mixopt("status", cfg, "--format", "json").stdout)
    assert st["current_suite"]["runs_lacking"] == 2
    r = json.loads(mixopt("eval", cfg, "--device", "cpu", "--no-progress", "--format", "json").stdout)
    assert r["runs"] == 2 and not r["failed"]
    now = {k: {(e, m): (v, how) for e, m, v, how in db.execute("SELECT eval, metric, value, measured_as FROM "
                                                              "measurements WHERE run_key=?", (k,))}
           for k in (bf16_run, fp32_run)}
    db.close()
    assert set(now[fp32_run]) == set(was[fp32_run]) and set(now[bf16_run]) == set(was[bf16_run])
    for (e, m), (v, how) in now[fp32_run].items():  # measured again in float32, as it trained
        assert how is None and v == pytest.approx(was[fp32_run][(e, m)], rel=1e-5)
    diff = [abs(v - was[bf16_run][k]) / abs(was[bf16_run][k]) for k, (v, how) in now[bf16_run].items()
            if was[bf16_run][k]]
    assert all(how == "cpu/bf16-autocast" for _, how in now[bf16_run].values())
    assert max(diff) > 1e-6 and max(diff) < 0.05  # bf16 autocast: other numbers, close ones
    assert json.loads(mixopt("status", cfg, "--format", "json").stdout)["current_suite"]["runs_lacking"] == 0


def test_a_version_8_store_records_each_measurement_as_its_run_trained(tmp_path):
    from mixopt.sweep.store import VERSION, Store

    db = store_at_version(tmp_path, 8)
    for key, how in (("cpu", None), ("gpu", BF16)):
        db.execute("INSERT INTO runs (key, context, origin, weights, domains, status, created, measured_as) "
                   "VALUES (?, 'c', 'prior', '[1.0]', '[\"a\"]', 'done', 1.0, ?)", (key, how))
        db.execute("INSERT INTO measurements VALUES (?, 'e', 'loss', 2.5, 1.0)", (key,))
    db.commit()
    db.close()
    with Store(tmp_path / "mixopt.db") as s:
        assert s.db.execute("PRAGMA user_version").fetchone()[0] == VERSION == 11
        assert dict(s.db.execute("SELECT run_key, measured_as FROM measurements")) == {"cpu": None, "gpu": BF16}
        assert set(s.measurements(as_trained=True)) == {"cpu", "gpu"}
        s.record_measurements("gpu", {"e": {"loss": 2.6}}, "cuda/fp32")  # the bf16 run measured in float32
        s.record_measurements("cpu", {"e": {"loss": 2.4}}, "cuda/fp32")  # the float32 run on a GPU, in float32
        assert set(s.measurements(as_trained=True)) == {"cpu"} and set(s.measurements()) == {"cpu", "gpu"}


def test_export_shows_only_measures_taken_at_the_precision_the_run_trained(cpu_swept, tmp_path):
    """A float32 run's measure taken in bf16 (as a GPU's `eval` would before re-measuring it) is not its
    measure: `export` leaves that run's objective and metrics empty, as `fit` leaves it out, and shows
    every other run's."""
    cfg, ws = _copy(cpu_swept, tmp_path)
    with sqlite3.connect(ws / "mixopt.db") as db:
        keys = [k for (k,) in db.execute("SELECT key FROM runs WHERE status='done' ORDER BY key")]
        db.execute("UPDATE measurements SET measured_as=? WHERE run_key=?", (BF16, keys[0]))
    rows = {r["key"]: r for r in json.loads(mixopt("export", cfg, "--format", "json").stdout)}
    metrics = [c for c in rows[keys[0]] if "/" in c]
    assert metrics and rows[keys[0]]["objective"] is None and all(rows[keys[0]][c] is None for c in metrics)
    assert all(rows[k]["objective"] is not None and all(rows[k][c] is not None for c in metrics) for k in keys[1:])
    assert {r["trained_as"] for r in rows.values()} == {"cpu/fp32"}  # how each run trained, a column of its own


def test_verify_says_when_its_proxies_train_another_way_than_the_fit_runs(cpu_swept, tmp_path):
    """A fit of runs trained in bf16 verified with float32 proxies (verify's default on a CPU): one warning
    line naming both, and the verification still runs; verified as the runs trained, no warning."""
    cfg, ws = _copy(cpu_swept, tmp_path)
    _record_as(ws, "cpu/bf16-autocast")
    assert mixopt("fit", cfg, "--no-plots").returncode == 0
    r = mixopt("verify", cfg, "--no-progress")
    warn = [x for x in r.stderr.splitlines() if "verification proxies train as" in x]
    assert r.returncode == 0 and warn == [
        "warning: the fit's runs trained as cpu/bf16-autocast; these verification proxies train as cpu/fp32, which "
        "changes their numbers beyond the fit's error: pass the sweep's --device and --precision to verify like "
        "for like"], r.stderr
    again = mixopt("verify", cfg, "--no-progress", "--precision", "bf16")
    assert again.returncode == 0 and "verification proxies train as" not in again.stderr, again.stderr
