"""The cluster backends against real engines on 127.0.0.1, through the real CLI: a one-node SLURM
(slurmctld, slurmd, munge: jobs go through sbatch) and a two-node Ray cluster (head + worker from
`ray start`: tasks land on both nodes). Each test starts its engine and stops it after."""

import json
import os
import select
import subprocess
import sys
import time

import pytest
from clusters import RayCluster, Slurm, ray_missing, slurm_missing
from conftest import small_config, write_config


def mixopt(*args, env):
    return subprocess.run([sys.executable, "-m", "mixopt.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600, env=env)


@pytest.fixture
def slurm():
    why = slurm_missing()
    if why:
        pytest.skip(f"no real SLURM here: {why}")
    cluster = Slurm().start()
    yield cluster
    cluster.stop()


@pytest.fixture
def ray_cluster():
    why = ray_missing()
    if why:
        pytest.skip(why)
    cluster = RayCluster(workers=1).start()
    yield cluster
    cluster.stop()
    assert not cluster.processes(), "Ray processes left behind"


@pytest.mark.slow
def test_sweep_through_a_real_slurm(slurm, corpora, tmp_path):
    env = {**slurm.env, "PYTHONPATH": os.pathsep.join(sys.path)}
    cfg = write_config(tmp_path / "c.yaml", small_config(corpora, tmp_path / "ws", design__runs=1))
    assert mixopt("sample", cfg, env=env).returncode == 0
    r = mixopt("sweep", cfg, "--backend", "slurm", "--workers", "2", "--no-progress", env=env)
    assert r.returncode == 0, r.stderr + slurm.logs()
    assert "5 trained, 0 failed" in r.stdout  # prior + 3 vertices + 1 random
    # Through sbatch on this cluster (not submitit's local executor): SLURM job ids, each job's log.
    # --batch-proxies auto: the 5 runs shared out over the 2 jobs in flight, each job choosing on its
    # node how many it trains at once (the test suite's MIXOPT_AUTO_BATCH=1 stands in for the timing).
    jobs = sorted((tmp_path / "ws" / "slurm").glob("*_log.out"))
    assert len(jobs) == 2 and all(j.name.split("_")[0].isdigit() for j in jobs)
    assert "the workers chose: 5 run(s) one at a time, eager" in r.stdout + r.stderr
    # Accounting is off (no slurmdbd): said once, not on every poll, and no submitit warning spam.
    said = r.stdout + r.stderr
    assert said.count("SLURM job accounting is off") == 1, said
    assert "Bypassing sacct error" not in r.stderr and "accounting storage is disabled" not in r.stderr
    st = json.loads(mixopt("status", cfg, "--format", "json", env=env).stdout)
    assert st["design"]["done"] == 5

    # A job SLURM ends without a result (here scancel; a time limit or a lost node alike) is recorded as
    # failed, and the sweep ends (exit 1) instead of waiting for it forever: without accounting only the
    # queue shows it is gone.
    (tmp_path / "more.yaml").write_text("mixtures: [{code: 0.2, prose: 0.5, legal: 0.3}]\n")
    # The job appends "<run key> <step>" per trained step to MIXOPT_WORK_LOG. A FIFO there holds the job
    # still at its second step, whatever the machine's speed: the test reads the first step's line
    # (the job is training), closes its end, and the job's next open of the log waits for a reader.
    work = tmp_path / "work.fifo"
    os.mkfifo(work)
    sweep = subprocess.Popen([sys.executable, "-m", "mixopt.cli", "sweep", cfg, "--backend", "slurm",
                              "--mixtures", tmp_path / "more.yaml", "--no-progress"],
                             env={**env, "MIXOPT_WORK_LOG": str(work)}, text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    reader = os.open(work, os.O_RDONLY | os.O_NONBLOCK)
    first = b""
    deadline = time.time() + 300
    while b"\n" not in first and sweep.poll() is None and time.time() < deadline:
        ready, _, _ = select.select([reader], [], [], 0.5)  # waiting on an observation, not timing one
        if ready:
            first += os.read(reader, 4096)
    os.close(reader)
    assert b"\n" in first, f"the job trained no step: {sweep.communicate() if sweep.poll() is not None else ''}"
    job = _running(slurm.env)
    assert job, f"no running job: {sweep.communicate()}"
    assert sweep.poll() is None, f"the sweep ended before its job started: {sweep.communicate()}"
    cancel = subprocess.run(["scancel", "-v", job], env=slurm.env, capture_output=True, text=True, timeout=60)
    out, err = sweep.communicate(timeout=300)
    assert sweep.returncode == 1, f"{cancel}\n{out}{err}"
    assert f"SLURM job {job} left the queue without a result" in out, out
    assert "1 failed" in out


def _running(env) -> str:
    """The id of a job SLURM says is running, or ''."""
    r = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i"], capture_output=True, text=True, env=env,
                       timeout=60)
    return r.stdout.split()[0] if r.returncode == 0 and r.stdout.split() else ""


@pytest.mark.slow
def test_sweep_spreads_over_a_two_node_ray_cluster(ray_cluster, corpora, tmp_path):
    env = {**ray_cluster.env, "PYTHONPATH": os.pathsep.join(sys.path)}
    cfg = write_config(tmp_path / "c.yaml", small_config(corpora, tmp_path / "ws", design__runs=1))
    assert mixopt("sample", cfg, env=env).returncode == 0
    r = mixopt("sweep", cfg, "--backend", "ray", "--ray-address", ray_cluster.address, "--workers", "2",
               "--no-progress", env=env)
    assert r.returncode == 0, r.stderr
    assert "5 trained, 0 failed" in r.stdout
    said = r.stdout + r.stderr
    assert "ray: 2 node(s), 2 CPUs" in said  # head + worker, one CPU each
    # One CPU per node and two tasks in flight (--batch-proxies auto: the 5 runs shared out over the 2
    # slots, each worker choosing its batch): the tasks ran on both nodes.
    assert "ray: 2 tasks ran on 2 node(s)" in said, said
