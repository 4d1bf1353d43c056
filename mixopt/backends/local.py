"""The local backend: this process (workers=1) or a pool of spawned worker processes."""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor
from concurrent.futures import wait as wait_futures

from mixopt.backends.base import Backend, Failure, Finished, ProgressFn, die_with_parent, drain

_events = None  # the progress queue, in a worker process


class LocalBackend(Backend):
    """Submit tasks, collect (task, result, failure) as they finish. Crashed workers fail their task
    (the pool is rebuilt); worker processes die with the driver, even on kill -9."""

    name = "local"

    def __init__(self, fn: Callable, workers: int = 1, on_progress: ProgressFn | None = None,
                 processes: bool | None = None):
        """`processes`: run tasks in worker processes (default: when workers > 1). A CUDA sweep asks
        for them even at workers=1: a CUDA error can kill a process's context, and a worker process
        is replaced where the driver's own would fail every later task."""
        self.fn, self.workers, self.on_progress = fn, workers, on_progress
        self.pending: list = []  # in-process: tasks waiting to run in this process
        self.futures: dict = {}
        self.pool = None
        if workers > 1 if processes is None else processes:
            ctx = mp.get_context("spawn")  # fork after torch has started threads can deadlock
            self.events = ctx.Queue()
            self.stop = threading.Event()
            self.pump = threading.Thread(target=_pump, args=(self.events, on_progress, self.stop), daemon=True)
            self.pump.start()
            self._new_pool()

    def _new_pool(self) -> None:
        ctx = mp.get_context("spawn")
        slots = ctx.Value("i", 0)  # each new worker takes the next index: MIXOPT_LOCAL_WORKER = 0 .. workers-1
        self.pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker,
                                        initargs=(self.events, os.getpid(), slots, self.workers))

    @property
    def free_slots(self) -> int:
        return self.workers - len(self.pending) - len(self.futures)

    @property
    def in_flight(self) -> int:
        return len(self.pending) + len(self.futures)

    def submit(self, task) -> None:
        if self.pool is None:
            self.pending.append(task)
        else:
            self.futures[self.pool.submit(_call, self.fn, task)] = task

    def wait(self, timeout: float) -> list[Finished]:
        if self.pool is None:
            out = []
            while self.pending:
                task = self.pending.pop(0)
                cb = (lambda s, t, loss, k=task.key: self.on_progress(k, s, t, loss)) if self.on_progress else None
                try:
                    out.append((task, self.fn(task, progress=cb), None))
                except Exception as e:  # one run's failure must not stop the sweep
                    out.append((task, None, Failure.of(e)))
            if not out:
                time.sleep(timeout)
            return out
        if not self.futures:
            time.sleep(timeout)
            return []
        done, _ = wait_futures(list(self.futures), timeout=timeout, return_when=FIRST_COMPLETED)
        out, broken = [], False
        for fut in done:
            task = self.futures.pop(fut)
            try:
                out.append(fut.result())
            except Exception as e:  # the worker process died (OOM killer, segfault): BrokenProcessPool
                broken = True
                out.append((task, None, Failure.worker_died(f"worker process died: {type(e).__name__}: {e}")))
        if broken:
            retry = Failure.interrupted("worker pool broken by another task's crash; run again")
            for fut, task in list(self.futures.items()):
                out.append((task, None, retry))
            self.futures.clear()
            self.pool.shutdown(wait=False, cancel_futures=True)
            self._new_pool()
        return out

    def close(self) -> None:
        """Stop the workers: at once while a task is in flight (Ctrl-C or an error: no orphaned worker
        keeps training), else let idle ones exit on their own, so that what they started (torch.compile's
        worker pool) is cleaned up and the resource tracker finds no leaked semaphore to warn about."""
        if self.pool is not None:
            if self.futures:
                for proc in list(getattr(self.pool, "_processes", {}).values()):
                    proc.terminate()
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.stop.set()
            self.pump.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def run_local(fn: Callable, tasks: list, workers: int = 1, on_progress: ProgressFn | None = None
              ) -> Iterator[Finished]:
    """Yield (task, result, None) or (task, None, Failure) for each task, as each finishes."""
    with LocalBackend(fn, workers, on_progress) as backend:
        yield from drain(backend, tasks)


def _init_worker(events, driver: int, slots, workers: int) -> None:
    global _events
    _events = events
    with slots.get_lock():
        # The worker's index, for the task to pick its device by (worker i -> GPU i mod GPUs).
        os.environ["MIXOPT_LOCAL_WORKER"] = str(slots.value % workers)
        slots.value += 1
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver handles Ctrl-C and terminates us
    die_with_parent(driver)  # the driver killed (even kill -9), or gone already: this worker too


def _call(fn, task):
    def progress(step, total, loss):
        if step == total or step % 5 == 0:
            _events.put((task.key, step, total, loss))

    try:
        return task, fn(task, progress=progress), None
    except Exception as e:
        return task, None, Failure.of(e)


def _pump(events, on_progress, stop) -> None:
    while not stop.is_set():
        try:
            event = events.get(timeout=0.2)
        except queue.Empty:
            continue
        except (EOFError, OSError):
            return
        if on_progress:
            on_progress(*event)
