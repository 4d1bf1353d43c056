"""On a CUDA GPU (skipped elsewhere; `make gpu-check` runs them): the one training loop under the
precision policy (bf16 autocast) agrees with itself batched and one at a time, and with float32,
within the stated tolerance; evaluation on the GPU agrees with the CPU's; the memory estimate holds;
resume gives what an uninterrupted run gives; local workers spread over the GPUs. Each test appends
its figures as one JSON line to $MIXOPT_GPU_RECORD when set (bench/gpu_check.sh collects them)."""

import json
import os

import numpy as np
import pytest
import torch

from mixopt.proxy.model import ProxySpec, build_model, param_count, stack_weights
from mixopt.proxy.train import (
    autocast_dtype,
    memory_per_proxy,
    proxies_per_batch,
    train_proxies,
)

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SPEC = ProxySpec(size="tiny", hidden=64, layers=2, heads=2, seq_len=64, batch_size=8, lr=3e-3, warmup=0.05,
                 weight_decay=0.1, tokens=64 * 8 * 24, vocab_size=512)  # 24 steps
# The stated tolerance on a GPU: per-step training loss within this (nats) between batched and
# one-at-a-time bf16 training, and between bf16 and float32 (bitwise only on the CPU).
BF16_LOSS_ATOL = 0.05
EVAL_REL = 0.01  # evaluation loss on the GPU (bf16 autocast) vs the CPU (float32), relative


def _record(name: str, **figures) -> None:
    path = os.environ.get("MIXOPT_GPU_RECORD")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"test": name, **figures}) + "\n")


def _streams():
    rng = np.random.default_rng(0)
    return [rng.integers(lo, hi, 40_000).astype(np.int64) for lo, hi in ((0, 200), (150, 400), (300, 512))]


MIXTURES = [(1.0, 0.0, 0.0), (0.2, 0.5, 0.3), (0.0, 0.1, 0.9), (1 / 3, 1 / 3, 1 / 3)]


@pytest.mark.gpu
@needs_gpu
def test_batched_equals_sequential_on_cuda_under_bf16():
    assert autocast_dtype("cuda:0") == torch.bfloat16
    streams = _streams()
    _, batched, _ = train_proxies(SPEC, MIXTURES, streams, 7, "cuda:0")
    seq = [train_proxies(SPEC, [w], streams, 7, "cuda:0")[1][0] for w in MIXTURES]
    fp32 = [train_proxies(SPEC, [w], streams, 7, "cuda:0", precision="fp32")[1][0] for w in MIXTURES]
    cpu = [train_proxies(SPEC, [w], streams, 7, "cpu")[1][0] for w in MIXTURES[:1]]
    d_seq = float(np.max(np.abs(np.array(batched) - np.array(seq))))
    d_fp32 = float(np.max(np.abs(np.array(seq) - np.array(fp32))))
    d_cpu = float(np.max(np.abs(np.array(fp32[:1]) - np.array(cpu))))
    _record("batched_vs_sequential_bf16", max_loss_diff_batched_vs_sequential=d_seq,
            max_loss_diff_bf16_vs_fp32=d_fp32, max_loss_diff_cuda_fp32_vs_cpu=d_cpu, tolerance=BF16_LOSS_ATOL)
    assert d_seq <= BF16_LOSS_ATOL and d_fp32 <= BF16_LOSS_ATOL and d_cpu <= BF16_LOSS_ATOL


@pytest.mark.gpu
@needs_gpu
def test_evaluation_on_cuda_matches_the_cpu_and_any_pass_budget(monkeypatch):
    from mixopt.evals import measure

    torch.manual_seed(0)
    models = [build_model(SPEC) for _ in range(3)]
    W = {k: torch.stack([dict(m.named_parameters())[k].detach() for m in models]) for k in stack_weights(models[0], 1)}
    stream = np.random.default_rng(1).integers(0, SPEC.vocab_size, 20_000)
    token_bytes = np.ones(SPEC.vocab_size, dtype=np.int64)
    cpu = measure.stream_loss(W, SPEC, stream, token_bytes)
    Wc = {k: v.cuda() for k, v in W.items()}
    gpu = measure.stream_loss(Wc, SPEC, stream, token_bytes)
    monkeypatch.setattr(measure, "GPU_PASS_MAX", 1 << 20)  # 1 MiB passes: many chunks of logits
    small = measure.stream_loss(Wc, SPEC, stream, token_bytes)
    rel = max(abs(g["loss"] - c["loss"]) / c["loss"] for g, c in zip(gpu, cpu))
    _record("evaluation_cuda_vs_cpu", max_rel_loss_diff=rel, tolerance=EVAL_REL,
            small_budget_max_abs_diff=max(abs(a["loss"] - b["loss"]) for a, b in zip(gpu, small)))
    assert rel <= EVAL_REL
    assert [s["loss"] for s in small] == pytest.approx([g["loss"] for g in gpu], rel=1e-3)


