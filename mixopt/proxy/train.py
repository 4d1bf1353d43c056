"""Train proxies: the data order of a run, the learning-rate schedule, and the training loop.

Knows nothing of the store or the backends: it takes a spec, mixtures and token streams.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mixopt.core.workspace import atomic_write_bytes
from mixopt.proxy.model import ProxySpec, build_model, forward_logits, stack_weights

TRAINER_VERSION = 1  # bump when a change alters what training computes: it is in every run key


MIN_LR_FRACTION = 0.1  # cosine decays to this fraction of the peak learning rate


RESUME_SAVES = 10  # training state saved this many times per run: a kill loses <= 1/10 of a run


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


PER_PROXY_BYTES = 16  # fp32 weight + grad + two AdamW moments, per parameter


def train_proxies(spec: ProxySpec, mixtures: list, streams: list[np.ndarray], seed: int, device: str = "cpu",
                  progress: Callable[[int, int, float], None] | None = None, autocast: bool = False):
    """Train len(mixtures) proxies together; returns (stacked weights, losses [steps][N], epochs per proxy)."""
    import torch
    import torch.nn.functional as F

    n = len(mixtures)
    plans = [mixture_sequences(w, [len(s) for s in streams], spec, np.random.default_rng([seed, 2])) for w in mixtures]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the same initial weights as train_proxy gives every proxy
        base = build_model(spec)
    W = {k: v.to(device).detach().requires_grad_(True) for k, v in stack_weights(base, n).items()}
    decay = [v for k, v in W.items() if v.ndim >= 3]  # matrices (per proxy: ndim >= 2)
    no_decay = [v for k, v in W.items() if v.ndim < 3]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": spec.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=spec.lr, betas=(0.9, 0.95))
    width = spec.seq_len + 1
    losses = []
    for step in range(spec.steps):
        rows = [seqs[step * spec.batch_size:(step + 1) * spec.batch_size] for seqs, _ in plans]
        x = np.stack([np.stack([streams[d][s:s + width] for d, s in r]) for r in rows]).astype(np.int64)
        xt = torch.from_numpy(x).to(device, non_blocking=True)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, spec)
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=autocast):
            logits = forward_logits(W, xt[:, :, :-1], spec)
        ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), xt[:, :, 1:].reshape(-1),
                             reduction="none").view(n, -1).mean(dim=1)  # one loss per proxy
        opt.zero_grad(set_to_none=True)
        ce.sum().backward()  # proxies share no weights: each gets exactly its own gradient
        _clip_per_proxy(list(W.values()), 1.0)
        opt.step()
        losses.append(ce.detach().float().cpu().tolist())
        if progress:
            progress(step + 1, spec.steps, float(np.mean(losses[-1])))
    return W, losses, [epochs for _, epochs in plans]


def _clip_per_proxy(params, max_norm: float) -> None:
    """torch.nn.utils.clip_grad_norm_ applied to each proxy's gradients separately."""
    import torch

    sq = sum(p.grad.reshape(p.shape[0], -1).float().pow(2).sum(dim=1) for p in params)
    coef = torch.clamp(max_norm / (sq.sqrt() + 1e-6), max=1.0)
    for p in params:
        p.grad.mul_(coef.view(-1, *([1] * (p.ndim - 1))).to(p.grad.dtype))


def proxies_per_batch(spec: ProxySpec, device: str, cap: int = 64) -> int:
    """How many proxies fit: 1 on CPU (batching is slower there); on a GPU, what 80% of free
    memory holds at PER_PROXY_BYTES per parameter plus activations."""
    if not device.startswith("cuda"):
        return 1
    import torch

    free, _ = torch.cuda.mem_get_info()
    params = sum(p.numel() for p in build_model(spec).parameters())
    acts = spec.batch_size * spec.seq_len * (spec.layers * spec.hidden * 34 + spec.vocab_size * 3) * 4  # bytes
    return int(max(1, min(cap, 0.8 * free // (params * PER_PROXY_BYTES + acts))))
