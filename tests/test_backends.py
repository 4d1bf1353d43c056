"""Backends and faults: failures classified by type and errno, Ray (local with fake GPUs, and joining
a `ray start --head`), SLURM through submitit's local executor, leases across concurrent sweeps,
kill -9 at random moments, a full disk."""

import errno
import json
import os
import random
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from mixopt.backends import Failure, run_local
from mixopt.config.load import load_experiment
from mixopt.config.runtime import Runtime
from mixopt.core.workspace import Workspace
from mixopt.errors import MixoptError
from mixopt.proxy.checkpoint import CheckpointMismatch
from mixopt.sweep.run import run_sweep

CLI = [sys.executable, "-m", "mixopt.cli"]
RAY = str(Path(sys.executable).with_name("ray"))  # the ray CLI of this environment


def mixopt(*args, env=None, check=True, **kw):
    r = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=600, env=env, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"mixopt {args} exited {r.returncode}: {r.stderr[-3000:]}")
    return r


def _db(ws: Path) -> sqlite3.Connection:
    return sqlite3.connect(ws / "mixopt.db")


def _work(log: Path) -> Counter:
    """Steps trained per run key, over every attempt (MIXOPT_WORK_LOG lines: '<key> <step>')."""
    return Counter(line.split()[0] for line in log.read_text().splitlines()) if log.exists() else Counter()


@pytest.fixture
def ray_env(monkeypatch):
    """Ray with token auth off, its own HOME and a short temp dir (socket paths must be < 108 bytes)."""
    pytest.importorskip("ray")
    tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    env = {"RAY_AUTH_MODE": "disabled", "HOME": tmp, "RAY_TMPDIR": tmp, "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_DEDUP_LOGS": "0"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    yield {**os.environ, **env}
    _stop_own_ray(tmp)


def _own_ray(tmp: str) -> list[int]:
    """This test's Ray processes: they name the temp dir the fixture made (never machine-wide: `ray stop`
    would also stop the Ray of a test running beside this one, or a user's)."""
    return [int(p.parent.name) for p in Path("/proc").glob("[0-9]*/cmdline") if _reads(p, tmp)]


def _stop_own_ray(tmp: str) -> None:
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        for pid in _own_ray(tmp):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + wait
        while _own_ray(tmp) and time.time() < deadline:
            time.sleep(0.2)


@pytest.mark.slow
def test_ray_local_with_fake_gpus(make_config, tmp_path, ray_env):
    import ray

    cfg = make_config(design__runs=3, resources={"gpus": 1, "cpus": 1})
    mixopt("sample", cfg)
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=ray_env["RAY_TMPDIR"])
    try:
        # Each task is given a (fake) GPU it cannot see: it fails loudly instead of training on the CPU ...
        report = run_sweep(load_experiment(cfg), Runtime(workers=2, backend="ray"))
        assert report.trained == 0 and len(report.failed) == 7
        assert all("was given 1 GPU but its worker sees no CUDA GPU" in line for _, line in report.failed)
        # ... unless --device cpu asks for the CPU.
        report = run_sweep(load_experiment(cfg), Runtime(workers=2, backend="ray", device="cpu"))
        assert report.trained == 7 and not report.failed  # prior + 3 vertices + 3 random
        assert ray.cluster_resources()["GPU"] == 2  # the sweep used the running Ray, did not restart it
    finally:
        ray.shutdown()
    # Asking for more GPUs than the cluster has fails at once instead of waiting forever.
    cfg2 = make_config("c2.yaml", ws="ws", design__runs=3, resources={"gpus": 1})
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=ray_env["RAY_TMPDIR"])
    try:
        with _db(tmp_path / "ws") as db:
            db.execute("UPDATE runs SET status='planned'")
        t0 = time.time()
        with pytest.raises(MixoptError, match="asks for 1 GPU but the Ray cluster has 0"):
            run_sweep(load_experiment(cfg2), Runtime(workers=2, backend="ray"))
        assert time.time() - t0 < 60
    finally:
        ray.shutdown()


