"""How fast the one training loop runs here: proxy-steps per second at N proxies, timed on a few
real steps of the actual spec and device (random tokens: speed does not depend on the text); on a
CPU per second of this process's CPU time, which other processes on a shared machine barely move."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import replace

import numpy as np

from mixopt.proxy.model import ProxySpec
from mixopt.proxy.train import train_proxies

TIMED_STEPS = 3  # after one untimed step (first-call allocations, kernel selection)


def training_rates(spec: ProxySpec, ns: tuple[int, ...], device: str, rounds: int = 2,
                   steps: int = TIMED_STEPS, precision: str = "auto") -> dict[int, float]:
    """N -> proxy-steps per second (N x steps / seconds), each N timed `rounds` times interleaved
    with the others (a shared machine's noise hits them alike) and its best round kept; trained at
    `precision` (--precision), as the sweep will train."""
    import torch

    rng = np.random.default_rng(0)
    window = spec.seq_len * spec.batch_size * (steps + 2) + 1
    streams = [rng.integers(0, spec.vocab_size, window).astype(np.int64)]
    timed, warm = replace(spec, tokens=spec.seq_len * spec.batch_size * steps), replace(spec, tokens=spec.seq_len * spec.batch_size)
    best = {n: 0.0 for n in ns}
    for n in ns:
        train_proxies(warm, [(1.0,)] * n, streams, 0, device, precision=precision)
    gpu = device.startswith("cuda")
    # On a CPU, this process's CPU seconds: what the work costs, not what other processes sharing
    # the cores took from it (the two paths use the same threads). On a GPU, the wall clock.
    clock = time.perf_counter if gpu else time.process_time
    for _ in range(rounds):
        for n in ns:
            if gpu:
                torch.cuda.synchronize(device)
            t0 = clock()
            train_proxies(timed, [(1.0,)] * n, streams, 0, device, precision=precision)
            if gpu:
                torch.cuda.synchronize(device)
            best[n] = max(best[n], n * timed.steps / max(clock() - t0, 1e-9))
    return best


COMPILE_TIMED_STEPS = 6  # a compiled step saves a few %: more steps than TIMED_STEPS to see it above noise


def compile_timings(spec: ProxySpec, n: int, device: str, rounds: int = 2,
                    steps: int = COMPILE_TIMED_STEPS, precision: str = "auto") -> dict[str, float]:
    """What torch.compile of the one loop's forward costs and saves at N proxies: compile_seconds
    (its first one-step run less a one-step run once compiled), eager_step and compiled_step
    (seconds per step: a `steps`-step run less a one-step run, over steps - 1, so building the
    model and its optimizer is in neither; the best of `rounds`, interleaved). On a CPU in CPU
    seconds of this process and the compiler processes it waited for (inductor told to compile in
    this process, so none escapes the count); on a GPU the wall clock, with inductor's own compile
    threads as a worker has them; trained at `precision`, as the sweep will train. Raises what the
    compiler raises."""
    import torch
    import torch._inductor.config as inductor

    from mixopt.proxy.train import compiled_forward

    rng = np.random.default_rng(0)
    streams = [rng.integers(0, spec.vocab_size, spec.seq_len * spec.batch_size * (steps + 2) + 1).astype(np.int64)]
    timed, one = replace(spec, tokens=spec.seq_len * spec.batch_size * steps), replace(spec, tokens=spec.seq_len * spec.batch_size)
    gpu = device.startswith("cuda")

    def seconds(sp: ProxySpec, compile: bool) -> float:
        if gpu:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter() if gpu else _cpu_seconds()
        train_proxies(sp, [(1.0,)] * n, streams, 0, device, compile=compile, precision=precision)
        if gpu:
            torch.cuda.synchronize(device)
        return (time.perf_counter() if gpu else _cpu_seconds()) - t0

    train_proxies(one, [(1.0,)] * n, streams, 0, device, precision=precision)  # eager's first-call costs are not the compiler's
    torch._dynamo.reset()  # compile from scratch, as a fresh worker does
    compiled_forward.cache_clear()
    # One compile thread on a CPU only: there the count is CPU seconds, which a thread pool's
    # processes would escape; on a GPU the wall clock is the cost, and a worker compiles in parallel.
    with inductor.patch(compile_threads=1) if not gpu else contextlib.nullcontext():
        first = seconds(one, True)
    best = {False: float("inf"), True: float("inf")}
    once = {False: float("inf"), True: float("inf")}
    for _ in range(rounds):
        for compile in (False, True):
            once[compile] = min(once[compile], seconds(one, compile))
            best[compile] = min(best[compile], max(1e-9, seconds(timed, compile) - once[compile]) / (steps - 1))
    return {"compile_seconds": max(0.0, first - once[True]), "eager_step": best[False], "compiled_step": best[True]}


def _cpu_seconds() -> float:
    """This process's CPU seconds (all threads, nanosecond clock) + its waited-for children's (the C++
    compiler inductor runs; os.times' 10 ms ticks are fine for those)."""
    t = os.times()
    return time.process_time() + t.children_user + t.children_system
