"""`mixopt eval`: evaluate stored checkpoints on what the current suite adds (never trains), and
each run's objective under the suite. The readers of the results are in results.py."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np

from mixopt.backends import drain, make_backend, run_local
from mixopt.config.runtime import Runtime
from mixopt.config.schema import Experiment
from mixopt.core.devices import resolve_device
from mixopt.core.keys import precision_of
from mixopt.core.progress import Bars
from mixopt.evals.kinds import KINDS
from mixopt.evals.suites import prepare_suite
from mixopt.proxy.model import param_count
from mixopt.sweep.choose import worker_threads
from mixopt.sweep.plan import Plan, load_plan
from mixopt.sweep.results import metrics_of, missing_measures
from mixopt.sweep.store import Store
from mixopt.sweep.work import (
    EvalTask,
    check_local_device,
    device_of,
    eval_checkpoints,
    nonfinite_measurement,
)


@dataclass
class EvalReport:
    runs: int = 0  # checkpoints evaluated
    evaluations: int = 0  # (run, evaluation) pairs computed
    up_to_date: int = 0  # finished runs that lacked nothing
    suspect: list[str] = field(default_factory=list)  # this design's runs left out of fits: bad checkpoints
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0  # all of it, wall clock
    load_seconds: float = 0.0  # of which checking and loading checkpoints (summed over workers)
    measure_seconds: float = 0.0  # ... and the forward passes (summed over workers)
    workers: int = 0  # 1: in this process (no worker start-up)


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


def evaluate_stored(plan: Plan, store: Store, runtime: Runtime = Runtime(), exp: Experiment | None = None
                    ) -> EvalReport:
    """Evaluate stored checkpoints on the measures they lack; never trains. Under ray/slurm with the
    experiment given (a sweep's), on the cluster where its proxies train, as tasks of its resources."""
    t0 = time.time()
    report = EvalReport()
    missing = missing_measures(plan, store)
    runs = {r.key: r for r in plan.runs(store, "done")}
    report.up_to_date = len(runs) - len(missing)
    report.suspect = [r.key for r in plan.runs(store, "suspect")]
    if not missing:
        return report
    remote = runtime.backend != "local" and exp is not None
    if not remote:
        check_local_device(runtime)  # evaluation runs here
    names = sorted({m.name for lack in missing.values() for m in lack})
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    say = runtime.say
    say(f"eval suite changed since these results: {len(missing)} finished runs lack {shown}; "
        f"evaluating their checkpoints (no training)")
    tasks = eval_tasks(plan, runs, missing, device_of(runtime, exp.resources.gpus) if remote else device_of(runtime))
    # Here with a ray/slurm runtime but no experiment to size cluster tasks by, `workers` is the
    # cluster's width, not ours: one process on this (head) machine. Worker processes pay off only for work much longer than their start-up
    # (importing torch, seconds), and only with a device each: one process's stacked pass uses every core.
    workers = min(len(tasks), runtime.workers if runtime.backend == "local" else 1)
    if workers > 1 and not _worth_processes(plan, tasks, runtime):
        workers = 1
    threads = worker_threads(workers)
    tasks = [replace(t, threads=threads) for t in tasks]
    report.workers = workers
    if runtime.progress:  # a stacked batch reports only when all its checkpoints are measured: say it began
        say(f"eval: measuring {len(missing)} checkpoints in {len(tasks)} stacked batch(es) of up to "
            f"{max(len(t.keys) for t in tasks)}, " + (f"as {runtime.backend} tasks..." if remote else
                                                      f"{workers} process(es)..."))
    bars = Bars(len(missing), enabled=runtime.progress, desc="eval", unit="run", step_unit="eval")
    engine = make_backend(runtime, eval_checkpoints, bars.step, exp, plan.workspace) if remote else None
    try:
        finished = drain(engine, tasks) if remote else run_local(eval_checkpoints, tasks, workers, on_progress=bars.step)
        for task, results, failure in finished:
            if failure is not None:
                report.failed += [(k, failure.line) for k in task.keys]
                for k in task.keys:
                    bars.finish(k)
                continue
            for result in results:
                if result.mismatch:
                    store.mark_suspect([result.key], result.mismatch)
                    report.suspect.append(result.key)
                    say(f"run {result.key[:12]}: {result.mismatch}; marked suspect: its results are kept but left "
                        f"out of fits, and the next sweep retrains it")
                elif why := nonfinite_measurement(result.measurements, {m.key: m.name for m in task.measures}):
                    store.record_failure(result.key, why, nonfinite=True)  # left out of fits from now on
                    report.failed.append((result.key, why))
                    say(f"run {result.key[:12]}: {why}; recorded as failed (left out of fits; "
                        "`mixopt sweep CONFIG --retry-failed` retrains it)")
                else:
                    store.record_measurements(result.key, result.measurements, result.measured_as)
                    report.load_seconds += result.load_seconds
                    report.measure_seconds += result.eval_seconds
                    report.runs += 1
                    report.evaluations += len(task.measures)
                bars.finish(result.key)
    finally:
        if engine is not None:
            engine.close()
        bars.close()
    report.seconds = time.time() - t0
    return report


MAX_EVAL_BATCH = 64  # checkpoints measured together, at most (and their weights within EVAL_WEIGHT_BYTES)
EVAL_WEIGHT_BYTES = 2 << 30


def eval_tasks(plan: Plan, runs: dict, missing: dict[str, list], device: str | None) -> list[EvalTask]:
    """The runs lacking the same measures and trained at the same precision, in batches evaluated
    together (one stacked forward), each measured at the precision its runs trained under."""
    per_proxy = 4 * param_count(plan.spec)  # float32 weights
    size = int(max(1, min(MAX_EVAL_BATCH, EVAL_WEIGHT_BYTES // per_proxy)))
    groups: dict[tuple, list[str]] = {}
    for key, lack in missing.items():
        groups.setdefault((tuple(lack), trained_precision(runs[key].measured_as)), []).append(key)
    root = plan.workspace.root  # workers get absolute paths; the store keeps them relative to it
    tasks = []
    for (measures, precision), keys in groups.items():
        n_batches = -(-len(keys) // size)
        for part in np.array_split(np.asarray(keys, dtype=object), n_batches):  # even batches
            part = [str(k) for k in part]
            tasks.append(EvalTask(keys=tuple(part), checkpoints=tuple(str(root / runs[k].checkpoint) for k in part),
                                  sha256s=tuple(runs[k].sha256 for k in part), spec=plan.spec,
                                  sample_dir=str(plan.workspace.sample_dir), measures=measures, device=device,
                                  precision=precision))
    return tasks


def trained_precision(measured_as: str | None) -> str:
    """The --precision setting (proxy.train.autocast_dtype) a run trained under (Run.measured_as) is
    measured under: bf16 for a bf16-autocast run, on any device (on a CPU by torch's CPU autocast),
    else fp32, so a run trained in float32 is never measured in bf16 on a GPU."""
    return "bf16" if precision_of(measured_as) == "bf16-autocast" else "fp32"


IN_PROCESS_FLOP = 2e12  # below this, evaluation runs in the driver's process: ~1 min of 2 CPU cores


def _worth_processes(plan: Plan, tasks: list[EvalTask], runtime: Runtime) -> bool:
    """Worker processes only for long work on several GPUs; on one device (or the CPU) a single
    process's stacked pass is as fast and starts no workers."""
    flop = sum(len(t.keys) * _eval_tokens(plan, t.measures) for t in tasks) * 2 * param_count(plan.spec)
    if flop < IN_PROCESS_FLOP:
        return False
    import torch

    return resolve_device(runtime.device) == "cuda" and torch.cuda.is_available() and torch.cuda.device_count() > 1


def _eval_tokens(plan: Plan, measures) -> int:
    """Tokens an evaluation of these measures reads, per proxy (file sizes, nothing loaded)."""
    return sum(KINDS[m.kind].tokens(m, plan.workspace.sample_dir) for m in measures)


def record_scores(plan: Plan, store: Store) -> dict[str, float]:
    """Each finished run's objective under the current suite, from its measurements; stored."""
    have = store.measurements(as_trained=True)
    scores = {}
    for r in plan.runs(store, "done"):
        metrics = metrics_of(plan.suite, have.get(r.key, {}))
        if metrics is not None:
            scores[r.key] = plan.suite.objective(metrics)
    store.record_scores(plan.suite.key, scores)
    return scores
