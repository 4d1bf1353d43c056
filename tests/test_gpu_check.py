"""`make gpu-check` (bench/gpu_check.sh -> bench/gpu_check.py) rehearsed on the CPU: the same steps
as on a GPU, small, each writing its figures as it goes, under one deadline, ending in a one-screen
summary. A GPU is lent to few sessions for 15 minutes: this is how we know the check runs there."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"


def _check(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), "--out", str(out), *args], capture_output=True, text=True,
                          timeout=900, env={**os.environ, "PYTHON": sys.executable})


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU `make gpu-check` runs the real thing")
def test_rehearsal_runs_every_step_and_writes_every_figure(tmp_path):
    r = _check(tmp_path, "--rehearse")
    assert r.returncode == 0, r.stdout + r.stderr
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert result["rehearsal"] is True and list(result["steps"]) == ["env", "tests", "trainer", "sweep", "ray", "fidelity"]
    assert {name: s["status"] for name, s in result["steps"].items()} == dict.fromkeys(result["steps"], "ok")
    assert result["env_figures"]["missing"] == [] and result["env_figures"]["cuda_available"] is False
    assert result["tests"]["tests"] >= 7 and result["tests"]["failures"] == result["tests"]["errors"] == 0
    tiny = result["trainer_figures"]["sizes"]["tiny"]
    assert tiny["one_loop_n1"]["tokens_per_s"] > 0 and tiny["one_loop_n2"]["tokens_per_s"] > 0
    sweep = result["sweep_figures"]
    assert sweep["runs"] == sweep["trained"] == 8 and sweep["failed"] == 0
    # The suite gained one evaluation after the sweep: every run evaluated on it, none retrained.
    assert sweep["reeval"]["evaluated"] == 8 and sweep["reeval"]["evaluations"] == 8 and not sweep["reeval"]["failed"]
    # the fidelity step, small: both arms at tiny/1m, verified at 1m with 2 paired seeds, its JSON in the folder
    fid = result["fidelity_figures"]
    assert fid == json.loads((tmp_path / "fidelity.json").read_text()) and fid["sizes"] == ["tiny", "1m"]
    assert fid["device"] == "cpu" and fid["rehearse"] is True and fid["partial"] is None
    rec = fid["results"][0]
    d = rec["multi_minus_single"]
    assert len(d["per_seed"]) == 2 and d["interval"][0] <= d["mean"] <= d["interval"][1]
    assert set(rec["arms"]["multi"]["by_size"]) == {"tiny", "1m"} and rec["arms"]["single"]["flops"] > 0
    summary = (tmp_path / "summary.txt").read_text().splitlines()
    assert "  fidelity (python set, tiny swarm, 1m verify, on cpu):" in summary
    assert any(line.startswith(f"    at 1m: single {rec['verified']['single']['mean']:.4f}, multi ") and
               f"multi - single {d['mean']:+.4f} (90% {d['interval'][0]:+.4f} .. {d['interval'][1]:+.4f})" in line
               for line in summary)
    assert any(line.startswith("    compute: single ") and " FLOPs " in line and "multi " in line for line in summary)
    assert len(summary) <= 40 and summary == r.stdout.splitlines()[-len(summary):]
    assert any(line.startswith("  trainer tiny: one at a time ") for line in summary)
    assert any(line.startswith("  sweep: 8/8 trained, 0 failed") for line in summary)
    for step in result["steps"]:  # every step's log kept next to the JSON
        assert (tmp_path / f"{step}.log").is_file()


def test_a_spent_deadline_skips_steps_and_still_writes_the_json(tmp_path):
    """No step starts with under 15 s left; gpu.json and summary.txt say which were skipped and why."""
    r = _check(tmp_path, "--rehearse", "--deadline", "5")
    assert r.returncode == 0, r.stdout + r.stderr
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert all(s["status"] == "skipped" and s["why"].startswith("deadline:") for s in result["steps"].values())
    assert "env      skipped" in (tmp_path / "summary.txt").read_text()


def test_a_fidelity_step_cut_short_shows_the_stage_it_reached(tmp_path):
    """The fidelity step's JSON after its first arm only (the deadline killed it there): the summary
    shows that arm's compute and says it was not verified; with nothing yet, no lines."""
    gpu_check = _gpu_check()
    arm = {"flops": 1.5e14, "device_seconds": 41.0, "weights": {}}
    partial = {"set": "python", "stage": "multi fitted", "arms": {"multi": arm},
               "cross_scale": [{"size": "30m", "mixtures": 3, "shared": 3, "spearman_predicted": 0.5,
                                "spearman_measured": 1.0}]}
    lines = gpu_check.fidelity_lines({"sizes": ["5m", "30m"], "device": "cuda (NVIDIA H100 80GB HBM3)",
                                      "results": [], "partial": partial})
    assert lines == ["  fidelity (python set, 5m swarm, 30m verify, on cuda (NVIDIA H100 80GB HBM3)):",
                     "    cut after 'multi fitted' (not verified); cross-scale Spearman 0.50 predicted / 1.00 measured "
                     "(3 mixtures at both sizes)",
                     "    compute: multi 1.50e+14 FLOPs 41 device-s"]
    assert gpu_check.fidelity_lines({}) == []
    text = gpu_check.summary({"deadline_s": 480, "seconds": 470, "steps": {"fidelity": {"status": "timeout", "seconds": 90}},
                              "fidelity_figures": {"sizes": ["5m", "30m"], "results": [], "partial": partial}})
    assert "fidelity timeout" in text and "cut after 'multi fitted'" in text


