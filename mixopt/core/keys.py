"""Content keys: sha256 of canonical JSON, so equal settings give equal keys on any machine."""

import hashlib
import json
import math
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
