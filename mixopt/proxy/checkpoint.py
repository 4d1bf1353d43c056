"""Checkpoints: one proxy of a stacked set as a transformers-named safetensors file (HF tools load
it), written atomically with its sha256; stacked weights loaded back from such files; and where a
run leaves its result and its training state."""

from __future__ import annotations

import hashlib
from pathlib import Path

from mixopt.core.workspace import atomic_write_bytes

EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"
# The output layer is tied to the embedding: the file holds the tensor once, under HEAD, and names
# EMBED its alias in the metadata, as safetensors' save_model writes a LlamaForCausalLM.
TIED = {EMBED: HEAD}


def save_checkpoint(W: dict, i: int, path: Path) -> str:
    """Proxy i of stacked weights W to `path`; returns the file's sha256. Serialized in memory,
    then written by Python: a full disk raises a plain OSError (ENOSPC, EFBIG) with its errno."""
    from safetensors.torch import save

    tensors = {(HEAD if name == EMBED else name): w[i].detach().float().cpu().contiguous() for name, w in W.items()}
    data = save(tensors, metadata=TIED)
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def load_checkpoints(paths: list[Path], device: str = "cpu") -> dict:
    """The proxies in these checkpoint files, stacked on a leading axis (in this order)."""
    import torch
    from safetensors.torch import load_file

    files = [load_file(str(p)) for p in paths]
    return {(EMBED if name == HEAD else name): torch.stack([f[name] for f in files]).to(device) for name in files[0]}


def result_path(checkpoint: Path) -> Path:
    """Where a finished run leaves its result, so a driver that died before recording it adopts it."""
    return checkpoint.with_suffix(".json")


def state_path(checkpoint: Path) -> Path:
    """Where an unfinished run keeps its training state."""
    return checkpoint.with_suffix(".resume.pt")


class CheckpointMismatch(Exception):
    """The checkpoint on disk is not the one that was recorded: its run must be retrained."""
