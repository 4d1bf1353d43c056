"""Measure proxies: held-out and text loss / bits per byte, and multiple-choice tasks.

It takes N >= 1 proxies as stacked weights (proxy.model's one forward pass) and measures each; it
never trains and never touches the store: the eval kinds (evals/kinds/) score with its functions.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
from contextvars import ContextVar
from pathlib import Path

import numpy as np

from mixopt.proxy.model import ProxySpec, forward_hidden, project

# Bytes one evaluation pass may hold (activations of every proxy in it, and one chunk of logits):
# passes are sized by this, not by a sequence count, so vocab 128k is as safe as vocab 4k. On a GPU,
# a quarter of its free memory (the weights and the allocator's cache take the rest), at most 8 GiB.
CPU_PASS_BYTES = 256 << 20
GPU_PASS_SHARE, GPU_PASS_MAX = 0.25, 8 << 30


def evalset(path: str) -> dict:
    """A tokenized eval set (text: its token array; choice: its items), read once per process."""
    p = Path(path)
    st = p.stat()
    return _read_evalset(str(p), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=16)
def _read_evalset(path: str, mtime_ns: int, size: int) -> dict:  # mtime and size: a rewritten file is reread
    body = json.loads(Path(path).read_text())
    if "tokens" in body:
        body["tokens"] = np.asarray(body["tokens"], dtype=np.int64)
    return body


def stream_loss(W: dict, spec: ProxySpec, stream: np.ndarray, token_bytes: np.ndarray) -> list[dict[str, float]]:
    """Each proxy's mean loss (nats/token) over every token of the stream but the first, and bits per byte."""
    import torch

    n, device, seq_len = _count(W), _device(W), spec.seq_len
    starts = list(range(0, len(stream) - 1, seq_len))
    nats, tokens, nbytes = torch.zeros(n, dtype=torch.float64, device=device), 0, 0
    budget = pass_bytes(device)
    with torch.inference_mode(), evaluation_autocast(device):
        for chunk in _passes(starts, rows_per_pass(spec, n, budget)):
            x = np.zeros((len(chunk), seq_len + 1), dtype=np.int64)
            mask = np.zeros((len(chunk), seq_len), dtype=bool)
            for r, s in enumerate(chunk):
                w = np.asarray(stream[s:s + seq_len + 1], dtype=np.int64)
                x[r, :len(w)] = w
                mask[r, :len(w) - 1] = True
            xt = torch.from_numpy(x).to(device)
            m = torch.from_numpy(mask).to(device)
            hidden = forward_hidden(W, xt[None, :, :-1].expand(n, -1, -1), spec)[:, m]  # [N, K, H]: real tokens
            nats += token_nats(W, hidden, xt[:, 1:][m], budget).sum(dim=1, dtype=torch.float64)
            tokens += int(mask.sum())
            nbytes += int(token_bytes[x[:, 1:][mask]].sum())
    nats = nats.cpu().numpy()
    return [{"loss": float(v / tokens), "bpb": float(v / (math.log(2) * max(nbytes, 1)))} for v in nats]


