"""Candidates held on disk between reading and tokenizing: `sample` reads every domain before it can
train the tokenizer, so without this it would hold every domain's candidates (up to ~6 bytes x
(train_tokens + val_tokens) each) at once. Past SPILL_BYTES in memory, a domain's candidate documents
go to an Arrow file in a folder of the workspace and are read back, memory-mapped, a slice at a time:
memory then holds about one domain's candidates, whatever the number of domains. The folder is the
sample's own (`.sample.spill-<key>`), removed when `sample` ends, or by the next `sample` after a kill.
`Spill` also holds the workspace's sample lock, so that two `sample`s cannot share those folders.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from mixopt.core.workspace import Workspace, make_dirs
from mixopt.errors import MixoptError

try:
    import fcntl
except ImportError:  # Windows: no sample lock
    fcntl = None

SPILL_BYTES = 256 << 20  # candidate text held in memory before domains go to disk
_BATCH_BYTES = 64 << 20  # text per Arrow record batch written


class SpilledDocs:
    """A domain's candidate documents in an Arrow file: len() and slices (lists of str), as a list."""

    def __init__(self, path: Path, docs: list[str], sizes: list[int]):
        import pyarrow as pa

        self.path, self.n = path, len(docs)
        schema = pa.schema([("text", pa.large_string())])
        with pa.OSFile(str(path), "wb") as f, pa.ipc.new_file(f, schema) as w:
            a = used = 0
            for b, n in enumerate(sizes, 1):
                used += n
                if used >= _BATCH_BYTES or b == len(docs):
                    w.write_batch(pa.record_batch([pa.array(docs[a:b], type=pa.large_string())], schema=schema))
                    a, used = b, 0
        self._column = None

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, s: slice) -> list[str]:
        import pyarrow as pa

        a, b, step = s.indices(self.n)
        if step != 1:
            raise ValueError("spilled documents are read by contiguous slices")
        if self._column is None:  # mapped, not read: the pages the slices touch come in as needed
            self._column = pa.ipc.open_file(pa.memory_map(str(self.path))).read_all().column(0)
        return self._column.slice(a, max(b - a, 0)).to_pylist()


class Spill:
    """The workspace folder candidates go to once more than SPILL_BYTES of them are in memory, and the
    workspace's sample lock: one `sample` at a time writes a workspace's sample."""

    def __init__(self, ws: Workspace, key: str):
        self.ws, self.folder = ws, ws.root / f".sample.spill-{key[:12]}"
        self.held = 0  # bytes of candidate text in memory
        self._lock: int | None = None
        self.lock()

    def lock(self) -> None:
        """Hold the sample lock (an flock on the workspace folder, once it exists; the kernel releases it
        when this process ends, kill -9 included), then remove what killed runs left: spill folders, and
        temp and replaced samples while sample/ is there; with the lock held, none is another run's. A
        second `sample` on the workspace is one line."""
        if self._lock is not None or fcntl is None or not self.ws.root.is_dir():
            return
        fd = os.open(self.ws.root, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise MixoptError(f"another `mixopt sample` is writing the sample of workspace {self.ws.root}",
                              "wait for it to finish, then run this again") from None
        self._lock = fd
        left = list(self.ws.root.glob(".sample.spill-*"))
        if self.ws.sample_dir.is_dir():  # a killed run's half-built or replaced samples, now superseded
            left += [*self.ws.root.glob(".sample.tmp-*"), *self.ws.root.glob(".sample.old-*")]
        for folder in left:  # (without sample/, they may hold the only copy of one: left for the user)
            shutil.rmtree(folder, ignore_errors=True)

    def hold(self, name: str, candidates) -> None:
        """Keep a domain's candidates in memory, or move their documents to disk when memory is full."""
        size = sum(candidates.sizes)
        if self.held + size <= SPILL_BYTES:
            self.held += size
            return
        if not self.folder.is_dir():
            self.ws.claim()
            self.lock()
            make_dirs(self.folder)
        candidates.docs = SpilledDocs(self.folder / f"{name}.arrow", candidates.docs, candidates.sizes)

    def remove(self) -> None:
        """Remove the spill folder and release the lock."""
        shutil.rmtree(self.folder, ignore_errors=True)
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None
