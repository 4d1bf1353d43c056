"""core.keys.FileHashes: files identified by their sha256, remembered by (path, size, mtime, inode)."""

import hashlib
import os

import pytest

from mixopt.core.keys import FileHashes


def test_prefetch_hashes_new_files_in_threads_as_sha256_would(tmp_path, monkeypatch):
    files = []
    for i in range(5):
        files.append(tmp_path / f"f{i}.bin")
        files[-1].write_bytes(os.urandom(1000 + i) * (i + 1))
    os.mkfifo(tmp_path / "pipe")  # opening it would wait for a writer forever: left alone
    unreadable = tmp_path / "locked.bin"
    unreadable.write_bytes(b"x")
    os.chmod(unreadable, 0)
    hashes = FileHashes(tmp_path / "cache.json")
    hashes.prefetch([*map(str, files), str(unreadable), str(tmp_path / "missing"), str(tmp_path / "pipe")], threads=3)
    assert len(hashes.known) == 5 + (os.geteuid() == 0)  # root reads the locked file too
    import mixopt.core.keys as keys

    monkeypatch.setattr(keys, "file_sha256", lambda p: pytest.fail(f"{p} hashed again"))
    for f in files:  # known now: sha256() does not read them again
        assert hashes.sha256(f) == hashlib.sha256(f.read_bytes()).hexdigest()
