"""`mixopt sweep`: train and evaluate each proxy not yet finished, through a backend.

The driver alone writes the store; workers return results. A run whose key already has a
finished result is never retrained, and a result a worker left next to its checkpoint is adopted.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mixopt.backends import backend_session, make_backend
from mixopt.config.runtime import Runtime
from mixopt.config.schema import Experiment
from mixopt.core.keys import replicate_seed
from mixopt.core.mixtures import Mixture
from mixopt.core.progress import Bars
from mixopt.errors import MixoptError
from mixopt.evals.suites import prepare_suite
from mixopt.sweep.change import record_virtual
from mixopt.sweep.check import flag_damaged
from mixopt.sweep.choose import (
    ON_WORKER,
    BatchChoice,
    CompileChoice,
    choose_batch,
    choose_compile,
    record_choice,
    worker_threads,
)
from mixopt.sweep.plan import CHANGE_RECORD, Plan, done_other_ways, other_ways_note, sweep_plan
from mixopt.sweep.reeval import evaluate_stored, record_scores
from mixopt.sweep.store import Store, new_owner
from mixopt.sweep.work import (
    TrainRun,
    TrainTask,
    check_local_device,
    device_of,
    planned_measurement,
    read_result,
    train_task,
)


@dataclass
class SweepReport:
    planned: int
    already_done: int = 0
    adopted: int = 0
    trained: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (run key, last error line)
    # failed runs whose result was no number (a diverged proxy): not retrained without retry_failed
    held_back: list[tuple[str, str]] = field(default_factory=list)  # (run key, why it failed)
    reevaluated: int = 0  # finished runs evaluated on what the suite added (no training)
    elsewhere: int = 0  # finished meanwhile by another sweep on the same workspace
    seconds: float = 0.0


def run_sweep(exp: Experiment, runtime: Runtime = Runtime(), extra: list[Mixture] | tuple = (),
              design: bool = True, retry_failed: bool = False) -> SweepReport:
    """Train every run of the plan (the design's, unless design=False, and `extra`) not yet done,
    where `runtime` says. Runs are leased in the store, so sweeps sharing a workspace (or a driver
    restarted after a crash) never train one run twice. A run that failed with a non-finite result
    (it diverged) is trained again only with `retry_failed`: the same key computes the same."""
    t0 = time.time()
    if runtime.backend == "local":
        check_local_device(runtime)
    plan = sweep_plan(exp, extra, design, sweep_measurement(exp, runtime))
    ws = plan.workspace
    report = SweepReport(planned=len(plan.mixtures))
    prepare_suite(exp, plan.suite, ws)
    owner = new_owner()
    # One Ray (or none) for the whole sweep: re-evaluation, training and each larger fidelity.
    with backend_session(runtime, exp), Store(ws.db_path) as store:
        sweep_id = store.start_sweep("sweep")
        store.add_suite(plan.suite.to_dict())
        store.add_planned([{"key": k, "context": plan.context, "origin": m.origin, "weights": list(m.weights),
                            "domains": exp.domain_names, "slices": list(plan.slices), "tokenizer": plan.tokenizer,
                            "replicate": m.replicate, "measured_as": plan.measured_as}
                           for k, m in zip(plan.keys, plan.mixtures)])
        record_virtual(plan.change, plan.slices, ws.root / CHANGE_RECORD)
        # A finished run whose checkpoint is gone or truncated (a stat, no hashing), or found corrupt
        # when evaluated on what the suite added, is marked suspect and retrained below.
        flag_damaged(plan, store, runtime.say)
        ev = evaluate_stored(plan, store, runtime, exp)
        report.reevaluated = ev.runs
        # A run that could not be evaluated keeps its result but lacks what the suite added: a
        # failure of this sweep (exit 1), retried by the next sweep or `mixopt eval`.
        report.failed += [(k, f"evaluation (no retraining): {e}") for k, e in ev.failed]
        finished = plan.runs(store, "done")
        done = {r.key for r in finished}
        report.already_done = sum(k in done for k in plan.keys)
        held = {} if retry_failed else {r.key: r.error or "" for r in plan.runs(store, "failed")
                                        if r.failure == "nonfinite"}
        report.held_back = [(k, held[k]) for k in plan.keys if k in held]
        runs = {k: _run(plan, k, m, exp.seed) for k, m in zip(plan.keys, plan.mixtures)
                if k not in done and k not in held}
        if runs and (note := other_ways_note(done_other_ways(plan, finished), plan.measured_as)):
            runtime.say(note)  # why mixtures `status` calls done train again: their runs trained another way
        choice = choose_batch(runtime, plan.spec, ws, len(runs)) if runs else BatchChoice(1, "", {})
        compiled = choose_compile(runtime, plan.spec, ws, choice.proxies, len(runs), choice.rates) \
            if runs else CompileChoice(False, "", {})
        for auto, line in ((runtime.batch_proxies == "auto", choice.why), (runtime.compile == "auto", compiled.why)):
            if runs and auto:
                runtime.say(line)
        if runs:
            record_choice(ws, sweep_id, choice, compiled)
        bars = Bars(len(runs), enabled=runtime.progress)
        engine = make_backend(runtime, train_task, bars.step, exp, ws)
        # ray/slurm with --batch-proxies auto: the runs shared out over the cluster's slots, each task's
        # worker trains them as many at a time as its device takes (work.choose_on_worker)
        per_batch = choice.proxies if choice.proxies != ON_WORKER else \
            max(1, min(MAX_TASK_RUNS, -(-len(runs) // max(1, engine.free_slots))))
        on_worker = (choice.proxies == ON_WORKER, compiled.on_worker)
        chose: Counter = Counter()  # (runs trained together, compiled) -> runs, as the workers chose
        threads = worker_threads(runtime.workers) if runtime.backend == "local" else 0
        tried: set[str] = set()
        names = {m.key: m.name for m in plan.suite.measures}  # to say which evaluation was not a number
        try:
            with _Heartbeat(ws.db_path, owner):
                while True:
                    left = [k for k in runs if k not in tried]
                    claimed = store.claim(left, owner, LEASE_SECONDS, engine.free_slots * per_batch) \
                        if engine.free_slots > 0 and left else []
                    todo = []
                    for key in claimed:
                        tried.add(key)
                        side = read_result(Path(runs[key].checkpoint))
                        why = side.unusable(names) if side else ""
                        if why:  # left by a crashed driver, and no number: a failed run, not a crash
                            store.record_failure(key, why, nonfinite=True)
                            report.failed.append((key, why))
                            bars.finish(key)
                        elif side:  # trained before a crash, never recorded
                            store.record_result(asdict(side), adopted=True)
                            report.adopted += 1
                            bars.finish(key)
                        else:
                            todo.append(runs[key])
                    # a batch shares its seed (one initialization for every proxy in it): replicates
                    # of other seeds go in batches of their own
                    for seed in sorted({r.seed for r in todo}):
                        same = [r for r in todo if r.seed == seed]
                        for i in range(0, len(same), per_batch):
                            engine.submit(_train_task(exp, plan, tuple(same[i:i + per_batch]), threads, runtime,
                                                      compiled.compile, on_worker))
                    for job, results, failure in engine.wait(0.5 if engine.in_flight else 0.0):
                        for run, result in zip(job.runs, results or [None] * len(job.runs)):
                            if failure is None and result.unusable():  # diverged, or a NaN measurement
                                store.record_failure(run.key, result.unusable(), nonfinite=True)
                                report.failed.append((run.key, result.unusable()))
                            elif failure is None:
                                chose[(result.batched, result.compiled)] += 1
                                if store.record_result(asdict(result)):
                                    report.trained += 1
                            elif failure.retry:  # still leased to us: claimed and submitted again
                                tried.discard(run.key)
                                continue
                            elif failure.disk_full:  # not the run's fault, and every other run would fail too
                                raise MixoptError(f"cannot write run {run.key[:12]}'s files: disk full, file size "
                                                  f"limit or I/O error ({failure.line[:160]})",
                                                  "free space (or raise the quota) and rerun; finished runs are kept")
                            else:
                                store.record_failure(run.key, failure.traceback or failure.line)
                                report.failed.append((run.key, failure.line))
                            bars.finish(run.key)
                    if engine.in_flight or claimed:
                        continue
                    done = {r.key for r in plan.runs(store, "done")}
                    left = [k for k in runs if k not in tried and k not in done]
                    if not left:
                        break
                    time.sleep(1.0)  # another sweep holds the rest: wait for it to finish them (or die)
        finally:
            engine.close()
            bars.close()
            store.release(owner)
        if any(on_worker) and chose:
            runtime.say("the workers chose: " + "; ".join(
                f"{k} run(s) {'one at a time' if n == 1 else f'{n} at a time'}, {'compiled' if c else 'eager'}"
                for (n, c), k in sorted(chose.items())))
        done = {r.key for r in plan.runs(store, "done")}
        report.elsewhere = sum(k in done for k in runs) - report.trained - report.adopted
        if report.adopted:  # adopted sidecars may predate the current suite
            late = evaluate_stored(plan, store, runtime, exp)
            report.failed += [(k, f"evaluation (no retraining): {e}") for k, e in late.failed]
        record_scores(plan, store)
        store.finish_sweep(sweep_id, report.trained, ev.evaluations)
        if design and exp.design.fidelities:
            _sweep_larger(exp, runtime, report, retry_failed)
    report.seconds = time.time() - t0
    return report


def _sweep_larger(exp: Experiment, runtime: Runtime, report: SweepReport, retry_failed: bool) -> None:
    """design.fidelities after the first: each trains mixtures the size below measured (sweep.fidelity)."""
    from mixopt.sweep.fidelity import fidelities, larger_mixtures

    fids = fidelities(exp)
    for i in range(1, len(fids)):
        mixtures = larger_mixtures(exp, fids, i)
        runtime.say(f"fidelity {fids[i].label}: {len(mixtures)} mixtures measured at {fids[i - 1].label} "
                    f"(asked: {fids[i].runs})")
        if not mixtures:
            continue
        sub = run_sweep(fids[i].exp, runtime, extra=mixtures, design=False, retry_failed=retry_failed)
        for f in ("planned", "already_done", "adopted", "trained", "reevaluated", "elsewhere"):
            setattr(report, f, getattr(report, f) + getattr(sub, f))
        report.failed += sub.failed
        report.held_back += sub.held_back


LEASE_SECONDS = 120.0  # a driver renews its leases every third of this; a dead one's lapse after it


class _Heartbeat:
    """Renew this driver's leases from a thread with its own connection while the sweep runs."""

    def __init__(self, db_path: Path, owner: str):
        self.db_path, self.owner = db_path, owner
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with Store(self.db_path) as store:
            while not self.stop.wait(LEASE_SECONDS / 3):
                store.renew(self.owner, LEASE_SECONDS)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=5)


