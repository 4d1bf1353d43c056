"""Proxy models: the spec (one size dial), a LlamaForCausalLM built from it (never downloaded) for
the initial weights and the checkpoints' names, and the one forward pass, over weights stacked on a
leading proxy axis, that trains and evaluates N >= 1 proxies at once. It is Llama's as transformers
implements it for our proxies (RMSNorm in float32, rotary embeddings, causal SDPA, SwiGLU, tied
output embedding)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from mixopt.config.schema import Proxy


@dataclass(frozen=True)
class ProxySpec:
    """Everything that defines a proxy and its training; part of every run's key."""

    size: str
    hidden: int
    layers: int
    heads: int
    seq_len: int
    batch_size: int
    lr: float
    warmup: float
    weight_decay: float
    tokens: int
    vocab_size: int
    intermediate: int | None = None  # the MLP's width when a model config gives it; None: mlp_width(hidden)

    @property
    def steps(self) -> int:
        return max(1, self.tokens // (self.seq_len * self.batch_size))

    def to_dict(self) -> dict:
        """What the run key hashes: a built-in size's spec as before model configs existed (no
        `intermediate`), so its runs keep their keys."""
        d = asdict(self)
        if d["intermediate"] is None:
            del d["intermediate"]
        return d

    @property
    def mlp(self) -> int:
        return self.intermediate or mlp_width(self.hidden)


# size -> (hidden, layers, heads, seq_len, batch, lr). Non-embedding params ~ 12 x layers x hidden^2.
SIZES = {
    "tiny": (64, 2, 2, 128, 16, 3e-3),  # ~0.1M: tests and the CPU demo
    "1m": (128, 5, 4, 256, 16, 2e-3),  # ~1M, RegMix's smallest proxy
    "5m": (256, 6, 4, 256, 32, 1.5e-3),
    "15m": (384, 8, 6, 512, 32, 1e-3),
    "30m": (512, 10, 8, 512, 64, 8e-4),  # ~30M, Olmix's proxy scale
    "60m": (640, 12, 10, 1024, 64, 6e-4),  # ~59M non-embedding: GPU proxies
    "150m": (1024, 12, 16, 1024, 64, 4e-4),  # ~151M non-embedding, GPT-2 small's shape
}


def proxy_spec(cfg: Proxy, vocab_size: int, model_config: dict | None = None) -> ProxySpec:
    """The spec of `cfg.size`, or of a user's model config (config.validate.read_model_config's
    dict for cfg.hf_config): its shape, with the sequence length, batch and learning rate of the
    built-in size nearest in non-embedding parameters (each overridable by proxy.seq_len, ...)."""
    if model_config is None:
        size, (hidden, layers, heads, seq_len, batch, lr), mlp = cfg.size, SIZES[cfg.size], None
    else:
        hidden, layers, heads, mlp = (model_config[k] for k in ("hidden", "layers", "heads", "intermediate"))
        own = layers * (4 * hidden * hidden + 3 * hidden * mlp)
        near = min(SIZES.values(), key=lambda v: abs(math.log(own / (v[1] * (4 * v[0] ** 2 + 3 * v[0] * mlp_width(v[0]))))))
        seq_len, batch, lr = near[3:]
        size = f"config:{Path(cfg.hf_config).stem}"
    return ProxySpec(size=size, hidden=hidden, layers=layers, heads=heads,
                     seq_len=cfg.seq_len or seq_len, batch_size=cfg.batch_size or batch, lr=cfg.lr or lr,
                     warmup=cfg.warmup, weight_decay=cfg.weight_decay, tokens=cfg.tokens, vocab_size=vocab_size,
                     intermediate=mlp)


def build_model(spec: ProxySpec):
    """A fresh model; the caller seeds torch's RNG (initial weights come from it)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=spec.vocab_size, hidden_size=spec.hidden, num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads, num_key_value_heads=spec.heads,
        intermediate_size=spec.mlp, max_position_embeddings=spec.seq_len,
        tie_word_embeddings=True,  # the output layer dominates tiny models; tying halves it
        attention_dropout=0.0,  # any dropout forces the slow attention path
        rope_theta=ROPE_THETA, use_cache=False,
    )
    config._attn_implementation = "sdpa"
    return LlamaForCausalLM(config)


def param_count(spec: ProxySpec) -> int:
    """build_model(spec)'s parameters (the output layer tied to the embedding), without building it."""
    h, f = spec.hidden, spec.mlp
    return spec.vocab_size * h + spec.layers * (4 * h * h + 3 * h * f + 2 * h) + h


def mlp_width(hidden: int) -> int:
    return max(8, (hidden * 8 // 3 + 7) // 8 * 8)  # SwiGLU's 8/3 x hidden, rounded to 8


RMS_EPS = 1e-6  # LlamaConfig's default, which build_model keeps


ROPE_THETA = 10000.0


def stack_weights(model, n: int) -> dict:
    """Every parameter of `model` repeated n times along a new axis 0, as leaf tensors."""
    return {name: p.detach().unsqueeze(0).repeat(n, *([1] * p.ndim)).clone().requires_grad_(True)
            for name, p in model.named_parameters()}


def forward_hidden(W: dict, x, spec: ProxySpec):
    """x: [N, B, T] token ids -> final (normed) hidden states [N, B, T, H]."""
    import torch
    import torch.nn.functional as F

    n, b, t = x.shape
    heads, hd = spec.heads, spec.hidden // spec.heads
    emb = W["model.embed_tokens.weight"]  # [N, V, H]
    # One lookup into the N tables laid end to end: F.embedding's backward is a dense scatter-add,
    # cheaper than the backward of advanced indexing.
    offsets = torch.arange(n, device=x.device).view(n, 1, 1) * emb.shape[1]
    h = F.embedding(x + offsets, emb.reshape(-1, emb.shape[-1]))  # [N, B, T, H]
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
    return _rms(h, W["model.norm.weight"])


def forward_logits(W: dict, x, spec: ProxySpec):
    """x: [N, B, T] token ids -> logits [N, B, T, V]."""
    return project(W, forward_hidden(W, x, spec))


def project(W: dict, h):
    """Hidden states [N, ..., H] -> logits [N, ..., V] through the tied output embedding."""
    return _linear(h, W["model.embed_tokens.weight"])


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
