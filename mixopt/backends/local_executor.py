"""Local processes as an `Executor` (base.Executor): groups of work handed out as processes free up,
`workers - 1` spawned processes and this one, which reads while the others start up (their imports
are most of a small domain's time); results merged here as they come. Knows nothing of what runs."""

from __future__ import annotations

import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from mixopt.backends.base import start_reader
from mixopt.errors import MixoptError


MAX_THREADS = 8  # reading threads per process: each holds a shard's pool, so memory grows with them


def cores() -> int:
    """CPU cores this process may run on (its affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


class LocalExecutor:
    def __init__(self, workers: int = 1):
        self.tasks = max(workers, 1)
        # The cores the processes leave: 1 worker on 2 cores reads two shards at a time, 2 workers one each.
        self.threads = max(1, min(MAX_THREADS, cores() // self.tasks))
        self.processes = None
        if workers > 1:
            import multiprocessing

            # workers - 1 processes: the calling process reads too. spawn, not fork: Arrow's threads may hold locks.
            self.processes = ProcessPoolExecutor(max_workers=workers - 1,
                                                 mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=start_reader, initargs=(self.threads, os.getpid()))

    def map_merge(self, fn, groups: list, merge, hint=None) -> Any:
        """Every group in this process when there are no others or one group; else two groups queued per
        process (one finishing a group starts its next at once, not when this process comes back from
        reading its own), this process taking the next group itself."""
        acc, todo, pending = None, list(groups), set()

        def absorb(value) -> None:
            nonlocal acc
            acc = value if acc is None else merge(acc, value)

        def extra() -> dict:
            return hint(acc) if hint is not None and acc is not None else {}

        if self.processes is None or len(todo) <= 1:
            for g in todo:
                absorb(fn(g, **extra()))
            return acc
        try:
            while todo or pending:
                while todo and len(pending) < 2 * (self.tasks - 1):
                    pending.add(self.processes.submit(fn, todo.pop(0), **extra()))
                for f in [f for f in pending if f.done()]:
                    pending.discard(f)
                    absorb(f.result())
                if todo:
                    absorb(fn(todo.pop(0), **extra()))
                elif pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in done:
                        absorb(f.result())
        except BrokenProcessPool:
            raise MixoptError("a worker process died while reading (killed: out of memory?); nothing was written",
                              "rerun, with fewer --workers if memory is short") from None
        return acc

    def shutdown(self, cancel_futures: bool = True) -> None:
        if self.processes is not None:
            self.processes.shutdown(cancel_futures=cancel_futures)
            self.processes = None
