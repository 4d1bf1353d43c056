"""How fast the one training loop runs here: proxy-steps per second at N proxies, timed on a few
real steps of the actual spec and device (random tokens: speed does not depend on the text); on a
CPU per second of this process's CPU time, which other processes on a shared machine barely move."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from mixopt.proxy.model import ProxySpec
from mixopt.proxy.train import train_proxies

TIMED_STEPS = 3  # after one untimed step (first-call allocations, kernel selection)


def training_rates(spec: ProxySpec, ns: tuple[int, ...], device: str, rounds: int = 2,
                   steps: int = TIMED_STEPS) -> dict[int, float]:
    """N -> proxy-steps per second (N x steps / seconds), each N timed `rounds` times interleaved
    with the others (a shared machine's noise hits them alike) and its best round kept."""
    import torch

    rng = np.random.default_rng(0)
    window = spec.seq_len * spec.batch_size * (steps + 2) + 1
    streams = [rng.integers(0, spec.vocab_size, window).astype(np.int64)]
    timed, warm = replace(spec, tokens=spec.seq_len * spec.batch_size * steps), replace(spec, tokens=spec.seq_len * spec.batch_size)
    best = {n: 0.0 for n in ns}
    for n in ns:
        train_proxies(warm, [(1.0,)] * n, streams, 0, device)
    gpu = device.startswith("cuda")
    # On a CPU, this process's CPU seconds: what the work costs, not what other processes sharing
    # the cores took from it (the two paths use the same threads). On a GPU, the wall clock.
    clock = time.perf_counter if gpu else time.process_time
    for _ in range(rounds):
        for n in ns:
            if gpu:
                torch.cuda.synchronize(device)
            t0 = clock()
            train_proxies(timed, [(1.0,)] * n, streams, 0, device)
            if gpu:
                torch.cuda.synchronize(device)
            best[n] = max(best[n], n * timed.steps / max(clock() - t0, 1e-9))
    return best
