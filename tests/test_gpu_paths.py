"""The GPU path's crash points, shown on the CPU: a simulated OOM in the memory estimate, CUDA-like
errors in-process on a torch without AcceleratorError, a dead context detected by asking the device,
the driver's cache released after measuring, CUDA sweeps training in a replaceable worker process,
and bf16 only where the hardware has it. (tests/test_gpu.py runs the real thing on a GPU.)"""

import os

import pytest
import torch

from mixopt.proxy import train
from mixopt.proxy.model import ProxySpec
from mixopt.sweep import work

SPEC = ProxySpec(size="tiny", hidden=8, layers=1, heads=1, seq_len=8, batch_size=1, lr=1e-3, warmup=0.0,
                 weight_decay=0.0, tokens=8, vocab_size=16)


def _fake_cuda_memory(monkeypatch, peak: list[int]):
    for name in ("synchronize", "empty_cache", "reset_peak_memory_stats"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a: 0)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: peak[0])


def test_two_proxies_that_do_not_fit_give_a_batch_of_one_not_a_crash(monkeypatch):
    peak = [0]

    def fake_train(spec, mixtures, streams, seed, device, **_):
        if len(mixtures) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        peak[0] = 6 << 30  # one proxy: 6 GiB at its peak
        return {}, [], []

    _fake_cuda_memory(monkeypatch, peak)
    monkeypatch.setattr(train, "train_proxies", fake_train)
    fixed, per = train.memory_per_proxy.__wrapped__(SPEC, "cuda:0")
    assert (fixed, per) == (0, 6 << 30)
    # 10 GiB free: one fits, two did not: the batch is 1.
    monkeypatch.setattr(train, "memory_per_proxy", lambda spec, device, precision="auto": (fixed, per))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (10 << 30, 80 << 30))
    assert train.proxies_per_batch(SPEC, "cuda:0") == 1


def test_one_proxy_that_does_not_fit_still_says_so(monkeypatch):
    _fake_cuda_memory(monkeypatch, [0])
    monkeypatch.setattr(train, "train_proxies", lambda *a, **k: (_ for _ in ()).throw(torch.OutOfMemoryError("x")))
    with pytest.raises(torch.OutOfMemoryError):
        train.memory_per_proxy.__wrapped__(SPEC, "cuda:0")


def test_a_dead_context_is_found_by_asking_the_device(monkeypatch):
    assert work.context_lost("cpu") is False
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    assert work.context_lost("cuda:0") is False  # an error that left the context usable

    def dead(*a):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(torch.cuda, "synchronize", dead)
    assert work.context_lost("cuda:0") is True


@pytest.mark.parametrize("has_accelerator_error", [True, False])
def test_a_cublas_error_in_process_ends_the_worker_on_any_torch(monkeypatch, has_accelerator_error):
    """A plain RuntimeError (cuBLAS, Triton) that killed the context ends the worker as an
    AcceleratorError does; the except clauses hold on torch < 2.8, which has no AcceleratorError."""
    if not has_accelerator_error:
        monkeypatch.delattr(torch, "AcceleratorError", raising=False)
    lost = []

    def failing(*a):
        raise RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED when calling cublasGemmEx")

    monkeypatch.setattr(work, "_train_runs", failing)
    monkeypatch.setattr(work, "worker_device", lambda *a: "cuda:0")
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: (_ for _ in ()).throw(RuntimeError("sticky")))
    monkeypatch.setattr(work, "lose_worker", lambda e: lost.append(type(e).__name__))
    runs = (work.TrainRun(key="r0", weights=(1.0,), checkpoint="/nonexistent/0"),)
    task = work.TrainTask(runs=runs, domains=("a",), seed=0, spec=SPEC, sample_dir="/nonexistent", device="cuda:0")
    with pytest.raises(RuntimeError, match="CUBLAS"):
        work.train_task(task)
    assert lost == ["RuntimeError"]
    # The same error with a healthy context: reported as the run's failure, the worker lives on.
    lost.clear()
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    with pytest.raises(RuntimeError, match="CUBLAS"):
        work.train_task(task)
    assert lost == []


