"""One pass over a domain's shards: count it and keep the bottom-k documents by seeded content hash.

The kept set is defined without reference to reading order: sort the domain's distinct documents by
priority (a keyed blake2b of their UTF-8 bytes) and keep the shortest prefix holding at least
budget + L bytes, L the largest document of the domain (room for the validation slice to overshoot
its budget by one document). While reading, L is not known yet, but it is at most max_document_bytes:
each pool keeps the shortest prefix holding budget + max_document_bytes, a superset, and the final
trim uses the domain's L. A pool that sees part of the domain keeps every document of the domain's
prefix it saw, so pools of separate shards (or processes) merge into exactly the serial result:
slices, counts and tokenizer do not depend on the number of workers. Memory is bounded by about 1.5x
(budget + max_document_bytes), not by the corpus.

Documents are hashed as bytes straight from Arrow buffers; a Python string is built only for the
documents kept. A document longer than `max_document_bytes` is cut there (at a character boundary)
and counted. The priority is the sampler version's (data.resample.SAMPLER_VERSION): version 1 a keyed
blake2b of each document, version 2 a seeded xxh3 (about 10x less CPU per byte), computed over a
whole Arrow chunk at a time. A workspace keeps the version it was first sampled with.

A task reads its shards with `threads` threads (Arrow decodes without the GIL), each shard into its
own pool, merged as they finish: the same order-free merge as across processes.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from mixopt.backends.base import Executor
from mixopt.backends.local_executor import LocalExecutor
from mixopt.core.credentials import redact
from mixopt.data.readers import iter_chunks, row_group_parts
from mixopt.data.resample import SAMPLER_VERSION
from mixopt.data.sources import SKIP_FIX, ShardError, describe, extension_note, list_shards
from mixopt.errors import MixoptError

_WS_FIRST = frozenset(b" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f")  # str.isspace's ASCII characters
# First bytes after which a document may be blank: str.isspace's ASCII characters and non-ASCII ones.
_ODD_FIRST = np.array([b in _WS_FIRST or b >= 0x80 for b in range(256)])


def _blank(doc: bytes) -> bool:
    """Whether a document that starts with whitespace or a non-ASCII byte is whitespace only."""
    stripped = doc.strip()
    return not stripped or ((stripped[0] >= 0x80 or stripped[0] in _WS_FIRST)
                            and doc.decode("utf-8", "replace").isspace())


@dataclass
class Candidates:
    docs: list[str]  # in sampling order (a data.spill.SpilledDocs, read by slices, once on disk)
    sizes: list[int]  # UTF-8 bytes of each document
    documents: int  # documents (rows, JSON lines, files) read, less `duplicates`: not a count of distinct texts
    duplicates: int  # exact repeats of documents drawn into the sample, dropped (others are not looked for)
    bytes: int  # UTF-8 bytes of those documents
    complete: bool  # every document of the domain is among the candidates
    truncated: int = 0  # documents cut to max_document_bytes
    skipped: list[str] = field(default_factory=list)  # shards skipped (on_error: skip), with why
    scan: dict | None = None  # with sample.scan: shards read of all, and the estimate's standard error


class Pool:
    """The bottom-k pool: priority -> [document bytes, occurrences]; trimmed to the shortest prefix
    holding `threshold` bytes whenever it has grown by half."""

    def __init__(self, threshold: int, version: int = SAMPLER_VERSION):
        self.threshold = threshold
        self.version = version  # the sampler version: how priorities are computed
        self.docs: dict[int, list] = {}
        self.bytes = 0
        self.next_trim = threshold * 3 // 2 + 1
        self.top: int | None = None  # when full: the largest priority kept; larger ones are out
        self.read = self.read_bytes = self.truncated = self.largest = 0

    def trim(self) -> None:
        if self.bytes >= self.threshold:
            keys = sorted(self.docs)
            acc = 0
            for i, k in enumerate(keys):
                acc += len(self.docs[k][0])
                if acc >= self.threshold:
                    break
            for k in keys[i + 1:]:
                del self.docs[k]
            self.bytes, self.top = acc, keys[i]
        self.next_trim = max(self.bytes, self.threshold) * 3 // 2 + 1

    def merge(self, other: Pool) -> None:
        for k, (b, c) in other.docs.items():
            e = self.docs.get(k)
            if e is not None:
                e[1] += c
            else:
                self.docs[k] = [b, c]
                self.bytes += len(b)
        self.read += other.read
        self.read_bytes += other.read_bytes
        self.truncated += other.truncated
        self.largest = max(self.largest, other.largest)
        if other.top is not None and (self.top is None or other.top < self.top):
            self.top = other.top  # the merged prefix ends no later than either pool's
        self.trim()

    def feed(self, col, key: bytes, cap: int) -> None:
        """Offer every document of an Arrow string array."""
        if self.version >= 2:
            self._feed_xxh3(col, key, cap)
        else:
            self._feed_blake2b(col, key, cap)

    def _feed_blake2b(self, col, key: bytes, cap: int) -> None:
        """Sampler version 1: one keyed blake2b per document, in a Python loop. Arrow's buffer reads as
        signed bytes here, so a document starting with a non-ASCII byte is never checked for being
        blank (one of only no-break spaces is kept); left so, since version 1 must draw as it always has."""
        import pyarrow as pa

        n = len(col)
        if n == 0:
            return
        bufs = col.buffers()
        width = np.int64 if pa.types.is_large_string(col.type) else np.int32
        offs = np.frombuffer(bufs[1], dtype=width)[col.offset:col.offset + n + 1].tolist()
        data = memoryview(bufs[2]) if bufs[2] is not None else memoryview(b"")
        valid = col.is_valid().to_numpy(zero_copy_only=False) if col.null_count else None
        docs, top, blake = self.docs, self.top, hashlib.blake2b
        read = read_bytes = truncated = largest = 0
        for i in range(n):
            a, b = offs[i], offs[i + 1]
            if b == a or (valid is not None and not valid[i]):
                continue
            doc = data[a:b]
            if (doc[0] in _WS_FIRST or doc[0] >= 0x80) and _blank(bytes(doc)):
                continue
            if b - a > cap:
                cut = cap
                while cut > 0 and (doc[cut] & 0xC0) == 0x80:  # not inside a UTF-8 character
                    cut -= 1
                doc = doc[:cut]
                truncated += 1
            read += 1
            read_bytes += len(doc)
            if len(doc) > largest:
                largest = len(doc)
            pri = int.from_bytes(blake(doc, digest_size=8, key=key).digest(), "big")
            if top is not None and pri > top:
                continue
            e = docs.get(pri)
            if e is not None:
                e[1] += 1
                continue
            docs[pri] = [bytes(doc), 1]
            self.bytes += len(doc)
            if self.bytes >= self.next_trim:
                self.trim()
                top = self.top
        self.read += read
        self.read_bytes += read_bytes
        self.truncated += truncated
        self.largest = max(self.largest, largest)

    def _feed_xxh3(self, col, key: bytes, cap: int) -> None:
        """Sampler version 2: the chunk's checks in numpy, one seeded xxh3 per document (~25 GB/s, so the
        cost is the call), and only documents at or under the pool's top priority touch the pool."""
        import xxhash

        n = len(col)
        if n == 0:
            return
        bufs, which, starts, ends, first = _spans(col)
        keep = ends > starts
        if col.null_count:
            keep &= col.is_valid().to_numpy(zero_copy_only=False)
        odd = np.flatnonzero(keep)
        odd = odd[_ODD_FIRST[first[odd]]]  # may be whitespace only: looked at one by one
        for i in odd.tolist():
            if _blank(bytes(bufs[which[i]][starts[i]:ends[i]])):
                keep[i] = False
        idx = np.flatnonzero(keep)
        which, starts, ends = which[idx], starts[idx], ends[idx]
        long = np.flatnonzero(ends - starts > cap)
        for j in long.tolist():
            raw, cut = bufs[which[j]], cap
            while cut > 0 and (raw[starts[j] + cut] & 0xC0) == 0x80:  # not inside a UTF-8 character
                cut -= 1
            ends[j] = starts[j] + cut
        if len(idx) == 0:
            return
        sizes = ends - starts
        self.read += len(idx)
        self.read_bytes += int(sizes.sum())
        self.truncated += len(long)
        self.largest = max(self.largest, int(sizes.max()))
        seed, h = int.from_bytes(key[:8], "big"), xxhash.xxh3_64_intdigest
        w, a, b = which.tolist(), starts.tolist(), ends.tolist()
        if len(bufs) == 1:
            data = bufs[0]
            pri = [h(data[x:y], seed) for x, y in zip(a, b)]
        else:
            pri = [h(bufs[v][x:y], seed) for v, x, y in zip(w, a, b)]
        top, docs = self.top, self.docs
        chosen = range(len(pri)) if top is None else np.flatnonzero(np.array(pri, dtype=np.uint64) <= top).tolist()
        for j in chosen:
            p = pri[j]
            if top is not None and p > top:
                continue
            e = docs.get(p)
            if e is not None:
                e[1] += 1
                continue
            docs[p] = [bytes(bufs[w[j]][a[j]:b[j]]), 1]
            self.bytes += b[j] - a[j]
            if self.bytes >= self.next_trim:
                self.trim()
                top = self.top


