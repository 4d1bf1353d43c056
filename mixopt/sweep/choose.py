"""`--batch-proxies auto`: how many proxies a worker trains at once, chosen by timing a few steps
of both paths (one at a time, and batched) on this machine's device with the sweep's spec. The
measurement is kept in the workspace per machine and spec, so later sweeps reuse it."""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

from mixopt.config.runtime import Runtime
from mixopt.core.keys import content_hash
from mixopt.core.workspace import Workspace, atomic_write_json
from mixopt.proxy.model import ProxySpec
from mixopt.proxy.train import proxies_per_batch
from mixopt.sweep.work import worker_threads

CPU_BATCH = 4  # the batched candidate on a CPU (more proxies per step only adds memory there)


@dataclass(frozen=True)
class BatchChoice:
    proxies: int  # per worker task
    why: str  # one line, printed and recorded
    rates: dict[int, float]  # N -> proxy-steps/s measured (empty when not measured)


def choose_batch(runtime: Runtime, spec: ProxySpec, ws: Workspace, runs: int) -> BatchChoice:
    """The batch size a sweep of `runs` proxies uses (see the module docstring)."""
    if runtime.batch_proxies != "auto":
        return BatchChoice(int(runtime.batch_proxies), f"--batch-proxies {runtime.batch_proxies}", {})
    if os.environ.get("MIXOPT_AUTO_BATCH"):  # the test suite: what a sweep does must not depend on machine speed
        n = int(os.environ["MIXOPT_AUTO_BATCH"])
        return BatchChoice(n, f"--batch-proxies auto: {n} (MIXOPT_AUTO_BATCH, not measured)", {})
    if runtime.backend != "local":
        return BatchChoice(1, "--batch-proxies auto: 1 (the workers' devices are not visible from here: "
                              "pass --batch-proxies N)", {})
    import torch

    device = runtime.device if runtime.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    gpus = torch.cuda.device_count() if device.startswith("cuda") else 0
    # Workers share GPUs round-robin (worker i -> GPU i mod n): each sizes its batch on its share.
    sharers = -(-runtime.workers // gpus) if device in ("cuda", "auto") and gpus else runtime.workers
    fits = proxies_per_batch(spec, device if device != "cuda" else "cuda:0", sharers=sharers) \
        if device.startswith("cuda") else CPU_BATCH
    candidate = max(1, min(fits, runs if runs > 0 else fits, -(-runs // runtime.workers) if runs else fits))
    if candidate == 1:
        why = "no room for a second proxy on the device" if fits <= 1 else f"{runs} run(s) left for {runtime.workers} worker(s)"
        return BatchChoice(1, f"--batch-proxies auto: 1 ({why})", {})
    threads = worker_threads(runtime.workers)
    machine = _machine(device, threads)
    key = content_hash({"machine": machine, "spec": spec.to_dict(), "n": candidate})
    cache = ws.root / "trainer-choice.json"
    known = _read(cache)
    row = known.get(key)
    if row is None:
        from mixopt.proxy.speed import training_rates

        old = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)  # what each worker will have
        try:
            rates = training_rates(spec, (1, candidate), device if device != "cuda" else "cuda:0")
        finally:
            torch.set_num_threads(old)
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
           f"{spec.size} on {machine['device']}, {source})")
    return BatchChoice(pick, why, rates)


def record_choice(ws: Workspace, sweep_id: int, choice: BatchChoice) -> None:
    """The choice and both rates, with the sweep that used them (workspace/sweeps/<id>.json)."""
    atomic_write_json(ws.root / "sweeps" / f"{sweep_id}.json",
                      {"sweep": sweep_id, "batch_proxies": choice.proxies, "why": choice.why,
                       "rates": {str(n): r for n, r in choice.rates.items()}})


def _machine(device: str, threads: int) -> dict:
    import torch

    name = torch.cuda.get_device_name(0 if device == "cuda" else device) if device.startswith("cuda") \
        else platform.processor() or platform.machine()
    return {"host": platform.node(), "device": f"{device} ({name})", "cores": os.cpu_count(),
            "threads": threads or torch.get_num_threads(), "torch": torch.__version__}


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
