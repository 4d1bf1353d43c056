"""The Ray backend: one Ray Core task per proxy, each asking for the experiment's resources."""

from __future__ import annotations

import os
import time

from mixopt.backends.base import Backend, Failure, call_task
from mixopt.errors import MixoptError

MAX_RETRIES = 2  # Ray reruns a task whose worker process died (node lost, OOM kill) this often


class RayBackend(Backend):
    name = "ray"

    def __init__(self, fn, workers: int, address: str | None = None, gpus: float = 0.0, cpus: float = 1.0):
        try:
            import ray
        except ImportError:
            raise MixoptError("the ray backend needs Ray", "pip install 'mixopt[ray]'") from None
        self.ray, self.fn = ray, fn
        self.refs: dict = {}
        self.started = not ray.is_initialized()
        if self.started:
            try:
                if address:
                    ray.init(address=address, log_to_driver=False)
                else:
                    ray.init(num_cpus=max(workers, 1) * max(cpus, 1), num_gpus=None, include_dashboard=False,
                             log_to_driver=False)
            except Exception as e:  # ConnectionError and friends, with Ray's own wording
                raise MixoptError(f"cannot start or join Ray at {address or 'a local instance'}: "
                                  f"{str(e).splitlines()[0] if str(e) else type(e).__name__}",
                                  "check --ray-address (auto, or HOST:PORT of a head started with `ray start --head`)") from None
        total = ray.cluster_resources()
        if gpus > 0 and total.get("GPU", 0) < gpus:
            self.close()
            raise MixoptError(f"each proxy asks for {gpus:g} GPU but the Ray cluster has {total.get('GPU', 0):g}",
                              "set resources.gpus: 0 for CPU proxies, or join a cluster with GPUs")
        if total.get("CPU", 0) < cpus:
            self.close()
            raise MixoptError(f"each proxy asks for {cpus:g} CPU but the Ray cluster has {total.get('CPU', 0):g}",
                              "lower resources.cpus")
        fit = int(min(total.get("CPU", 0) // max(cpus, 1e-9), total.get("GPU", 0) // gpus if gpus else 1 << 30))
        self.slots = max(1, min(workers, fit)) if workers > 1 else max(1, fit)
        self.remote = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=MAX_RETRIES)(_ray_call)

    @property
    def free_slots(self) -> int:
        return self.slots - len(self.refs)

    @property
    def in_flight(self) -> int:
        return len(self.refs)

    def submit(self, task) -> None:
        self.refs[self.remote.remote(self.fn, task)] = task

    def wait(self, timeout: float):
        if not self.refs:
            time.sleep(timeout)
            return []
        ready, _ = self.ray.wait(list(self.refs), num_returns=len(self.refs), timeout=timeout)
        out = []
        for ref in ready:
            task = self.refs.pop(ref)
            try:
                out.append(self.ray.get(ref))
            except Exception as e:  # the worker died more than MAX_RETRIES times, or the task was cancelled
                first = str(e).splitlines()[0] if str(e) else ""
                out.append((task, None, Failure.worker_died(f"Ray task failed: {type(e).__name__}: {first}")))
        return out

    def close(self) -> None:
        for ref in list(self.refs):
            try:
                self.ray.cancel(ref, force=True)
            except Exception:
                pass
        self.refs.clear()
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()


def _ray_call(fn, task):
    """call_task in a Ray worker process, marked as one: a task that must give up its process (a
    dead CUDA context) may exit it, and Ray retries the task in a fresh worker."""
    os.environ["MIXOPT_REMOTE_WORKER"] = "ray"
    return call_task(fn, task)
