"""Ray as an `Executor` (base.Executor): `map_merge` runs fn on every group as Ray Core tasks of one
CPU (a cluster reads an object store in parallel) and merges what they return as a tree on the
workers: FAN_IN results to a merge task as they finish, so the driver fetches one value, never every
task's; `submit(fn, *args)` runs one task and returns a handle whose `result()` gives fn's value or
raises fn's own exception, as concurrent.futures does. `mixopt sample --backend ray` reads a
domain's shard groups this way; knows nothing of what the functions do."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from mixopt.backends.base import hold_threads
from mixopt.backends.ray import MAX_RETRIES, import_ray, join_ray
from mixopt.errors import MixoptError


FAN_IN = 4  # results merged by one merge task
WINDOW_PER_TASK = 2  # tasks in flight per CPU the executor uses: one running, one queued


def merge_tree(start: Callable, combine: Callable, wait: Callable, items: list, window: int, fan_in: int = FAN_IN):
    """The handle of every item's result merged, scheduled as a tree: `start(item)` starts a task and
    returns a handle; every `fan_in` finished handles go to `combine(handles)`, a task that merges
    their values where they are (the caller never fetches them), as do the last ones. `wait(handles)`
    returns (finished, unfinished), at least one finished. A task starts only while the results
    finished or coming and not yet merged (a merge holds its inputs until it finishes) number fewer
    than `window` (at least 2 x fan_in): that bounds what the cluster holds. None for no items."""
    window = max(window, 2 * fan_in)
    todo, ready, holds = list(items), [], {}  # holds: an unfinished task -> results it will stand for
    while todo or holds or len(ready) > 1:
        while todo and len(ready) + sum(holds.values()) < window:
            holds[start(todo.pop(0))] = 1
        if len(ready) >= fan_in or (len(ready) > 1 and not todo and not holds):
            group, ready = ready[:fan_in], ready[fan_in:]
            holds[combine(group)] = len(group)
            continue
        done, _ = wait(list(holds))
        for h in done:
            del holds[h]
        ready += done
    return ready[0] if ready else None


def merge_all(merge: Callable, *parts):
    """One value of several tasks' (value, tasks per node): merged, and the counts added."""
    value, nodes = parts[0]
    for v, n in parts[1:]:
        value = merge(value, v)
        nodes = nodes + n
    return value, nodes


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
        self.threads = 1  # a Ray task holds one CPU
        self.refs: set = set()
        self.nodes: Counter = Counter()  # tasks finished per Ray node id
        self.call = ray.remote(num_cpus=1, max_retries=MAX_RETRIES)(_ray_run)
        self.leaf = ray.remote(num_cpus=1, max_retries=MAX_RETRIES)(_ray_leaf)
        self.merge = ray.remote(num_cpus=1, max_retries=MAX_RETRIES)(merge_all)
        alive = sum(1 for n in ray.nodes() if n.get("Alive"))
        say(f"ray: {alive} node(s), {cpus} CPUs; up to {self.tasks} tasks per domain")

    def submit(self, fn, *args) -> _Result:
        ref = self.call.remote(fn, *args)
        self.refs.add(ref)
        return _Result(self, ref)

    def map_merge(self, fn, groups: list, merge, hint=None):
        """fn on every group in Ray tasks, merged as a tree on the workers (merge_tree); the driver
        fetches the one merged value. `hint` is for executors that start groups late: unused."""
        ray = self.ray

        def track(ref):
            self.refs.add(ref)
            return ref

        root = merge_tree(lambda g: track(self.leaf.remote(fn, g)), lambda refs: track(self.merge.remote(merge, *refs)),
                          lambda refs: ray.wait(refs, num_returns=1), groups, WINDOW_PER_TASK * self.tasks)
        if root is None:
            return None
        try:
            value, nodes = _get(self, root)
        finally:
            self.refs.clear()
        self.nodes.update(nodes)
        return value

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
        value, node = _get(self.executor, self.ref)
        self.executor.nodes[node] += 1
        return value


def _get(ex: RayExecutor, ref):
    """A task's return value in the driver; its function's own exception raised here, or one line."""
    ray = ex.ray
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:  # the function raised: the driver raises the same error
        cause = e.cause
        while isinstance(cause, ray.exceptions.RayTaskError):  # a merge task whose input task raised
            cause = cause.cause
        raise (cause if isinstance(cause, BaseException) else MixoptError(_first_line(e), "see the Ray logs")) from None
    except ray.exceptions.RayError as e:  # the worker died MAX_RETRIES + 1 times (node lost, OOM kill)
        raise MixoptError(f"a Ray task died: {type(e).__name__}: {_first_line(e)}",
                          "see the Ray logs (/tmp/ray/session_latest/logs on its node); a node short of "
                          "memory needs fewer tasks (--workers) or more memory") from None
    finally:
        ex.refs.discard(ref)


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _ray_run(fn, *args):
    """fn(*args) in a Ray worker, and the id of the node it ran on (the driver says how work spread)."""
    import ray

    return fn(*args), ray.get_runtime_context().get_node_id()


def _ray_leaf(fn, *args):
    """fn(*args) in a Ray worker, with a count of one task on this node (merge_all adds the counts)."""
    import ray

    hold_threads(1)  # the task holds one CPU
    return fn(*args), Counter({ray.get_runtime_context().get_node_id(): 1})