def _spans(col) -> tuple[list, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Where each document of an Arrow string, large_string or string_view array lies: the data buffers
    (memoryviews), then per document its buffer's index, start, end, and first byte (0 when empty).
    A string view of at most 12 bytes is held in the view itself, which stands as one more buffer."""
    import pyarrow as pa

    n = len(col)
    bufs = col.buffers()
    if getattr(pa.types, "is_string_view", lambda _: False)(col.type):  # pyarrow >= 16
        views = np.frombuffer(bufs[1], dtype=np.int32).reshape(-1, 4)[col.offset:col.offset + n]
        lengths = views[:, 0].astype(np.int64)
        inline = lengths <= 12
        data = [memoryview(b) if b is not None else memoryview(b"") for b in bufs[2:]]
        here = np.frombuffer(bufs[1], dtype=np.uint8)  # an inline view: 4 bytes of length, then the text
        slots = (np.arange(n, dtype=np.int64) + col.offset) * 16 + 4
        which = np.where(inline, len(data), views[:, 2]).astype(np.int64)
        starts = np.where(inline, slots, views[:, 3].astype(np.int64))
        first = here[slots]  # both kinds start with the text's first bytes (a long one's 4-byte prefix)
        return [*data, memoryview(bufs[1])], which, starts, starts + lengths, np.where(lengths > 0, first, 0)
    width = np.int64 if pa.types.is_large_string(col.type) else np.int32
    offs = np.frombuffer(bufs[1], dtype=width)[col.offset:col.offset + n + 1].astype(np.int64)
    data = memoryview(bufs[2]) if bufs[2] is not None else memoryview(b"")
    raw = np.frombuffer(data, dtype=np.uint8)
    starts, ends = offs[:-1], offs[1:].copy()
    first = raw[np.minimum(starts, len(raw) - 1)] if len(raw) else np.zeros(n, np.uint8)
    return [data], np.zeros(n, np.int64), starts, ends, np.where(ends > starts, first, 0)


def seed_key(seed: int, domain: str) -> bytes:
    return hashlib.sha256(f"{seed}:{domain}".encode()).digest()[:32]


def scan_units(units: list, key: bytes, threshold: int, cap: int, top: int | None = None,
               version: int = SAMPLER_VERSION, threads: int = 1) -> tuple[Pool, list[str], list]:
    """Read (source, shard) units into one pool; bad shards raise, or are listed when the source skips.
    Also returns each shard read as (size, text bytes, documents), for estimates from a shard sample.
    `top`: a priority known to be past the domain's prefix (another pool's), so larger ones are skipped.
    `threads` > 1: that many shards are read at once (Arrow decodes them without the GIL); the first
    bad shard in `units` order is the one reported, as when they are read one by one."""
    pool, skipped, read = Pool(threshold, version), [], []
    pool.top = top

    def one(unit) -> Pool:
        part = Pool(threshold, version)
        part.top = pool.top  # the merged pool's, as far as it has got: only decreases
        for col in iter_chunks(unit[0], unit[1], cap, views=version >= 2):
            part.feed(col, key, cap)
        return part

    def absorb(unit, part: Pool | None, error: Exception | None) -> Exception | None:
        """Merge a shard's pool or note why it was skipped; the error when it stops the domain."""
        if isinstance(error, ShardError) and unit[0].on_error == "skip":
            skipped.append(redact(str(error)))  # kept in the manifest
        elif error is not None:
            return error
        else:
            read.append((unit[1].size, part.read_bytes, part.read))
            pool.merge(part)
        return None

    failed: list[tuple[int, Exception]] = []
    if threads <= 1 or len(units) <= 1:
        for unit in units:
            try:
                part, error = one(unit), None
            except ShardError as e:
                part, error = None, e
            if (stop := absorb(unit, part, error)) is not None:
                failed.append((0, stop))
                break
    else:
        todo = list(enumerate(units))
        pending: dict = {}
        with ThreadPoolExecutor(threads) as tp:  # `threads` shards at a time: their pools' memory, no more
            while todo or pending:
                while todo and len(pending) < threads and not failed:
                    i, unit = todo.pop(0)
                    pending[tp.submit(one, unit)] = i
                if not pending:
                    break
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for f in sorted(done, key=pending.get):
                    i = pending.pop(f)
                    error = f.exception()
                    if (stop := absorb(units[i], None if error else f.result(), error)) is not None:
                        failed.append((i, stop))  # the shards before it were all submitted: wait for them
    if failed:
        error = min(failed, key=lambda f: f[0])[1]
        if isinstance(error, ShardError):
            raise MixoptError(redact(str(error)), SKIP_FIX) from None
        raise error
    return pool, skipped, read


