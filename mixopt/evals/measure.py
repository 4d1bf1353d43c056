"""Measure a proxy: held-out and text loss / bits per byte, and multiple-choice tasks.

It never trains and never touches the store: sweep/work.py loads checkpoints and calls it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mixopt.core.workspace import slice_file, token_bytes_file
from mixopt.proxy.model import ProxySpec

EVAL_BATCH = 32  # sequences per forward pass on CPU (more does not help there)
GPU_EVAL_BATCH = 512  # ... and on a GPU


class CheckpointMismatch(Exception):
    """The checkpoint on disk is not the one that was recorded: it must be retrained."""




def measure_model(model, spec: ProxySpec, measures, sample_dir: Path,
                  progress: Callable[[int, int, float], None] | None = None) -> dict[str, dict[str, float]]:
    """evaluation key -> {metric: value} for each measure (suites.Measure or its dict)."""
    token_bytes = np.load(token_bytes_file(sample_dir))
    out = {}
    for i, m in enumerate(measures):
        m = m if isinstance(m, dict) else m.__dict__
        if m["kind"] == "heldout":
            stream = np.load(slice_file(sample_dir, m["domain"], "val"), mmap_mode="r")
            out[m["key"]] = stream_loss(model, stream, spec.seq_len, token_bytes)
        elif m["kind"] == "text":
            stream = np.asarray(json.loads(Path(m["data"]).read_text())["tokens"])
            out[m["key"]] = stream_loss(model, stream, spec.seq_len, token_bytes)
        else:
            out[m["key"]] = choice_scores(model, json.loads(Path(m["data"]).read_text())["items"], spec.seq_len)
        if progress:
            progress(i + 1, len(measures), 0.0)
    return out


def stream_loss(model, stream: np.ndarray, seq_len: int, token_bytes: np.ndarray) -> dict[str, float]:
    """Mean loss (nats/token) over every token of the stream but the first, and bits per byte."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    model.eval()
    starts = list(range(0, len(stream) - 1, seq_len))
    per_pass = GPU_EVAL_BATCH if device.type == "cuda" else EVAL_BATCH
    nats, tokens, nbytes = 0.0, 0, 0
    with torch.inference_mode():
        for i in range(0, len(starts), per_pass):
            chunk = starts[i:i + per_pass]
            x = np.zeros((len(chunk), seq_len + 1), dtype=np.int64)
            mask = np.zeros((len(chunk), seq_len), dtype=bool)
            for r, s in enumerate(chunk):
                w = np.asarray(stream[s:s + seq_len + 1], dtype=np.int64)
                x[r, :len(w)] = w
                mask[r, :len(w) - 1] = True
            xt = torch.from_numpy(x).to(device)
            logits = model(input_ids=xt[:, :-1]).logits.float()
            ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), xt[:, 1:].reshape(-1), reduction="none")
            m = torch.from_numpy(mask.reshape(-1)).to(device)
            nats += float(ce[m].sum())
            tokens += int(m.sum())
            nbytes += int(token_bytes[x[:, 1:][mask]].sum())
    model.train()
    return {"loss": nats / tokens, "bpb": nats / (math.log(2) * max(nbytes, 1))}


def choice_scores(model, items: list[dict], seq_len: int) -> dict[str, float]:
    """Score each choice by the proxy's log-likelihood of its tokens after the question.

    acc: the most likely choice is the answer; acc_norm: the same per byte of choice text (longer
    choices are not penalized); prob: the answer's share of the choices' total likelihood, a smooth
    score that still ranks mixtures when tiny proxies are near chance on accuracy.
    """
    import torch

    device = next(model.parameters()).device
    rows = []  # (item, tokens, number of scored tokens at the end)
    for i, it in enumerate(items):
        for c in it["choices"]:
            c = c[-seq_len:]  # a choice longer than the window keeps its end
            seq = (it["context"] + c)[-(seq_len + 1):]
            rows.append((i, seq, len(c)))
    ll = np.zeros(len(rows))
    per_pass = GPU_EVAL_BATCH if device.type == "cuda" else EVAL_BATCH
    model.eval()
    with torch.inference_mode():
        for b in range(0, len(rows), per_pass):
            chunk = rows[b:b + per_pass]
            width = max(len(s) for _, s, _ in chunk)
            x = np.zeros((len(chunk), width), dtype=np.int64)
            r_idx, t_idx, owner = [], [], []
            for r, (_, s, n) in enumerate(chunk):
                x[r, :len(s)] = s
                r_idx += [r] * n
                t_idx += list(range(len(s) - 1 - n, len(s) - 1))
                owner += [b + r] * n
            xt = torch.from_numpy(x).to(device)
            # Only the choice tokens are scored: project just their positions onto the vocabulary
            # (the output layer is most of a tiny model's cost).
            hidden = model.model(input_ids=xt[:, :-1]).last_hidden_state
            rows_t, cols_t = torch.tensor(r_idx, device=device), torch.tensor(t_idx, device=device)
            logp = torch.log_softmax(model.lm_head(hidden[rows_t, cols_t]).float(), dim=-1)
            tok = logp.gather(-1, xt[rows_t, cols_t + 1][:, None])[:, 0].cpu().numpy()
            np.add.at(ll, np.asarray(owner), tok)
    model.train()
    acc = acc_norm = prob = 0.0
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
    n = len(items)
    return {"acc": acc / n, "acc_norm": acc_norm / n, "prob": prob / n}