def test_auto_choices_travel_to_a_cluster_worker(tmp_path, monkeypatch):
    """ray/slurm with --batch-proxies auto / --compile auto: the task says so and the worker decides
    where its device is (here the CPU, with the test suite's fixed choices standing in for the timing)."""
    from mixopt.config.schema import Proxy
    from mixopt.proxy.model import proxy_spec
    from mixopt.sweep.choose import ON_WORKER, choose_batch, choose_compile
    from mixopt.sweep.work import TrainRun, TrainTask, choose_on_worker

    ws = Workspace(tmp_path)
    spec = proxy_spec(Proxy(size="tiny", tokens=4096, seq_len=32, batch_size=4), 64)
    ray_auto = Runtime(backend="ray")
    assert choose_batch(ray_auto, spec, ws, 10).proxies == ON_WORKER
    assert choose_compile(ray_auto, spec, ws, 1, 10).on_worker
    assert not choose_compile(Runtime(backend="ray", compile="off"), spec, ws, 1, 10).on_worker
    runs = tuple(TrainRun(f"k{i}", (1.0,), str(tmp_path / f"k{i}.safetensors")) for i in range(5))
    task = TrainTask(runs=runs, domains=("a",), seed=0, spec=spec, sample_dir=str(tmp_path / "sample"),
                     auto_batch=True, auto_compile=True)
    monkeypatch.setenv("MIXOPT_AUTO_BATCH", "3")
    monkeypatch.setenv("MIXOPT_AUTO_COMPILE", "on")
    assert choose_on_worker(task, "cpu") == (3, True)
    monkeypatch.setenv("MIXOPT_AUTO_COMPILE", "off")
    assert choose_on_worker(task, "cpu") == (3, False)
    assert choose_on_worker(replace(task, auto_batch=False), "cpu") == (5, False)  # the task's runs as one batch


