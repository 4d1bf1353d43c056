"""The one place weights given by a user are validated: a config's mixtures, mixture files, swarm tables."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from mixopt.errors import MixoptError, shown

WEIGHT_TOLERANCE = 1e-3  # weights given by a user must sum to 1 within this; then they are normalized


def check_weight_rows(X, names: list[str], where: str, tolerance: float = WEIGHT_TOLERANCE,
                      rows: list[str] | None = None) -> np.ndarray:
    """Mixtures as rows of weights in `names` order: finite, >= 0, each summing to 1 within
    `tolerance`; returned normalized. `rows` names each row in messages (default: row 1, row 2, ...)."""
    X = np.atleast_2d(np.asarray(X, dtype=float))

    def at(r: int) -> str:
        label = rows[r] if rows is not None else f"row {r + 1}"
        return f"{where}: {label}" if label else where

    bad = np.argwhere(~np.isfinite(X))
    if bad.size:
        r, c = bad[0]
        raise MixoptError(f"{at(r)}: weight of '{names[c]}' is {X[r, c]:g}, not a finite number",
                          "give a number in [0, 1]")
    neg = np.argwhere(X < 0)
    if neg.size:
        r, c = neg[0]
        raise MixoptError(f"{at(r)}: weight of '{names[c]}' is negative ({X[r, c]:g})", "weights must be >= 0")
    sums = X.sum(axis=1)
    off = np.flatnonzero(np.abs(sums - 1) > tolerance)
    if off.size:
        many = f"; {off.size} such rows" if off.size > 1 else ""
        raise MixoptError(f"{at(off[0])}: weights sum to {sums[off[0]]:.6g}, not 1 (tolerance {tolerance:g}{many})",
                          "make the weights sum to 1 (tables: or pass --tolerance)")
    return X / sums[:, None]


def check_weights(weights: dict, domains: list[str], where: str, tolerance: float = WEIGHT_TOLERANCE) -> list[float]:
    """One mixture given as domain -> weight (missing domains are 0); normalized, in canonical order."""
    if not isinstance(weights, dict):
        raise MixoptError(f"{where}: expected a mapping of domain to weight", "e.g. {code: 0.5, wiki: 0.5}")
    unknown = sorted(set(map(str, weights)) - set(domains))
    if unknown:
        raise MixoptError(f"{where}: unknown domain '{unknown[0]}'", f"use one of: {', '.join(domains)}")
    values = []
    for d in domains:
        v = weights.get(d, 0.0)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise MixoptError(f"{where}: weight of '{d}' is {shown(v)}, not a finite number", "give a number in [0, 1]")
        values.append(float(v))
    return check_weight_rows([values], domains, where, tolerance, rows=[""])[0].tolist()


def is_inside(path: Path, folder: Path) -> bool:
    """Whether `path` is `folder` or lies under it, links resolved."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))


def input_path_problem(path: Path, what: str, workspace: Path | None = None,
                       folder_ok: bool = False) -> tuple[str, str] | None:
    """(problem, fix) when a file the user names is not a readable regular file (or, with `folder_ok`,
    a folder) outside the workspace."""
    if not path.exists():
        return f"{what} not found: {path}", "fix the path"
    if not path.is_file() and not (folder_ok and path.is_dir()):
        return f"{what} {path} is not a regular file", "name a file"
    if not os.access(path, os.R_OK):
        return f"{what} {path} cannot be read (permission denied)", "check its permissions"
    if workspace is not None and is_inside(path, workspace):
        return (f"{what} {path} is inside the workspace {workspace}",
                "keep inputs outside the workspace (mixopt may replace its folders)")
    return None


def check_input_path(path: Path, what: str, workspace: Path | None = None) -> Path:
    """`path` if it is a readable regular file outside the workspace; else one MixoptError."""
    bad = input_path_problem(path, what, workspace)
    if bad:
        raise MixoptError(*bad)
    return path