def test_the_fidelity_step_runs_only_with_a_minute_left(tmp_path):
    """Last and lowest priority: with under MIN_S['fidelity'] seconds left it is skipped, not started."""
    gpu_check = _gpu_check()
    assert list(gpu_check.CAPS)[-1] == "fidelity"
    assert gpu_check.step_cap("fidelity", 59, small=False) is None  # a minute or less: not started
    assert gpu_check.step_cap("ray", 59, small=False) == 59  # the other steps start with 15 s
    assert gpu_check.step_cap("fidelity", 200, small=False) == 200  # what the deadline leaves
    assert gpu_check.step_cap("fidelity", 1000, small=False) == gpu_check.CAPS["fidelity"]  # its own cap


def _gpu_check():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return gpu_check


def test_a_step_past_its_time_is_killed_and_the_rest_still_run(tmp_path, monkeypatch):
    """A hung step (here: the env probe replaced by one that never ends) is killed with its process
    group at its cap; its log tail is kept, and the following steps still run."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "bench"))
    marker = tmp_path / "started"
    row = gpu_check._step("hang", [sys.executable, "-c", f"import pathlib, time; pathlib.Path({str(marker)!r}).touch(); "
                                                        "print('about to hang', flush=True); time.sleep(3600)"],
                          cap=5, env=dict(os.environ), out=tmp_path)
    assert row["status"] == "timeout" and row["exit_code"] is None
    if marker.exists():  # the child got as far as printing (on any but a stalled machine)
        assert row["log_tail"] == ["about to hang"]
    text = gpu_check.summary({"deadline_s": 480, "seconds": 5, "steps": {"hang": row}})
    assert "hang     timeout" in text


def test_the_benches_cli_helper_keeps_the_callers_pythonpath(monkeypatch):
    """bench/fidelity.py's CLI calls (calibration.mixopt) put the worktree first and keep the caller's
    PYTHONPATH: on a lent GPU machine it holds the wheels gpu_check.sh installed, without which the
    CLI cannot import pydantic (the fidelity step would fail on its first command)."""
    from types import SimpleNamespace

    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import calibration
    finally:
        sys.path.remove(str(ROOT / "bench"))
    monkeypatch.setenv("PYTHONPATH", "/tmp/mixopt-gpu-site")
    seen = {}
    monkeypatch.setattr(calibration.subprocess, "run",
                        lambda cmd, **kw: seen.update(kw, cmd=cmd) or SimpleNamespace(returncode=0, stdout="{}"))
    assert calibration.mixopt("status", "x.yaml", json_out=True) == {}
    assert seen["env"]["PYTHONPATH"].split(os.pathsep) == [str(ROOT), "/tmp/mixopt-gpu-site"]
    assert seen["cmd"][1:] == ["-m", "mixopt.cli", "status", "x.yaml"]