def test_the_driver_hands_back_its_gpu_cache_after_measuring(monkeypatch):
    from mixopt.sweep import choose

    calls = []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))
    assert choose._with_threads(0, lambda: calls.append("measure") or 7) == 7
    assert calls == ["measure", "empty_cache"]
    with pytest.raises(ValueError):  # also when the measurement fails
        choose._with_threads(0, lambda: calls.append("measure") or (_ for _ in ()).throw(ValueError()))
    assert calls[-1] == "empty_cache"


def _pid_or_die(task, progress=None):
    if task == "die":
        os._exit(70)  # what lose_worker does after a dead CUDA context
    return os.getpid()


def test_a_cuda_sweep_trains_in_a_replaceable_worker_process_even_with_one_worker(monkeypatch):
    from mixopt.backends import LocalBackend, make_backend
    from mixopt.config.runtime import Runtime

    assert make_backend(Runtime(device="cpu"), _pid_or_die, None, None, None).pool is None  # CPU: in-process
    with make_backend(Runtime(device="cuda:0"), _pid_or_die, None, None, None) as backend:
        assert backend.pool is not None and backend.workers == 1
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with make_backend(Runtime(device="auto"), _pid_or_die, None, None, None) as backend:
        assert backend.pool is not None
    got = {}
    with LocalBackend(_pid_or_die, 1, processes=True) as backend:
        for task in ("ok1", "die", "ok2"):
            backend.submit(task)
            while backend.in_flight:
                for t, result, failure in backend.wait(0.2):
                    got[t] = (result, failure)
    assert got["ok1"][0] != os.getpid() and got["ok2"][0] != os.getpid()  # not the driver
    assert got["die"][1].type == "WorkerDied" and got["ok2"][1] is None  # a fresh worker took over
    assert got["ok1"][0] != got["ok2"][0]


def test_bf16_only_where_the_hardware_has_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert train.autocast_dtype("cuda:0") is None and train.precision_name("cuda:0") == "fp32"  # a V100: emulated
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert train.autocast_dtype("cuda:0") == torch.bfloat16  # an A100 or H100
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)  # torch < 2.3: the capability decides
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 0))
    assert train.autocast_dtype("cuda:0") is None
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    assert train.autocast_dtype("cuda:0") == torch.bfloat16
    assert train.autocast_dtype("cpu") is None


def test_compile_auto_counts_neither_model_construction_nor_one_compile_thread_on_a_gpu(monkeypatch):
    """--compile auto's measurement on a clock that advances by what each run costs: building the
    model (0.5 s), each step (eager 0.10 s, compiled 0.08 s), compiling once (20 s). It must find
    exactly 20 s, 0.10 s and 0.08 s: construction in neither step time nor the compile."""
    from mixopt.proxy import speed

    clock = [0.0]
    compiled_once = []
    threads = []

    def fake_train(spec, mixtures, streams, seed, device, compile=False, **_):
        import torch._inductor.config as inductor

        clock[0] += 0.5 + spec.steps * (0.08 if compile else 0.10)
        if compile and not compiled_once:
            compiled_once.append(True)
            threads.append(inductor.compile_threads)
            clock[0] += 20.0

    import torch._inductor.config as inductor

    monkeypatch.setattr(speed, "train_proxies", fake_train)
    monkeypatch.setattr(speed, "_cpu_seconds", lambda: clock[0])
    # A worker's default on a 4-core machine, set through inductor's own patch (a monkeypatch of its
    # config module would leave the option hidden for every later compile in this process).
    with inductor.patch(compile_threads=4):
        t = speed.compile_timings(SPEC, 2, "cpu")
        assert t == pytest.approx({"compile_seconds": 20.0, "eager_step": 0.10, "compiled_step": 0.08})
        # On a GPU the wall clock counts, and the compile uses the threads a worker would.
        compiled_once.clear()
        monkeypatch.setattr(speed.time, "perf_counter", lambda: clock[0])
        monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
        t = speed.compile_timings(SPEC, 2, "cuda:0")
        assert t == pytest.approx({"compile_seconds": 20.0, "eager_step": 0.10, "compiled_step": 0.08})
    assert threads == [1, 4]  # on a CPU one thread (CPU seconds are counted), on a GPU the worker's own


