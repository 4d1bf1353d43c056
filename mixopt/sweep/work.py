"""The units of work a backend runs: train (and evaluate) the runs of one batch, or evaluate a
stored checkpoint. Each takes a frozen task and returns frozen results; none touches the store."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from mixopt.core.keys import file_sha256
from mixopt.core.workspace import atomic_write_json, slice_file
from mixopt.errors import MixoptError
from mixopt.evals.measure import measure_models
from mixopt.evals.suites import Measure
from mixopt.proxy.checkpoint import (
    CheckpointMismatch,
    load_checkpoints,
    result_path,
    save_checkpoint,
    state_path,
)
from mixopt.proxy.model import ProxySpec
from mixopt.proxy.train import OnStep, train_proxies

Progress = Callable[[int, int, float], None]  # (step, total, loss)


@dataclass(frozen=True)
class TrainRun:
    key: str
    weights: tuple[float, ...]  # canonical domain order
    checkpoint: str  # where the safetensors file goes


@dataclass(frozen=True)
class TrainTask:
    """The runs of one batch: one spec and seed, trained together by one worker (N >= 1)."""

    runs: tuple[TrainRun, ...]
    domains: tuple[str, ...]
    seed: int
    spec: ProxySpec
    sample_dir: str
    measures: tuple[Measure, ...] = ()  # the eval suite's
    threads: int = 0  # torch threads; 0 leaves torch's default
    device: str | None = None  # None: the worker's GPU if it has one, else its CPU

    @property
    def key(self) -> str:
        """The first run's key, for progress bars."""
        return self.runs[0].key


@dataclass(frozen=True)
class RunResult:
    key: str
    checkpoint: str
    sha256: str
    losses: tuple[float, ...]  # one per step
    train_loss: float  # mean of the last tenth of the steps
    tokens: int
    epochs: dict[str, float]  # per domain
    train_seconds: float  # the batch's, shared out over its runs
    eval_seconds: float
    measurements: dict[str, dict[str, float]]
    batched: int = 1  # runs trained together


def train_task(task: TrainTask, progress: Progress | None = None) -> tuple[RunResult, ...]:
    """Train, checkpoint and evaluate the runs of a task; one result per run."""
    import torch

    if task.threads:
        torch.set_num_threads(task.threads)
    device = worker_device(task.device)
    spec, n = task.spec, len(task.runs)
    sample_dir = Path(task.sample_dir)
    streams = [np.load(slice_file(sample_dir, d, "train"), mmap_mode="r") for d in task.domains]
    t0 = time.time()
    W, losses, epochs = train_proxies(spec, [r.weights for r in task.runs], streams, task.seed, device,
                                      _on_step(task, progress), [state_path(Path(r.checkpoint)) for r in task.runs],
                                      autocast=device.startswith("cuda"))
    shas = [save_checkpoint(W, i, Path(r.checkpoint)) for i, r in enumerate(task.runs)]
    t1 = time.time()
    measured = measure_models(W, spec, task.measures, sample_dir)
    t2 = time.time()
    return tuple(finish_run(task, run, sha, own, dict(zip(task.domains, ep)), (t1 - t0) / n, (t2 - t1) / n, m)
                 for run, sha, own, ep, m in zip(task.runs, shas, losses, epochs, measured))


