"""`make gpu-check`: everything a first GPU must show, in one run under a global deadline.

Steps, each a subprocess whose time limit is cut to what is left of the deadline:
  env      what this machine has: torch, CUDA, the device, which modules import (required vs optional)
  tests    the tests marked `gpu` (tests/test_gpu.py), their figures as JSON lines
  trainer  bench/trainer.py at two sizes: tokens/s and MFU, batched vs one at a time, peak memory
  sweep    bench/gpu_sweep.py: a 16-run sweep with --batch-proxies auto, then a re-evaluation with
           one more evaluation; peak memory vs mixopt's estimate
  ray      bench/ray_devices.py: what Ray tasks asking 0, 0.5 and 1 GPU see (skipped without ray)
  fidelity bench/fidelity.py --quick on the python set at 5m/30m: multi- vs single-fidelity at equal
           compute, verified at 30m; last and lowest priority, it gets only what the deadline leaves
After every step `gpu.json` is rewritten (atomically) in the output folder, with each step's exit
code, seconds, figures and the tail of its log when it failed; so a run cut short by the deadline
or by a lost machine keeps every figure measured so far. At the end `summary.txt` holds one screen.

Without a CUDA GPU it prints one line, writes a gpu.json that says "skipped" and exits 0 (CI runs
that path), unless --rehearse: then the same steps run small on the CPU (tests/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESERVE_S = 10  # seconds kept back from the deadline for the summary
# Each step's own cap (seconds) on a GPU; the deadline cuts it further. The first five add up to ~9
# minutes, more than the deadline, but each usually takes well under its cap; fidelity runs last on
# what is left (its cap only bounds it when the others were quick).
CAPS = {"env": 60, "tests": 120, "trainer": 150, "sweep": 150, "ray": 60, "fidelity": 300}
# Fewer seconds than this left: the step is skipped (fidelity's first figures, the multi arm's sweep
# and fit, take about a minute on a GPU: less would only kill it half-way).
MIN_S = {"fidelity": 60}
OPTIONAL = ("polars", "pyarrow", "datasets", "matplotlib", "lightgbm", "ray", "transformers")

ENV_PROBE = r"""
import importlib, json, sys
out = {"python": sys.version.split()[0]}
try:
    import torch
    out |= {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        out |= {"device": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count(),
                "memory_gib": round(p.total_memory / 2**30, 1), "capability": f"{p.major}.{p.minor}",
                }
        try:
            out["bf16_native"] = bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:  # torch < 2.3 has no including_emulation
            out["bf16_native"] = bool(torch.cuda.is_bf16_supported())
except Exception as e:
    out["torch_error"] = f"{type(e).__name__}: {e}"
missing, optional = [], []
for name in sys.argv[2].split(","):
    try:
        importlib.import_module(name)
    except Exception:
        missing.append(name)
for name in sys.argv[3].split(","):
    try:
        importlib.import_module(name)
    except Exception:
        optional.append(name)
out |= {"missing": missing, "missing_optional": optional}
json.dump(out, open(sys.argv[1], "w"), indent=2)
sys.exit(1 if missing or "torch_error" in out else 0)
"""
REQUIRED = ("torch", "numpy", "yaml", "pydantic", "typer", "scipy", "sklearn", "zstandard", "mixopt.cli", "pytest")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None,
                    help="output folder (default: $OUT, else $GPU_CHECK_OUT, else bench/results/gpu)")
    ap.add_argument("--deadline", type=float, default=480.0, help="seconds for everything (default 480)")
    ap.add_argument("--rehearse", action="store_true", help="no GPU needed: the same steps, small, on the CPU")
    args = ap.parse_args()
    out = args.out or Path(os.environ.get("OUT") or os.environ.get("GPU_CHECK_OUT") or ROOT / "bench/results/gpu")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    cuda, why = _cuda()
    if not cuda and not args.rehearse:
        line = f"gpu-check: skipped: no CUDA GPU visible ({why}); nothing was measured"
        print(line)
        _write_json(out / "gpu.json", {"skipped": True, "reason": f"no CUDA GPU visible ({why})"})
        (out / "summary.txt").write_text(line + "\n")
        return 0
    small = not cuda
    result = {"skipped": False, "rehearsal": small, "deadline_s": args.deadline, "steps": {}}
    work = Path(tempfile.mkdtemp(prefix="mixopt-gpu-check.", dir=os.environ.get("TMPDIR")))
    # Kept on exit (not deleted): a timeout or a crash leaves its logs and workspace for a look.
    result["work"] = str(work)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
               MIXOPT_GPU_RECORD=str(out / "tests.jsonl"))
    py = sys.executable
    trainer = (["--sizes", "tiny", "--steps", "3", "--repeats", "1", "--proxies", "2", "--compile-sizes", "none"]
               if small else ["--sizes", "1m,30m", "--steps", "10", "--repeats", "3", "--compile-sizes", "1m"])
    steps = {
        "env": [py, "-c", ENV_PROBE, str(out / "env.json"), ",".join(REQUIRED), ",".join(OPTIONAL)],
        "tests": [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "tests/test_gpu.py",
                  "--junitxml", str(out / "tests.xml")],
        "trainer": [py, "bench/trainer.py", *trainer, "--no-auto", "--out", str(out / "trainer.json")],
        "sweep": [py, "bench/gpu_sweep.py", "--work", str(work / "sweep"), "--out", str(out / "sweep.json"),
                  *(["--small"] if small else [])],
        "ray": [py, "bench/ray_devices.py", "--out", str(out / "ray.json")],
        # writes fidelity.json after each arm and again at the end, so a cut leaves the stages reached
        "fidelity": [py, "bench/fidelity.py", "--rehearse" if small else "--quick", "--sets", "python",
                     "--root", str(work / "fidelity"), "--out", str(out / "fidelity.json")],
    }
    if small:  # so the rehearsal stays short in CI: Ray's start alone takes ~10 s on 2 cores
        steps["ray"] = [py, "-c", "import ray"]
    print(f"gpu-check: {'rehearsal on the CPU' if small else _device_line(py)}; deadline {args.deadline:.0f} s; "
          f"writing {out}", flush=True)
    for name, cmd in steps.items():
        left = args.deadline - (time.monotonic() - t0) - RESERVE_S
        cap = step_cap(name, left, small)
        if cap is None:
            result["steps"][name] = {"status": "skipped", "why": f"deadline: {left:.0f} s left"}
        else:
            result["steps"][name] = _step(name, cmd, cap, env, out)
        result["seconds"] = round(time.monotonic() - t0, 1)
        _collect(result, out)
        _write_json(out / "gpu.json", result)
        s = result["steps"][name]
        print(f"gpu-check: {name}: {s['status']} ({s.get('seconds', 0)} s)", flush=True)
    text = summary(result)
    (out / "summary.txt").write_text(text)
    print(text, end="")
    return 0 if all(s["status"] in ("ok", "skipped") for s in result["steps"].values()) else 1


def step_cap(name: str, left: float, small: bool) -> float | None:
    """A step's time limit: its own cap (x3 in the CPU rehearsal), cut to what the deadline leaves;
    None (skipped) where that is under the step's minimum."""
    cap = min(CAPS[name] * (3 if small else 1), left)
    return None if cap < MIN_S.get(name, 15) else cap


def _cuda() -> tuple[bool, str]:
    try:
        import torch
    except Exception as e:  # noqa: BLE001 - any import failure means: no usable torch
        return False, f"torch not importable: {type(e).__name__}"
    if torch.cuda.is_available():
        return True, ""
    return False, f"torch {torch.__version__}, built with CUDA: {torch.version.cuda or 'no'}, GPUs seen: 0"


def _device_line(py: str) -> str:
    import torch

    return f"{torch.cuda.get_device_name(0)} | torch {torch.__version__} | CUDA {torch.version.cuda} | {py}"


def _step(name: str, cmd: list[str], cap: float, env: dict, out: Path) -> dict:
    """Run one step in its own process group, killed (group and all) at `cap` seconds."""
    log = out / f"{name}.log"
    t = time.monotonic()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=cap)
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc, status = None, "timeout"
    row = {"status": status, "exit_code": rc, "seconds": round(time.monotonic() - t, 1), "cap_s": round(cap)}
    if status != "ok":
        row["log_tail"] = log.read_text(errors="replace").splitlines()[-25:]
    return row