@pytest.mark.slow
def test_ray_workers_choose_their_batch_and_live_across_tasks(make_config, tmp_path, ray_env, monkeypatch):
    """A Ray sweep with --batch-proxies auto shares the runs out over the cluster's slots and each worker
    trains its task's runs as many at a time as it chose (MIXOPT_AUTO_BATCH=2 stands in for its timing);
    and GPU tasks reuse their worker process (max_calls=0) instead of a new one per task."""
    import ray

    from mixopt.backends.ray import RayBackend

    cfg = make_config(design__runs=1)
    mixopt("sample", cfg)
    monkeypatch.setenv("MIXOPT_AUTO_BATCH", "2")  # before ray.init: Ray's workers inherit it
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False, _temp_dir=ray_env["RAY_TMPDIR"])
    try:
        said = []
        report = run_sweep(load_experiment(cfg), Runtime(backend="ray", device="cpu", say=said.append))
        assert report.trained == 5 and not report.failed  # prior + 3 vertices + 1 random
        # 2 slots (2 CPUs): tasks of 3 and 2 runs; each worker trains 2 at a time (3 = 2 + 1).
        assert "the workers chose: 1 run(s) one at a time, eager; 4 run(s) 2 at a time, eager" in said, said
        ws = tmp_path / "ws"
        batched = sorted(json.loads(p.read_text())["batched"] for p in (ws / "checkpoints").glob("*.json"))
        assert batched == [1, 2, 2, 2, 2]
        # GPU tasks (a fake GPU: the function never touches it) run one after another in one process.
        backend = RayBackend(lambda task, progress=None: os.getpid(), 1, gpus=1, say=said.append)
        try:
            pids = []
            for i in range(3):
                backend.submit(f"task{i}")
                while not (done := backend.wait(1.0)):
                    pass
                pids += [pid for _, pid, failure in done if failure is None]
            assert len(pids) == 3 and len(set(pids)) == 1, pids
        finally:
            backend.close()
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_reevaluation_in_a_ray_sweep_runs_on_the_cluster_and_reports_failures(make_config, tmp_path, ray_env):
    """Finished runs lacking measurements, in a Ray sweep: evaluated as Ray tasks (where the proxies
    train), not by local processes on the head; a batch that fails is reported per run, and evaluation
    on the head outside a sweep (fit, eval under --backend ray) uses one process."""
    import ray

    from mixopt.sweep.plan import load_plan
    from mixopt.sweep.reeval import evaluate_stored
    from mixopt.sweep.store import Store

    cfg = make_config(design__runs=1)
    mixopt("sample", cfg)
    mixopt("sweep", cfg, "--no-progress", "--device", "cpu")
    ws = tmp_path / "ws"

    def forget(n: int) -> list[str]:  # as if the suite had gained what these runs lack
        with _db(ws) as db:
            keys = [k for (k,) in db.execute("SELECT key FROM runs WHERE status='done' ORDER BY key LIMIT ?", (n,))]
            db.executemany("DELETE FROM measurements WHERE run_key=?", [(k,) for k in keys])
            db.executemany("DELETE FROM scores WHERE run_key=?", [(k,) for k in keys])
        return keys

    exp = load_experiment(cfg)
    forget(2)
    with Store(ws / "mixopt.db") as store:  # on the head, outside a sweep: one process, not one per GPU or core
        assert evaluate_stored(load_plan(exp), store, Runtime(backend="ray", workers=8, device="cpu")).workers == 1
    keys = forget(2)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=ray_env["RAY_TMPDIR"])
    try:
        said = []
        report = run_sweep(exp, Runtime(backend="ray", device="cpu", say=said.append))
        assert report.reevaluated == 2 and report.trained == 0 and not report.failed, report
        assert "ray: 1 tasks ran on 1 node(s)" in said, said  # the two checkpoints: one stacked eval task
        with _db(ws) as db:
            assert all(db.execute("SELECT COUNT(*) FROM measurements WHERE run_key=?", (k,)).fetchone()[0] for k in keys)
        # The held-out slice gone: the eval task fails on the cluster, and the sweep says so for each run.
        keys = forget(2)
        val = ws / "sample" / "prose" / "val.npy"
        val.rename(val.with_suffix(".gone"))
        report = run_sweep(exp, Runtime(backend="ray", device="cpu", say=said.append))
        val.with_suffix(".gone").rename(val)
        assert sorted(k for k, _ in report.failed) == sorted(keys), report.failed
        assert all(line.startswith("evaluation (no retraining): FileNotFoundError") for _, line in report.failed)
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_a_ray_sweep_that_reevaluates_then_trains_starts_ray_once(make_config, tmp_path, ray_env, monkeypatch):
    """A sweep with finished runs lacking measurements and a run to train, on a local Ray mixopt starts
    itself: Ray is started once for both (not once for re-evaluation and again for training), and
    shut down at the end."""
    import ray

    from mixopt.core.mixtures import Mixture

    cfg = make_config(design__runs=1)
    mixopt("sample", cfg)
    mixopt("sweep", cfg, "--no-progress", "--device", "cpu")
    with _db(tmp_path / "ws") as db:  # as if the suite had gained what two runs lack
        keys = [k for (k,) in db.execute("SELECT key FROM runs WHERE status='done' ORDER BY key LIMIT 2")]
        for table in ("measurements", "scores"):
            db.executemany(f"DELETE FROM {table} WHERE run_key=?", [(k,) for k in keys])
    starts = []
    real_init = ray.init
    monkeypatch.setattr(ray, "init", lambda *a, **kw: starts.append(kw) or real_init(*a, **kw))
    assert not ray.is_initialized()
    said = []
    report = run_sweep(load_experiment(cfg), Runtime(backend="ray", device="cpu", say=said.append),
                       extra=[Mixture("file:extra:0", (0.5, 0.3, 0.2))])
    assert report.reevaluated == 2 and report.trained == 1 and not report.failed, report
    assert len(starts) == 1, starts
    assert [line for line in said if line.startswith("ray: ") and "node(s)," in line] == \
        ["ray: 1 node(s), 1 CPUs, 0 GPUs; 1 proxies (or batches) in flight"] * 2  # two backends, one Ray
    assert not ray.is_initialized()  # the sweep started it, the sweep shut it down


