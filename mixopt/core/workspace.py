"""Where an experiment's outputs live, and writes that never leave a half-written file."""

from __future__ import annotations

import errno
import json
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from mixopt.errors import MixoptError


def slice_file(sample_dir: Path, domain: str, split: str) -> Path:
    """<sample>/<domain>/<split>.npy: token ids, documents separated by end-of-text."""
    return sample_dir / domain / f"{split}.npy"


def token_bytes_file(sample_dir: Path) -> Path:
    """UTF-8 bytes per token id: the denominator of bits per byte."""
    return sample_dir / "token_bytes.npy"


MARKER = ".mixopt"  # left in every folder mixopt creates: only such folders does it replace or delete
MARKER_TEXT = "This folder was made by mixopt, which may replace what is in it.\n"
LEGACY_WORKSPACE = ("mixopt.db", "sample/manifest.json", "file-hashes.json")  # workspaces written before markers existed


def owns(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def _mark(folder: Path) -> bool:
    """Leave the marker; True when this call wrote it."""
    try:
        with open(folder / MARKER, "x") as f:
            f.write(MARKER_TEXT)
        return True
    except FileExistsError:
        return False


# Folders this process adopted (marked) with what they held then: a command that fails takes the
# marker back where it wrote nothing else (unmark_adopted), leaving an older workspace as it found it.
_ADOPTED: dict[Path, set[str]] = {}


def unmark_adopted() -> None:
    """After a failed command: the marker out of each folder it adopted and left otherwise as found."""
    for folder, held in _ADOPTED.items():
        try:
            if set(os.listdir(folder)) - {MARKER} == held:
                (folder / MARKER).unlink()
        except OSError:
            pass
    _ADOPTED.clear()


def make_dirs(path: Path) -> None:
    """mkdir -p, leaving the marker in each folder it creates."""
    missing = []
    p = path
    while not p.exists() and not p.is_symlink():
        missing.append(p)
        p = p.parent
    made = []
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:  # another process made it: it marks it too
            pass
        except OSError as e:  # a file on the way, no permission, a kernel file system
            for m in reversed(made):  # nothing half-made: the folders made here go again
                unmake_workspace(m)
            if e.errno == errno.EROFS or e.errno in DISK_FULL_ERRNOS:  # the CLI's one line for each says more
                raise
            raise MixoptError(f"cannot make the folder {path}: {e.strerror or e} ({d})",
                              "choose a folder you can write, under folders (not files)") from None
        else:
            made.append(d)
        _mark(d)
    if not path.is_dir():
        raise MixoptError(f"{path} is a file, not a folder", "move it away or choose another folder")


def check_folder(path: Path, what: str, legacy: tuple[str, ...] = ()) -> None:
    """Refuse (one MixoptError) a folder mixopt may not write into: a file, or a folder holding
    files that neither carry its marker nor look like an older mixopt's output (`legacy`)."""
    if path.exists() and not path.is_dir():
        raise MixoptError(f"{what} {path} is a file, not a folder", "point it at a new or empty folder")
    above = next((p for p in path.parents if p.exists()), None)
    if not path.exists() and above is not None and not above.is_dir():
        raise MixoptError(f"{what} {path} is under {above}, a file, not a folder", "point it at a folder under folders")
    if not path.is_dir() or owns(path):
        return
    entries = sorted(os.listdir(path))
    if not entries or any((path / name).exists() for name in legacy):
        return
    shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
    raise MixoptError(f"{what} {path} holds files mixopt did not write ({shown}), so mixopt will not write there",
                      "point it at a new or empty folder, or move those files away")


def claim_folder(path: Path, what: str, legacy: tuple[str, ...] = ()) -> None:
    """check_folder, then make the folder (or adopt an empty or legacy one) with the marker."""
    check_folder(path, what, legacy)
    if path.is_dir():
        held = set(os.listdir(path))
        if _mark(path):
            _ADOPTED.setdefault(path, held)
    else:
        make_dirs(path)


def unmake_workspace(root: Path) -> None:
    """Remove a folder this process made and left holding nothing but the marker."""
    try:
        if sorted(os.listdir(root)) == [MARKER]:
            (root / MARKER).unlink()
            root.rmdir()
    except OSError:
        pass


def read_json(path: Path, what: str = "", fix: str = "rerun the command that wrote it"):
    """A JSON file mixopt wrote, or one MixoptError naming it (truncated, not JSON, unreadable)."""
    try:
        return json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError):
        raise MixoptError(f"{path}: truncated or not JSON{what}", fix) from None
    except OSError as e:
        raise MixoptError(f"{path}: cannot read it ({e.strerror})", "check the path and its permissions") from None


