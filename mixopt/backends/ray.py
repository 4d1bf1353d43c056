"""The Ray backend: one Ray Core task per proxy, each asking for the experiment's resources."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import Counter

from mixopt.backends.base import Backend, Failure, call_task
from mixopt.errors import MixoptError

MAX_RETRIES = 2  # Ray reruns a task whose worker process died (node lost, OOM kill) this often


def check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """A HOST:PORT --ray-address that nothing answers on is one line before anything is written, not
    Ray's screen of warnings and a sweep row left unfinished. `auto` and ray:// addresses are left to Ray."""
    import socket

    if not address or address == "auto" or "://" in address:
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise MixoptError(f"--ray-address {address}: expected HOST:PORT or auto", "e.g. --ray-address 10.0.0.5:6379")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise MixoptError(f"cannot reach the Ray cluster at {address} ({e.strerror or e})",
                          f"start its head with `ray start --head --port {port}`, or fix --ray-address") from None


def import_ray():
    try:
        import ray
    except ImportError:
        raise MixoptError("the ray backend needs Ray", "pip install 'mixopt[ray]'") from None
    return ray


def join_ray(address: str | None, num_cpus: int | None) -> bool:
    """Join the cluster at `address`, or start a local Ray of `num_cpus` (None: all of this machine's);
    a Ray already running in this process is used as it is. True when this call started Ray (the
    caller shuts it down)."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    try:
        quiet = {"log_to_driver": False, "logging_level": logging.WARNING}  # not Ray's "Connecting to ..." lines
        if address:
            ray.init(address=address, **quiet)
        else:
            ray.init(num_cpus=num_cpus, num_gpus=None, include_dashboard=False, **quiet)
    except Exception as e:  # ConnectionError and friends, with Ray's own wording
        raise MixoptError(f"cannot start or join Ray at {address or 'a local instance'}: "
                          f"{str(e).splitlines()[0] if str(e) else type(e).__name__}",
                          "check --ray-address (auto, or HOST:PORT of a head started with `ray start --head`)") from None
    return True


def local_cpus(workers: int, cpus: float) -> float:
    """The CPUs a local Ray is started with for `workers` tasks of `cpus` each."""
    return max(workers, 1) * max(cpus, 1)


@contextlib.contextmanager
def ray_session(address: str | None, num_cpus: float | None):
    """Ray for a whole command: joined or started once (join_ray), so every backend the command makes
    meanwhile uses it (each sees Ray running and leaves it so); shut down at the end if started here."""
    started = join_ray(address, num_cpus)
    try:
        yield
    finally:
        ray = import_ray()
        if started and ray.is_initialized():
            ray.shutdown()


class RayBackend(Backend):
    name = "ray"

    def __init__(self, fn, workers: int, address: str | None = None, gpus: float = 0.0, cpus: float = 1.0,
                 say=print):
        ray = import_ray()
        self.ray, self.fn, self.say = ray, fn, say
        self.refs: dict = {}
        self.nodes: Counter = Counter()  # tasks finished per Ray node id
        self.started = join_ray(address, local_cpus(workers, cpus))
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
        # max_calls=0: a worker process runs task after task (Ray's default for a GPU task is a new
        # process each time: torch imported, CUDA initialized and every compile paid again per batch).
        self.remote = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=MAX_RETRIES, max_calls=0)(_ray_call)
        alive = sum(1 for n in ray.nodes() if n.get("Alive"))
        say(f"ray: {alive} node(s), {total.get('CPU', 0):g} CPUs, {total.get('GPU', 0):g} GPUs; "
            f"{self.slots} proxies (or batches) in flight")

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
                finished, node = self.ray.get(ref)
                self.nodes[node] += 1
                out.append(finished)
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
        if self.nodes:
            self.say(f"ray: {sum(self.nodes.values())} tasks ran on {len(self.nodes)} node(s)")
            self.nodes.clear()
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()


def _ray_call(fn, task):
    """call_task in a Ray worker process, marked as one (a task that must give up its process, a dead
    CUDA context, may exit it and Ray retries it in a fresh worker), and the id of the node it ran on
    (the driver reports how work spread)."""
    import ray

    os.environ["MIXOPT_REMOTE_WORKER"] = "ray"
    try:
        return call_task(fn, task), ray.get_runtime_context().get_node_id()
    finally:
        _release_gpu_cache()


def _release_gpu_cache() -> None:
    """The process lives on for the next task (max_calls=0): hand the GPU memory its allocator keeps
    cached back, so a task sharing the GPU (resources.gpus < 1) can use it; CUDA stays initialized."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
