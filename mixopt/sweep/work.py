"""The units of work a backend runs: train (and evaluate) the runs of one batch, or evaluate a
stored checkpoint. Each takes a frozen task and returns frozen results; none touches the store."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

from mixopt.core.keys import file_sha256, measurement_of
from mixopt.core.workspace import atomic_write_json, slice_file
from mixopt.errors import MixoptError
from mixopt.evals.kinds import measure_models
from mixopt.evals.kinds.base import Measure
from mixopt.proxy.checkpoint import (
    load_checkpoints,
    result_path,
    save_checkpoint,
    state_path,
)
from mixopt.proxy.model import ProxySpec, param_count
from mixopt.proxy.train import OnStep, divergence, precision_name, train_proxies

Progress = Callable[[int, int, float], None]  # (step, total, loss)


@dataclass(frozen=True)
class TrainRun:
    key: str
    weights: tuple[float, ...]  # canonical domain order
    checkpoint: str  # where the safetensors file goes
    seed: int = 0  # init and data-order seed (core.keys.replicate_seed): every run of a task shares it


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
    gpus: float = 0.0  # GPUs the engine gave this task (ray/slurm resources): it must then see one
    compile: bool = False  # the forward through torch.compile (sweep.choose.choose_compile)
    # what the runs' keys say of where they train (planned_measurement), checked by the worker; None: unchecked
    measured_as: str | None = None
    precision: str = "auto"  # Runtime.precision: auto | fp32 | bf16 (proxy.train.autocast_dtype)
    # ray/slurm with --batch-proxies auto / --compile auto: the worker chooses, where its device is, how
    # many of these runs it trains at once and whether it compiles (choose_on_worker)
    auto_batch: bool = False
    auto_compile: bool = False

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
    device: str = ""  # where it trained, e.g. "cuda:1 (NVIDIA H200)" or "cpu"
    precision: str = ""  # proxy.train.precision_name: "fp32" or "bf16-autocast"
    # Trained with the forward compiled (the last training of the run: a resumed run may have
    # started eager). Like device and precision, not in the run key: see proxy.train.compiled_forward.
    compiled: bool = False
    # Why this run has no usable result: its proxy diverged (no checkpoint is kept) or a measurement is
    # NaN or infinite. '' for a good result. The driver records such a run as failed (RunResult.unusable).
    failure: str = ""
    params: int = 0  # the proxy's parameters (model.param_count): the store records 6 x params x tokens FLOPs

    def unusable(self, names: dict[str, str] | None = None) -> str:
        """Why this result cannot enter the store or a fit ('' when it can): its recorded failure, or,
        for a result file written without one, a non-finite loss or measurement found now (`names`:
        evaluation key -> the suite's name for it, to say which)."""
        return self.failure or divergence(list(self.losses), len(self.losses)) or nonfinite_measurement(
            self.measurements, names or {})


def nonfinite_measurement(measurements: dict[str, dict[str, float]], names: dict[str, str]) -> str:
    """'non-finite measurement: <evaluation>/<metric> = nan' for the first NaN or infinite value, else ''
    (`names` maps evaluation keys to the suite's names; an unknown key is shown cut to 12 characters)."""
    bad = [f"{names.get(e, e[:12])}/{m} = {v}" for e, ms in measurements.items() for m, v in ms.items()
           if not (isinstance(v, (int, float)) and math.isfinite(v))]
    if not bad:
        return ""
    return f"non-finite measurement: {bad[0]}" + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "")


def train_task(task: TrainTask, progress: Progress | None = None) -> tuple[RunResult, ...]:
    """Train, checkpoint and evaluate the runs of a task; one result per run. A batch that runs
    out of GPU memory is trained again as two halves (each resumes from the batch's saved state)."""
    import torch

    if task.threads:
        torch.set_num_threads(task.threads)
    device = worker_device(task.device, task.gpus)
    if task.measured_as is not None and (here := measurement(device, task.precision)) != task.measured_as:
        raise MeasurementMismatch(
            f"the runs' keys say they train as {task.measured_as or 'cpu/fp32'}, but this worker would train as "
            f"{here or 'cpu/fp32'} on {device_label(device)} (the driver cannot see a cluster's GPUs and plans bf16 "
            "on them): use GPUs with native bf16 (compute capability >= 8.0), --precision fp32, or --device cpu")
    if task.auto_batch or task.auto_compile:
        n, compile = choose_on_worker(task, device)
        task = replace(task, compile=compile, auto_batch=False, auto_compile=False)
        return tuple(r for i in range(0, len(task.runs), n)
                     for r in train_task(replace(task, runs=task.runs[i:i + n]), progress))
    try:
        return _train_runs(task, task.runs, device, progress)
    except torch.OutOfMemoryError:
        if len(task.runs) == 1:
            raise
    except Exception as e:
        if context_lost(device):
            lose_worker(e)
        raise
    torch.cuda.empty_cache()
    half = len(task.runs) // 2
    return tuple(r for part in (task.runs[:half], task.runs[half:])
                 for r in train_task(replace(task, runs=part), progress))


