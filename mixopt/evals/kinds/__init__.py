"""The eval kinds: one class per kind, one file each; KINDS (kind name -> kind) is the registry that
suites, measuring and re-evaluation dispatch on. To add a kind: its config model in config/evals.py,
its class here; tests/test_evals.py checks the two agree. measure_models scores N stacked proxies on a
suite's measures through them (sweep/work.py calls it)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from mixopt.core.workspace import token_bytes_file
from mixopt.evals.kinds.base import EvalKind, Measure
from mixopt.evals.kinds.choice import Choice
from mixopt.evals.kinds.heldout import Heldout
from mixopt.evals.kinds.lm_eval import LmEval
from mixopt.evals.kinds.text import Text
from mixopt.evals.measure import evaluation_precision
from mixopt.proxy.model import ProxySpec

KINDS: dict[str, EvalKind] = {k.name: k() for k in (Heldout, Text, Choice, LmEval)}


def measure_models(W: dict, spec: ProxySpec, measures: tuple[Measure, ...], sample_dir: Path,
                   progress: Callable[[int, int, float], None] | None = None,
                   precision: str = "auto") -> list[dict[str, dict[str, float]]]:
    """For each of the N proxies in W: evaluation key -> {metric: value}, measured under `precision`
    (proxy.train.autocast_dtype's setting: what the proxies trained under; lm_eval's harness too)."""
    token_bytes = np.load(token_bytes_file(sample_dir))
    out: list[dict] = [{} for _ in range(next(iter(W.values())).shape[0])]
    with evaluation_precision(precision):
        for i, m in enumerate(measures):
            scores = KINDS[m.kind].scores(W, spec, m, sample_dir, token_bytes)
            for own, s in zip(out, scores):
                own[m.key] = s
            if progress:
                progress(i + 1, len(measures), 0.0)
    return out
