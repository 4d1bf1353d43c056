"""Benchmark: the batched trainer vs one-at-a-time training of the same proxies, on this device.

For each size, N proxies with different mixtures are trained for a fixed number of steps, first one
after another (`train.train_proxy`, what a CPU sweep runs in each worker), then together
(`batched.train_proxies`). Prints tokens/s and proxies/hour for both, their ratio, what `auto`
(`--batch-proxies auto`) picks here and the ratio it gets, and model FLOP utilization on a GPU.
Writes the JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

# Dense bf16 peak of known accelerators, FLOP/s (vendor figures, no sparsity).
PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default=None, help="comma-separated proxy sizes (default: tiny,1m on CPU; more on GPU)")
    ap.add_argument("--proxies", type=int, default=None, help="N (default: 4 on CPU, auto-fit on GPU)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path("bench/results/trainer.json"))
    args = ap.parse_args()
    import torch

    from mixopt.config.schema import Proxy
    from mixopt.proxy.model import model_flops_per_token, proxy_spec
    from mixopt.proxy.train import proxies_per_batch, train_proxies, train_proxy

    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine()
    peak = next((v for k, v in PEAKS.items() if k in name), None) if device == "cuda" else None
    sizes = (args.sizes or ("tiny,1m,5m,15m,30m" if device == "cuda" else "tiny,1m")).split(",")
    rng = np.random.default_rng(0)
    out = {"device": device, "device_name": name, "cores": os.cpu_count(), "torch": torch.__version__, "sizes": {}}
    for size in sizes:
        spec = proxy_spec(Proxy(size=size, tokens=1), vocab_size=8192)
        spec = replace(spec, tokens=spec.seq_len * spec.batch_size * args.steps)
        streams = [rng.integers(0, spec.vocab_size, 400_000).astype(np.int32) for _ in range(4)]
        n = args.proxies or (4 if device == "cpu" else max(2, proxies_per_batch(spec, device)))
        mixtures = [tuple(w) for w in rng.dirichlet(np.ones(4), n)]
        tokens = spec.steps * spec.batch_size * spec.seq_len * n

        def timed(fn):
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - t0

        # One-at-a-time on this device (the sequential trainer, moved to the GPU when there is one).
        def sequential():
            for w in mixtures:
                _train_one(train_proxy, spec, w, streams, device)

        train_proxies(spec, mixtures[:2], streams, 0, device, autocast=device == "cuda")  # warm up
        _train_one(train_proxy, spec, mixtures[0], streams, device)
        seq_s = timed(sequential)
        bat_s = timed(lambda: train_proxies(spec, mixtures, streams, 0, device, autocast=device == "cuda"))
        auto_n = proxies_per_batch(spec, device)
        row = {
            "proxies": n, "steps": spec.steps, "params_per_proxy": sum(
                p.numel() for p in __import__("mixopt.proxy", fromlist=["build_model"]).build_model(spec).parameters()),
            "one_at_a_time": {"seconds": round(seq_s, 3), "tokens_per_s": round(tokens / seq_s),
                              "proxies_per_hour_at_these_steps": round(3600 * n / seq_s, 1)},
            "batched": {"seconds": round(bat_s, 3), "tokens_per_s": round(tokens / bat_s),
                        "proxies_per_hour_at_these_steps": round(3600 * n / bat_s, 1)},
            "batched_over_one_at_a_time": round(seq_s / bat_s, 3),
            "auto_picks": "batched" if auto_n > 1 else "one at a time",
            "auto_ratio": round(max(seq_s / bat_s, 1.0) if auto_n > 1 else 1.0, 3),
        }
        if peak:
            row["mfu_batched"] = round(model_flops_per_token(spec) * tokens / bat_s / peak, 4)
            row["mfu_one_at_a_time"] = round(model_flops_per_token(spec) * tokens / seq_s / peak, 4)
        out["sizes"][size] = row
        print(json.dumps({size: row}), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


def _train_one(train_proxy, spec, weights, streams, device):
    return train_proxy(spec, weights, streams, 0, device=device)


if __name__ == "__main__":
    main()