@pytest.mark.slow
def test_ray_joins_a_head_node(make_config, tmp_path, ray_env):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = make_config(design__runs=1)
    mixopt("sample", cfg)
    start = subprocess.run([RAY, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                            "--num-cpus", "2", "--disable-usage-stats", "--include-dashboard", "false"],
                           capture_output=True, text=True, env=ray_env, timeout=180)
    assert start.returncode == 0, start.stderr[-2000:]
    head = set(_own_ray(ray_env["RAY_TMPDIR"]))
    r = mixopt("sweep", cfg, "--backend", "ray", "--ray-address", f"127.0.0.1:{port}", "--no-progress",
               env=ray_env)
    assert "5 trained, 0 failed" in r.stdout  # prior + 3 vertices + 1 random
    # mixopt joined a cluster it did not start: the head's processes are all still there afterwards.
    assert head and head <= set(_own_ray(ray_env["RAY_TMPDIR"]))


def _reads(cmdline: Path, needle: str) -> bool:
    try:
        return needle.encode() in cmdline.read_bytes()
    except OSError:
        return False


@pytest.mark.slow
def test_slurm_backend_through_submitit_local_executor(make_config, tmp_path):
    pytest.importorskip("submitit")
    cfg = make_config(design__runs=1)
    mixopt("sample", cfg)
    r = mixopt("sweep", cfg, "--backend", "slurm", "--slurm-cluster", "local", "--workers", "2", "--no-progress")
    assert "5 trained, 0 failed" in r.stdout
    assert any((tmp_path / "ws" / "slurm").glob("*_result.pkl"))  # it really went through submitit jobs