def _run(plan: Plan, key: str, m: Mixture, seed: int) -> TrainRun:
    return TrainRun(key=key, weights=m.weights, checkpoint=str(plan.workspace.checkpoints_dir / f"{key[:24]}.safetensors"),
                    seed=replicate_seed(seed, m.replicate))


MAX_TASK_RUNS = 64  # runs in one ray/slurm task whose worker chooses its batch (the most a batch holds)


def _train_task(exp: Experiment, plan: Plan, runs: tuple[TrainRun, ...], threads: int,
                runtime: Runtime, compile: bool = False, on_worker: tuple[bool, bool] = (False, False)) -> TrainTask:
    gpus = exp.resources.gpus if runtime.backend != "local" else 0.0  # what the engine gives each task
    return TrainTask(runs=runs, domains=tuple(exp.domain_names), seed=runs[0].seed, spec=plan.spec,
                     sample_dir=str(plan.workspace.sample_dir), measures=plan.suite.measures, threads=threads,
                     device=device_of(runtime, gpus if runtime.backend != "local" else None), gpus=gpus,
                     compile=compile, measured_as=plan.measured_as, precision=runtime.precision,
                     auto_batch=on_worker[0], auto_compile=on_worker[1])


def sweep_measurement(exp: Experiment, runtime: Runtime) -> str:
    """What this sweep's run keys record of where its runs train (work.planned_measurement)."""
    return planned_measurement(runtime, exp.resources.gpus if runtime.backend != "local" else 0.0)