def _train_runs(task: TrainTask, runs: tuple[TrainRun, ...], device: str, progress: Progress | None):
    spec, n = task.spec, len(runs)
    sample_dir = Path(task.sample_dir)
    streams = [np.load(slice_file(sample_dir, d, "train"), mmap_mode="r") for d in task.domains]
    t0 = time.time()
    W, losses, epochs = train_proxies(spec, [r.weights for r in runs], streams, task.seed, device,
                                      _on_step(task, progress), [state_path(Path(r.checkpoint)) for r in runs],
                                      precision=task.precision, compile=task.compile)
    diverged = [divergence(own, spec.steps) for own in losses]
    alive = [i for i, why in enumerate(diverged) if not why]  # a diverged proxy is neither saved nor measured
    shas = {i: save_checkpoint(W, i, Path(runs[i].checkpoint)) for i in alive}
    t1 = time.time()
    measured = dict(zip(alive, measure_models({k: w[alive] for k, w in W.items()}, spec, task.measures, sample_dir,
                                               precision=task.precision) if alive else []))
    t2 = time.time()
    where = (device_label(device), precision_name(device, task.precision))
    names = {m.key: m.name for m in task.measures}
    out = []
    for i, (run, own, ep) in enumerate(zip(runs, losses, epochs)):
        m = measured.get(i, {})
        out.append(finish_run(task, run, shas.get(i, ""), own, dict(zip(task.domains, ep)), (t1 - t0) / n,
                              (t2 - t1) / n, m, n, *where, compiled=task.compile,
                              failure=diverged[i] or nonfinite_measurement(m, names)))
    return tuple(out)


def choose_on_worker(task: TrainTask, device: str) -> tuple[int, bool]:
    """(proxies trained at once, compile) for a ray/slurm task, chosen here as a local sweep chooses
    on its machine (sweep.choose: the GPU's free memory, then timing 1 vs N, cached in the workspace
    per machine and spec; compile when this task's steps win the compile time back). Said on stderr:
    the worker's log (Ray's worker log, the SLURM job's log); each result records both."""
    import torch

    from mixopt.core.workspace import Workspace
    from mixopt.sweep.choose import batch_on_device, compile_on_device

    def say(line: str) -> None:
        print(f"mixopt worker {os.getpid()}: {line}", file=sys.stderr, flush=True)

    ws = Workspace(Path(task.sample_dir).parent)
    runs = len(task.runs)
    # A fractional GPU (resources.gpus 0.25): that many tasks share it, each sizes on its share.
    sharers = max(1, round(1 / task.gpus)) if 0 < task.gpus < 1 else 1
    threads = task.threads or torch.get_num_threads()
    n, rates = runs, {}
    if task.auto_batch:
        choice = batch_on_device(device, task.spec, ws, runs, 1, sharers, threads, say, task.precision)
        n, rates = max(1, min(choice.proxies, runs)), choice.rates
        say(choice.why)
    compile = task.compile
    if task.auto_compile:
        compiled = compile_on_device(device, task.spec, ws, n, runs, 1, threads, rates, say, task.precision)
        compile = compiled.compile
        say(compiled.why)
    return n, compile


class MeasurementMismatch(RuntimeError):
    """A worker's device or precision is not what the runs' keys were planned for."""


def measurement(device: str, precision: str = "auto") -> str:
    """What a run key records of training on this concrete device at this `--precision`
    (core.keys.measurement_of); bf16 on a GPU without it in hardware is refused (one line)."""
    return measurement_of(str(device).split(":")[0], precision_name(device, precision))


