"""Benchmark: mixopt's one training loop (N >= 1 proxies over stacked weights) vs a plain PyTorch
loop over transformers' LlamaForCausalLM, the reference (what mixopt's sequential trainer was).

For each size, the same spec trains for a fixed number of steps: the reference (one model), the one
loop at N = 1, and the one loop at N = 4 (different mixtures). Each is timed REPEATS (5) times, interleaved,
and the median kept. Prints tokens/s (all proxies' tokens) and the ratios to the reference, and
writes the JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPEATS = 5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default=None, help="comma-separated proxy sizes (default: tiny,1m on CPU; more on GPU)")
    ap.add_argument("--proxies", type=int, default=4, help="N of the batched measurement")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: 1 on CPU, what each worker of a 2-core `--workers 2` sweep gets)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/trainer.json"))
    args = ap.parse_args()
    import torch

    from mixopt.config.schema import Proxy
    from mixopt.proxy.model import proxy_spec
    from mixopt.proxy.train import train_proxies

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.threads or device == "cpu":
        torch.set_num_threads(args.threads or 1)
    name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine()
    sizes = (args.sizes or ("tiny,1m,5m,15m,30m" if device == "cuda" else "tiny,1m")).split(",")
    rng = np.random.default_rng(0)
    out = {"device": device, "device_name": name, "cores": os.cpu_count(), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "steps": args.steps, "repeats": REPEATS, "sizes": {}}
    for size in sizes:
        spec = proxy_spec(Proxy(size=size, tokens=1), vocab_size=8192)
        spec = replace(spec, tokens=spec.seq_len * spec.batch_size * args.steps)
        streams = [rng.integers(0, spec.vocab_size, 400_000).astype(np.int32) for _ in range(4)]
        mixtures = [tuple(w) for w in rng.dirichlet(np.ones(4), args.proxies)]
        step_tokens = spec.steps * spec.batch_size * spec.seq_len
        autocast = device == "cuda"
        runs = {
            "reference": (1, lambda sp=spec: _train_reference(sp, streams, device)),
            "one_loop_n1": (1, lambda sp=spec: train_proxies(sp, mixtures[:1], streams, 0, device, autocast=autocast)),
            f"one_loop_n{args.proxies}": (args.proxies, lambda sp=spec: train_proxies(sp, mixtures, streams, 0, device,
                                                                                     autocast=autocast)),
        }
        short = replace(spec, tokens=spec.seq_len * spec.batch_size * 2)
        for _, fn in runs.values():  # warm up on 2 steps (first-call allocations, kernel selection)
            fn(short)
        seconds = {k: [] for k in runs}
        for _ in range(REPEATS):
            for k, (_, fn) in runs.items():
                seconds[k].append(_timed(fn, device))
        row = {"steps": spec.steps, "tokens_per_step_per_proxy": spec.batch_size * spec.seq_len}
        for k, (n, _) in runs.items():
            s = statistics.median(seconds[k])
            row[k] = {"proxies": n, "seconds_median": round(s, 3), "seconds": [round(x, 3) for x in seconds[k]],
                      "tokens_per_s": round(n * step_tokens / s)}
        ref = row["reference"]["tokens_per_s"]
        for k in runs:
            if k != "reference":
                row[f"{k}_over_reference"] = round(row[k]["tokens_per_s"] / ref, 3)
        out["sizes"][size] = row
        print(json.dumps({size: row}), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


def _timed(fn, device: str) -> float:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _train_reference(spec, streams: list[np.ndarray], device: str) -> list[float]:
    """The reference: a plain loop over transformers' LlamaForCausalLM, nothing from mixopt but the
    spec. The same model, init, AdamW (decay on matrices), clipping at 1 and warmup + cosine schedule."""
    import torch
    import torch.nn.functional as F
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=spec.vocab_size, hidden_size=spec.hidden, num_hidden_layers=spec.layers,
                         num_attention_heads=spec.heads, num_key_value_heads=spec.heads,
                         intermediate_size=max(8, (spec.hidden * 8 // 3 + 7) // 8 * 8),
                         max_position_embeddings=spec.seq_len, tie_word_embeddings=True, attention_dropout=0.0,
                         rope_theta=10000.0, use_cache=False, attn_implementation="sdpa")
    model = LlamaForCausalLM(config).to(device).train()
    params = list(model.parameters())
    opt = torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": spec.weight_decay},
                             {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
                            lr=spec.lr, betas=(0.9, 0.95))
    rng = np.random.default_rng(0)
    width, warm = spec.seq_len + 1, max(1, round(spec.warmup * spec.steps))
    losses = []
    for step in range(spec.steps):
        rows = [streams[d][s:s + width] for d, s in zip(rng.integers(0, len(streams), spec.batch_size),
                                                       rng.integers(0, len(streams[0]) - width, spec.batch_size))]
        x = torch.from_numpy(np.stack(rows).astype(np.int64)).to(device)
        t = max(0.0, (step - warm) / max(1, spec.steps - warm))
        lr = spec.lr * (step + 1) / warm if step < warm else spec.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * t)))
        for group in opt.param_groups:
            group["lr"] = lr
        logits = model(input_ids=x[:, :-1]).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(loss.detach()))
    return losses


if __name__ == "__main__":
    main()
