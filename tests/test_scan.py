"""data.scan's bottom-k pool: sampler versions 1 and 2 read the same documents, prioritised differently."""

import pyarrow as pa
import pytest

from mixopt.data.scan import Pool, seed_key


def test_both_sampler_versions_skip_cut_and_count_the_same_documents():
    """Blank documents (ASCII whitespace, empty, null) are skipped, long ones cut at a character
    boundary, duplicates counted once, in chunks with an offset: version 2's numpy checks keep exactly
    what version 1's loop keeps. One difference, kept so that version 1 draws as it always has: it
    read a document's first byte as signed, so a document of only non-ASCII whitespace (no-break
    spaces) was never looked at and is kept; version 2 skips it."""
    cap = 1024
    docs = ["plain text", "", None, "   \n\t", " leading space kept", "\x1c\x1d",
            "é" * 700, "x" + "€" * 400, "naïve café", "plain text", "\x0b", "\u2028 not blank: z", "ok " * 500]
    unicode_blank = "\u3000\u2003 \u00a0"
    kept = {}
    for version in (1, 2):
        for extra in ([], [unicode_blank]):
            pool = Pool(10 ** 9, version)
            for col in (pa.array(docs + extra, type=pa.string()),
                        pa.array(docs * 2 + extra, type=pa.large_string()).slice(3)):
                pool.feed(col, seed_key(0, "d"), cap)
            kept[version, len(extra)] = (sorted((b, n) for b, n in pool.docs.values()), pool.read, pool.read_bytes,
                                         pool.truncated, pool.largest)
    assert kept[1, 0] == kept[2, 0] == kept[2, 1]
    assert kept[1, 1][1] == kept[1, 0][1] + 2 and unicode_blank.encode() in dict(kept[1, 1][0])
    kept = kept[2, 0]
    assert kept[1] == (13 - 5) + (23 - 8)  # both chunks' documents less the empty, null and blank ones
    texts = [b.decode() for b, _ in kept[0]]
    assert "plain text" in texts and " leading space kept" in texts and "\u2028 not blank: z" in texts
    assert not any(t.isspace() for t in texts) and kept[3] == 9  # é*700, €*400 and "ok "*500: 3 copies each
    assert all(len(t.encode()) <= cap for t in texts) and "é" * 512 in texts  # 1024 bytes: 512 whole characters


def test_version_2_priorities_are_seeded_and_differ_from_version_1():
    col = pa.array([f"document {i}" for i in range(50)])
    orders = {}
    for version, seed in ((1, 0), (2, 0), (2, 1)):
        pool = Pool(10 ** 9, version)
        pool.feed(col, seed_key(seed, "d"), 1024)
        orders[version, seed] = [b for _, (b, _) in sorted(pool.docs.items())]
    assert orders[1, 0] != orders[2, 0] != orders[2, 1]
    again = Pool(10 ** 9, 2)
    again.feed(col, seed_key(0, "d"), 1024)
    assert [b for _, (b, _) in sorted(again.docs.items())] == orders[2, 0]  # deterministic


def test_string_views_feed_the_same_pool_as_strings():
    """Polars hands the sampler Arrow string views (data.readers): short documents held in the view itself
    (12 bytes or fewer), long ones in one of several data buffers, nulls, an offset. Version 2 keeps,
    cuts and counts exactly what it keeps from the same documents as plain strings."""
    cap = 1024
    docs = ["plain text", "", None, "   \n\t", "short", "exactly 12 b", "thirteen byte", "\x1c\x1d", "é" * 700,
            "x" + "€" * 400, "naïve café", "plain text", "\u3000\u00a0", "\u2028 not blank: z", "ok " * 500, "é"]
    more = [f"document number {i} " * (i % 7) for i in range(200)]
    key = seed_key(3, "d")

    def pool(cols):
        p = Pool(10 ** 9, 2)
        for c in cols:
            p.feed(c, key, cap)
        return sorted((b, n) for b, n in p.docs.values()), p.read, p.read_bytes, p.truncated, p.largest

    plain = pool([pa.array(docs, type=pa.string()), pa.array(more + docs, type=pa.large_string()).slice(5)])
    views = pa.concat_arrays([pa.array(more, type=pa.string_view()), pa.array(docs, type=pa.string_view())])
    assert len(views.buffers()) > 3  # the concatenation keeps each part's data buffer: several of them
    assert pool([pa.array(docs, type=pa.string_view()), views.slice(5)]) == plain
    kept = [d for d in docs if d and not d.isspace()]
    assert plain[1] == 2 * len(kept) + sum(1 for d in more[5:] if d) and plain[3] == 6  # blank ones skipped, cut ones