def _collect(result: dict, out: Path) -> None:
    """Every figure written so far, read back from the steps' own files."""
    for key, name in (("env", "env.json"), ("trainer", "trainer.json"), ("sweep", "sweep.json"), ("ray", "ray.json"),
                      ("fidelity", "fidelity.json")):
        p = out / name
        if p.is_file():
            try:
                result[key + "_figures"] = json.loads(p.read_text())
            except json.JSONDecodeError:
                result[key + "_figures"] = {"error": f"{name} is not complete JSON"}
    if (out / "tests.jsonl").is_file():
        result["test_records"] = [json.loads(line) for line in (out / "tests.jsonl").read_text().splitlines() if line]
    if (out / "tests.xml").is_file():
        import xml.etree.ElementTree as ET

        root = ET.parse(out / "tests.xml").getroot()
        suite = root if root.tag == "testsuite" else root[0]
        result["tests"] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}


def summary(r: dict) -> str:
    """One screen: each step, the trainer's two sizes, the sweep, memory, what failed."""
    lines = [f"gpu-check {'rehearsal (CPU, small)' if r.get('rehearsal') else 'on ' + r.get('env_figures', {}).get('device', '?')}"
             f": {r.get('seconds')} s of {r['deadline_s']:.0f} s"]
    env = r.get("env_figures", {})
    if env:
        lines.append(f"  env: python {env.get('python')}, torch {env.get('torch')}, CUDA {env.get('cuda')}"
                     + (f", missing: {', '.join(env['missing'])}" if env.get("missing") else "")
                     + (f", optional missing: {', '.join(env['missing_optional'])}" if env.get("missing_optional") else ""))
    for name, s in r["steps"].items():
        lines.append(f"  {name:8s} {s['status']:8s} {s.get('seconds', 0):6.1f} s" + (f"  ({s['why']})" if "why" in s else ""))
    if "tests" in r:
        t = r["tests"]
        lines.append(f"  gpu tests: {t['tests']} run, {t['failures']} failed, {t['errors']} errors, {t['skipped']} skipped")
    for size, row in (r.get("trainer_figures") or {}).get("sizes", {}).items():
        batched = next((k for k in row if k.startswith("one_loop_n") and k != "one_loop_n1" and isinstance(row[k], dict)
                        and "tokens_per_s" in row[k] and "fp32" not in k and "tf32" not in k), None)
        one = row.get("one_loop_n1", {})
        if batched and one:
            b = row[batched]
            lines.append(f"  trainer {size}: one at a time {one['tokens_per_s']:,} tok/s (MFU {one.get('mfu', '-')}), "
                         f"{batched[9:]} batched {b['tokens_per_s']:,} tok/s (MFU {b.get('mfu', '-')}): "
                         f"{b['tokens_per_s'] / max(one['tokens_per_s'], 1):.1f}x; peak {row.get('peak_memory_gib', '-')} GiB")
    sw = r.get("sweep_figures") or {}
    if sw.get("runs") is not None:
        lines.append(f"  sweep: {sw.get('trained')}/{sw.get('runs')} trained, {sw.get('failed')} failed, "
                     f"{sw.get('proxies_per_hour')} proxies/h, batch {sw.get('batch_proxies')}; "
                     f"re-evaluation {sw.get('reeval', {}).get('evaluated', '-')} runs in {sw.get('reeval', {}).get('seconds', '-')} s")
        mem = sw.get("memory")
        if mem:
            lines.append(f"  memory: peak {mem.get('peak_gib')} GiB vs estimate {mem.get('estimate_gib')} GiB "
                         f"({mem.get('ratio')}x)")
    lines += fidelity_lines(r.get("fidelity_figures") or {})
    for name, s in r["steps"].items():
        if s.get("log_tail"):
            lines.append(f"  --- {name} (last lines of {name}.log) ---")
            lines += ["    " + line[:160] for line in s["log_tail"][-8:]]
    return "\n".join(lines) + "\n"


