"""The SLURM backend: one submitit job per proxy (submitit's local executor runs them without SLURM)."""

from __future__ import annotations

import getpass
import subprocess
import time
from pathlib import Path

from mixopt.backends.base import Backend, Failure, call_task
from mixopt.errors import MixoptError


class SlurmBackend(Backend):
    name = "slurm"

    def __init__(self, fn, workers: int, folder: Path, cluster: str | None = None, partition: str | None = None,
                 time_min: int = 60, gpus: float = 0.0, cpus: float = 1.0, mem_gb: float | None = None,
                 say=print):
        try:
            import submitit
        except ImportError:
            raise MixoptError("the slurm backend needs submitit", "pip install 'mixopt[slurm]'") from None
        if gpus and gpus != int(gpus):
            raise MixoptError(f"SLURM allocates whole GPUs; resources.gpus is {gpus:g}",
                              "use an integer, or the ray backend to pack proxies on a GPU")
        self.fn = fn
        self.executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
        params = {"timeout_min": time_min, "cpus_per_task": max(1, int(cpus)), "name": "mixopt"}
        if gpus:
            params["gpus_per_node"] = int(gpus)
        if mem_gb:
            params["mem_gb"] = mem_gb
        if partition:
            params["slurm_partition"] = partition
        if self.executor.cluster != "slurm":  # local / debug executors take the generic keys only
            params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
        self.executor.update_parameters(**params)
        self.slots = max(1, workers)
        self.jobs: dict = {}
        self.gone: set[str] = set()  # job ids seen out of the queue with no result yet
        self.queue_checked = 0.0
        self.watcher = None  # submitit's job-state poller, while we keep it from calling sacct
        if self.executor.cluster == "slurm" and not _accounting_works():
            self._without_accounting(say)

    @property
    def free_slots(self) -> int:
        return self.slots - len(self.jobs)

    @property
    def in_flight(self) -> int:
        return len(self.jobs)

    def submit(self, task) -> None:
        self.jobs[self.executor.submit(call_task, self.fn, task)] = task

    def wait(self, timeout: float):
        deadline = time.time() + timeout
        out = []
        while not out:
            for job in [j for j in self.jobs if j.done()] or self._lost_jobs():
                task = self.jobs.pop(job)
                if not job.done():
                    out.append((task, None, Failure.worker_died(
                        f"SLURM job {job.job_id} left the queue without a result (time limit, node failure or "
                        "scancel; job accounting is off, so SLURM's reason is not known here)")))
                    continue
                try:
                    out.append(job.result())
                except Exception as e:  # the job failed outside our code: timeout, node failure, preemption
                    last = str(e).strip().splitlines()[-1] if str(e).strip() else ""
                    out.append((task, None, Failure.worker_died(f"SLURM job {job.job_id} failed: "
                                                                f"{type(e).__name__}: {last}")))
            if out or time.time() >= deadline:
                break
            time.sleep(0.2)
        return out

    def _lost_jobs(self) -> list:
        """Jobs that left SLURM's queue with no result, seen on two checks >= QUEUE_CHECK_S apart. Where job
        accounting is off submitit never learns a job's end state, and would wait for such a job forever."""
        if self.watcher is None or time.time() - self.queue_checked < QUEUE_CHECK_S:
            return []
        self.queue_checked = time.time()
        r = subprocess.run(["squeue", "-h", "-o", "%i", "-u", getpass.getuser()], capture_output=True, text=True,
                           timeout=60)
        if r.returncode != 0:
            return []
        queued = set(r.stdout.split())
        out_of_queue = {j.job_id for j in self.jobs if j.job_id not in queued and not j.done()}
        lost = [j for j in self.jobs if j.job_id in out_of_queue & self.gone]
        self.gone = out_of_queue
        return lost

    def _without_accounting(self, say) -> None:
        """Poll no more: every call of sacct would fail, print SLURM's error and a submitit warning."""
        from submitit.slurm.slurm import SlurmJob

        say("note: SLURM job accounting is off on this cluster (`sacct` says 'Slurm accounting storage is "
            "disabled': no slurmdbd), so job states cannot be read from SLURM, and submitit would warn on every "
            "poll ('Bypassing sacct error ... status may be inaccurate'). mixopt follows each job by its result "
            "file and by `squeue` instead: a job that leaves the queue without a result (time limit, node "
            "failure, scancel) is recorded as failed. Results are unaffected.")
        self.watcher = SlurmJob.watcher
        self.watcher._make_command = lambda: None  # submitit's hook: None means nothing to ask sacct

    def close(self) -> None:
        if self.watcher is not None:
            vars(self.watcher).pop("_make_command", None)  # the class's own again
            self.watcher = None
        for job in list(self.jobs):
            try:
                job.cancel(check=False)
            except Exception:
                pass
        self.jobs.clear()


QUEUE_CHECK_S = 10.0  # seconds between squeue calls when accounting is off


def _accounting_works() -> bool:
    """Does `sacct` answer here? (It fails when the cluster keeps no job accounting.)"""
    try:
        r = subprocess.run(["sacct", "-n", "-X", "-j", "1"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0
