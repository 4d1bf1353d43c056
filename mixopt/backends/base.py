"""What every backend declares: `Backend` (submit tasks, wait for (task, result, failure) as they
finish), `Failure`, a task's error as data the driver classifies by type and errno, and `Executor`
(run a function on groups of work and merge what it returns: `sample` reading shards)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from mixopt.core.workspace import DISK_FULL_ERRNOS

ProgressFn = Callable[[str, int, int, float], None]  # (task key, step, total, loss)


@dataclass(frozen=True)
class Failure:
    """Why a task produced no result."""

    type: str  # the exception's class name, e.g. "CheckpointMismatch"; "WorkerDied" when no exception reached us
    errno: int | None  # OSError's errno, else None
    message: str
    traceback: str = ""  # empty when the worker died before it could report one

    @classmethod
    def of(cls, e: BaseException) -> Failure:
        return cls(type(e).__name__, e.errno if isinstance(e, OSError) else None, str(e),
                   "".join(traceback.format_exception(e)))

    @classmethod
    def worker_died(cls, why: str) -> Failure:
        return cls("WorkerDied", None, why)

    @classmethod
    def interrupted(cls, why: str) -> Failure:
        """The task never failed itself (another task's crash took its worker pool down): run it again."""
        return cls("Interrupted", None, why)

    @property
    def retry(self) -> bool:
        return self.type == "Interrupted"

    @property
    def disk_full(self) -> bool:
        """No space, the file size limit or the quota: not the run's fault, and every run would fail."""
        return self.errno in DISK_FULL_ERRNOS

    @property
    def line(self) -> str:
        return f"{self.type}: {self.message}" if self.type not in ("WorkerDied", "Interrupted") else self.message


Finished = tuple[Any, Any, "Failure | None"]  # (task, result or None, failure or None)


class Backend(Protocol):
    """Runs a picklable function on picklable tasks, somewhere; knows nothing of mixtures or the store."""

    name: str

    @property
    def free_slots(self) -> int: ...

    @property
    def in_flight(self) -> int: ...

    def submit(self, task) -> None: ...

    def wait(self, timeout: float) -> list[Finished]:
        """The tasks finished by now (waiting up to `timeout` seconds for one)."""
        ...

    def close(self) -> None:
        """Cancel what is in flight and release the workers."""
        ...


class Executor(Protocol):
    """Where `sample` reads a domain's shard groups: local processes (backends.local_executor) or Ray
    tasks (backends.ray_executor). Knows nothing of shards or pools: it runs `fn` and folds with `merge`."""

    tasks: int  # how many groups a caller should split its work into (1: one group, read in this process)
    threads: int  # threads each group's reading may use (a local process: the cores the others leave)

    def map_merge(self, fn: Callable, groups: list, merge: Callable, hint: Callable | None = None) -> Any:
        """merge(...merge(fn(g1), fn(g2))..., fn(gn)) in any order, `merge` returning its first argument
        merged with the second; `fn` and `merge` are picklable and the order must not change the result.
        `hint(merged so far)`: keyword arguments for the next `fn` where the executor has them (a local
        process reading after others finished)."""
        ...

    def shutdown(self, cancel_futures: bool = True) -> None:
        """Cancel what is in flight and release the workers."""
        ...


def die_with_parent(parent: int) -> None:
    """In a worker process started by `parent`: if that process dies (even by kill -9), the kernel
    kills this one too (Linux; elsewhere nothing), instead of leaving it blocked on a pipe no one
    reads; if it died already, while this one was starting, this one exits now."""
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


def start_reader(threads: int, parent: int) -> None:
    """A spawned reading worker's start (local_executor): dies with its parent, and sizes its thread
    pools to `threads`. Ctrl-C reaches it with its parent's process group and stops its group."""
    die_with_parent(parent)
    hold_threads(threads)


def hold_threads(threads: int) -> None:
    """In a worker process given `threads` cores: thread pools that size themselves to the machine when
    first imported (polars') get that many, unless the user set theirs. No effect where one is imported."""
    os.environ.setdefault("POLARS_MAX_THREADS", str(max(1, threads)))


def drain(backend: Backend, tasks: list, poll: float = 0.2):
    """Yield (task, result, failure) for each task as it finishes, keeping the backend's slots full."""
    todo = list(tasks)
    while todo or backend.in_flight:
        while todo and backend.free_slots > 0:
            backend.submit(todo.pop(0))
        yield from backend.wait(poll)


def call_task(fn, task) -> Finished:
    """(task, result, None), or (task, None, Failure) when our own code raises: a remote worker
    reports its run's error with the run, instead of the engine retrying it as a crash."""
    try:
        return task, fn(task, progress=None), None
    except Exception as e:
        return task, None, Failure.of(e)
