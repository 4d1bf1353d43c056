"""Where work runs. A backend (base.Backend) takes picklable tasks (`submit`), runs a picklable
function on each, and hands back (task, result, failure) as they finish (`wait`); it knows nothing
of mixtures or the store. `local`: processes on this machine; `ray`: Ray Core tasks; `slurm`:
submitit jobs."""

from __future__ import annotations

from pathlib import Path

from mixopt.backends.base import Backend, Failure
from mixopt.backends.local import LocalBackend, run_local
from mixopt.errors import MixoptError

BACKENDS = ("local", "ray", "slurm")


def make_backend(name: str, fn, workers: int, on_progress, options: dict, exp, workspace) -> Backend:
    """The backend `name`, sized by `workers` (concurrent tasks) and the experiment's resources."""
    if name == "local":
        return LocalBackend(fn, workers, on_progress)
    if name == "ray":
        from mixopt.backends.ray import RayBackend

        return RayBackend(fn, workers, address=options.get("ray_address"), gpus=exp.resources.gpus,
                          cpus=exp.resources.cpus)
    if name == "slurm":
        from mixopt.backends.slurm import SlurmBackend

        cfg = exp.slurm
        return SlurmBackend(fn, workers, folder=Path(workspace.root) / "slurm",
                            cluster=options.get("slurm_cluster"),
                            partition=options.get("slurm_partition") or cfg.partition, time_min=cfg.time_min,
                            gpus=exp.resources.gpus, cpus=exp.resources.cpus, mem_gb=cfg.mem_gb)
    raise MixoptError(f"unknown backend '{name}'", f"use one of: {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "Backend", "Failure", "LocalBackend", "make_backend", "run_local"]
