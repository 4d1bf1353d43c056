"""The units of work a backend runs: train (and evaluate) runs, or evaluate stored checkpoints.
Each takes a picklable task and returns a plain result; none touches the store."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mixopt.core.keys import file_sha256
from mixopt.core.workspace import atomic_write_json, slice_file
from mixopt.evals.measure import CheckpointMismatch, measure_model
from mixopt.proxy.checkpoint import result_path, save_checkpoint, state_path
from mixopt.proxy.model import ProxySpec, build_model, unstack
from mixopt.proxy.train import train_proxies, train_proxy


@dataclass(frozen=True)
class RunTask:
    key: str
    weights: tuple[float, ...]  # canonical domain order
    domains: tuple[str, ...]
    seed: int
    spec: dict  # ProxySpec fields
    sample_dir: str
    checkpoint: str  # where the safetensors file goes
    measures: tuple[dict, ...] = ()  # the eval suite's measures (suites.Measure as dicts)
    threads: int = 0  # torch threads; 0 leaves torch's default


def train_run(task: RunTask, progress: Callable[[int, int, float], None] | None = None) -> dict:
    """Train, checkpoint and evaluate one run; the result is also written next to the checkpoint,
    so a driver that dies before recording it can adopt it instead of retraining."""
    import torch

    from mixopt.evals.measure import measure_model

    if task.threads:
        torch.set_num_threads(task.threads)
    spec = ProxySpec(**task.spec)
    sample_dir = Path(task.sample_dir)
    streams = [np.load(slice_file(sample_dir, d, "train"), mmap_mode="r") for d in task.domains]
    t0 = time.time()
    ckpt = Path(task.checkpoint)
    state = state_path(ckpt)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, losses, epochs = train_proxy(spec, task.weights, streams, task.seed, progress, state, task.key, device)
    train_seconds = time.time() - t0
    model = model.cpu()  # checkpoints and evaluation on the CPU: both are small next to training
    sha = save_checkpoint(model, ckpt)
    t1 = time.time()
    measurements = measure_model(model, spec, task.measures, sample_dir)
    tail = losses[-max(1, len(losses) // 10):]
    result = {
        "key": task.key, "checkpoint": str(ckpt), "sha256": sha, "losses": losses,
        "train_loss": float(np.mean(tail)), "tokens": spec.steps * spec.batch_size * spec.seq_len,
        "epochs": dict(zip(task.domains, epochs)), "train_seconds": train_seconds,
        "eval_seconds": time.time() - t1, "measurements": measurements,
    }
    atomic_write_json(result_path(ckpt), result)
    state.unlink(missing_ok=True)
    return result


@dataclass(frozen=True)
class BatchTask:
    """Several runs of one spec and seed, trained together by one worker."""

    key: str  # the first run's key, for progress bars
    tasks: tuple[RunTask, ...]


def train_batch(batch: BatchTask, progress: Callable[[int, int, float], None] | None = None) -> dict:
    return {"results": train_runs(list(batch.tasks), progress)}


def train_runs(tasks: list[RunTask], progress: Callable[[int, int, float], None] | None = None,
               device: str | None = None) -> list[dict]:
    """`train.train_run` for several runs of one spec and seed at once; one result dict per run."""
    import torch

    from mixopt.evals.measure import measure_model

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    spec = ProxySpec(**tasks[0].spec)
    sample_dir = Path(tasks[0].sample_dir)
    streams = [np.load(slice_file(sample_dir, d, "train"), mmap_mode="r") for d in tasks[0].domains]
    t0 = time.time()
    W, losses, epochs = train_proxies(spec, [t.weights for t in tasks], streams, tasks[0].seed, device, progress,
                                      autocast=device.startswith("cuda"))
    train_seconds = (time.time() - t0) / len(tasks)
    out = []
    for i, task in enumerate(tasks):
        model = unstack(W, i, spec)
        ckpt = Path(task.checkpoint)
        sha = save_checkpoint(model, ckpt)
        t1 = time.time()
        own = [step[i] for step in losses]
        result = {
            "key": task.key, "checkpoint": str(ckpt), "sha256": sha, "losses": own,
            "train_loss": float(np.mean(own[-max(1, len(own) // 10):])),
            "tokens": spec.steps * spec.batch_size * spec.seq_len,
            "epochs": dict(zip(task.domains, epochs[i])), "train_seconds": train_seconds,
            "measurements": measure_model(model, spec, task.measures, sample_dir), "eval_seconds": time.time() - t1,
            "batched": len(tasks),
        }
        atomic_write_json(result_path(ckpt), result)
        out.append(result)
    return out


@dataclass(frozen=True)
class EvalTask:
    key: str  # run key
    checkpoint: str
    sha256: str  # recorded when the checkpoint was written
    spec: dict  # ProxySpec fields
    sample_dir: str
    measures: tuple[dict, ...]  # suites.Measure as dicts: only the ones missing for this run
    threads: int = 0


def eval_checkpoint(task: EvalTask, progress: Callable[[int, int, float], None] | None = None) -> dict:
    """Load a stored checkpoint (verified against its recorded sha256) and measure what it lacks."""
    import torch
    from safetensors.torch import load_model


    if task.threads:
        torch.set_num_threads(task.threads)
    path = Path(task.checkpoint)
    if not path.is_file() or file_sha256(path) != task.sha256:
        raise CheckpointMismatch(f"checkpoint {path} is missing or not the one recorded (sha256 differs)")
    t0 = time.time()
    spec = ProxySpec(**task.spec)
    model = build_model(spec)
    load_model(model, str(path))
    model.to("cuda" if torch.cuda.is_available() else "cpu")  # a GPU evaluates many sequences per pass
    measurements = measure_model(model, spec, task.measures, Path(task.sample_dir), progress)
    return {"key": task.key, "measurements": measurements, "eval_seconds": time.time() - t0}


DISK_FULL = ("Errno 28", "Errno 27", "Errno 122", "No space left", "File too large", "FileTooLarge",
             "StorageFull", "disk is full", "file write failed", "disk I/O error")


def disk_full(error: str) -> bool:
    """Does this error text say the disk (or the file size limit, or the quota) is exhausted?"""
    return any(s in error for s in DISK_FULL)


def _last_line(error: str) -> str:
    return error.strip().splitlines()[-1] if error.strip() else "unknown error"


def _worker_threads(workers: int) -> int:
    """torch threads per local worker process: the cores shared out; 0 (torch's default) in-process."""
    return max(1, (os.cpu_count() or 1) // workers) if workers > 1 else 0
