"""The SLURM backend: one submitit job per proxy (submitit's local executor runs them without SLURM)."""

from __future__ import annotations

import time
from pathlib import Path

from mixopt.backends.base import Backend, Failure, call_task
from mixopt.errors import MixoptError


class SlurmBackend(Backend):
    name = "slurm"

    def __init__(self, fn, workers: int, folder: Path, cluster: str | None = None, partition: str | None = None,
                 time_min: int = 60, gpus: float = 0.0, cpus: float = 1.0, mem_gb: float | None = None):
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
            for job in [j for j in self.jobs if j.done()]:
                task = self.jobs.pop(job)
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

    def close(self) -> None:
        for job in list(self.jobs):
            try:
                job.cancel(check=False)
            except Exception:
                pass
        self.jobs.clear()