def test_evaluation_out_of_memory_splits_the_batch(monkeypatch, tmp_path):
    from mixopt.core.keys import file_sha256

    paths = []
    for i in range(5):
        paths.append(tmp_path / f"{i}.safetensors")
        paths[-1].write_bytes(bytes([i]) * 10)
    tried = []

    def measure(W, spec, measures, sample_dir, progress=None, precision="auto"):
        tried.append(len(W))
        if len(W) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 GiB")
        return [{"heldout/x": {"bpb": 1.0}}] * len(W)

    monkeypatch.setattr(work, "load_checkpoints", lambda ps, device: list(ps))
    monkeypatch.setattr(work, "measure_models", measure)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    task = work.EvalTask(keys=tuple(f"r{i}" for i in range(5)), checkpoints=tuple(map(str, paths)),
                         sha256s=tuple(file_sha256(p) for p in paths), spec=SPEC, sample_dir=str(tmp_path),
                         measures=(), device="cpu")
    got = work.eval_checkpoints(task)
    assert [r.key for r in got] == ["r0", "r1", "r2", "r3", "r4"] and all(r.measurements for r in got)
    assert tried == [5, 2, 3, 1, 2]


def test_a_sweep_reports_the_runs_it_could_not_re_evaluate(swept, tmp_path, monkeypatch):
    """The suite gained an evaluation; re-evaluating a finished run fails: the sweep says which, with
    why, and exits 1 (it used to drop those failures and exit 0)."""
    import shutil

    import yaml
    from typer.testing import CliRunner

    from mixopt.cli import app
    from mixopt.sweep import reeval

    cfg = yaml.safe_load(swept.read_text())
    shutil.copytree(cfg["workspace"], tmp_path / "ws")
    (tmp_path / "extra.txt").write_text("A paragraph of plain text to measure the proxies on. " * 200)
    cfg["workspace"] = str(tmp_path / "ws")
    cfg["fit"].pop("objective")  # the same objective, given by the suite's weights
    cfg["evals"] = {"evaluations": [{"name": f"heldout/{d['name']}", "kind": "heldout", "domain": d["name"],
                                     "weight": float(d["name"] == "prose")} for d in cfg["domains"]]
                    + [{"name": "text/extra", "kind": "text", "sources": [{"path": str(tmp_path / "extra.txt")}],
                        "weight": 0}]}
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    import sqlite3

    with sqlite3.connect(tmp_path / "ws" / "mixopt.db") as db:
        finished = db.execute("SELECT COUNT(*) FROM runs WHERE status = 'done'").fetchone()[0]

    def broken(task, progress=None):
        raise RuntimeError("could not read the evaluation's tokens")

    monkeypatch.setattr(reeval, "eval_checkpoints", broken)
    r = CliRunner().invoke(app, ["sweep", str(config), "--no-progress"])
    assert r.exit_code == 1, r.output
    failed = [line for line in r.stdout.splitlines() if line.startswith("  failed ")]
    import re

    # Every finished run of the copy (the fixture's 10, and any other test added to it) lacked the new
    # evaluation and failed it; none was retrained.
    assert len(failed) == finished >= 10
    assert all("evaluation (no retraining): RuntimeError: could not read" in f for f in failed)
    assert re.search(rf"\b0 trained, {finished} failed", r.stdout)
