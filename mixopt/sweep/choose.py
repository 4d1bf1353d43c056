"""`--batch-proxies auto`: how many proxies a worker trains at once, chosen by timing a few steps
of both paths (one at a time, and batched) on this machine's device with the sweep's spec; and
`--compile auto`: whether the one loop's forward goes through torch.compile, chosen by whether the
steps each worker trains win back the compile time. Measurements are kept in the workspace per
machine and spec, so later sweeps reuse them."""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path

from mixopt.config.runtime import Runtime
from mixopt.core.devices import resolve_device
from mixopt.core.keys import content_hash
from mixopt.core.workspace import Workspace, atomic_write_json
from mixopt.proxy.model import ProxySpec
from mixopt.proxy.train import proxies_per_batch

CPU_BATCH = 4  # the batched candidate on a CPU (more proxies per step only adds memory there)
# Seconds (CPU seconds on a CPU) below which no torch.compile of the one loop finishes: compiling
# the smallest proxy's (tiny: 2 layers) forward and backward in a fresh process took 1.7 CPU-s here
# with inductor's on-disk cache warm (19 cold); larger models take longer. A worker whose whole
# eager training is shorter than this cannot win the compile back, whatever compiling saves.
MIN_COMPILE_SECONDS = 1.0


@dataclass(frozen=True)
class BatchChoice:
    proxies: int  # per worker task
    why: str  # one line, printed and recorded
    rates: dict[int, float]  # N -> proxy-steps/s measured (empty when not measured)


