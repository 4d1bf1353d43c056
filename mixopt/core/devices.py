"""The one rule for `--device auto`: a CUDA GPU where this process sees one, else the CPU."""

from __future__ import annotations


def resolve_device(device: str) -> str:
    """`auto` as the device this machine has ("cuda" or "cpu"); any other device as given (cpu, cuda, cuda:N)."""
    if device != "auto":
        return device
    import torch  # only for auto: naming a device never loads CUDA

    return "cuda" if torch.cuda.is_available() else "cpu"
