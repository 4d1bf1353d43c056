"""Measure proxies: held-out and text loss / bits per byte, and multiple-choice tasks.

It takes N >= 1 proxies as stacked weights (proxy.model's one forward pass) and measures each; it
never trains and never touches the store: sweep/work.py loads checkpoints and calls it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mixopt.core.workspace import slice_file, token_bytes_file
from mixopt.evals.suites import Measure
from mixopt.proxy.model import ProxySpec, forward_hidden, forward_logits, project

EVAL_BATCH = 32  # sequences per forward pass on CPU (more does not help there), over all N proxies
GPU_EVAL_BATCH = 512  # ... and on a GPU




def measure_models(W: dict, spec: ProxySpec, measures: tuple[Measure, ...], sample_dir: Path,
                   progress: Callable[[int, int, float], None] | None = None) -> list[dict[str, dict[str, float]]]:
    """For each of the N proxies in W: evaluation key -> {metric: value}."""
    token_bytes = np.load(token_bytes_file(sample_dir))
    out: list[dict] = [{} for _ in range(_count(W))]
    for i, m in enumerate(measures):
        if m.kind == "heldout":
            stream = np.load(slice_file(sample_dir, m.domain, "val"), mmap_mode="r")
            scores = stream_loss(W, spec, stream, token_bytes)
        elif m.kind == "text":
            stream = np.asarray(json.loads(Path(m.data).read_text())["tokens"])
            scores = stream_loss(W, spec, stream, token_bytes)
        elif m.kind == "choice":
            scores = choice_scores(W, spec, json.loads(Path(m.data).read_text())["items"])
        else:
            from mixopt.evals.lm_eval import lm_eval_scores

            scores = lm_eval_scores(W, spec, m)
        for own, s in zip(out, scores):
            own[m.key] = s
        if progress:
            progress(i + 1, len(measures), 0.0)
    return out


def stream_loss(W: dict, spec: ProxySpec, stream: np.ndarray, token_bytes: np.ndarray) -> list[dict[str, float]]:
    """Each proxy's mean loss (nats/token) over every token of the stream but the first, and bits per byte."""
    import torch
    import torch.nn.functional as F

    n, device, seq_len = _count(W), _device(W), spec.seq_len
    starts = list(range(0, len(stream) - 1, seq_len))
    nats, tokens, nbytes = np.zeros(n), 0, 0
    with torch.inference_mode():
        for chunk in _chunks(starts, n, device):
            x = np.zeros((len(chunk), seq_len + 1), dtype=np.int64)
            mask = np.zeros((len(chunk), seq_len), dtype=bool)
            for r, s in enumerate(chunk):
                w = np.asarray(stream[s:s + seq_len + 1], dtype=np.int64)
                x[r, :len(w)] = w
                mask[r, :len(w) - 1] = True
            xt = torch.from_numpy(x).to(device)
            logits = forward_logits(W, xt[None, :, :-1].expand(n, -1, -1), spec).float()  # [N, B, T, V]
            ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), xt[None, :, 1:].expand(n, -1, -1).reshape(-1),
                                 reduction="none").view(n, -1)
            m = torch.from_numpy(mask.reshape(-1)).to(device)
            nats += np.asarray(ce[:, m].sum(dim=1).cpu(), dtype=np.float64)
            tokens += int(m.sum())
            nbytes += int(token_bytes[x[:, 1:][mask]].sum())
    return [{"loss": float(v / tokens), "bpb": float(v / (math.log(2) * max(nbytes, 1)))} for v in nats]


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
    with torch.inference_mode():
        b = 0
        for chunk in _chunks(rows, n, device):
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
            logp = torch.log_softmax(project(W, hidden[:, rows_t, cols_t]).float(), dim=-1)  # [N, K, V]
            target = xt[rows_t, cols_t + 1].view(1, -1, 1).expand(n, -1, 1)
            tok = logp.gather(-1, target)[..., 0].cpu().numpy()
            for i in range(n):
                np.add.at(ll[i], np.asarray(owner), tok[i])
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


def _chunks(rows: list, n: int, device):
    """`rows` in passes of one forward each: the per-pass budget is shared by the N proxies."""
    per_pass = max(1, (GPU_EVAL_BATCH if device.type == "cuda" else EVAL_BATCH) // n)
    for i in range(0, len(rows), per_pass):
        yield rows[i:i + per_pass]