def _size(unit) -> int:
    return unit[1].size or 1  # bytes on disk / in the store (1 where unknown: Hub shards)


def _split(units: list, workers: int) -> list[list]:
    """Balance shards across `workers` groups by size (largest first onto the least loaded); order-free.
    The groups come largest first."""
    groups: list[list] = [[] for _ in range(workers)]
    load = [0] * workers
    for u in sorted(units, key=lambda u: (-_size(u), u[1].uri, u[1].index)):
        j = load.index(min(load))
        groups[j].append(u)
        load[j] += _size(u)
    return [g for _, g in sorted(zip(load, groups), key=lambda lg: -lg[0]) if g]


TASKS_PER_WORKER = 4  # groups per worker: a late-starting or slow worker takes fewer, the others more


def merge_scans(a: tuple, b: tuple) -> tuple:
    """Two scan_units results as one (order-free: the pool merge does not depend on which came first)."""
    a[0].merge(b[0])
    a[1].extend(b[1])
    a[2].extend(b[2])
    return a


def read_groups(executor: Executor, units: list, fn, merge, hint=None):
    """fn on the units in groups (TASKS_PER_WORKER per task of the executor, balanced by size) where the
    executor runs them, merged with `merge`; one group when the executor has one task."""
    n = min(len(units), executor.tasks * TASKS_PER_WORKER) if executor.tasks > 1 else 1
    return executor.map_merge(fn, _split(units, n) or [units], merge, hint)