def fidelity_lines(f: dict) -> list[str]:
    """The fidelity step's figures: multi - single at the big size with its interval, the cross-scale
    rank correlation, each arm's compute; or the stage a cut run reached."""
    if not f.get("sizes"):
        return []
    small, big = f["sizes"]
    rec = (f.get("results") or [None])[0] or f.get("partial")
    if not rec:
        return [f"  fidelity ({small} swarm, {big} verify): no set finished a stage"]
    arms = rec.get("arms", {})
    cost = ", ".join(f"{a} {v['flops']:.2e} FLOPs {v['device_seconds']:.0f} device-s" for a, v in arms.items()
                     if "flops" in v)
    cs = next((c for c in rec.get("cross_scale") or [] if c.get("size") == big), None)
    def num(x):
        return "-" if x is None else f"{x:.2f}"

    rho = (f"cross-scale Spearman {num(cs.get('spearman_predicted'))} predicted / {num(cs.get('spearman_measured'))} "
           f"measured ({cs.get('mixtures')} mixtures at both sizes)" if cs else "cross-scale: -")
    lines = [f"  fidelity ({rec['set']} set, {small} swarm, {big} verify, on {f.get('device', '?')}):"]
    d = rec.get("multi_minus_single")
    if d:
        v = rec["verified"]
        lines.append(f"    at {big}: single {v['single']['mean']:.4f}, multi {v['multi']['mean']:.4f}; multi - single "
                     f"{d['mean']:+.4f} (90% {d['interval'][0]:+.4f} .. {d['interval'][1]:+.4f}); {rho}")
    else:
        lines.append(f"    cut after '{rec.get('stage')}' (not verified); {rho}")
    lines.append(f"    compute: {cost or '-'}")
    return lines


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
