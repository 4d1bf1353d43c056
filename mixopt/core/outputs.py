"""Files a verb writes where the user points (`export -o`, `report --output`, `schema --out`,
`export-model --output`): checked before any work by one guard, written whole, and recorded so that
mixopt replaces its own earlier output but never a user's file without `--force`."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Callable

from mixopt.core.keys import file_sha256
from mixopt.core.workspace import DISK_FULL_ERRNOS, atomic_write_bytes, atomic_write_json
from mixopt.errors import MixoptError

# In the workspace: {real path: sha256} of every file a verb wrote for the user. An existing file is
# mixopt's to replace when it is listed here with its current content: mixopt wrote it and nobody
# has changed it since (an export edited in a spreadsheet is the user's again).
RECORD = "outputs.json"
PSEUDO_FILESYSTEMS = ("/proc", "/sys")  # "regular" files there are the kernel's, never a place for output


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _under(path: Path, folder: Path) -> bool:
    return path == folder or path.is_relative_to(folder)


def check_output(path: Path, flag: str, *, force: bool = False, workspace: Path | None = None,
                 owned_inside: tuple[Path, ...] = (), protected: tuple[tuple[Path, str], ...] = (),
                 looks_mine: Callable[[Path], bool] | None = None, folder: bool = False,
                 instead: str = "choose another path") -> Path:
    """The real path to write `path` to, or one MixoptError: never a NUL byte, a link that leads nowhere
    or to a folder, a device, FIFO or kernel file, a folder where a file goes (or a non-empty one where a
    folder goes), the config or its inputs (`protected`: path and what it is), a place in the workspace
    other than the verb's own (`owned_inside`), nor an existing file mixopt did not write unless `force`.
    For a file, `looks_mine` may recognise mixopt's output by its content (a verb with no workspace).
    `flag` may be empty (a verb that writes beside the config, no flag names the path); `instead`: the
    fix other than --force when the file is the user's."""
    at = f"{flag} {path}" if flag else str(path)
    if "\0" in str(path):
        raise MixoptError(f"{flag} holds a NUL byte", "name the path without it")
    kind = "folder" if folder else "file"
    if path.is_symlink():
        target = _real(path)
        if not target.exists():
            raise MixoptError(f"{at} is a symbolic link to nothing ({os.readlink(path)})",
                              f"name a new {kind}, not a link")
        if folder or target.is_dir():
            raise MixoptError(f"{at} is a symbolic link to a folder", f"name a new {kind}, not a link")
    real = _real(path)
    if real.exists():
        mode = real.stat().st_mode
        if folder and not stat.S_ISDIR(mode):
            raise MixoptError(f"{at} is not a folder", "name a new folder")
        if folder and any(real.iterdir()):
            raise MixoptError(f"{at} already exists and is not an empty folder", "name a new folder")
        if not folder and stat.S_ISDIR(mode):
            inside = f"{flag} {path / 'out'}" if flag else str(path / "out")
            raise MixoptError(f"{at} is a folder", f"name a file in it, e.g. {inside}")
        if not folder and not stat.S_ISREG(mode):
            raise MixoptError(f"{at} is not a regular file (a device, FIFO or socket)",
                              "name a regular file")
    kernel = next((p for p in PSEUDO_FILESYSTEMS if _under(real, Path(p))), None)
    if kernel:
        raise MixoptError(f"{at} is in {kernel}, the kernel's files", "name a file of yours")
    if not real.parent.is_dir():
        raise MixoptError(f"{at}: folder {path.parent} does not exist", "create it first")
    for p, what in protected:
        if _under(real, _real(p)):
            same = real == _real(p)
            raise MixoptError(f"{at} is {what}" if same else f"{at} is inside {what}",
                              "choose another path: mixopt never writes over its inputs")
    own = any(_under(real, _real(o)) for o in owned_inside)
    if workspace is not None and _under(real, _real(workspace)) and not own:
        raise MixoptError(f"{at} is inside the workspace {workspace}",
                          "choose a path outside the workspace (its files are mixopt's records)")
    if not folder and real.exists() and not (force or own or recorded(workspace, real)
                                             or (looks_mine is not None and looks_mine(real))):
        raise MixoptError(f"{at} exists and mixopt did not write it",
                          f"pass --force to replace it, or {instead}")
    return real


def recorded(workspace: Path | None, path: Path) -> bool:
    """Whether the workspace's record lists `path` with its current content."""
    if workspace is None:
        return False
    try:
        sha = json.loads((workspace / RECORD).read_text()).get(str(path))
        return sha is not None and sha == file_sha256(path)
    except (OSError, ValueError, AttributeError):
        return False


def write_output(path: Path, data: bytes, flag: str, workspace: Path | None = None) -> None:
    """Write a checked output whole (a temp file beside it, renamed) and record it in the workspace.
    A failed write leaves nothing behind and is one MixoptError naming the path."""
    try:
        atomic_write_bytes(path, data)
    except OSError as e:
        full = e.errno in DISK_FULL_ERRNOS
        raise MixoptError(f"cannot write {flag} {path}: {e.strerror or e}" + (" (disk full or file size limit)"
                                                                               if full else ""),
                          "free space (or raise the quota) and rerun" if full else "choose a path you can write"
                          ) from None
    if workspace is not None:
        record_output(workspace, path, file_sha256(path))


def record_output(workspace: Path, path: Path, sha: str) -> None:
    """Add `path` to the workspace's record; a workspace that cannot be written (read-only) keeps none."""
    record = workspace / RECORD
    try:
        known = json.loads(record.read_text()) if record.is_file() else {}
        known = known if isinstance(known, dict) else {}
        known[str(path)] = sha
        atomic_write_json(record, known)
    except (OSError, ValueError):
        pass
