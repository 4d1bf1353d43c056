"""Train many proxies of one architecture at once: every weight stacked along a leading proxy axis,
one forward/backward per step for all of them (batched matmuls), each with its own data stream,
optimizer state and gradient clipping. It computes what `train.train_proxy` computes for each
proxy (tests/test_batched.py compares them step by step); it is faster only on a GPU, where one
tiny proxy leaves most of the device idle. On CPU `mixopt sweep` trains one proxy per process.

The forward pass is Llama's, as transformers implements it for our proxies (RMSNorm in float32,
rotary embeddings, causal SDPA, SwiGLU, tied output embedding), written over stacked weights.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .proxy import ProxySpec, build_model, mlp_width
from .train import RunTask, lr_at, mixture_sequences, result_path, save_checkpoint
from .workspace import atomic_write_json, slice_file

RMS_EPS = 1e-6  # LlamaConfig's default, which build_model keeps
ROPE_THETA = 10000.0
PER_PROXY_BYTES = 16  # fp32 weight + grad + two AdamW moments, per parameter


def stack_weights(model, n: int) -> dict:
    """Every parameter of `model` repeated n times along a new axis 0, as leaf tensors."""
    return {name: p.detach().unsqueeze(0).repeat(n, *([1] * p.ndim)).clone().requires_grad_(True)
            for name, p in model.named_parameters()}


def forward_logits(W: dict, x, spec: ProxySpec):
    """x: [N, B, T] token ids -> logits [N, B, T, V]."""
    import torch
    import torch.nn.functional as F

    n, b, t = x.shape
    heads, hd = spec.heads, spec.hidden // spec.heads
    emb = W["model.embed_tokens.weight"]  # [N, V, H]
    h = emb[torch.arange(n, device=x.device)[:, None, None], x]  # [N, B, T, H]
    cos, sin = _rope(t, hd, x.device, h.dtype)
    for i in range(spec.layers):
        p = f"model.layers.{i}."
        a = _rms(h, W[p + "input_layernorm.weight"])
        q, k, v = (_linear(a, W[p + f"self_attn.{m}_proj.weight"]) for m in "qkv")
        q, k, v = (z.view(n * b, t, heads, hd).transpose(1, 2) for z in (q, k, v))
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        o = o.transpose(1, 2).reshape(n, b, t, spec.hidden)
        h = h + _linear(o, W[p + "self_attn.o_proj.weight"])
        m = _rms(h, W[p + "post_attention_layernorm.weight"])
        gate, up = _linear(m, W[p + "mlp.gate_proj.weight"]), _linear(m, W[p + "mlp.up_proj.weight"])
        h = h + _linear(F.silu(gate) * up, W[p + "mlp.down_proj.weight"])
    h = _rms(h, W["model.norm.weight"])
    return _linear(h, emb)  # tied output embedding


def _linear(x, w):
    """x [N, ..., in] @ w[N, out, in]^T, one batched matmul for all proxies."""
    n = x.shape[0]
    return (x.reshape(n, -1, x.shape[-1]) @ w.transpose(1, 2)).reshape(*x.shape[:-1], w.shape[1])


def _rms(x, w):
    import torch

    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + RMS_EPS)
    return w[:, None, None, :] * xf.to(x.dtype)


def _rope(t: int, hd: int, device, dtype):
    import torch

    inv = 1.0 / (ROPE_THETA ** (torch.arange(0, hd, 2, dtype=torch.int64, device=device).float() / hd))
    freqs = torch.arange(t, device=device).float()[:, None] * inv[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x):
    import torch

    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


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


def unstack(W: dict, i: int, spec: ProxySpec):
    """Proxy i of a stacked set, as the transformers model `train_proxy` would have returned."""
    import torch

    model = build_model(spec)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(W[name][i].detach().float().cpu())
    return model


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

    from .evals import measure_model

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


def model_flops_per_token(spec: ProxySpec) -> float:
    """Training FLOPs per token: 6 x parameters (weights, including the output layer) plus attention."""
    params = spec.layers * (4 * spec.hidden ** 2 + 3 * spec.hidden * mlp_width(spec.hidden)) + spec.vocab_size * spec.hidden
    return 6 * params + 12 * spec.layers * spec.hidden * spec.seq_len


