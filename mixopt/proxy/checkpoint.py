"""Checkpoints: safetensors written atomically with their sha256, the result left beside each, and
where an unfinished run keeps its training state."""

from __future__ import annotations

import json
import os
from pathlib import Path

from mixopt.core.keys import file_sha256
from mixopt.core.workspace import fsync_dir


def save_checkpoint(model, path: Path) -> str:
    """safetensors to a temp file, fsync, rename; returns the file's sha256."""
    from safetensors.torch import save_model

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_model(model, str(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return file_sha256(path)


def result_path(checkpoint: Path) -> Path:
    return checkpoint.with_suffix(".json")


def state_path(checkpoint: Path) -> Path:
    """Where an unfinished run keeps its training state."""
    return checkpoint.with_suffix(".resume.pt")


def read_result(checkpoint: Path) -> dict | None:
    """A finished run's result left next to its checkpoint, if the checkpoint matches it."""
    side = result_path(checkpoint)
    if not (side.is_file() and checkpoint.is_file()):
        return None
    try:
        result = json.loads(side.read_text())
    except json.JSONDecodeError:
        return None
    return result if result.get("sha256") == file_sha256(checkpoint) else None