@pytest.mark.slow
def test_four_concurrent_sweeps_train_each_run_once(make_config, tmp_path):
    cfg = make_config(design__runs=8)
    mixopt("sample", cfg)
    log = tmp_path / "work.log"
    env = {**os.environ, "MIXOPT_WORK_LOG": str(log), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([*CLI, "sweep", str(cfg), "--no-progress"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-1000:] for o in outs]
    with _db(tmp_path / "ws") as db:
        rows = db.execute("SELECT key, status, trainings FROM runs").fetchall()
    assert len(rows) == 12 and all(status == "done" and n == 1 for _, status, n in rows)
    steps = _work(log)
    assert len(steps) == 12 and set(steps.values()) == {46}  # every step of every run trained exactly once
    assert sum(int(o[0].split(" trained")[0].split()[-1]) for o in outs) == 12


def _session_processes(sid: int) -> list[str]:
    """Processes of one session (what a driver started with start_new_session=True spawned): the
    test looks only at its own processes, never machine-wide."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # it exited meanwhile
        if int(fields[3]) == sid and fields[0] != "Z":  # fields[3]: session id; Z: a zombie, already dead
            out.append(stat.parent.name)
    return out


def _lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


@pytest.mark.slow
def test_kill_9_at_random_moments_loses_nothing_finished(make_config, tmp_path):
    """Ten kill -9 of a sweep with 2 workers, each after a seeded random number of trained steps
    (observed in the work log, so the test means the same on a fast or a slow machine)."""
    cfg = make_config(proxy={"size": "tiny", "tokens": 48000, "seq_len": 64, "batch_size": 8})
    mixopt("sample", cfg)
    log = tmp_path / "work.log"
    env = {**os.environ, "MIXOPT_WORK_LOG": str(log)}
    rng = random.Random(1234)
    total = 12 * 93  # runs x steps
    finished: dict[str, float] = {}
    for kill in range(10):
        # At most 50 new steps per driver: ten kills use under half the work, so none finishes first.
        target = _lines(log) + rng.randint(1, 50)
        proc = subprocess.Popen([*CLI, "sweep", str(cfg), "--workers", "2", "--no-progress"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        while _lines(log) < target and proc.poll() is None:
            time.sleep(0.02)
        assert proc.poll() is None, f"the sweep exited before kill {kill + 1}: {proc.stderr.read()[-2000:]}"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        # A worker already running dies with its driver at once; one still importing torch when the
        # driver died exits as soon as it starts up and sees its parent gone.
        deadline = time.time() + 60
        while (orphans := _session_processes(proc.pid)) and time.time() < deadline:
            time.sleep(0.2)
        assert not orphans, f"worker processes outlived a killed driver: {orphans}"
        with _db(tmp_path / "ws") as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            now = dict(db.execute("SELECT key, finished FROM runs WHERE status='done'").fetchall())
        assert all(now.get(k) == v for k, v in finished.items()), "a finished run changed or vanished"
        finished = now
    assert _lines(log) < total, "the kills came too late to interrupt anything"
    mixopt("sweep", cfg, "--workers", "2", "--no-progress", env=env)
    with _db(tmp_path / "ws") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = db.execute("SELECT key, status, trainings, finished FROM runs").fetchall()
    assert len(rows) == 12 and all(r[1] == "done" and r[2] == 1 for r in rows)
    assert all(dict((r[0], r[3]) for r in rows)[k] == v for k, v in finished.items())
    steps = sum(_work(log).values())
    print(f"kill -9 x 10: {steps} steps trained for {total} ({steps / total:.3f}x)")
    assert steps <= 1.5 * total, f"{steps} steps trained for {total}: too much work lost to kills"


@pytest.mark.slow
def test_full_disk_gives_a_clean_error_and_the_rerun_completes(make_config, tmp_path):
    cfg = make_config(design__runs=1)
    mixopt("sample", cfg)

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-large write then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))  # the store fits; a checkpoint does not

    r = mixopt("sweep", cfg, "--no-progress", check=False, preexec_fn=small_files)
    assert r.returncode == 2, (r.stdout, r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr
    assert "disk full, file size limit or I/O error" in lines[0] and "rerun" in lines[0]
    with _db(tmp_path / "ws") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    r = mixopt("sweep", cfg, "--no-progress")
    assert "0 failed" in r.stdout
    with _db(tmp_path / "ws") as db:
        assert db.execute("SELECT COUNT(*) FROM runs WHERE status='done'").fetchone()[0] == 5


def _write_too_much(task, progress=None):
    if task == "full":
        raise OSError(errno.EFBIG, "File too large")
    if task == "says-full":
        raise RuntimeError("No space left on device (Errno 28)")  # the words, but no errno: not a full disk
    raise CheckpointMismatch(f"{task} differs")


def test_failures_are_classified_by_type_and_errno():
    got = {task: failure for task, result, failure in run_local(_write_too_much, ["full", "says-full", "ckpt"])}
    assert all(isinstance(f, Failure) for f in got.values())
    assert got["full"].disk_full and got["full"].errno == errno.EFBIG and got["full"].type == "OSError"
    assert not got["says-full"].disk_full and got["says-full"].errno is None
    assert got["ckpt"].type == "CheckpointMismatch" and got["ckpt"].line == "CheckpointMismatch: ckpt differs"
    assert "Traceback" in got["ckpt"].traceback


def _worker_index(task, progress=None):
    return os.getpid(), os.environ["MIXOPT_LOCAL_WORKER"]


def test_local_workers_are_numbered_for_their_gpus():
    """Worker i of a local pool takes GPU i mod n (work.worker_device): each gets its own index."""
    got = [r for _, r, f in run_local(_worker_index, list(range(6)), workers=2)]
    by_pid = dict(got)
    assert set(by_pid.values()) <= {"0", "1"} and len(set(by_pid.values())) == len(by_pid)


def test_tasks_are_told_their_device(monkeypatch):
    import torch

    from mixopt.sweep.work import device_of, worker_device

    # A ray/slurm task given no GPU is told the CPU (recent Ray leaves the node's GPUs visible to it).
    assert device_of(Runtime(backend="ray"), gpus=0.0) == "cpu"
    assert device_of(Runtime(backend="ray"), gpus=0.5) is None  # its own GPU, whichever Ray gave it
    assert device_of(Runtime(backend="local"), gpus=None) is None
    assert device_of(Runtime(backend="ray", device="cuda:1"), gpus=0.0) == "cuda:1"
    # A task given a GPU it cannot see fails loudly instead of training on the CPU.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="given 1 GPU but its worker sees no CUDA GPU"):
        worker_device(None, gpus=1.0)
    assert worker_device("cpu", gpus=1.0) == "cpu" and worker_device(None) == "cpu"
    # With GPUs, worker i of a local pool takes GPU i mod n.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("MIXOPT_LOCAL_WORKER", "3")
    assert worker_device(None) == "cuda:1" and worker_device("cuda") == "cuda:1" and worker_device("cuda:0") == "cuda:0"


def _cuda_error(task, progress=None):
    import torch

    from mixopt.sweep.work import lose_worker

    if task == "bad":
        try:
            raise torch.AcceleratorError("CUDA error: an illegal memory access was encountered")
        except torch.AcceleratorError as e:
            lose_worker(e)  # a worker process exits here; the driver's own process raises
            raise
    return os.getpid()


def test_a_cuda_error_ends_the_worker_not_the_sweep():
    got = {t: (r, f) for t, r, f in run_local(_cuda_error, ["ok1", "bad", "ok2", "ok3"], workers=2)}
    assert got["bad"][1].type == "WorkerDied"  # the worker with the dead CUDA context is gone ...
    others = [got[t] for t in ("ok1", "ok2", "ok3")]  # ... and a fresh pool runs the rest (a task caught
    assert any(f is None for _, f in others)         # in the crash is failed as its worker's, or retried)
    assert all(f is None or f.type in ("WorkerDied", "Interrupted") for _, f in others)
    # In the driver's own process (workers=1) the error is reported, and the driver lives on.
    got = {t: f for t, r, f in run_local(_cuda_error, ["bad", "ok1"], workers=1)}
    assert got["bad"].type == "AcceleratorError" and got["ok1"] is None


def test_out_of_memory_splits_the_batch(monkeypatch):
    import torch

    from mixopt.proxy.model import ProxySpec
    from mixopt.sweep import work

    tried = []

    def fake(task, runs, device, progress):
        tried.append(len(runs))
        if len(runs) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return tuple(r.key for r in runs)

    monkeypatch.setattr(work, "_train_runs", fake)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    spec = ProxySpec(size="tiny", hidden=8, layers=1, heads=1, seq_len=8, batch_size=1, lr=1e-3, warmup=0.0,
                     weight_decay=0.0, tokens=8, vocab_size=16)
    runs = tuple(work.TrainRun(key=f"r{i}", weights=(1.0,), checkpoint=f"/nonexistent/{i}") for i in range(5))
    task = work.TrainTask(runs=runs, domains=("a",), seed=0, spec=spec, sample_dir="/nonexistent", device="cpu")
    assert work.train_task(task) == ("r0", "r1", "r2", "r3", "r4")
    assert tried == [5, 2, 3, 1, 2]  # 5 -> 2 + 3 -> 3 splits into 1 + 2
    monkeypatch.setattr(work, "_train_runs", lambda *a: (_ for _ in ()).throw(torch.OutOfMemoryError("x")))
    with pytest.raises(torch.OutOfMemoryError):  # one proxy that does not fit: nothing left to split
        work.train_task(work.TrainTask(runs=runs[:1], domains=("a",), seed=0, spec=spec, sample_dir="/x", device="cpu"))


class _FakeCluster:
    """A stand-in for Ray's object store: a task runs when waited on (a seeded random one of those
    in flight), its value stays in `store` until a merge task consumes it, and the driver gets a value
    only through `get`. Counts the most values held at once, in the store and in the driver."""

    def __init__(self, leaf, merge, seed: int = 0):
        self.leaf, self.merge, self.rng = leaf, merge, random.Random(seed)
        self.tasks, self.store, self.n = {}, {}, 0
        self.peak_store = self.fetched = 0

    def _new(self, task) -> int:
        self.n += 1
        self.tasks[self.n] = task
        return self.n

    def start(self, item) -> int:
        return self._new(("leaf", item))

    def combine(self, handles: list) -> int:
        return self._new(("merge", list(handles)))

    def wait(self, handles: list):
        h = self.rng.choice(handles)
        kind, arg = self.tasks.pop(h)
        if kind == "leaf":
            self.store[h] = self.leaf(arg)
        else:  # the inputs are consumed where they lie: none of them reaches the driver
            values = [self.store.pop(x) for x in arg]
            for v in values[1:]:
                values[0] = self.merge(values[0], v)
            self.store[h] = values[0]
        self.peak_store = max(self.peak_store, len(self.store))
        return [h], [x for x in handles if x != h]

    def get(self, h: int):
        self.fetched += 1
        return self.store.pop(h)


def test_ray_sample_merges_500_pools_as_a_tree_with_the_driver_holding_one():
    """`sample --backend ray`'s schedule (backends.ray_executor.merge_tree) on 500 synthetic bottom-k
    pools (data.scan.Pool): the merged pool is the serial one, the driver fetches one pool, and the
    pools not yet merged stay within the window (twice the cluster's CPUs), not 500."""
    import pyarrow as pa

    from mixopt.backends.ray_executor import FAN_IN, merge_tree
    from mixopt.data.scan import Pool, seed_key

    key, threshold, cap = seed_key(0, "d"), 20_000, 1000
    rng = random.Random(1)
    groups = [[f"doc {g}-{i} " + "x" * rng.randrange(1, 400) for i in range(20)] for g in range(500)]
    groups[7] += groups[3][:2]  # exact duplicates across tasks: counted once, kept once

    def leaf(docs):
        p = Pool(threshold)
        p.feed(pa.array(docs), key, cap)
        return p

    def merge(a, b):
        a.merge(b)
        return a

    cluster = _FakeCluster(leaf, merge)
    window = 2 * 8  # a cluster of 8 CPUs
    root = merge_tree(cluster.start, cluster.combine, cluster.wait, groups, window)
    tree = cluster.get(root)
    serial = leaf([d for g in groups for d in g])
    for p in (tree, serial):  # the final trim, as finish_candidates does
        p.threshold = threshold
        p.trim()
    assert {k: v[1] for k, v in tree.docs.items()} == {k: v[1] for k, v in serial.docs.items()}
    assert (tree.read, tree.read_bytes, tree.largest) == (serial.read, serial.read_bytes, serial.largest)
    assert cluster.fetched == 1 and not cluster.store and not cluster.tasks
    assert FAN_IN < cluster.peak_store <= window, cluster.peak_store
    assert merge_tree(cluster.start, cluster.combine, cluster.wait, [], window) is None
    one = merge_tree(cluster.start, cluster.combine, cluster.wait, [groups[0]], window)
    assert cluster.get(one).read == 20


def test_idle_workers_exit_on_their_own_so_nothing_they_made_is_leaked(tmp_path):
    """Workers that finished their tasks are not terminated: what a task started in them (torch.compile's
    worker pool holds semaphores) is cleaned up, so the sweep does not end with the resource tracker's
    'leaked semaphore objects' warning. A task that makes such a semaphore stands in for compile."""
    (tmp_path / "semtask.py").write_text(
        "import multiprocessing\n_held = []\n\n"
        "class Task:\n    def __init__(self, key):\n        self.key = key\n\n"
        "def make_semaphore(task, progress=None):\n"
        "    _held.append(multiprocessing.get_context('spawn').Semaphore())  # freed when the process exits\n"
        "    return task.key\n")
    script = ("import semtask\nfrom mixopt.backends import run_local\n"
              "if __name__ == '__main__':\n"
              "    print(sorted(r for _, r, _ in run_local(semtask.make_semaphore, [semtask.Task(i) for i in range(4)], workers=2)))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(Path(__file__).parents[1])])}
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[0, 1, 2, 3]"
    assert "leaked semaphore" not in out.stderr, out.stderr