@dataclass(frozen=True)
class Workspace:
    root: Path

    @property
    def sample_dir(self) -> Path:
        return self.root / "sample"

    @property
    def manifest_path(self) -> Path:
        return self.sample_dir / "manifest.json"

    @property
    def tokenizer_path(self) -> Path:
        return self.sample_dir / "tokenizer.json"

    @property
    def file_hashes_path(self) -> Path:
        """sha256 of the corpus files, cached by path, size, mtime and inode (keys.FileHashes)."""
        return self.root / "file-hashes.json"

    @property
    def checkpoints_dir(self) -> Path:
        return self.root / "checkpoints"

    @property
    def db_path(self) -> Path:
        return self.root / "mixopt.db"

    @property
    def fits_dir(self) -> Path:
        return self.root / "fits"

    def fit_dir(self, fit_key: str) -> Path:
        """One fit's folder (fit.json, runs.parquet, plots): named by the first 16 hex digits of its key."""
        return self.fits_dir / fit_key[:16]

    def slice_path(self, domain: str, split: str) -> Path:
        return slice_file(self.sample_dir, domain, split)

    def check(self) -> None:
        """Refuse a workspace that is a file or a folder of someone else's files."""
        check_folder(self.root, "the workspace", LEGACY_WORKSPACE)

    def claim(self) -> None:
        """Before the first write: the workspace folder, made or adopted, with its marker."""
        claim_folder(self.root, "the workspace", LEGACY_WORKSPACE)

    def read_manifest(self) -> dict:
        if not self.manifest_path.is_file():
            raise MixoptError(f"no sample in workspace {self.root}", "run `mixopt sample CONFIG` first")
        manifest = read_json(self.manifest_path, " (the sample's manifest)", "run `mixopt sample CONFIG --force`")
        if not isinstance(manifest, dict) or "domains" not in manifest:
            raise MixoptError(f"{self.manifest_path}: not a manifest mixopt wrote",
                              "run `mixopt sample CONFIG --force`")
        return manifest


def relative_checkpoint(path: str | Path, root: Path) -> str:
    """A checkpoint's path relative to the workspace `root`. A path recorded under another root (a
    copied or moved workspace) keeps its part from the last `checkpoints/` folder on."""
    p = Path(path)
    if not p.is_absolute():
        return p.as_posix()
    for base in (root, root.resolve()):
        if p.is_relative_to(base):
            return p.relative_to(base).as_posix()
    if "checkpoints" in p.parts[:-1]:
        i = len(p.parts) - 1 - p.parts[::-1].index("checkpoints")
        return Path(*p.parts[i:]).as_posix()
    return str(p)  # outside any workspace layout: kept as recorded


# A write failed for want of space, not for what was written: no space, the file size limit, the quota.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_UMASK: int | None = None
_UMASK_LOCK = threading.Lock()


def process_umask() -> int:
    """This process's umask, read once: from /proc where it can be read without changing it,
    else set and restored under a lock (os.umask has no read-only form)."""
    global _UMASK
    with _UMASK_LOCK:
        if _UMASK is None:
            try:
                with open("/proc/self/status") as f:
                    _UMASK = next(int(x.split()[1], 8) for x in f if x.startswith("Umask:"))
            except (OSError, StopIteration, ValueError, IndexError):
                _UMASK = os.umask(0o022)
                os.umask(_UMASK)
        return _UMASK


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, rename: readers see old or new, never half.
    The file gets the mode open() would give it (0666 less the umask), not mkstemp's 0600, so
    teammates on a shared filesystem can read manifests and fits."""
    make_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~process_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_npy(path: Path, array) -> None:
    """np.save, serialized in memory and written by Python: a full disk is an OSError with its errno
    (numpy's own writer reports "N requested and M written", with none)."""
    import io

    import numpy as np

    buf = io.BytesIO()
    np.save(buf, array)
    atomic_write_bytes(path, buf.getvalue())


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
