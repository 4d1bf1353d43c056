"""Ray as an `Executor` (base.Executor): `map_merge` runs fn on every group as Ray Core tasks of one
CPU at once (the cluster queues them on its free CPUs, so a cluster reads an object store in
parallel) and merges what they return; `submit(fn, *args)` runs one task and returns a handle whose
`result()` gives fn's value or raises fn's own exception, as concurrent.futures does. `mixopt sample
--backend ray` reads a domain's shard groups this way; knows nothing of what the functions do."""

from __future__ import annotations

from collections import Counter

from mixopt.backends.ray import MAX_RETRIES, import_ray, join_ray
from mixopt.errors import MixoptError


class RayExecutor:
    """`tasks`: how many tasks a caller should split its work into (the cluster's CPUs, at most
    `workers` when more than 1 is given). Every group runs on the cluster, even one: its tasks read
    the shards, not the driver."""

    def __init__(self, workers: int = 1, address: str | None = None, say=print):
        ray = import_ray()
        self.ray, self.say = ray, say
        self.started = join_ray(address, workers if workers > 1 else None)
        total = ray.cluster_resources()
        cpus = int(total.get("CPU", 0))
        if cpus < 1:
            self.shutdown()
            raise MixoptError(f"the Ray cluster at {address or 'this machine'} has no CPU for a task",
                              "join a cluster whose nodes offer CPUs (`ray start --num-cpus N`)")
        self.tasks = min(workers, cpus) if workers > 1 else cpus
        self.refs: set = set()
        self.nodes: Counter = Counter()  # tasks finished per Ray node id
        self.call = ray.remote(num_cpus=1, max_retries=MAX_RETRIES)(_ray_run)
        alive = sum(1 for n in ray.nodes() if n.get("Alive"))
        say(f"ray: {alive} node(s), {cpus} CPUs; up to {self.tasks} tasks per domain")

    def submit(self, fn, *args) -> _Result:
        ref = self.call.remote(fn, *args)
        self.refs.add(ref)
        return _Result(self, ref)

    def map_merge(self, fn, groups: list, merge, hint=None):
        """Every group at once to its task (`hint` is for executors that start groups late: unused)."""
        acc = None
        for f in [self.submit(fn, g) for g in groups]:
            value = f.result()
            acc = value if acc is None else merge(acc, value)
        return acc

    def shutdown(self, cancel_futures: bool = True) -> None:
        if cancel_futures:
            for ref in list(getattr(self, "refs", ())):
                try:
                    self.ray.cancel(ref, force=True)
                except Exception:
                    pass
        self.refs = set()
        if getattr(self, "nodes", None):
            self.say(f"ray: {sum(self.nodes.values())} tasks ran on {len(self.nodes)} node(s)")
            self.nodes.clear()
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()
            self.started = False


class _Result:
    def __init__(self, executor: RayExecutor, ref):
        self.executor, self.ref = executor, ref

    def result(self):
        ex, ray = self.executor, self.executor.ray
        try:
            value, node = ray.get(self.ref)
        except ray.exceptions.RayTaskError as e:  # the function raised: the driver raises the same error
            raise (e.cause if isinstance(e.cause, BaseException) else MixoptError(_first_line(e), "see the Ray logs")) from None
        except ray.exceptions.RayError as e:  # the worker died MAX_RETRIES + 1 times (node lost, OOM kill)
            raise MixoptError(f"a Ray task died: {type(e).__name__}: {_first_line(e)}",
                              "see the Ray logs (/tmp/ray/session_latest/logs on its node); a node short of "
                              "memory needs fewer tasks (--workers) or more memory") from None
        finally:
            ex.refs.discard(self.ref)
        ex.nodes[node] += 1
        return value


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _ray_run(fn, *args):
    """fn(*args) in a Ray worker, and the id of the node it ran on (the driver says how work spread)."""
    import ray

    return fn(*args), ray.get_runtime_context().get_node_id()
