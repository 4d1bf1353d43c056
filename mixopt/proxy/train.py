"""Train proxies: the data order of a run, the learning-rate schedule, and the one training loop
(N >= 1 proxies over stacked weights) with its resume state.

Knows nothing of the store or the backends: it takes a spec, mixtures and token streams.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mixopt.core.workspace import atomic_write_bytes
from mixopt.proxy.loss import chunk_rows, chunked_losses, token_losses
from mixopt.proxy.model import ProxySpec, build_model, forward_hidden, forward_logits, stack_weights

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


STAGE_BYTES = 64 << 20  # host bytes of token windows gathered (and on a GPU, pinned) at once


def _stage_tokens(streams: list[np.ndarray], rows: np.ndarray, width: int, device: str):
    """rows [..., 2] (domain, start offset) -> their token windows [..., width] as int64 on `device`,
    gathered with one fancy index per domain (not one slice per sequence). On a GPU they are gathered
    straight into pinned memory and copied without blocking: the copy overlaps the steps queued
    before it, and the caching host allocator keeps the buffer until the copy is done."""
    import torch

    flat = rows.reshape(-1, 2)
    if str(device).startswith("cuda"):
        xt = torch.empty((len(flat), width), dtype=torch.int64, pin_memory=True)
        x = xt.numpy()
    else:
        x = np.empty((len(flat), width), dtype=np.int64)
        xt = torch.from_numpy(x)
    offsets = np.arange(width)
    for d in np.unique(flat[:, 0]):
        own = flat[:, 0] == d
        x[own] = streams[d][flat[own, 1][:, None] + offsets]
    xt = xt.view(*rows.shape[:-1], width)
    return xt.to(device, non_blocking=True) if str(device).startswith("cuda") else xt


def _interval_rows(plans, first: int, last: int, batch: int) -> np.ndarray:
    """Steps first..last-1's sequences of every proxy, [steps, N, batch, 2]: what one _stage_tokens
    call gathers for a stretch of the loop."""
    return np.stack([seqs[first * batch:last * batch].reshape(last - first, batch, 2) for seqs, _ in plans], axis=1)


def lr_at(step: int, spec: ProxySpec) -> float:
    """Linear warmup, then cosine decay to MIN_LR_FRACTION of the peak."""
    warm = max(1, round(spec.warmup * spec.steps))
    if step < warm:
        return spec.lr * (step + 1) / warm
    t = (step - warm) / max(1, spec.steps - warm)
    return spec.lr * (MIN_LR_FRACTION + (1 - MIN_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * t)))


# (steps done, total steps, each proxy's loss at that step): called once per step, in order, but in
# bursts at each save point (~1/RESUME_SAVES of a run), where the loop reads its losses off the device.
OnStep = Callable[[int, int, list[float]], None]


def train_proxies(spec: ProxySpec, mixtures: list, streams: list[np.ndarray], seed: int, device: str = "cpu",
                  on_step: OnStep | None = None, states: list[Path] | None = None, precision: str = "auto",
                  compile: bool = False):
    """Train len(mixtures) >= 1 fresh proxies together; returns (stacked weights, each proxy's
    per-step losses, each proxy's epochs per domain).

    A proxy whose loss turns NaN or infinite has diverged (`divergence` says where): it learns nothing
    more while the others train on, and once every proxy of the batch has diverged the loop stops
    early (the losses then end there). The losses stay on the device between save points (no sync
    a step): the check runs there, and the host reads and attributes them at each save point, so
    the loop stops at the save point after the last divergence, with the losses cut where it was.
    With `states` (one path per proxy), the training state is saved there every ~1/RESUME_SAVES of
    the steps, and a batch whose proxies all have state at the same step resumes from it: a killed
    run loses at most that much work, and computes exactly what an uninterrupted run computes.
    `precision` is the one precision policy's setting (autocast_dtype: auto, fp32 or bf16).
    `compile` runs the forward through torch.compile (compiled_forward): the same computation,
    rounded differently (within float noise, not bitwise: see docs/howto/gpus.md, "Determinism")."""
    import torch

    n = len(mixtures)
    amp = autocast_dtype(device, precision)
    plans = [mixture_sequences(w, [len(s) for s in streams], spec, np.random.default_rng([seed, 2])) for w in mixtures]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the same initial weights for every mixture: less noise between runs
        W = {k: v.detach().to(device).requires_grad_(True) for k, v in stack_weights(build_model(spec), n).items()}
    decay = [v for v in W.values() if v.ndim >= 3]  # matrices (per proxy: ndim >= 2)
    no_decay = [v for v in W.values() if v.ndim < 3]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": spec.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=spec.lr, betas=(0.9, 0.95))
    start, losses = _load_state(states, W, opt, spec) if states else (0, [[] for _ in range(n)])
    # Above CHUNK_LOGITS the output layer and the loss run in chunks of tokens (chunked_losses):
    # the N x batch x seq x vocab logits, their float32 copy and their gradient never exist whole.
    chunk = chunk_rows(n, spec)
    forward = compiled_forward(hidden=bool(chunk)) if compile else forward_hidden if chunk else forward_logits
    every = max(1, -(-spec.steps // RESUME_SAVES))
    width = spec.seq_len + 1
    dead = [bool(divergence(own, spec.steps)) for own in losses]  # a resumed proxy may have diverged already
    if all(dead):  # nothing left worth a step: each diverged proxy's losses end at its first non-finite one
        return W, losses, [epochs for _, epochs in plans]
    # On the device, per step: which proxies have diverged (their gradients are zeroed) and this
    # interval's losses. The host reads them once per save point, not once a step (a GPU sync).
    dead_now = torch.tensor(dead, device=device)
    pending = []
    # Token windows are gathered ahead, a save interval (at most STAGE_BYTES) at a time, not per step.
    stage = max(1, min(every, STAGE_BYTES // (8 * n * spec.batch_size * width)))
    staged, staged_from = None, start
    for step in range(start, spec.steps):
        if staged is None or step - staged_from == len(staged):
            last = min(spec.steps, step + stage, (step // every + 1) * every)
            staged, staged_from = _stage_tokens(streams, _interval_rows(plans, step, last, spec.batch_size),
                                                width, device), step
        xt = staged[step - staged_from]
        for group in opt.param_groups:
            group["lr"] = lr_at(step, spec)
        with torch.autocast(device_type=device.split(":")[0], dtype=amp or torch.float32, enabled=amp is not None):
            out = forward(W, xt[:, :, :-1], spec)  # the final hidden states when chunked, else the logits
        if chunk:
            ce = chunked_losses()(out.reshape(n, -1, out.shape[-1]), W["model.embed_tokens.weight"],
                                  xt[:, :, 1:].reshape(n, -1), chunk, amp)
        else:
            ce = token_losses()(out.float().reshape(-1, out.shape[-1]), xt[:, :, 1:].reshape(-1))
        ce = ce.view(n, -1).mean(dim=1)  # one loss per proxy
        opt.zero_grad(set_to_none=True)
        ce.sum().backward()  # proxies share no weights: each gets exactly its own gradient
        del out  # not kept alive into the next step's forward (N x batch x seq x vocab logits)
        if n > 1:  # a diverged proxy stays in the stacked weights (the loop cannot drop it) but learns nothing
            _zero_grads(list(W.values()), dead_now)
        _clip_per_proxy(list(W.values()), 1.0)
        opt.step()
        ce = ce.detach()
        pending.append(ce)
        dead_now |= ~torch.isfinite(ce)
        if (step + 1) % every and step + 1 < spec.steps:
            continue
        # A save point (or the end): the one host copy of the interval's losses.
        if _take_losses(pending, losses, dead, step + 1 - len(pending), spec.steps, on_step):
            break  # every proxy has diverged: the losses end at the step the last one did
        pending = []
        if states and step + 1 < spec.steps:
            _save_state(states, W, opt, spec, step + 1, losses)
    return W, losses, [epochs for _, epochs in plans]


def divergence(losses: list[float], steps: int) -> str:
    """Why a proxy's training is no use ('' when every loss is finite): it diverged, at the step of its
    first non-finite loss."""
    for i, loss in enumerate(losses):
        if not math.isfinite(loss):
            return f"diverged: loss is {loss} at step {i + 1} of {steps}"
    return ""


def _take_losses(pending: list, losses: list[list[float]], dead: list[bool], first: int, total: int,
                 on_step: OnStep | None) -> bool:
    """Copy an interval's per-step losses ([N] tensors on the device, steps first+1 ...) to the host
    in one transfer, append them to each proxy's losses and call on_step for each step, in order.
    True when every proxy has diverged: the losses (and the on_step calls) then end at the step
    where the last one's loss first turned non-finite, as if the loop had stopped right there."""
    import torch

    for k, row in enumerate(torch.stack(pending).tolist()):
        for i, loss in enumerate(row):
            losses[i].append(loss)
            dead[i] = dead[i] or not math.isfinite(loss)
        if on_step:
            on_step(first + k + 1, total, row)
        if all(dead):
            return True
    return False


def _zero_grads(params, dead) -> None:
    """No gradient for the diverged proxies (`dead`, a bool [N] on the device): a NaN or infinite
    gradient stays out of the clipping and AdamW arithmetic, which the other proxies share. Where
    no proxy has diverged it leaves every gradient as it was, bit for bit."""
    for p in params:
        p.grad.masked_fill_(dead.view(-1, *([1] * (p.ndim - 1))), 0.0)


@functools.cache
def compiled_forward(hidden: bool = False):
    """forward_logits (or with `hidden`, forward_hidden: for the chunked loss) through torch.compile
    (inductor), one per process: a worker compiles on its first step and reuses the compiled code
    for every later batch of the same shapes.

    The compiled forward computes the same function, rounded differently (fused kernels sum in
    another order): losses agree with eager within float noise, not bitwise. Whether a run was
    compiled is recorded with its result (RunResult.compiled), as its device and precision are, and
    is NOT in the run key: the key names what is computed (data, mixture, spec, seed, trainer), and
    `--compile auto` decides by timing, so a key holding it would make the same config's runs
    depend on machine speed and retrain finished runs on a faster or slower machine."""
    import torch

    return torch.compile(forward_hidden if hidden else forward_logits)


# `--precision`: auto (the policy below), fp32 or bf16. No fp16: autocast in float16 needs loss scaling
# (a GradScaler), which the one loop does not do; bf16 has float32's range and needs none.
PRECISIONS = ("auto", "fp32", "bf16")


def autocast_dtype(device: str, precision: str = "auto"):
    """The one precision policy, for training and evaluation, N = 1 or many. `auto`: bf16 autocast on
    a CUDA GPU that has bf16 in hardware (weights, AdamW state and the loss stay float32), plain
    float32 elsewhere; `fp32`: float32 everywhere; `bf16`: bf16 autocast on the CPU (torch's CPU
    autocast: native on CPUs with bf16 instructions, emulated and slower on the others) or on a GPU
    with native bf16, refused on a GPU without (its emulated bf16 is slower than its float32).
    CPU float32 runs are bitwise reproducible; GPU runs agree within tolerance (docs/howto/gpus.md, "Determinism")."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    gpu = str(device).startswith("cuda")
    if precision == "fp32":
        return None
    if precision == "bf16":
        if gpu and not _native_bf16():
            from mixopt.errors import MixoptError

            major, minor = torch.cuda.get_device_capability(device)
            raise MixoptError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no bf16 in hardware "
                              f"(compute capability {major}.{minor} < 8.0): its bf16 is emulated, slower than its "
                              "float32", "use --precision fp32 (or auto, which trains it in float32)")
        return torch.bfloat16
    if gpu and torch.cuda.is_available() and _native_bf16():
        return torch.bfloat16
    return None


def _native_bf16() -> bool:
    """bf16 in hardware (compute capability >= 8.0): a V100 or T4 reports bf16 "supported" by
    emulation, several times slower than its float32, so those train in float32."""
    import torch

    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch < 2.3: no emulation to tell apart; the capability says it
        return torch.cuda.get_device_capability()[0] >= 8


def precision_name(device: str, precision: str = "auto") -> str:
    """What autocast_dtype means on `device`, as recorded with each result and in its key."""
    return "bf16-autocast" if autocast_dtype(device, precision) is not None else "fp32"


def _save_state(paths: list[Path], W: dict, opt, spec: ProxySpec, step: int, losses: list[list[float]]) -> None:
    """Each proxy's slice of the weights and AdamW moments to its own file. Serialized in memory,
    then written by Python: a full disk raises a plain OSError (ENOSPC, EFBIG) with its errno."""
    import io

    import torch

    for i, path in enumerate(paths):
        def own(t):
            return t[i].detach().to("cpu", copy=True)  # a copy: saving a view would save all N

        buf = io.BytesIO()
        torch.save({"spec": spec.to_dict(), "step": step, "losses": losses[i],
                    "weights": {k: own(w) for k, w in W.items()},
                    "exp_avg": {k: own(opt.state[w]["exp_avg"]) for k, w in W.items()},
                    "exp_avg_sq": {k: own(opt.state[w]["exp_avg_sq"]) for k, w in W.items()}}, buf)
        atomic_write_bytes(path, buf.getbuffer())


def _load_state(paths: list[Path], W: dict, opt, spec: ProxySpec) -> tuple[int, list[list[float]]]:
    """(first step to train, each proxy's losses so far); a fresh start unless every proxy has a
    usable state at the same step."""
    import torch

    fresh = (0, [[] for _ in paths])
    if not all(p.is_file() for p in paths):
        return fresh
    try:
        # On the CPU first: AdamW state loaded onto a GPU through map_location syncs every step.
        states = [torch.load(p, weights_only=True, map_location="cpu") for p in paths]
        step = states[0]["step"]
        if not 0 < step < spec.steps or any(st["spec"] != spec.to_dict() or st["step"] != step
                                            or len(st["losses"]) != step for st in states):
            return fresh
        loaded = {part: {k: torch.stack([st[part][k] for st in states]) for k in W}
                  for part in ("weights", "exp_avg", "exp_avg_sq")}
    except Exception:  # a torn, foreign or older-format file: start over rather than fail the run
        return fresh
    with torch.no_grad():
        for k, w in W.items():
            w.copy_(loaded["weights"][k].to(w.device))
            # What AdamW itself keeps: a CPU float step count and the two moments.
            opt.state[w] = {"step": torch.tensor(float(step)), "exp_avg": loaded["exp_avg"][k].to(w.device),
                            "exp_avg_sq": loaded["exp_avg_sq"][k].to(w.device)}
    return step, [list(st["losses"]) for st in states]


def _clip_per_proxy(params, max_norm: float) -> None:
    """torch.nn.utils.clip_grad_norm_ applied to each proxy's gradients separately (and computed as
    it does: the norm of the per-tensor norms), with foreach kernels: one norm over every proxy's
    row of every tensor and one scaling per proxy, not ~3 kernels per tensor (launch-bound on a
    GPU at N = 1). On a CPU it computes what the per-tensor loop did, bit for bit."""
    import torch

    n = params[0].shape[0]
    rows = [p.grad[i] for p in params for i in range(n)]  # tensor-major: [P x N] as the norms stack below
    norms = torch.stack(torch._foreach_norm(rows)).view(len(params), n).norm(dim=0)  # [N]
    coef = torch.clamp(max_norm / (norms + 1e-6), max=1.0)
    for i in range(n):
        torch._foreach_mul_(rows[i::n], coef[i])


def proxies_per_batch(spec: ProxySpec, device: str, cap: int = 64, sharers: int = 1, precision: str = "auto") -> int:
    """How many proxies fit: 1 on CPU; on a GPU, what 80% of its free memory, shared by `sharers`
    workers training on it at once, holds at the per-proxy and fixed bytes a one-step dry run at
    N = 1 and N = 2 measured (memory_per_proxy, at `precision`)."""
    if not device.startswith("cuda"):
        return 1
    import torch

    free = torch.cuda.mem_get_info(torch.device(device))[0] / max(1, sharers)
    fixed, per = memory_per_proxy(spec, device, precision)
    return int(max(1, min(cap, (0.8 * free - fixed) // per)))


@functools.cache
def memory_per_proxy(spec: ProxySpec, device: str, precision: str = "auto") -> tuple[int, int]:
    """(fixed bytes, bytes per proxy) of training `spec` on a CUDA device, from the peak memory of
    one real step at N = 1 and at N = 2 (weights, gradients, AdamW moments, activations, logits
    and the loss's temporaries all included, as the allocator sees them), at `precision`."""
    import torch

    one_step = _dry_spec(spec)
    streams = [np.arange(one_step.seq_len * one_step.batch_size * 2 + 1, dtype=np.int64) % spec.vocab_size]
    peaks = []
    for n in (1, 2):
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        try:
            W, _, _ = train_proxies(one_step, [(1.0,)] * n, streams, 0, device, precision=precision)
        except torch.OutOfMemoryError:
            if n == 1:
                raise  # not even one proxy fits: the sweep's own training says so, per run
            # Two do not fit where one does: count all of one proxy's peak as "per proxy", so the
            # batch comes out at 1 (or what the free memory holds at that rate), never a crash.
            torch.cuda.empty_cache()
            return 0, max(1, peaks[0])
        del W
        peaks.append(torch.cuda.max_memory_allocated(device) - base)
    torch.cuda.empty_cache()
    per = max(1, peaks[1] - peaks[0])
    return max(0, peaks[0] - per), per


def _dry_spec(spec: ProxySpec) -> ProxySpec:
    """The spec for one training step (the same shapes)."""
    from dataclasses import replace

    return replace(spec, tokens=spec.seq_len * spec.batch_size)