@pytest.mark.gpu
@needs_gpu
def test_precision_setting_on_cuda_trains_and_measures_as_keyed():
    """--precision on a real GPU: fp32 trains and evaluates in float32 (keyed cuda/fp32; the evaluation
    equals the CPU's within float32 noise, not bf16's 1%), bf16 as auto does on a GPU with it in hardware."""
    from mixopt.evals import measure
    from mixopt.proxy.train import precision_name
    from mixopt.sweep.work import measurement

    assert measurement("cuda:0", "fp32") == "cuda/fp32" and precision_name("cuda:0", "fp32") == "fp32"
    if autocast_dtype("cuda:0") is not None:
        assert measurement("cuda:0", "bf16") == measurement("cuda:0") == "cuda/bf16-autocast"
    torch.manual_seed(0)
    W = {k: v.detach() for k, v in stack_weights(build_model(SPEC), 2).items()}
    stream = np.random.default_rng(1).integers(0, SPEC.vocab_size, 20_000)
    token_bytes = np.ones(SPEC.vocab_size, dtype=np.int64)
    cpu = measure.stream_loss(W, SPEC, stream, token_bytes)
    with measure.evaluation_precision("fp32"):
        fp32 = measure.stream_loss({k: v.cuda() for k, v in W.items()}, SPEC, stream, token_bytes)
    rel = max(abs(g["loss"] - c["loss"]) / c["loss"] for g, c in zip(fp32, cpu))
    _record("evaluation_cuda_fp32_vs_cpu", max_rel_loss_diff=rel)
    assert rel <= 1e-4
    streams = _streams()
    _, fp32_losses, _ = train_proxies(SPEC, MIXTURES[:1], streams, 7, "cuda:0", precision="fp32")
    _, cpu_losses, _ = train_proxies(SPEC, MIXTURES[:1], streams, 7, "cpu")
    assert np.max(np.abs(np.array(fp32_losses) - np.array(cpu_losses))) <= 5e-3  # float32 both: close (bf16: 0.05)


@pytest.mark.parametrize("size", ["tiny", "1m", "5m"])
@pytest.mark.gpu
@needs_gpu
def test_memory_estimate_holds_at_the_batch_it_picks(size):
    from mixopt.config.schema import Proxy
    from mixopt.proxy.model import proxy_spec

    spec = proxy_spec(Proxy(size=size, tokens=1), vocab_size=8192)
    fixed, per = memory_per_proxy(spec, "cuda:0")
    n = proxies_per_batch(spec, "cuda:0", cap=64)
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    one = spec.seq_len * spec.batch_size
    streams = [np.arange(one * 2 + 1, dtype=np.int64) % spec.vocab_size]
    from dataclasses import replace

    train_proxies(replace(spec, tokens=one), [(1.0,)] * n, streams, 0, "cuda:0")
    peak = torch.cuda.max_memory_allocated() - base
    estimate = fixed + n * per
    _record("memory_per_proxy", size=size, params=param_count(spec), fixed_bytes=fixed, per_proxy_bytes=per,
            batch=n, peak_bytes=peak, estimate_bytes=estimate, ratio=peak / estimate)
    assert 0.8 <= peak / estimate <= 1.25


