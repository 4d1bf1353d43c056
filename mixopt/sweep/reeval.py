"""Evaluate stored checkpoints on what the current suite adds (never trains), and each run's
objective under the suite."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np

from mixopt.backends import run_local
from mixopt.config.runtime import Runtime
from mixopt.config.schema import Experiment
from mixopt.core.progress import Bars
from mixopt.evals.suites import Suite, prepare_suite
from mixopt.proxy.checkpoint import CheckpointMismatch
from mixopt.sweep.plan import Plan, load_plan
from mixopt.sweep.store import Store
from mixopt.sweep.work import (
    EvalTask,
    check_local_device,
    device_of,
    eval_checkpoint,
    worker_threads,
)


@dataclass
class EvalReport:
    runs: int = 0  # checkpoints evaluated
    evaluations: int = 0  # (run, evaluation) pairs computed
    up_to_date: int = 0  # finished runs that lacked nothing
    suspect: list[str] = field(default_factory=list)  # this design's runs left out of fits: bad checkpoints
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def run_eval(exp: Experiment, runtime: Runtime = Runtime()) -> EvalReport:
    """`mixopt eval`: every finished run of this design gets what the current suite lacks."""
    plan = load_plan(exp)
    prepare_suite(exp, plan.suite, plan.workspace)
    with Store(plan.workspace.db_path) as store:
        sweep_id = store.start_sweep("eval")
        store.add_suite(plan.suite.to_dict())
        report = evaluate_stored(plan, store, runtime)
        record_scores(plan, store)
        store.finish_sweep(sweep_id, 0, report.evaluations)
    return report


def missing_measures(plan: Plan, store: Store) -> dict[str, list]:
    """run key -> the current suite's measures that finished run lacks."""
    have = store.measurements()
    out = {}
    for r in plan.runs(store, "done"):
        lack = [m for m in plan.suite.measures if m.key not in have.get(r.key, {})]
        if lack:
            out[r.key] = lack
    return out


def evaluate_stored(plan: Plan, store: Store, runtime: Runtime = Runtime()) -> EvalReport:
    """Evaluate stored checkpoints on the measures they lack; never trains."""
    t0 = time.time()
    report = EvalReport()
    missing = missing_measures(plan, store)
    runs = {r.key: r for r in plan.runs(store, "done")}
    report.up_to_date = len(runs) - len(missing)
    report.suspect = [r.key for r in plan.runs(store, "suspect")]
    if not missing:
        return report
    check_local_device(runtime)  # evaluation always runs here
    names = sorted({m.name for lack in missing.values() for m in lack})
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    say = runtime.say
    say(f"eval suite changed since these results: {len(missing)} finished runs lack {shown}; "
        f"evaluating their checkpoints (no training)")
    # Evaluation runs here, in local processes: under ray/slurm `workers` is the cluster's width, not ours.
    workers = runtime.workers if runtime.backend == "local" else min(runtime.workers, os.cpu_count() or 1)
    threads = worker_threads(workers)
    root = plan.workspace.root  # workers get absolute paths; the store keeps them relative to it
    tasks = [EvalTask(key=k, checkpoint=str(root / runs[k].checkpoint), sha256=runs[k].sha256, spec=plan.spec,
                      sample_dir=str(plan.workspace.sample_dir), measures=tuple(lack), threads=threads,
                      device=device_of(runtime))
             for k, lack in missing.items()]
    bars = Bars(len(tasks), enabled=runtime.progress, desc="eval", unit="run", step_unit="eval")
    try:
        for task, result, failure in run_local(eval_checkpoint, tasks, workers, on_progress=bars.step):
            if failure is None:
                store.record_measurements(task.key, result.measurements)
                report.runs += 1
                report.evaluations += len(task.measures)
            elif failure.type == CheckpointMismatch.__name__:
                store.mark_suspect([task.key], failure.line)
                report.suspect.append(task.key)
                say(f"run {task.key[:12]}: {failure.message}; marked suspect: its results are kept but left "
                    f"out of fits, and the next sweep retrains it")
            else:
                report.failed.append((task.key, failure.line))
            bars.finish(task.key)
    finally:
        bars.close()
    report.seconds = time.time() - t0
    return report


def record_scores(plan: Plan, store: Store) -> dict[str, float]:
    """Each finished run's objective under the current suite, from its measurements; stored."""
    have = store.measurements()
    terms = plan.suite.objective_terms()
    scores = {}
    for r in plan.runs(store, "done"):
        metrics = _metrics_of(plan.suite, have.get(r.key, {}))
        if metrics is not None:
            scores[r.key] = sum(a * metrics[m] for m, a in terms.items())
    store.record_scores(plan.suite.key, scores)
    return scores


def _metrics_of(suite: Suite, measured: dict[str, dict[str, float]]) -> dict[str, float] | None:
    """'<evaluation name>/<metric>' -> value, or None if any of the suite's measures is missing."""
    if any(m.key not in measured for m in suite.measures):
        return None
    return {f"{m.name}/{k}": v for m in suite.measures for k, v in measured[m.key].items()}


def training_table(plan: Plan, store: Store):
    """Weights (runs x domains), every metric, and run keys: finished runs with the whole suite."""
    have = store.measurements()
    rows, keys = [], []
    for r in plan.runs(store, "done"):
        metrics = _metrics_of(plan.suite, have.get(r.key, {}))
        if metrics is not None:
            rows.append((r.weights, metrics))
            keys.append(r.key)
    if not rows:
        return np.zeros((0, len(plan.prior))), {}, []
    names = sorted(set.intersection(*(set(m) for _, m in rows)))
    return np.array([w for w, _ in rows]), {n: np.array([m[n] for _, m in rows]) for n in names}, keys