def token_nats(W: dict, hidden, targets, budget: int):
    """Cross-entropy [N, K] of hidden states [N, K, H] against targets [K], computed a chunk of
    tokens at a time so the logits held at once ([N, chunk, V] in float32) stay within `budget`
    bytes: at vocab 8k and 512 sequences of 512 tokens, whole logits would be 17 GB per proxy."""
    import torch
    import torch.nn.functional as F

    n, k = hidden.shape[:2]
    vocab = W["model.embed_tokens.weight"].shape[1]
    step = max(1, budget // (n * vocab * 4 * 3))  # logits, their float copy and log-softmax's
    out = []
    for i in range(0, k, step):
        logits = project(W, hidden[:, i:i + step]).float()  # [N, c, V]
        # F.cross_entropy, not logsumexp - gather: one fused pass, ~30% less CPU time at vocab 4k.
        t = targets[i:i + step].repeat(n)
        out.append(F.cross_entropy(logits.reshape(-1, vocab), t, reduction="none").view(n, -1))
    return torch.cat(out, dim=1) if out else hidden.new_zeros((n, 0), dtype=torch.float32)


def choice_scores(W: dict, spec: ProxySpec, items: list[dict]) -> list[dict[str, float]]:
    """Score each choice by each proxy's log-likelihood of its tokens after the question.

    acc: the most likely choice is the answer; acc_norm: the same per byte of choice text (longer
    choices are not penalized); prob: the answer's share of the choices' total likelihood, a smooth
    score that still ranks mixtures when tiny proxies are near chance on accuracy.
    """
    import torch

    n, device, seq_len = _count(W), _device(W), spec.seq_len
    rows = []  # (item, tokens, number of scored tokens at the end)
    for i, it in enumerate(items):
        for j, c in enumerate(it["choices"]):
            c = c[-seq_len:]  # a choice longer than the window keeps its end
            ctx = it["context"][j] if it["context"] and isinstance(it["context"][0], list) else it["context"]
            seq = (ctx + c)[-(seq_len + 1):]
            rows.append((i, seq, len(c)))
    ll = np.zeros((n, len(rows)))
    budget = pass_bytes(device)
    with torch.inference_mode(), evaluation_autocast(device):
        b = 0
        for chunk in _passes(rows, rows_per_pass(spec, n, budget)):
            width = max(len(s) for _, s, _ in chunk)
            x = np.zeros((len(chunk), width), dtype=np.int64)
            r_idx, t_idx, owner = [], [], []
            for r, (_, s, k) in enumerate(chunk):
                x[r, :len(s)] = s
                r_idx += [r] * k
                t_idx += list(range(len(s) - 1 - k, len(s) - 1))
                owner += [b + r] * k
            b += len(chunk)
            xt = torch.from_numpy(x).to(device)
            # Only the choice tokens are scored: project just their positions onto the vocabulary
            # (the output layer is most of a tiny model's cost).
            hidden = forward_hidden(W, xt[None, :, :-1].expand(n, -1, -1), spec)  # [N, B, T, H]
            rows_t, cols_t = torch.tensor(r_idx, device=device), torch.tensor(t_idx, device=device)
            tok = -token_nats(W, hidden[:, rows_t, cols_t], xt[rows_t, cols_t + 1], budget).double().cpu().numpy()
            owner_a = np.asarray(owner)
            for i in range(n):
                np.add.at(ll[i], owner_a, tok[i])
    return [_choice_metrics(items, own) for own in ll]


def _choice_metrics(items: list[dict], ll: np.ndarray) -> dict[str, float]:
    acc = acc_norm = prob = bits = 0.0
    pos = 0
    for it in items:
        k = len(it["choices"])
        scores, nbytes = ll[pos:pos + k], np.asarray(it["bytes"], dtype=float)
        pos += k
        a = it["answer"]
        acc += float(np.argmax(scores) == a)
        acc_norm += float(np.argmax(scores / nbytes) == a)
        p = np.exp(scores - scores.max())
        prob += float(p[a] / p.sum())
        bits += float(-scores[a] / math.log(2) / nbytes[a])
    n = len(items)
    return {"acc": acc / n, "acc_norm": acc_norm / n, "prob": prob / n, "bpb": bits / n}


def _count(W: dict) -> int:
    return next(iter(W.values())).shape[0]


def _device(W: dict):
    return next(iter(W.values())).device


def pass_bytes(device) -> int:
    """The byte budget of one evaluation pass on this device."""
    if getattr(device, "type", str(device).split(":")[0]) != "cuda":
        return CPU_PASS_BYTES
    import torch

    return int(min(GPU_PASS_MAX, GPU_PASS_SHARE * torch.cuda.mem_get_info(device)[0]))


def rows_per_pass(spec: ProxySpec, n: int, budget: int) -> int:
    """Sequences per forward pass, shared by the N proxies: what the activations of one sequence
    (hidden states and the MLP's, q/k/v, the attention map, float32) let `budget` hold."""

    t = spec.seq_len
    per_seq = 4 * t * (8 * spec.hidden + 3 * spec.mlp + spec.heads * t)  # bytes, one proxy
    return int(max(1, budget // (n * per_seq)))


# The precision setting (proxy.train.PRECISIONS) the passes below run under; measure_models sets it
# for the measures it runs (evaluation_precision), so every kind's scores follow it.
_PRECISION: ContextVar[str] = ContextVar("mixopt_evaluation_precision", default="auto")


@contextlib.contextmanager
def evaluation_precision(precision: str):
    """Measure under this precision setting (auto, fp32, bf16) inside the block."""
    token = _PRECISION.set(precision)
    try:
        yield
    finally:
        _PRECISION.reset(token)


def evaluation_autocast(device):
    """The one precision policy (proxy.train.autocast_dtype) at the setting measure_models was given:
    what the run trained under, its evaluation runs under (the lm_eval harness's forward passes too)."""
    import torch

    from mixopt.proxy.train import autocast_dtype

    kind = getattr(device, "type", str(device).split(":")[0])
    dtype = autocast_dtype(str(device), _PRECISION.get())
    return torch.autocast(device_type=kind, dtype=dtype or torch.float32, enabled=dtype is not None)


def _passes(rows: list, per_pass: int):
    for i in range(0, len(rows), per_pass):
        yield rows[i:i + per_pass]