def _polars_threads(group):
    import polars

    return [polars.thread_pool_size()]


def test_a_reading_worker_process_sizes_polars_to_its_share_of_the_cores(monkeypatch):
    """Two workers on two cores read one shard at a time each: a spawned worker's polars pool gets its
    one core, not the machine's two (which would put four reading threads on two cores)."""
    from mixopt.backends import local_executor

    monkeypatch.delenv("POLARS_MAX_THREADS", raising=False)
    monkeypatch.setattr(local_executor, "cores", lambda: 2)
    ex = local_executor.LocalExecutor(2)
    try:
        sizes = ex.map_merge(_polars_threads, [[1], [2], [3], [4]], lambda a, b: a + b)
    finally:
        ex.shutdown()
    assert ex.threads == 1 and len(sizes) == 4 and 1 in sizes


def test_a_reading_worker_dies_with_its_parent_and_a_dead_worker_is_one_line(tmp_path):
    """kill -9 of `sample` left its spawned reading workers alive, blocked on a pipe no one reads; the
    kernel now kills them with it. A worker that dies (the OOM killer) is one line, not a traceback."""
    import os
    import signal
    import subprocess
    import sys
    import time

    started = tmp_path / "started"  # the worker is running its task (a shell that became `sleep`)
    code = ("import os, sys; from mixopt.backends.local_executor import LocalExecutor; ex = LocalExecutor(2); "
            f"f = ex.processes.submit(os.system, 'echo $$ > {started}; exec sleep 3600'); "
            "kids = [k for k in open(f'/proc/{os.getpid()}/task/{os.getpid()}/children').read().split() "
            "if b'spawn_main' in open(f'/proc/{k}/cmdline', 'rb').read()]; "  # the workers (not Python's resource tracker)
            "print(*kids, flush=True); f.result()")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    kids = [int(k) for k in p.stdout.readline().split()]
    assert kids, "no worker was started"
    deadline = time.monotonic() + 120
    while not (started.is_file() and started.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    sleeper = int(started.read_text())
    try:
        p.kill()
        p.wait(timeout=60)
        deadline = time.monotonic() + 60
        while kids and time.monotonic() < deadline:
            kids = [k for k in kids if _alive(k)]
            time.sleep(0.05)
    finally:
        if _alive(sleeper):
            os.kill(sleeper, signal.SIGKILL)  # the task's own child, ours to end
    assert not kids, f"worker(s) {kids} outlived their parent"

    from mixopt.backends.local_executor import LocalExecutor
    from mixopt.errors import MixoptError

    ex = LocalExecutor(2)
    try:
        with pytest.raises(MixoptError, match="a worker process died while reading"):
            ex.map_merge(_die, [[1], [2], [3]], lambda a, b: a + b)
    finally:
        ex.shutdown()


def _alive(pid: int) -> bool:
    """Whether a process of ours still runs (not gone, not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _die(group):
    """In a spawned worker: die as the OOM killer kills; in the calling process: a group read."""
    import multiprocessing
    import os
    import signal

    if multiprocessing.current_process().name != "MainProcess":
        os.kill(os.getpid(), signal.SIGKILL)
    return group
