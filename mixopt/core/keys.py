"""Content keys: sha256 of canonical JSON, so equal settings give equal keys on any machine."""

import hashlib
import json
import math
import os
import stat
from pathlib import Path


def canonical_json(obj) -> str:
    """JSON with sorted keys, no whitespace, and floats written the same way everywhere."""
    return json.dumps(_normalize(obj), sort_keys=True, separators=(",", ":"), allow_nan=False)


def _normalize(obj):
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise ValueError(f"non-finite number in a content key: {obj}")
        # 12 significant digits: weights that differ by float noise only get the same key.
        return float(f"{obj:.12g}")
    if isinstance(obj, dict):
        return {str(k): _normalize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_normalize(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):  # numpy scalars
        return _normalize(obj.item())
    return obj


def content_hash(obj) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# Caches filled by this process and not yet written: a command writes them once it has succeeded
# (save_file_hashes), so one that fails leaves the workspace as it found it, caches included.
_UNSAVED: list["FileHashes"] = []


def save_file_hashes() -> None:
    """Write every hash cache this process filled: called when a command has succeeded."""
    while _UNSAVED:
        _UNSAVED.pop().save()


def file_stamp(path) -> str:
    """What changes when a file is written to or replaced: its size, mtime and inode."""
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"


class FileHashes:
    """sha256 of files, remembered by (real path, size, mtime, inode) in a JSON file: a corpus is
    identified by its bytes, so a moved or re-spelled path is the same corpus, and each file is
    hashed once per place it lives. Saving is best effort (a read-only workspace still works)."""

    def __init__(self, cache: Path | None):
        self.cache, self.known, self.dirty = cache, {}, False
        if cache is not None and cache.is_file():
            try:
                self.known = json.loads(cache.read_text())
            except (OSError, ValueError):
                self.known = {}  # a torn or foreign cache only costs re-hashing

    def sha256(self, path: Path) -> str:
        real, stamp, digest = self._known(path)
        if digest is not None:
            return digest
        digest = file_sha256(Path(real))
        self._remember(real, stamp, digest)
        return digest

    def prefetch(self, paths, threads: int) -> None:
        """Hash the files not known yet, `threads` at a time (hashlib lets go of the GIL on large blocks:
        a fresh 1 GB corpus costs ~1 CPU-s of sha256). Unreadable ones are left for sha256() to report."""
        todo = []
        for p in paths:
            try:
                if not stat.S_ISREG(os.stat(p).st_mode):
                    continue  # a FIFO would block the read forever; sha256() is never asked for one
                real, stamp, digest = self._known(p)
            except OSError:
                continue
            if digest is None and (real, stamp) not in todo:
                todo.append((real, stamp))
        if threads < 2 or len(todo) < 2:
            return
        from concurrent.futures import ThreadPoolExecutor

        def one(real: str) -> str | None:
            try:
                return file_sha256(Path(real))
            except OSError:
                return None

        with ThreadPoolExecutor(min(threads, len(todo))) as tp:
            digests = list(tp.map(one, [r for r, _ in todo]))
        for (real, stamp), digest in zip(todo, digests):
            if digest is not None:
                self._remember(real, stamp, digest)

    def _known(self, path) -> tuple[str, str, str | None]:
        """The file's real path, its stamp, and its sha256 when known for that stamp."""
        real = os.path.realpath(path)
        stamp = file_stamp(real)
        hit = self.known.get(real)
        return real, stamp, hit[1] if hit and hit[0] == stamp else None

    def _remember(self, real: str, stamp: str, digest: str) -> None:
        self.known[real] = [stamp, digest]
        if not self.dirty:
            _UNSAVED.append(self)
        self.dirty = True

    def save(self) -> None:
        from mixopt.core.workspace import owns

        if self.cache is None or not self.dirty or not owns(self.cache.parent) \
                or not os.access(self.cache.parent, os.W_OK):
            return  # never create a workspace just to hold a cache; a read-only one keeps none
        from mixopt.core.workspace import atomic_write_json

        try:
            atomic_write_json(self.cache, self.known)
            self.dirty = False
        except OSError:
            pass


def run_key(context: str, slices, weights, replicate: int = 0, measured_as: str = "") -> str:
    """A run's key: what it trained on under `context` (proxy spec, tokenizer, seed, trainer
    version). Only domains with weight > 0 count, each as (its train slice's sha256, its weight), in
    the canonical (config) order: a domain at weight 0, added, removed or renamed, leaves the key as
    it is, because the training is the same (proxy.train.mixture_sequences draws nothing for it).
    `replicate` > 0 is another init / data-order seed of the same mixture (replicate_seed); replicate
    0 is the experiment's own seed and keeps the key it always had. `measured_as` is where and how it
    trained when that changes the numbers ("cuda/bf16-autocast", see measurement_of); "" (a CPU in
    float32) keeps the key every run had before precision was part of it."""
    body = {"context": context, "trained": [[s, w] for s, w in zip(slices, weights) if w > 0]}
    if replicate:
        body["replicate"] = int(replicate)
    if measured_as:
        body["measured_as"] = measured_as
    return content_hash(body)


def measurement_of(device_type: str, precision: str) -> str:
    """What a run key records of where a run trained: '' for the CPU in float32 (the setting every
    key before store version 7 was computed under), else '<device type>/<precision>'."""
    return "" if (device_type, precision) == ("cpu", "fp32") else f"{device_type}/{precision}"


def trained_as(measured_as: str | None) -> str:
    """How a run trained, as shown: its measured_as, or 'cpu/fp32' for '' and None (a CPU in float32)."""
    return measured_as or "cpu/fp32"


def precision_of(measured_as: str | None) -> str:
    """The precision part of a measured_as ('fp32', 'bf16-autocast'); '' and None are a CPU in float32."""
    return trained_as(measured_as).partition("/")[2]


def replicate_seed(seed: int, replicate: int) -> int:
    """The proxy's init and data-order seed for replicate `replicate` of a mixture: the experiment's
    seed for replicate 0, else one derived from both (the sample, drawn with the experiment's seed,
    is the same for every replicate: only the proxy's own randomness changes)."""
    if not replicate:
        return int(seed)
    import numpy as np

    return int(np.random.SeedSequence([int(seed), 0x5EED, int(replicate)]).generate_state(1, np.uint64)[0] >> 2)