def finish_run(task: TrainTask, run: TrainRun, sha256: str, losses: list[float], epochs: dict[str, float],
               train_seconds: float, eval_seconds: float, measurements: dict) -> RunResult:
    """A trained run's result, also left next to its checkpoint (so a driver that dies before
    recording it adopts it instead of retraining); the run's resume state is then dropped."""
    spec = task.spec
    result = RunResult(key=run.key, checkpoint=run.checkpoint, sha256=sha256, losses=tuple(losses),
                       train_loss=float(np.mean(losses[-max(1, len(losses) // 10):])),
                       tokens=spec.steps * spec.batch_size * spec.seq_len, epochs=epochs,
                       train_seconds=train_seconds, eval_seconds=eval_seconds, measurements=measurements,
                       batched=len(task.runs))
    ckpt = Path(run.checkpoint)
    atomic_write_json(result_path(ckpt), asdict(result))
    state_path(ckpt).unlink(missing_ok=True)
    return result


def read_result(checkpoint: Path) -> RunResult | None:
    """A finished run's result left next to its checkpoint, if the checkpoint matches it."""
    side = result_path(checkpoint)
    if not (side.is_file() and checkpoint.is_file()):
        return None
    try:
        row = json.loads(side.read_text())
    except json.JSONDecodeError:
        return None
    known = {f.name for f in fields(RunResult)}
    try:
        result = RunResult(**{k: v for k, v in row.items() if k in known} | {"losses": tuple(row.get("losses", ()))})
    except TypeError:  # written by an older mixopt without a field we need: retrain
        return None
    return result if result.sha256 == file_sha256(checkpoint) else None


def _on_step(task: TrainTask, progress: Progress | None) -> OnStep:
    """The loop's per-step hook: progress (the batch's mean loss), and with MIXOPT_WORK_LOG set (by
    tests), one line "<run key> <step index>" per run per trained step, across attempts."""
    log = os.environ.get("MIXOPT_WORK_LOG")

    def on_step(step: int, total: int, losses: list[float]) -> None:
        if log:
            with open(log, "a") as f:
                f.write("".join(f"{r.key} {step - 1}\n" for r in task.runs))
        if progress:
            progress(step, total, float(np.mean(losses)))

    return on_step


@dataclass(frozen=True)
class EvalTask:
    key: str  # run key
    checkpoint: str
    sha256: str  # recorded when the checkpoint was written
    spec: ProxySpec
    sample_dir: str
    measures: tuple[Measure, ...]  # only the ones missing for this run
    threads: int = 0
    device: str | None = None  # None: the worker's GPU if it has one, else its CPU


@dataclass(frozen=True)
class EvalResult:
    key: str
    measurements: dict[str, dict[str, float]]
    eval_seconds: float


def eval_checkpoint(task: EvalTask, progress: Progress | None = None) -> EvalResult:
    """Load a stored checkpoint (verified against its recorded sha256) and measure what it lacks."""
    import torch

    if task.threads:
        torch.set_num_threads(task.threads)
    path = Path(task.checkpoint)
    if not path.is_file() or file_sha256(path) != task.sha256:
        raise CheckpointMismatch(f"checkpoint {path} is missing or not the one recorded (sha256 differs)")
    t0 = time.time()
    W = load_checkpoints([path], worker_device(task.device))  # a GPU evaluates many sequences per pass
    (measurements,) = measure_models(W, task.spec, task.measures, Path(task.sample_dir), progress)
    return EvalResult(task.key, measurements, time.time() - t0)


def device_of(runtime) -> str | None:
    """What a task asks of its worker: None (auto: the worker's GPU if it sees one) or a device."""
    return None if runtime.device == "auto" else runtime.device


def check_local_device(runtime) -> None:
    """Work that runs on this machine (local workers, re-evaluation) fails before it starts, with
    one line, when `--device` names a GPU this machine does not have."""
    if not runtime.device.startswith("cuda"):
        return
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(runtime.device.partition(":")[2] or 0)
    if index >= count:
        raise MixoptError(f"--device {runtime.device}: this machine sees {count} CUDA GPU(s)",
                          "use --device auto (a GPU where there is one) or --device cpu")


def worker_device(asked: str | None) -> str:
    """The device a worker uses: what was asked (Runtime.device), or its GPU if it sees one."""
    import torch

    if asked is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if asked.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {asked} was asked for, but this worker sees no CUDA GPU")
    return asked


def worker_threads(workers: int) -> int:
    """torch threads per local worker process: the cores shared out; 0 (torch's default) in-process."""
    return max(1, (os.cpu_count() or 1) // workers) if workers > 1 else 0