def scan_groups(executor: Executor, units: list, key: bytes, threshold: int, cap: int,
                version: int = SAMPLER_VERSION) -> tuple[Pool, list[str], list]:
    """The units read into one pool per group, merged: the serial result. A local process reading a
    group late skips priorities past the pool merged so far (`top`)."""
    return read_groups(executor, units, partial(scan_units, key=key, threshold=threshold, cap=cap, version=version,
                                                threads=executor.threads),
                       merge_scans, hint=lambda acc: {"top": acc[0].top})


def split_for(units: list, executor: Executor) -> list:
    """Few files for the executor's tasks and threads: Parquet files split by row groups (the merge
    makes it the same sample)."""
    lanes = executor.tasks * executor.threads
    if lanes > 1 and len(units) < lanes * 2:
        return split_units(units, executor.tasks * TASKS_PER_WORKER * executor.threads)
    return units


def split_units(units: list, parts: int) -> list:
    """(source, shard) units with each local Parquet file cut into up to `parts` shards of row groups,
    except where the source skips bad shards: there a bad part must not stand for its file, whose
    other parts would be kept, and how many depends on the cores and workers. Such a file is read whole."""
    return [(s, part) for s, shard in units
            for part in (row_group_parts(shard, parts) if s.on_error != "skip" else [shard])]