def check_finite(value: float, what: str, low: float | None = None) -> float:
    """A number given by a user: finite, and >= `low` when given."""
    if not math.isfinite(value):
        raise MixoptError(f"{what} {value:g} is not a finite number", "give a finite number")
    if low is not None and value < low:
        raise MixoptError(f"{what} {value:g} is below {low:g}", "give a larger number")
    return value


def check_seq_len(seq_len: int, train_tokens: dict[str, int | None]) -> None:
    """A proxy's window (seq_len + 1 tokens) must fit in every domain's train slice: checked before
    anything is trained, not found as one failed run per mixture."""
    short = {n: t for n, t in train_tokens.items() if t is not None and t < seq_len + 1}
    if short:
        name, tokens = min(short.items(), key=lambda kv: kv[1])
        raise MixoptError(f"proxy.seq_len {seq_len} is longer than the train slice of domain '{name}' ({tokens} tokens"
                          f"{f'; {len(short)} domains are too short' if len(short) > 1 else ''})",
                          f"set proxy.seq_len <= {tokens - 1} or raise sample.train_tokens and resample")


MODEL_CONFIG_BYTES = 1 << 20  # an HF config.json is a few KB


def read_model_config(path: Path, what: str = "proxy.model_config") -> dict[str, int]:
    """A user's model as an HF LlamaConfig-style JSON: hidden, layers, heads and the MLP width, each a
    positive integer, heads dividing the width into an even head size (rotary embeddings); the
    vocabulary is the tokenizer's. One MixoptError naming the file and the key for anything else."""
    import json

    bad = input_path_problem(path, what)
    if bad:
        raise MixoptError(*bad)
    try:
        with open(path, "rb") as f:
            raw = f.read(MODEL_CONFIG_BYTES + 1)
        if len(raw) > MODEL_CONFIG_BYTES:
            raise MixoptError(f"{what} {path}: larger than {MODEL_CONFIG_BYTES >> 20} MB; an HF config.json "
                              "is a few KB", "give the model's config.json, not its weights")
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise MixoptError(f"{what} {path}: not valid JSON ({str(e)[:80]})",
                          "give an HF config.json (LlamaConfig's keys)") from None
    if not isinstance(data, dict):
        raise MixoptError(f"{what} {path}: expected a JSON object", "give an HF config.json")
    keys = {"hidden_size": "hidden", "num_hidden_layers": "layers", "num_attention_heads": "heads",
            "intermediate_size": "intermediate"}
    out = {}
    for k, name in keys.items():
        v = data.get(k)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            shown_v = "missing" if k not in data else f"{shown(v)}, not a positive integer"
            raise MixoptError(f"{what} {path}: '{k}' is {shown_v}", f"set '{k}' to a positive integer")
        out[name] = v
    if out["hidden"] > 65536 or out["layers"] > 1024 or out["intermediate"] > 1 << 18:
        raise MixoptError(f"{what} {path}: hidden_size {out['hidden']}, {out['layers']} layers, "
                          f"intermediate_size {out['intermediate']}: far past a proxy's size",
                          "give a proxy-sized model (hidden_size <= 65536, layers <= 1024)")
    if out["hidden"] % out["heads"] or (out["hidden"] // out["heads"]) % 2:
        raise MixoptError(f"{what} {path}: hidden_size {out['hidden']} is not num_attention_heads "
                          f"{out['heads']} x an even head size", "make hidden_size / num_attention_heads an even "
                          "integer (e.g. 64)")
    kv = data.get("num_key_value_heads")
    if kv is not None and kv != out["heads"]:
        raise MixoptError(f"{what} {path}: num_key_value_heads {shown(kv)} differs from "
                          f"num_attention_heads {out['heads']} (grouped-query attention is not implemented for "
                          "proxies)", "drop num_key_value_heads or set it to num_attention_heads")
    act = data.get("hidden_act", "silu")
    if act != "silu":
        raise MixoptError(f"{what} {path}: hidden_act {shown(act)}; proxies use SwiGLU (silu)",
                          "drop hidden_act or set it to silu")
    return out