def planned_measurement(runtime, gpus: float = 0.0) -> str:
    """What a sweep's run keys record of where they will train, decided by the driver: on this
    machine (local), its own device as a local worker resolves it, at runtime.precision; on a
    cluster (ray/slurm) the CPU when tasks get no GPU, else a CUDA GPU in bf16 unless --precision
    fp32 (every data-centre GPU since the A100 has bf16 natively), which each worker checks
    (train_task) before it trains."""
    if runtime.backend == "local":
        return measurement(worker_device(device_of(runtime)), runtime.precision)
    if device_of(runtime, gpus) == "cpu":
        return measurement("cpu", runtime.precision)
    return measurement_of("cuda", "fp32" if runtime.precision == "fp32" else "bf16-autocast")


def context_lost(device: str) -> bool:
    """After an error on a CUDA device: is its context dead (every later kernel would fail)? Asked of
    the device itself (a synchronize), not read from the error: a sticky error is a
    torch.AcceleratorError from torch 2.8 on, a plain RuntimeError before it and from cuBLAS or
    Triton, and the same types also carry errors that leave the context usable."""
    if not str(device).startswith("cuda"):
        return False
    import torch

    try:
        torch.cuda.synchronize(device)
    except Exception:  # noqa: BLE001 - any failure to sync means the context cannot run the next task
        return True
    return False


def lose_worker(error: BaseException) -> None:
    """After a CUDA error the process's CUDA context is dead and every later task in it would fail:
    a worker process says why and exits (the backend reports it, and starts a fresh one). In the
    driver's own process the error is raised as usual."""
    import multiprocessing

    if multiprocessing.parent_process() is None and os.environ.get("MIXOPT_REMOTE_WORKER") is None:
        return
    print(f"mixopt worker {os.getpid()}: CUDA error, exiting so a fresh worker takes over: "
          f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}", file=sys.stderr, flush=True)
    os._exit(70)  # EX_SOFTWARE