def draw_candidates(exp, domain, byte_budget: int, executor: Executor | None = None,
                    version: int = SAMPLER_VERSION) -> Candidates:
    """The domain's bottom-k documents (by seeded content hash, as sampler `version` computes it) holding
    byte_budget bytes, plus room for one more document of at most max_document_bytes; counts the whole domain."""
    cap = exp.sample.max_document_bytes
    threshold = byte_budget + cap  # while reading; the final trim uses the domain's largest document
    key = seed_key(exp.seed, domain.name)
    units = [(s, shard) for s in domain.sources for shard in list_shards(s, exp.base_dir)]
    every = units
    if exp.sample.scan is not None:
        units = subsample(units, exp.sample.scan, key)
    executor = executor or LocalExecutor(1)
    if exp.sample.scan is None:
        units = split_for(units, executor)
    pool, skipped, read = scan_groups(executor, units, key, threshold, cap, version)
    c = finish_candidates(pool, skipped, byte_budget, domain, exp.base_dir)
    if len(units) < len(every):
        c.scan = estimate(read, every, c)
        c.complete = False
    return c


def finish_candidates(pool: Pool, skipped: list[str], byte_budget: int, domain, base_dir: str | Path = ".") -> Candidates:
    """A domain's read pool as its candidates: the final trim, then counts without the duplicates."""
    pool.threshold = byte_budget + pool.largest  # the final prefix: room for one more of the domain's documents
    pool.trim()
    if pool.read == 0:
        note = "".join(extension_note(s, base_dir) for s in domain.sources)
        raise MixoptError(f"domain '{domain.name}' has no documents in "
                          f"{', '.join(describe(s) for s in domain.sources)}{note}",
                          "check the path, format, extensions and text_field of its sources")
    keys = sorted(pool.docs)
    kept = [pool.docs[k] for k in keys]
    dups = sum(c - 1 for _, c in kept)
    dup_bytes = sum((c - 1) * len(b) for b, c in kept)
    return Candidates(
        docs=[b.decode("utf-8", "replace") for b, _ in kept], sizes=[len(b) for b, _ in kept],
        documents=pool.read - dups, duplicates=dups, bytes=pool.read_bytes - dup_bytes,
        complete=sum(c for _, c in kept) == pool.read, truncated=pool.truncated, skipped=sorted(skipped))


def subsample(units: list, scan, key: bytes) -> list:
    """A seeded subset of the shards: the ceil(fraction x n) (at least min_shards) whose keyed hash of
    the file name (not the folder: a moved corpus reads the same shards) is smallest."""
    import math

    k = min(len(units), max(scan.min_shards, math.ceil(scan.fraction * len(units))))

    def rank(u):
        name = f"{os.path.basename(u[1].uri.rstrip('/'))}#{u[1].index}"
        return hashlib.blake2b(name.encode(), digest_size=8, key=key).digest(), u[1].uri
    return sorted(units, key=rank)[:k]


def estimate(read: list, every: list, c: Candidates) -> dict:
    """The domain's text bytes and documents from the shards read: a ratio estimator on shard sizes
    (bytes on disk or in the store; 1 per shard where unknown), with its standard error."""
    sizes = [u[1].size or 1 for u in every]
    read = sorted(read)  # the sums below must not depend on which worker finished first
    x = np.array([r[0] or 1 for r in read], dtype=float)
    y = np.array([r[1] for r in read], dtype=float)
    docs = np.array([r[2] for r in read], dtype=float)
    n, big_n, total = len(read), len(every), float(sum(sizes))
    ratio = y.sum() / x.sum()
    est = ratio * total
    f = n / big_n
    # var = N^2 (1 - f) / n * s^2, s^2 the variance of the residuals y - ratio x (Cochran, ratio estimator)
    se = big_n * np.sqrt((1 - f) / n * ((y - ratio * x) ** 2).sum() / (n - 1)) if n > 1 else 0.0
    c.bytes = int(round(est))
    c.documents = int(round(docs.sum() / x.sum() * total))
    return {"shards_read": n, "shards": big_n, "bytes_stderr": float(se)}


__all__ = ["Candidates", "Pool", "draw_candidates", "scan_groups", "scan_units", "seed_key", "split_for", "split_units"]
