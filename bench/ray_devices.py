"""The GPU check's Ray part: what a Ray task sees and which device mixopt's worker then trains on,
for a task asking 0 GPUs, a fractional GPU (0.5) and a whole one. Each task runs in a fresh Ray
worker process (max_calls=1: CUDA reads CUDA_VISIBLE_DEVICES once per process) and reports
CUDA_VISIBLE_DEVICES, ray.get_gpu_ids(), torch.cuda.device_count(), and what mixopt's task would
train on: sweep.work.worker_device(device_of(...), gpus) as a `--backend ray` sweep calls it, with
that device's name and UUID (so two tasks on one physical GPU show as such), or the error it raises.
Prints and writes JSON. On a machine without a GPU, --fake-gpus N tells Ray it has N GPUs (the
tasks then see none, and mixopt's loud failure is what gets recorded)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

ASKS = (0.0, 0.5, 1.0)  # GPUs per task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("bench/results/ray_devices.json"))
    ap.add_argument("--fake-gpus", type=int, default=None, help="tell Ray this many GPUs (default: what it detects)")
    args = ap.parse_args()
    try:
        import ray
    except ImportError:
        _write(args.out, {"skipped": True, "reason": "ray is not installed (pip install 'mixopt[ray]')"})
        return
    tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # socket paths must stay < 108 bytes
    for k, v in {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}.items():
        os.environ.setdefault(k, v)
    ray.init(num_cpus=len(ASKS), num_gpus=args.fake_gpus, include_dashboard=False, log_to_driver=False,
             _temp_dir=tmp)
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        probe = ray.remote(max_calls=1)(_probe)
        tasks = {ask: probe.options(num_cpus=1, num_gpus=ask).remote(ask) for ask in ASKS if ask <= gpus}
        seen = {str(ask): ray.get(ref, timeout=120) for ask, ref in tasks.items()}
        out = {"skipped": False, "ray": ray.__version__, "cluster_gpus": gpus, "fake_gpus": args.fake_gpus,
               "driver_cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
               "tasks": seen,
               "not_run": [str(a) for a in ASKS if a > gpus]}  # more GPU than the cluster has: never scheduled
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    _write(args.out, out)


def _probe(ask: float) -> dict:
    """In the Ray task: what it sees, and the device mixopt's task code picks from that."""
    import ray
    import torch

    from mixopt.config.runtime import Runtime
    from mixopt.sweep.work import device_of, worker_device

    seen = torch.cuda.device_count() if torch.cuda.is_available() else 0
    row = {"asked_gpus": ask, "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
           "ray_gpu_ids": [str(i) for i in ray.get_gpu_ids()], "torch_device_count": seen,
           "devices": [_describe(torch, i) for i in range(seen)]}
    asked = device_of(Runtime(backend="ray"), ask)  # what run_sweep puts in the task (--device auto)
    row["mixopt_asks"] = asked
    try:
        device = worker_device(asked, ask)
        row["mixopt_trains_on"] = device
        if device.startswith("cuda"):
            row["mixopt_device"] = _describe(torch, torch.device(device).index or 0)
    except RuntimeError as e:  # a task given a GPU it cannot see: mixopt's loud failure
        row["mixopt_error"] = str(e)
    return row


def _describe(torch, index: int) -> dict:
    p = torch.cuda.get_device_properties(index)
    return {"index": index, "name": p.name, "uuid": str(getattr(p, "uuid", ""))}


def _write(path: Path, out: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