def choose_batch(runtime: Runtime, spec: ProxySpec, ws: Workspace, runs: int) -> BatchChoice:
    """The batch size a sweep of `runs` proxies uses (see the module docstring)."""
    if runtime.batch_proxies != "auto":
        return BatchChoice(int(runtime.batch_proxies), f"--batch-proxies {runtime.batch_proxies}", {})
    if runtime.backend != "local":  # run.py sizes the tasks by the cluster's slots (ON_WORKER)
        return BatchChoice(ON_WORKER, "--batch-proxies auto: chosen on each worker, where its device is "
                                      "(as locally: memory, then timing 1 vs N; see the job logs)", {})
    import torch

    device = resolve_device(runtime.device)
    gpus = torch.cuda.device_count() if device.startswith("cuda") else 0
    # Workers share GPUs round-robin (worker i -> GPU i mod n): each sizes its batch on its share.
    sharers = -(-runtime.workers // gpus) if device == "cuda" and gpus else runtime.workers
    return batch_on_device(device, spec, ws, runs, runtime.workers, sharers, worker_threads(runtime.workers),
                           runtime.say, runtime.precision)


ON_WORKER = 0  # BatchChoice.proxies when each ray/slurm worker chooses for itself (batch_on_device there)


def batch_on_device(device: str, spec: ProxySpec, ws: Workspace, runs: int, workers: int, sharers: int,
                    threads: int, say, precision: str = "auto") -> BatchChoice:
    """choose_batch on `device`, where the training runs: `runs` proxies over `workers` workers, each of
    `sharers` training on this GPU at once sizing its batch on its share of the memory; measured at
    `precision` (--precision), as they will train."""
    if os.environ.get("MIXOPT_AUTO_BATCH"):  # the test suite: what a sweep does must not depend on machine speed
        n = int(os.environ["MIXOPT_AUTO_BATCH"])
        return BatchChoice(n, f"--batch-proxies auto: {n} (MIXOPT_AUTO_BATCH, not measured)", {})
    fits = proxies_per_batch(spec, device if device != "cuda" else "cuda:0", sharers=sharers, precision=precision) \
        if device.startswith("cuda") else CPU_BATCH
    candidate = max(1, min(fits, runs if runs > 0 else fits, -(-runs // workers) if runs else fits))
    if candidate == 1:
        why = "no room for a second proxy on the device" if fits <= 1 else f"{runs} run(s) left for {workers} worker(s)"
        return BatchChoice(1, f"--batch-proxies auto: 1 ({why})", {})
    machine = _machine(device, threads, precision)
    key = content_hash({"machine": machine, "spec": spec.to_dict(), "n": candidate})
    cache = ws.root / "trainer-choice.json"
    known = _read(cache)
    row = known.get(key)
    if row is None:
        from mixopt.proxy.speed import training_rates

        say(f"--batch-proxies auto: timing a few steps of 1 and of {candidate} {spec.size} proxies together "
            f"on {device} (once per machine and proxy shape)...")

        rates = _with_threads(threads, lambda: training_rates(spec, (1, candidate), _one_device(device),
                                                              precision=precision))
        row = {"machine": machine, "spec": spec.size, "n": candidate, "measured": time.time(),
               "rates": {str(n): round(r, 3) for n, r in rates.items()}}
        known[key] = row
        atomic_write_json(cache, known)
        source = "measured now"
    else:
        source = f"measured {time.strftime('%Y-%m-%d %H:%M', time.localtime(row['measured']))}, cached"
    rates = {int(n): float(r) for n, r in row["rates"].items()}
    pick = candidate if rates[candidate] > rates[1] else 1
    why = (f"--batch-proxies auto: {pick} ({'batched' if pick > 1 else 'one at a time'}: "
           f"{rates[candidate]:.2f} proxy-steps/s at {candidate} together vs {rates[1]:.2f} one at a time, "
           f"{spec.size} on {_where(machine)}, {source})")
    return BatchChoice(pick, why, rates)


@dataclass(frozen=True)
class CompileChoice:
    compile: bool
    why: str  # one line, printed and recorded
    # compile_seconds, eager_step, compiled_step (seconds), steps (each worker's), break_even_steps;
    # only what was measured (empty when nothing was)
    timings: dict[str, float]
    on_worker: bool = False  # ray/slurm: each worker chooses for itself (compile_on_device there)


def choose_compile(runtime: Runtime, spec: ProxySpec, ws: Workspace, proxies: int, runs: int,
                   rates: dict[int, float] | None = None) -> CompileChoice:
    """Whether a sweep's workers compile the forward, training `runs` proxies `proxies` at a time.
    auto compiles when steps x (eager - compiled step seconds) > compile seconds, steps being what
    one worker trains in the sweep (a worker compiles once and reuses it for its later batches).
    It does not measure a compile that cannot pay: when a worker's whole eager training (from
    `rates`, the batch choice's proxy-steps/s, or 2 timed steps) is under MIN_COMPILE_SECONDS."""
    if runtime.compile != "auto":
        return CompileChoice(runtime.compile == "on", f"--compile {runtime.compile}", {})
    if runtime.backend != "local" and runs > 0:  # the worker decides (TrainTask.auto_compile)
        return CompileChoice(False, "--compile auto: chosen on each worker, where its device is (as locally: "
                                    "whether its steps win the compile time back; see the job logs)", {}, on_worker=True)
    return compile_on_device(resolve_device(runtime.device), spec, ws, proxies, runs, runtime.workers,
                             worker_threads(runtime.workers), rates, runtime.say, runtime.precision)


def compile_on_device(device: str, spec: ProxySpec, ws: Workspace, proxies: int, runs: int, workers: int,
                      threads: int, rates: dict[int, float] | None, say, precision: str = "auto") -> CompileChoice:
    """choose_compile on `device`, where the training runs (see choose_compile), timed at `precision`."""
    if os.environ.get("MIXOPT_AUTO_COMPILE"):  # the test suite: what a sweep does must not depend on machine speed
        on = os.environ["MIXOPT_AUTO_COMPILE"] == "on"
        return CompileChoice(on, f"--compile auto: {'on' if on else 'off'} (MIXOPT_AUTO_COMPILE, not measured)", {})
    if runs <= 0:
        return CompileChoice(False, "--compile auto: off (nothing to train)", {})
    from mixopt.proxy import speed

    batches = -(-runs // proxies)
    steps = spec.steps * -(-batches // workers)  # one worker's batches x the steps of each
    if rates and rates.get(proxies):
        eager = proxies / rates[proxies]
    else:
        eager = proxies / _with_threads(threads, lambda: speed.training_rates(
            spec, (proxies,), _one_device(device), rounds=1, steps=2, precision=precision))[proxies]
    unit = "CPU-s" if device == "cpu" else "s"
    if steps * eager <= MIN_COMPILE_SECONDS:
        return CompileChoice(False, f"--compile auto: off, not measured ({steps} steps per worker x {eager:.3f} {unit} "
                                    f"eager = {steps * eager:.1f} {unit}, under the {MIN_COMPILE_SECONDS:g} {unit} any "
                                    "compile takes)", {"eager_step": round(eager, 5), "steps": steps})
    machine = _machine(device, threads, precision)
    # Not the tokens: one measurement serves sweeps of any length with these shapes.
    key = content_hash({"machine": machine, "spec": replace(spec, tokens=0).to_dict(), "n": proxies})
    cache = ws.root / "compile-choice.json"
    known = _read(cache)
    row = known.get(key)
    if row is None:
        say(f"--compile auto: compiling the {spec.size} proxy x{proxies} on {device} to time it (often "
            "30 s or more on a CPU; once per machine and proxy shape)...")
        try:
            row = _with_threads(threads, lambda: speed.compile_timings(spec, proxies, _one_device(device),
                                                                       precision=precision))
            row = {k: round(v, 5) for k, v in row.items()}
        except Exception as e:  # no C++ compiler, an op inductor cannot lower: eager, and say why (once)
            row = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"}
        known[key] = row | {"machine": machine, "spec": spec.size, "n": proxies, "measured": time.time()}
        atomic_write_json(cache, known)
        source = "measured now"
    else:
        source = f"measured {time.strftime('%Y-%m-%d %H:%M', time.localtime(row['measured']))}, cached"
    if "error" in row:
        return CompileChoice(False, f"--compile auto: off (torch.compile failed here: {row['error']}; {source})", {})
    compile_s, eager, compiled = row["compile_seconds"], row["eager_step"], row["compiled_step"]
    gain = eager - compiled
    # A last batch with fewer proxies has other shapes: torch.compile compiles again for it.
    compiles = 1 if runs % proxies == 0 or runs < proxies else 2
    even = round(compiles * compile_s / gain) if gain > 0 else None
    on = gain > 0 and steps * gain > compiles * compile_s
    why = (f"--compile auto: {'on' if on else 'off'} ({steps} steps per worker x ({eager:.4f} - {compiled:.4f}) "
           f"{unit} per step = {steps * gain:.1f} {unit} saved vs {compile_s:.1f} {unit} to compile"
           f"{' x2 (a last, smaller batch compiles again)' if compiles > 1 else ''}; break-even "
           f"{f'{even} steps' if even is not None else 'never (compiled is not faster)'}; {spec.size} x{proxies} "
           f"on {_where(machine)}, {source})")
    return CompileChoice(on, why, {"compile_seconds": compile_s, "eager_step": eager, "compiled_step": compiled,
                                   "steps": steps, "compiles": compiles, "break_even_steps": even})


def record_choice(ws: Workspace, sweep_id: int, choice: BatchChoice, compiled: CompileChoice | None = None) -> None:
    """The choices and what they were made on, with the sweep that used them (workspace/sweeps/<id>.json)."""
    row = {"sweep": sweep_id, "batch_proxies": choice.proxies, "why": choice.why,
           "rates": {str(n): r for n, r in choice.rates.items()}}
    if compiled is not None:
        row |= {"compile": compiled.compile, "compile_why": compiled.why, "compile_timings": compiled.timings}
    atomic_write_json(ws.root / "sweeps" / f"{sweep_id}.json", row)


def _with_threads(threads: int, fn):
    """fn() with torch on `threads` threads (what each worker will have; 0: unchanged). A measurement
    on a GPU hands its cached memory back afterwards: the driver's allocator would otherwise keep
    it reserved, and a worker process training on the same GPU would run out of memory."""
    import torch

    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(old)
        if torch.cuda.is_initialized():
            torch.cuda.empty_cache()


def _one_device(device: str) -> str:
    return device if device != "cuda" else "cuda:0"


def _machine(device: str, threads: int, precision: str = "auto") -> dict:
    """What a measurement was made on, in its cache key: the device, threads and torch, and the
    precision the steps ran at where it is not float32 (a float32 measurement keeps the key it had
    before precision was part of it)."""
    import torch

    from mixopt.proxy.train import precision_name

    name = torch.cuda.get_device_name(0 if device == "cuda" else device) if device.startswith("cuda") \
        else platform.processor() or platform.machine()
    row = {"host": platform.node(), "device": f"{device} ({name})", "cores": os.cpu_count(),
           "threads": threads or torch.get_num_threads(), "torch": torch.__version__}
    how = precision_name(_one_device(device), precision)
    return row if how == "fp32" else row | {"precision": how}


def _where(machine: dict) -> str:
    """'cpu (x86_64)', or 'cpu (x86_64) in bf16-autocast' for a measurement not in float32."""
    return machine["device"] + (f" in {machine['precision']}" if "precision" in machine else "")


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def worker_threads(workers: int) -> int:
    """torch threads per local worker process: the cores shared out; 0 (torch's default) in-process."""
    return max(1, (os.cpu_count() or 1) // workers) if workers > 1 else 0
