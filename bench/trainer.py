"""Benchmark: mixopt's one training loop (N >= 1 proxies over stacked weights) vs a plain PyTorch
loop over transformers' LlamaForCausalLM with the same spec (no mixopt code), like with like: both
under the one precision policy (float32 on a CPU, bf16 autocast on a GPU).

For each size, the same spec trains for a fixed number of steps: the plain loop, the one loop at
N = 1, and the one loop at N = 4 (different mixtures); on a GPU also the one loop at N = 1 in plain
float32 and in TF32. Each is timed REPEATS (5) times, interleaved, and the median kept. Then
torch.compile: the plain loop and the one loop at N = 1 with a compiled model / forward, timed the
same way, with the compile time (first call minus a steady call) and the break-even: the steps a
run must have before compiling pays. Prints tokens/s (all proxies' tokens), ratios, MFU on a GPU
(model FLOPs 6 x params + attention, against the bf16 dense peak of the GPU; MIXOPT_PEAK_TFLOPS
overrides), and writes the JSON to --out.

And what mixopt's own `auto` choices do here: for each size, what `--batch-proxies auto` picks
(for a 28-run sweep, with each worker's threads as timed here) and the bench's rate of that pick
over the better of one at a time and batched (`auto.ratio_*`, 1.0 when auto picks the faster);
and for the demo's spec (mixtures/demo.yaml), what `--compile auto` decides for `make demo`'s
sweep, with its measured break-even in steps. On a CPU every time is also given in CPU seconds
(this process and the compilers it waited for), which other load on a shared machine barely moves.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np

REPEATS = 5
# Dense bf16 peak TFLOP/s by GPU name (vendor data sheets, without sparsity).
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 70.0,
                    "RTX 4090": 165.0, "V100": 125.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default=None, help="comma-separated proxy sizes (default: tiny,1m on CPU; all on GPU)")
    ap.add_argument("--proxies", type=int, default=4, help="N of the batched measurement")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=REPEATS, help=f"timings per run, medians kept (default {REPEATS})")
    ap.add_argument("--compile-sizes", default=None, help="sizes to time torch.compile on (default: tiny on CPU, "
                                                          "all on GPU; 'none' to skip)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: 1 on CPU, what each worker of a 2-core `--workers 2` sweep gets)")
    ap.add_argument("--demo-config", type=Path, default=Path("mixtures/demo.yaml"),
                    help="the sweep whose `--compile auto` decision is reported (its proxy and vocabulary)")
    ap.add_argument("--no-auto", action="store_true", help="skip the auto rows (the GPU check's mini sweep "
                                                           "records auto's choice on a GPU instead)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/trainer.json"))
    args = ap.parse_args()
    repeats = max(1, args.repeats)
    import torch

    from mixopt.config.schema import Proxy
    from mixopt.proxy.model import proxy_spec
    from mixopt.proxy.train import precision_name, train_proxies

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.threads or device == "cpu":
        torch.set_num_threads(args.threads or 1)
    name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine()
    sizes = (args.sizes or ("tiny,1m,5m,15m,30m" if device == "cuda" else "tiny,1m")).split(",")
    compile_sizes = args.compile_sizes or (",".join(sizes) if device == "cuda" else "tiny")
    compile_sizes = [] if compile_sizes == "none" else compile_sizes.split(",")
    peak = _peak_tflops(name) if device == "cuda" else None
    rng = np.random.default_rng(0)
    out = {"device": device, "device_name": name, "cores": os.cpu_count(), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "steps": args.steps, "repeats": repeats,
           "precision": precision_name(device), "bf16_peak_tflops": peak, "sizes": {}}
    for size in sizes:
        spec = proxy_spec(Proxy(size=size, tokens=1), vocab_size=8192)
        spec = replace(spec, tokens=spec.seq_len * spec.batch_size * args.steps)
        streams = [rng.integers(0, spec.vocab_size, 400_000).astype(np.int32) for _ in range(4)]
        mixtures = [tuple(w) for w in rng.dirichlet(np.ones(4), args.proxies)]
        step_tokens = spec.steps * spec.batch_size * spec.seq_len

        def one_loop(n, precision="auto", tf32=False):
            def run(sp):
                with _tf32(tf32):
                    return train_proxies(sp, mixtures[:n], streams, 0, device, precision=precision)
            return run

        runs = {"plain_loop": (1, lambda sp: _train_reference(sp, streams, device)),
                "one_loop_n1": (1, one_loop(1)), f"one_loop_n{args.proxies}": (args.proxies, one_loop(args.proxies))}
        if device == "cuda":
            runs |= {"one_loop_n1_fp32": (1, one_loop(1, precision="fp32")),
                     "one_loop_n1_tf32": (1, one_loop(1, precision="fp32", tf32=True))}
        row = {"steps": spec.steps, "tokens_per_step_per_proxy": spec.batch_size * spec.seq_len,
               "flops_per_token": _flops_per_token(spec)}
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        row |= _time_runs(runs, spec, step_tokens, device, peak, row["flops_per_token"], repeats)
        if device == "cuda":  # the largest of the runs above: N proxies batched, for this size
            row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        ref = row["plain_loop"]["tokens_per_s"]
        for k in runs:
            if k != "plain_loop":
                row[f"{k}_over_plain_loop"] = round(row[k]["tokens_per_s"] / ref, 3)
        if not args.no_auto:
            row["auto"] = _auto_batch(spec, device, row, f"one_loop_n{args.proxies}")
        if size in compile_sizes:
            row["compile"] = _compile_rows(spec, streams, mixtures, device, step_tokens, row)
        out["sizes"][size] = row
        _write(args.out, out)  # after every size: a run cut short keeps what it measured
        print(json.dumps({size: row}), flush=True)
    if args.demo_config.is_file() and not args.no_auto:
        out["demo_compile"] = _auto_compile_demo(args.demo_config, device)
        print(json.dumps({"demo_compile": out["demo_compile"]}), flush=True)
    _write(args.out, out)
    print(json.dumps(out, indent=2))


def _write(path: Path, out: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(out, indent=2) + "\n")
    os.replace(tmp, path)


def _time_runs(runs: dict, spec, step_tokens: int, device: str, peak, flops_per_token: float,
               repeats: int = REPEATS) -> dict:
    """Each run warmed up on 2 steps, then timed `repeats` times interleaved; medians."""
    short = replace(spec, tokens=spec.seq_len * spec.batch_size * 2)
    for _, fn in runs.values():  # first-call allocations, kernel selection
        fn(short)
    seconds = {k: [] for k in runs}
    cpu = {k: [] for k in runs}
    for _ in range(repeats):
        for k, (_, fn) in runs.items():
            wall, used = _timed(lambda: fn(spec), device)
            seconds[k].append(wall)
            cpu[k].append(used)
    rows = {}
    for k, (n, _) in runs.items():
        s = statistics.median(seconds[k])
        tps = n * step_tokens / s
        rows[k] = {"proxies": n, "seconds_median": round(s, 3), "seconds": [round(x, 3) for x in seconds[k]],
                   "cpu_seconds_median": round(statistics.median(cpu[k]), 3),
                   "tokens_per_s": round(tps), "tokens_per_cpu_s": round(n * step_tokens / max(statistics.median(cpu[k]), 1e-9)),
                   "proxies_per_hour_at_this_spec": round(3600 * n / s, 1)}
        if peak and "fp32" not in k and "tf32" not in k:  # MFU against the bf16 peak: bf16 rows only
            rows[k]["mfu"] = round(tps * flops_per_token / (peak * 1e12), 4)
    return rows


def _compile_rows(spec, streams, mixtures, device: str, step_tokens: int, row: dict) -> dict:
    """torch.compile on the plain loop (the model) and on the one loop (its forward): compile
    seconds, steady tokens/s, and the break-even in steps."""

    from mixopt.proxy.train import train_proxies

    out = {}
    cases = {"plain_loop": (lambda sp: _train_reference(sp, streams, device, compile=True), "plain_loop"),
             "one_loop_n1": (lambda sp: train_proxies(sp, mixtures[:1], streams, 0, device, compile=True),
                             "one_loop_n1")}  # what `sweep --compile on` trains with
    for name, (fn, eager_key) in cases.items():
        try:
            two = replace(spec, tokens=spec.seq_len * spec.batch_size * 2)
            first, first_cpu = _timed(lambda: fn(two), device)  # compiles
            steady, steady_cpu = zip(*[_timed(lambda: fn(spec), device) for _ in range(3)])
        except Exception as e:  # a compiler that is missing or fails here: say so, keep the eager figures
            out[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
            continue
        s = statistics.median(steady)
        per_step = s / spec.steps
        eager_step = row[eager_key]["seconds_median"] / spec.steps
        compile_s = max(0.0, first - 2 * per_step)
        gain = eager_step - per_step
        cpu_step = statistics.median(steady_cpu) / spec.steps
        compile_cpu = max(0.0, first_cpu - 2 * cpu_step)
        cpu_gain = row[eager_key]["cpu_seconds_median"] / spec.steps - cpu_step
        out[name] = {"compile_seconds": round(compile_s, 2), "tokens_per_s": round(step_tokens / s),
                     "compile_cpu_seconds": round(compile_cpu, 2),
                     "over_eager_cpu": round(row[eager_key]["cpu_seconds_median"] / spec.steps / cpu_step, 3),
                     "break_even_steps_cpu": round(compile_cpu / cpu_gain) if cpu_gain > 0 else None,
                     "over_eager": round(eager_step / per_step, 3),
                     "break_even_steps": round(compile_s / gain) if gain > 0 else None,
                     "break_even": "never (compiled is not faster)" if gain <= 0 else
                     f"runs of more than {round(compile_s / gain)} steps"}
    return out


@contextmanager
def _tf32(on: bool):
    import torch

    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = on
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def _flops_per_token(spec) -> float:
    """Training FLOPs per token: 6 x every matmul parameter (the tied output layer counted as one
    matmul) + attention's 12 x layers x hidden x seq_len (PaLM's appendix B)."""
    from mixopt.proxy.model import param_count

    matmul = param_count(spec) - spec.layers * 2 * spec.hidden - spec.hidden  # less the norms' weights
    return 6.0 * matmul + 12.0 * spec.layers * spec.hidden * spec.seq_len


def _peak_tflops(name: str) -> float | None:
    if os.environ.get("MIXOPT_PEAK_TFLOPS"):
        return float(os.environ["MIXOPT_PEAK_TFLOPS"])
    return next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)


def _timed(fn, device: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process and the child processes it waited for) of fn()."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), _cpu_seconds()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, _cpu_seconds() - c0


def _cpu_seconds() -> float:
    """This process's CPU seconds (all threads, nanosecond clock) + its waited-for children's (the C++
    compiler inductor runs; os.times' 10 ms ticks are fine for those)."""
    t = os.times()
    return time.process_time() + t.children_user + t.children_system


DEMO_RUNS = 28  # the demo's sweep: 24 designed + the prior + the 3 vertices its bounds allow


def _auto_workers(device: str) -> int:
    """A sweep whose workers each get the threads timed here (`--workers 2` on 2 cores, 1 thread each)."""
    import torch

    return 1 if device == "cuda" else max(1, (os.cpu_count() or 1) // torch.get_num_threads())


def _auto_batch(spec, device: str, row: dict, batched_key: str) -> dict:
    """What `--batch-proxies auto` picks for a DEMO_RUNS-run sweep of `spec` here (its own
    measurement, in a scratch workspace), and the bench's rate of that pick over the better of
    the two paths the bench timed."""
    import tempfile

    from mixopt.config.runtime import Runtime
    from mixopt.core.workspace import Workspace
    from mixopt.sweep.choose import choose_batch

    workers = _auto_workers(device)
    with tempfile.TemporaryDirectory() as tmp:
        t0, c0 = time.perf_counter(), _cpu_seconds()
        choice = choose_batch(Runtime(workers=workers, device=device), spec, Workspace(Path(tmp)), DEMO_RUNS)
        took = (time.perf_counter() - t0, _cpu_seconds() - c0)
    one, many = row["one_loop_n1"], row[batched_key]
    if choice.proxies not in (1, many["proxies"]):
        return {"workers": workers, "picks": choice.proxies, "why": choice.why,
                "note": f"the bench timed N = 1 and {many['proxies']} only: no ratio"}
    pick = many if choice.proxies > 1 else one
    out = {"workers": workers, "picks": choice.proxies, "why": choice.why,
           "auto_rates_proxy_steps_per_s": {str(n): round(r, 3) for n, r in choice.rates.items()},
           "measuring_seconds": round(took[0], 2), "measuring_cpu_seconds": round(took[1], 2),
           "ratio_wall": round(pick["tokens_per_s"] / max(one["tokens_per_s"], many["tokens_per_s"]), 3)}
    if device == "cpu":
        out["ratio_cpu"] = round(pick["tokens_per_cpu_s"] / max(one["tokens_per_cpu_s"], many["tokens_per_cpu_s"]), 3)
    return out


def _auto_compile_demo(config: Path, device: str) -> dict:
    """`--compile auto`'s decision for the demo's sweep (its spec, DEMO_RUNS runs, the batch auto
    picks), measured in a scratch workspace: compile seconds, step times, break-even steps."""
    import tempfile

    import yaml

    from mixopt.config.runtime import Runtime
    from mixopt.config.schema import Proxy
    from mixopt.core.workspace import Workspace
    from mixopt.proxy.model import proxy_spec
    from mixopt.sweep.choose import choose_batch, choose_compile

    cfg = yaml.safe_load(config.read_text())
    spec = proxy_spec(Proxy(**cfg.get("proxy", {})), vocab_size=cfg["sample"]["tokenizer"]["vocab_size"])
    runtime = Runtime(workers=_auto_workers(device), device=device)
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(Path(tmp))
        batch = choose_batch(runtime, spec, ws, DEMO_RUNS)
        t0, c0 = time.perf_counter(), _cpu_seconds()
        choice = choose_compile(runtime, spec, ws, batch.proxies, DEMO_RUNS, batch.rates)
        took = (time.perf_counter() - t0, _cpu_seconds() - c0)
    return {"config": str(config), "size": spec.size, "steps_per_proxy": spec.steps, "runs": DEMO_RUNS,
            "workers": runtime.workers, "batch_proxies": batch.proxies, "compile": choice.compile,
            "why": choice.why, "timings": choice.timings,
            "measuring_seconds": round(took[0], 2), "measuring_cpu_seconds": round(took[1], 2)}


def _train_reference(spec, streams: list[np.ndarray], device: str, compile: bool = False) -> list[float]:
    """The plain loop over transformers' LlamaForCausalLM, nothing from mixopt but the spec: the
    same model, init, AdamW (decay on matrices), clipping at 1, warmup + cosine schedule, and the
    same precision (bf16 autocast on a GPU, float32 on a CPU)."""
    import torch
    import torch.nn.functional as F
    from transformers import LlamaConfig, LlamaForCausalLM

    from mixopt.proxy.train import autocast_dtype

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=spec.vocab_size, hidden_size=spec.hidden, num_hidden_layers=spec.layers,
                         num_attention_heads=spec.heads, num_key_value_heads=spec.heads,
                         intermediate_size=max(8, (spec.hidden * 8 // 3 + 7) // 8 * 8),
                         max_position_embeddings=spec.seq_len, tie_word_embeddings=True, attention_dropout=0.0,
                         rope_theta=10000.0, use_cache=False, attn_implementation="sdpa")
    model = LlamaForCausalLM(config).to(device).train()
    params = list(model.parameters())
    forward = torch.compile(model) if compile else model
    # The one precision policy's answer (bf16 only where the hardware has it, not emulated on a V100/T4).
    amp = autocast_dtype(device) is not None
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
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=amp):
            logits = forward(input_ids=x[:, :-1]).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(loss.detach()))
    return losses


if __name__ == "__main__":
    main()