@pytest.mark.gpu
@needs_gpu
def test_resume_on_cuda_equals_an_uninterrupted_run(tmp_path):
    from dataclasses import replace

    streams = _streams()
    states = [tmp_path / f"{i}.pt" for i in range(2)]
    full_W, full, _ = train_proxies(SPEC, MIXTURES[:2], streams, 3, "cuda:0")
    # Stop after the first saves (a shorter schedule would change the learning rate): kill by exception.
    calls = []

    def stop(step, total, losses):
        calls.append(step)
        if step == 12:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_proxies(SPEC, MIXTURES[:2], streams, 3, "cuda:0", on_step=stop, states=states)
    W, resumed, _ = train_proxies(replace(SPEC), MIXTURES[:2], streams, 3, "cuda:0", states=states)
    diff = float(np.max(np.abs(np.array(full) - np.array(resumed))))
    _record("resume_cuda", max_loss_diff=diff)
    assert diff <= BF16_LOSS_ATOL


def _which_gpu(task, progress=None):
    from mixopt.sweep.work import worker_device

    return os.getpid(), worker_device(None)


@pytest.mark.gpu
@needs_gpu
def test_local_workers_spread_over_the_gpus():
    from mixopt.backends import run_local

    got = [r for _, r, f in run_local(_which_gpu, list(range(8)), workers=2)]
    by_pid = dict(got)
    _record("local_worker_devices", devices=sorted(set(by_pid.values())), gpus=torch.cuda.device_count())
    if torch.cuda.device_count() > 1 and len(by_pid) > 1:
        assert len(set(by_pid.values())) > 1
    assert all(d.startswith("cuda:") for d in by_pid.values())


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path of the GPU check")
def test_gpu_check_skips_cleanly_without_a_gpu(tmp_path):
    """What CI runs: bench/gpu_check.sh on a machine without CUDA says so in one line, writes a
    gpu.json that says it skipped, and exits 0."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "bench" / "gpu_check.sh"
    r = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHON": sys.executable, "GPU_CHECK_OUT": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("gpu-check: skipped: no CUDA GPU visible (torch ") and r.stdout.count("\n") == 1
    assert json.loads((tmp_path / "gpu.json").read_text())["skipped"] is True


@pytest.mark.gpu
@needs_gpu
def test_staged_tokens_come_through_pinned_memory_and_equal_the_cpu_gather():
    """The trainer's batches on a GPU: gathered into pinned host memory, copied without blocking, and
    the same tokens as the CPU path; the foreach clipping scales each proxy on its own norm there too."""
    from mixopt.proxy.train import _clip_per_proxy, _interval_rows, _stage_tokens, mixture_sequences

    streams = _streams()
    plans = [mixture_sequences(w, [len(s) for s in streams], SPEC, np.random.default_rng([7, 2])) for w in MIXTURES]
    rows = _interval_rows(plans, 2, 9, SPEC.batch_size)
    on_gpu = _stage_tokens(streams, rows, SPEC.seq_len + 1, "cuda:0")
    assert on_gpu.is_cuda and torch.equal(on_gpu.cpu(), _stage_tokens(streams, rows, SPEC.seq_len + 1, "cpu"))
    g = torch.randn(3, 40, 8, device="cuda:0") * torch.tensor([1e-4, 1.0, 50.0], device="cuda:0").view(3, 1, 1)
    p = g.clone().requires_grad_(True)
    p.grad = g.clone()
    _clip_per_proxy([p], 1.0)
    assert torch.equal(p.grad[0], g[0]) and torch.allclose(p.grad[2].norm(), torch.tensor(1.0, device="cuda:0"))


@pytest.mark.gpu
@needs_gpu
def test_chunked_loss_under_bf16_follows_the_plain_loss(monkeypatch):
    """Past CHUNK_LOGITS, under bf16 autocast: the chunked output layer + loss trains as the plain one
    does, within the bf16 tolerance."""
    from mixopt.proxy import loss

    _, plain, _ = train_proxies(SPEC, MIXTURES[:2], _streams(), 7, "cuda:0")
    monkeypatch.setattr(loss, "CHUNK_LOGITS", 0)
    monkeypatch.setattr(loss, "CHUNK_ELEMENTS", 2 * 100 * SPEC.vocab_size)
    _, chunked, _ = train_proxies(SPEC, MIXTURES[:2], _streams(), 7, "cuda:0")
    d = float(np.max(np.abs(np.array(chunked) - np.array(plain))))
    _record("chunked_loss_bf16", max_loss_diff_chunked_vs_plain=d, tolerance=BF16_LOSS_ATOL)
    assert d <= BF16_LOSS_ATOL
