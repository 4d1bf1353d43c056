"""Where work runs. A backend (base.Backend) takes picklable tasks (`submit`), runs a picklable
function on each, and hands back (task, result, failure) as they finish (`wait`); it knows nothing
of mixtures or the store. `local`: processes on this machine; `ray`: Ray Core tasks; `slurm`:
submitit jobs."""

from __future__ import annotations

import contextlib
from pathlib import Path

from mixopt.backends.base import Backend, Executor, Failure, drain
from mixopt.backends.local import LocalBackend, run_local
from mixopt.backends.local_executor import LocalExecutor
from mixopt.core.devices import resolve_device
from mixopt.errors import MixoptError

BACKENDS = ("local", "ray", "slurm")


def make_backend(runtime, fn, on_progress, exp, workspace) -> Backend:
    """The backend a config.runtime.Runtime names, sized by its workers (concurrent tasks) and the
    experiment's resources per task."""
    name, workers = runtime.backend, runtime.workers
    if name == "local":
        return LocalBackend(fn, workers, on_progress, processes=workers > 1 or _on_cuda(runtime.device))
    if name == "ray":
        from mixopt.backends.ray import RayBackend

        return RayBackend(fn, workers, address=runtime.ray_address, gpus=exp.resources.gpus, cpus=exp.resources.cpus,
                          say=runtime.say)
    if name == "slurm":
        from mixopt.backends.slurm import SlurmBackend

        cfg = exp.slurm
        return SlurmBackend(fn, workers, folder=Path(workspace.root) / "slurm", cluster=runtime.slurm_cluster,
                            partition=runtime.slurm_partition or cfg.partition, time_min=cfg.time_min,
                            gpus=exp.resources.gpus, cpus=exp.resources.cpus, mem_gb=cfg.mem_gb,
                            say=runtime.say)
    raise MixoptError(f"unknown backend '{name}'", f"use one of: {', '.join(BACKENDS)}")


@contextlib.contextmanager
def backend_session(runtime, exp):
    """What the runtime's backend needs for a whole command, started once: with ray, Ray joined (or a
    local one started, sized as make_backend sizes it) for every backend made inside the block (a
    sweep's re-evaluation, its training, each fidelity), and shut down after it if started here.
    Nothing for local and slurm."""
    if runtime.backend != "ray":
        yield
        return
    from mixopt.backends.ray import local_cpus, ray_session

    with ray_session(runtime.ray_address, local_cpus(runtime.workers, exp.resources.cpus)):
        yield


def make_executor(runtime) -> Executor:
    """Where `sample` reads shards, as a config.runtime.Runtime names it: `workers` local processes, or
    Ray tasks (at most `workers` per domain when more than 1, else one per CPU of the cluster)."""
    if runtime.backend == "local":
        return LocalExecutor(runtime.workers)
    if runtime.backend == "ray":
        from mixopt.backends.ray_executor import RayExecutor

        return RayExecutor(runtime.workers, address=runtime.ray_address, say=runtime.say)
    raise MixoptError(f"`sample` reads shards locally or on Ray, not on backend '{runtime.backend}'",
                      "use --backend local or --backend ray")


def _on_cuda(device: str) -> bool:
    """Whether local tasks will train on a CUDA GPU (device `auto` takes one when there is one)."""
    return resolve_device(device).startswith("cuda")


__all__ = ["BACKENDS", "Backend", "Executor", "Failure", "LocalBackend", "LocalExecutor", "backend_session", "drain",
           "make_backend", "make_executor", "run_local"]
