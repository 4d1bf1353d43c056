"""A design's results as fit, status and export read them: which finished runs lack a measure of
the current suite, each run's metrics under it, and the table the fit regresses on.

`mixopt eval` (reeval.py) fills what these find missing.
"""

from __future__ import annotations

import numpy as np

from mixopt.evals.suites import Suite
from mixopt.sweep.plan import Plan
from mixopt.sweep.store import Store


def missing_measures(plan: Plan, store: Store) -> dict[str, list]:
    """run key -> the current suite's measures that finished run lacks (one taken at another precision
    than the run trained under is lacking: Store.measurements(as_trained=True))."""
    have = store.measurements(as_trained=True)
    out = {}
    for r in plan.runs(store, "done"):
        lack = [m for m in plan.suite.measures if m.key not in have.get(r.key, {})]
        if lack:
            out[r.key] = lack
    return out


def metrics_of(suite: Suite, measured: dict[str, dict[str, float]]) -> dict[str, float] | None:
    """'<evaluation name>/<metric>' -> value, or None if a measure of the objective is missing (one of
    weight 0 missing leaves the run complete for the objective: its metrics are left out)."""
    if any(m.key not in measured for m in suite.objective_measures()):
        return None
    return {f"{m.name}/{k}": v for m in suite.measures if m.key in measured for k, v in measured[m.key].items()}


def training_table(plan: Plan, store: Store):
    """Weights (runs x domains), every metric, and run keys: finished runs with the whole suite."""
    have = store.measurements(as_trained=True)
    rows, keys = [], []
    for r in plan.runs(store, "done"):
        metrics = metrics_of(plan.suite, have.get(r.key, {}))
        if metrics is not None:
            rows.append((r.weights, metrics))
            keys.append(r.key)
    if not rows:
        return np.zeros((0, len(plan.prior))), {}, []
    names = sorted(set.intersection(*(set(m) for _, m in rows)))
    return np.array([w for w, _ in rows]), {n: np.array([m[n] for _, m in rows]) for n in names}, keys