def device_label(device: str) -> str:
    """The device a result was computed on, as recorded with it."""
    if not device.startswith("cuda"):
        return "cpu"
    import torch

    index = torch.device(device).index
    index = torch.cuda.current_device() if index is None else index
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def finish_run(task: TrainTask, run: TrainRun, sha256: str, losses: list[float], epochs: dict[str, float],
               train_seconds: float, eval_seconds: float, measurements: dict, batched: int = 1, device: str = "",
               precision: str = "", compiled: bool = False, failure: str = "") -> RunResult:
    """A trained run's result, also left next to its checkpoint (so a driver that dies before
    recording it adopts it instead of retraining); the run's resume state is then dropped. A
    diverged run (`failure`, no checkpoint) leaves no result file: its state is dropped all the same,
    so that a retry starts afresh."""
    spec = task.spec
    result = RunResult(key=run.key, checkpoint=run.checkpoint, sha256=sha256, losses=tuple(losses),
                       train_loss=float(np.mean(losses[-max(1, len(losses) // 10):])),
                       tokens=spec.steps * spec.batch_size * spec.seq_len, epochs=epochs,
                       train_seconds=train_seconds, eval_seconds=eval_seconds, measurements=measurements,
                       batched=batched, device=device, precision=precision, compiled=compiled, failure=failure,
                       params=param_count(spec))
    ckpt = Path(run.checkpoint)
    if sha256:
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
            lines = "".join(f"{r.key} {step - 1}\n" for r in task.runs)
            while True:
                try:
                    with open(log, "a") as f:
                        f.write(lines)
                    break
                except BrokenPipeError:  # a test's FIFO whose reader left between our open and our write:
                    continue  # open it again, which waits for the next reader (as the test means it to)
        if progress:
            progress(step, total, float(np.mean(losses)))

    return on_step


@dataclass(frozen=True)
class EvalTask:
    """Stored checkpoints of one spec that lack the same measures: loaded together and measured
    with one stacked forward pass per batch of sequences."""

    keys: tuple[str, ...]  # run keys
    checkpoints: tuple[str, ...]
    sha256s: tuple[str, ...]  # recorded when each checkpoint was written
    spec: ProxySpec
    sample_dir: str
    measures: tuple[Measure, ...]  # only the ones these runs lack
    threads: int = 0
    device: str | None = None  # None: the worker's GPU if it has one, else its CPU
    precision: str = "auto"  # the setting these runs trained under (reeval.trained_precision): measured so

    @property
    def key(self) -> str:
        """The first run's key, for progress bars."""
        return self.keys[0]


@dataclass(frozen=True)
class EvalResult:
    key: str
    measurements: dict[str, dict[str, float]]
    eval_seconds: float  # measuring: the batch's, shared out over its runs
    mismatch: str = ""  # why the checkpoint was not evaluated: missing, or not the one recorded
    load_seconds: float = 0.0  # checking and loading the checkpoint: the batch's, shared out
    measured_as: str = ""  # where and how it was measured (measurement(); '' a CPU in float32)


def eval_checkpoints(task: EvalTask, progress: Progress | None = None) -> tuple[EvalResult, ...]:
    """Load stored checkpoints (each verified against its recorded sha256) and measure what they
    lack, all at once; a checkpoint that fails the check gets a result naming why, not a number."""
    import torch

    if task.threads:
        torch.set_num_threads(task.threads)
    t0 = time.time()
    good, out = [], {}
    for key, ckpt, sha in zip(task.keys, task.checkpoints, task.sha256s):
        path = Path(ckpt)
        if not path.is_file() or file_sha256(path) != sha:
            out[key] = EvalResult(key, {}, 0.0, f"checkpoint {path} is missing or not the one recorded (sha256 differs)")
        else:
            good.append((key, path))
    if good:
        device = worker_device(task.device)
        try:
            W = load_checkpoints([p for _, p in good], device)
            t1 = time.time()
            measured = measure_models(W, task.spec, task.measures, Path(task.sample_dir), progress, precision=task.precision)
        except torch.OutOfMemoryError:
            if len(task.keys) == 1:
                raise
            # As training does: the batch again as two halves (loaded and measured separately).
            W = None
            torch.cuda.empty_cache()
            half = len(task.keys) // 2
            return tuple(r for part in (slice(0, half), slice(half, None))
                         for r in eval_checkpoints(replace(task, keys=task.keys[part], checkpoints=task.checkpoints[part],
                                                           sha256s=task.sha256s[part]), progress))
        except Exception as e:
            if not isinstance(e, torch.OutOfMemoryError) and context_lost(device):
                lose_worker(e)
            raise
        load, measure = (t1 - t0) / len(good), (time.time() - t1) / len(good)
        how = measurement(device, task.precision)
        out |= {key: EvalResult(key, m, measure, load_seconds=load, measured_as=how) for (key, _), m in zip(good, measured)}
    return tuple(out[k] for k in task.keys)


def device_of(runtime, gpus: float | None = None) -> str | None:
    """What a task asks of its worker: None (auto: the worker's GPU if it sees one) or a device. A
    ray/slurm task given no GPU (`gpus` == 0) is told the CPU: recent Ray no longer hides the node's
    GPUs from a task that asked for none, and it would use one it was not given."""
    if runtime.device != "auto":
        return runtime.device
    if runtime.backend != "local" and gpus is not None and gpus <= 0:
        return "cpu"
    return None


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


def worker_device(asked: str | None, gpus: float = 0.0) -> str:
    """The device a worker uses: what was asked (Runtime.device), or its GPU if it sees one; a local
    worker started with MIXOPT_LOCAL_WORKER=i takes GPU i mod (GPUs it sees). A task the engine gave
    GPUs (`gpus` > 0) fails here, loudly, if it sees none, instead of training on the CPU (unless
    --device cpu asked for the CPU)."""
    import torch

    seen = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus > 0 and seen == 0 and asked != "cpu":
        raise RuntimeError(f"this task was given {gpus:g} GPU but its worker sees no CUDA GPU "
                           f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}, "
                           f"torch {torch.__version__} built {'with' if torch.version.cuda else 'without'} CUDA)")
    if asked is not None and asked.startswith("cuda") and seen == 0:
        raise RuntimeError(f"device {asked} was asked for, but this worker sees no CUDA GPU")
    if asked == "cpu" or (asked is None and seen == 0):
        return "cpu"
    if asked in (None, "cuda"):
        return f"cuda:{int(os.environ.get('MIXOPT_LOCAL_WORKER', 0)) % seen}"
    return asked
