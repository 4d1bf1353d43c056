"""Train one proxy on one mixture, save its checkpoint, evaluate it: the unit of work of a sweep.

`train_run` takes a picklable RunTask and returns a plain dict, so any backend (in-process,
worker processes, Ray, SLURM) can run it; it never touches the store.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .keys import file_sha256
from .proxy import ProxySpec, build_model
from .workspace import atomic_write_bytes, atomic_write_json, fsync_dir, slice_file

TRAINER_VERSION = 1  # bump when a change alters what training computes: it is in every run key
MIN_LR_FRACTION = 0.1  # cosine decays to this fraction of the peak learning rate
RESUME_SAVES = 10  # training state saved this many times per run: a kill loses <= 1/10 of a run


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


def mixture_sequences(weights, lengths: list[int], spec: ProxySpec, rng: np.random.Generator):
    """(domain index, start offset) of every training sequence, shuffled.

    Sequence counts per domain are the weights x total, rounded by largest remainder, so a run
    sees exactly its mixture. Within a domain, windows of seq_len + 1 tokens are drawn without
    replacement and repeat (a new permutation each epoch) only if the slice is too small.
    """
    total = spec.steps * spec.batch_size
    raw = np.asarray(weights) * total
    counts = np.floor(raw).astype(int)
    counts[np.argsort(-(raw - counts), kind="stable")[: total - counts.sum()]] += 1
    pairs, epochs = [], []
    for d, (n, length) in enumerate(zip(counts, lengths)):
        windows = (length - 1) // spec.seq_len
        if n == 0:
            epochs.append(0.0)
            continue
        if windows == 0:
            raise ValueError(f"domain {d}: train slice of {length} tokens is shorter than seq_len {spec.seq_len}")
        reps = -(-n // windows)
        idx = np.concatenate([rng.permutation(windows) for _ in range(reps)])[:n]
        pairs.append(np.stack([np.full(n, d), idx * spec.seq_len], axis=1))
        epochs.append(n / windows)
    seqs = np.concatenate(pairs)
    return seqs[rng.permutation(len(seqs))], epochs


def lr_at(step: int, spec: ProxySpec) -> float:
    """Linear warmup, then cosine decay to MIN_LR_FRACTION of the peak."""
    warm = max(1, round(spec.warmup * spec.steps))
    if step < warm:
        return spec.lr * (step + 1) / warm
    t = (step - warm) / max(1, spec.steps - warm)
    return spec.lr * (MIN_LR_FRACTION + (1 - MIN_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * t)))


def train_proxy(spec: ProxySpec, weights, streams: list[np.ndarray], seed: int,
                progress: Callable[[int, int, float], None] | None = None,
                state_path: Path | None = None, tag: str = "", device: str = "cpu"):
    """Train a fresh proxy; return (model, per-step losses, epochs per domain).

    With `state_path`, the training state (weights, optimizer, step, losses) is saved there every
    ~10% of the steps, and a run that finds one resumes from it: a killed run loses at most that
    much work, and computes exactly what an uninterrupted run computes (no other randomness)."""
    import torch

    rng = np.random.default_rng([seed, 2])
    seqs, epochs = mixture_sequences(weights, [len(s) for s in streams], spec, rng)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the same initial weights for every mixture: less noise between runs
        model = build_model(spec).to(device)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": spec.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=spec.lr, betas=(0.9, 0.95))
    width = spec.seq_len + 1
    losses: list[float] = []
    start = 0
    every = max(1, -(-spec.steps // RESUME_SAVES))
    if state_path is not None:
        start, losses = _load_state(state_path, model, opt, spec)
    work_log = os.environ.get("MIXOPT_WORK_LOG")  # tests: one line per trained step, across attempts
    for step in range(start, spec.steps):
        batch = seqs[step * spec.batch_size:(step + 1) * spec.batch_size]
        x = torch.from_numpy(np.stack([streams[d][s:s + width] for d, s in batch]).astype(np.int64)).to(device)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, spec)
        loss = _causal_loss(model, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if work_log:
            with open(work_log, "a") as f:
                f.write(f"{tag} {step}\n")
        if state_path is not None and (step + 1) % every == 0 and step + 1 < spec.steps:
            _save_state(state_path, model, opt, spec, step + 1, losses)
        if progress:
            progress(step + 1, spec.steps, losses[-1])
    return model, losses, epochs


def _save_state(path: Path, model, opt, spec: ProxySpec, step: int, losses: list[float]) -> None:
    """Serialized in memory, then written by Python: a full disk raises a plain OSError (ENOSPC,
    EFBIG) that the driver recognizes, not torch's opaque writer error."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save({"spec": spec.to_dict(), "step": step, "losses": losses, "model": model.state_dict(),
                "opt": opt.state_dict()}, buf)
    atomic_write_bytes(path, buf.getbuffer())


def _load_state(path: Path, model, opt, spec: ProxySpec) -> tuple[int, list[float]]:
    """(first step to train, losses so far); (0, []) if there is no usable state."""
    import torch

    if not path.is_file():
        return 0, []
    try:
        st = torch.load(path, weights_only=True, map_location=next(model.parameters()).device)
        if st["spec"] != spec.to_dict() or not 0 < st["step"] < spec.steps or len(st["losses"]) != st["step"]:
            return 0, []
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        return int(st["step"]), list(st["losses"])
    except Exception:  # a torn or foreign file: start over rather than fail the run
        return 0, []


def _causal_loss(model, x):
    import torch.nn.functional as F

    logits = model(input_ids=x[:, :-1]).logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), x[:, 1:].reshape(-1))


def save_checkpoint(model, path: Path) -> str:
    """safetensors to a temp file, fsync, rename; returns the file's sha256."""
    from safetensors.torch import save_model

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_model(model, str(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return file_sha256(path)


def result_path(checkpoint: Path) -> Path:
    return checkpoint.with_suffix(".json")


def state_path(checkpoint: Path) -> Path:
    """Where an unfinished run keeps its training state."""
    return checkpoint.with_suffix(".resume.pt")


def train_run(task: RunTask, progress: Callable[[int, int, float], None] | None = None) -> dict:
    """Train, checkpoint and evaluate one run; the result is also written next to the checkpoint,
    so a driver that dies before recording it can adopt it instead of retraining."""
    import torch

    from .evals import measure_model

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


def read_result(checkpoint: Path) -> dict | None:
    """A finished run's result left next to its checkpoint, if the checkpoint matches it."""
    side = result_path(checkpoint)
    if not (side.is_file() and checkpoint.is_file()):
        return None
    try:
        result = json.loads(side.read_text())
    except json.JSONDecodeError:
        return None
    return result if result.get("sha256") == file_sha256(checkpoint) else None
