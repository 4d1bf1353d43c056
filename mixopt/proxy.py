"""Proxy models: a LlamaForCausalLM built from a config (never downloaded), sized by one dial."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .config import Proxy


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

    @property
    def steps(self) -> int:
        return max(1, self.tokens // (self.seq_len * self.batch_size))

    def to_dict(self) -> dict:
        return asdict(self)


# size -> (hidden, layers, heads, seq_len, batch, lr). Non-embedding params ~ 12 x layers x hidden^2.
SIZES = {
    "tiny": (64, 2, 2, 128, 16, 3e-3),  # ~0.1M: tests and the CPU demo
    "1m": (128, 5, 4, 256, 16, 2e-3),  # ~1M, RegMix's smallest proxy
    "5m": (256, 6, 4, 256, 32, 1.5e-3),
    "15m": (384, 8, 6, 512, 32, 1e-3),
    "30m": (512, 10, 8, 512, 64, 8e-4),  # ~30M, Olmix's proxy scale
}


def proxy_spec(cfg: Proxy, vocab_size: int) -> ProxySpec:
    hidden, layers, heads, seq_len, batch, lr = SIZES[cfg.size]
    return ProxySpec(size=cfg.size, hidden=hidden, layers=layers, heads=heads,
                     seq_len=cfg.seq_len or seq_len, batch_size=cfg.batch_size or batch, lr=cfg.lr or lr,
                     warmup=cfg.warmup, weight_decay=cfg.weight_decay, tokens=cfg.tokens, vocab_size=vocab_size)


def build_model(spec: ProxySpec):
    """A fresh model; the caller seeds torch's RNG (initial weights come from it)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=spec.vocab_size, hidden_size=spec.hidden, num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads, num_key_value_heads=spec.heads,
        intermediate_size=mlp_width(spec.hidden), max_position_embeddings=spec.seq_len,
        tie_word_embeddings=True,  # the output layer dominates tiny models; tying halves it
        attention_dropout=0.0,  # any dropout forces the slow attention path
        rope_theta=10000.0, use_cache=False,
    )
    config._attn_implementation = "sdpa"
    return LlamaForCausalLM(config)


def mlp_width(hidden: int) -> int:
    return max(8, (hidden * 8 // 3 + 7) // 8 * 8)  # SwiGLU's 8/3 x hidden, rounded to 8
