"""The local backend: in this process (workers=1) or a pool of spawned worker processes."""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import queue
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator

ProgressFn = Callable[[str, int, int, float], None]  # (task key, step, total, loss)
_events = None  # the progress queue, in a worker process


def run_local(fn: Callable, tasks: list, workers: int = 1, on_progress: ProgressFn | None = None
              ) -> Iterator[tuple[object, dict | None, str | None]]:
    """Yield (task, result, None) or (task, None, error text) for each task, as each finishes."""
    if workers <= 1:
        for task in tasks:
            cb = (lambda s, t, l, k=task.key: on_progress(k, s, t, l)) if on_progress else None
            try:
                yield task, fn(task, progress=cb), None
            except Exception:  # one run's failure must not stop the sweep
                yield task, None, traceback.format_exc()
        return
    ctx = mp.get_context("spawn")  # fork after torch has started threads can deadlock
    events = ctx.Queue()
    stop = threading.Event()
    pump = threading.Thread(target=_pump, args=(events, on_progress, stop), daemon=True)
    pump.start()
    pool = ctx.Pool(workers, initializer=_init_worker, initargs=(events,))
    try:
        for task, result, error in pool.imap_unordered(_call, [(fn, t) for t in tasks]):
            yield task, result, error
        pool.close()
        pool.join()
    finally:
        pool.terminate()  # on an exception or Ctrl-C: no orphaned workers keep training
        stop.set()
        pump.join(timeout=5)


def _init_worker(events) -> None:
    global _events
    _events = events
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver handles Ctrl-C and terminates us
    if sys.platform.startswith("linux"):
        # If the driver is killed (even kill -9), the kernel kills this worker too.
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _call(item):
    fn, task = item

    def progress(step, total, loss):
        if step == total or step % 5 == 0:
            _events.put((task.key, step, total, loss))

    try:
        return task, fn(task, progress=progress), None
    except Exception:
        return task, None, traceback.format_exc()


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
