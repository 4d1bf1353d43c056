"""`mixopt sweep` and `mixopt eval`: train and evaluate each proxy not yet finished; evaluate
stored checkpoints on what the current suite adds, without training.

The driver alone writes the store; workers return results. A run whose key already has a
finished result is never retrained, and a result a worker left next to its checkpoint is adopted.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .backends import make_backend, run_local
from .batched import BatchTask, proxies_per_batch, train_batch
from .config import Experiment
from .corpus import sample_key
from .design import Bounds, Mixture, design_mixtures, domain_bounds
from .errors import MixoptError
from .evals import EvalTask, eval_checkpoint
from .keys import content_hash
from .progress import Bars
from .proxy import ProxySpec, proxy_spec
from .store import Store, new_owner
from .suites import Suite, prepare_suite, resolve_suite
from .train import TRAINER_VERSION, RunTask, read_result, train_run
from .workspace import Workspace

Say = Callable[[str], None]


@dataclass(frozen=True)
class Plan:
    """What a sweep of this config trains, and what its results are compared against."""

    workspace: Workspace
    manifest: dict
    spec: ProxySpec
    bounds: Bounds
    prior: np.ndarray
    available: list[int]
    context: str  # hash of everything but the weights
    suite: Suite
    mixtures: list[Mixture]
    keys: list[str]


@dataclass
class SweepReport:
    planned: int
    already_done: int = 0
    adopted: int = 0
    trained: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (run key, last error line)
    reevaluated: int = 0  # finished runs evaluated on what the suite added (no training)
    elsewhere: int = 0  # finished meanwhile by another sweep on the same workspace
    seconds: float = 0.0


@dataclass
class EvalReport:
    runs: int = 0  # checkpoints evaluated
    evaluations: int = 0  # (run, evaluation) pairs computed
    up_to_date: int = 0  # finished runs that lacked nothing
    reset: list[str] = field(default_factory=list)  # runs whose checkpoint failed verification
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def load_plan(exp: Experiment, extra: list[Mixture] | tuple = (), design: bool = True) -> Plan:
    """The design's mixtures (unless design=False) plus `extra` ones (proposed, verification)."""
    ws = Workspace(exp.workspace_dir)
    manifest = ws.read_manifest()
    if manifest.get("key") != sample_key(exp):
        raise MixoptError(f"the sample in {ws.root} is stale (config or corpus changed since)",
                          "run `mixopt sample CONFIG` again")
    names = exp.domain_names
    available = [manifest["domains"][n]["tokens"] for n in names]
    prior = np.array([manifest["domains"][n]["prior"] for n in names])
    spec = proxy_spec(exp.proxy, manifest["vocab_size"])
    bounds = domain_bounds(exp, available)
    context = content_hash({
        "trainer": TRAINER_VERSION, "seed": exp.seed, "spec": spec.to_dict(), "domains": names,
        "slices": {n: manifest["domains"][n]["train_sha256"] for n in names},
        "tokenizer": manifest["tokenizer_sha256"],
    })
    mixtures, keys = [], []
    for m in (design_mixtures(exp, prior, bounds) if design else []) + list(extra):
        key = run_key(context, m.weights)
        if key not in keys:
            mixtures.append(m)
            keys.append(key)
    suite = resolve_suite(exp, manifest, ws)
    return Plan(ws, manifest, spec, bounds, prior, available, context, suite, mixtures, keys)


def run_key(context: str, weights) -> str:
    return content_hash({"context": context, "weights": list(weights)})


def read_mixtures_file(path: Path, exp: Experiment) -> list[Mixture]:
    """Mixtures to train besides the design: YAML `mixtures: [{domain: weight, ...}, ...]`
    (what `mixopt propose` writes) or a bare list of such mappings."""
    import yaml

    from .config import check_weights

    if not path.is_file():
        raise MixoptError(f"mixtures file not found: {path}", "pass the file `mixopt propose` wrote")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        raise MixoptError(f"{path}: not valid YAML", "fix the YAML syntax") from None
    items = raw.get("mixtures") if isinstance(raw, dict) else raw
    if not isinstance(items, list) or not items or not all(isinstance(m, dict) for m in items):
        raise MixoptError(f"{path}: expected a list of mixtures (domain: weight mappings)",
                          "write `mixtures: [{code: 0.5, wiki: 0.5}]`")
    return [Mixture(f"file:{path.stem}:{i}", tuple(check_weights(m, exp.domain_names, f"{path}: mixtures[{i}]")))
            for i, m in enumerate(items)]


def run_sweep(exp: Experiment, workers: int = 1, progress: bool = True, say: Say = print,
              extra: list[Mixture] | tuple = (), design: bool = True, backend: str = "local",
              options: dict | None = None, batch_proxies: int | str = "auto") -> SweepReport:
    """Train every run of the plan not yet done, through `backend`. Runs are leased in the store,
    so sweeps sharing a workspace (or a driver restarted after a crash) never train one run twice."""
    t0 = time.time()
    plan = load_plan(exp, extra, design)
    for m in extra:
        if m.origin.startswith("file:") and not plan.bounds.contains(np.asarray(m.weights)):
            raise MixoptError(f"mixture {m.origin} is outside the domain bounds (or repetition limits)",
                              "fix its weights or the bounds")
    ws = plan.workspace
    report = SweepReport(planned=len(plan.mixtures))
    prepare_suite(exp, plan.suite, ws)
    owner = new_owner()
    with Store(ws.db_path) as store:
        sweep_id = store.start_sweep("sweep")
        store.add_suite(plan.suite.to_dict())
        store.add_planned([{"key": k, "context": plan.context, "origin": m.origin, "weights": list(m.weights),
                            "domains": exp.domain_names} for k, m in zip(plan.keys, plan.mixtures)])
        # Finished runs first get what the suite added (no training); a corrupt checkpoint found
        # here goes back to pending and is retrained below.
        ev = evaluate_stored(plan, store, workers, progress, say)
        report.reevaluated = ev.runs
        done = {r["key"] for r in store.runs(plan.context, "done")}
        report.already_done = sum(k in done for k in plan.keys)
        tasks = {k: _task(exp, plan, k, m, workers, backend) for k, m in zip(plan.keys, plan.mixtures) if k not in done}
        per_batch = _batch_size(batch_proxies, plan.spec, backend)
        bars = Bars(len(tasks), enabled=progress)
        engine = make_backend(backend, train_run if per_batch == 1 else train_batch, workers, bars.step,
                              options or {}, exp, ws)
        tried: set[str] = set()
        try:
            with _Heartbeat(ws.db_path, owner):
                while True:
                    left = [k for k in tasks if k not in tried]
                    claimed = store.claim(left, owner, LEASE_SECONDS, engine.free_slots * per_batch) \
                        if engine.free_slots > 0 and left else []
                    todo = []
                    for key in claimed:
                        tried.add(key)
                        side = read_result(Path(tasks[key].checkpoint))
                        if side and "measurements" in side:  # trained before a crash, never recorded
                            store.record_result(side)
                            report.adopted += 1
                            bars.finish(key)
                        else:
                            todo.append(tasks[key])
                    for i in range(0, len(todo), per_batch):
                        group = todo[i:i + per_batch]
                        engine.submit(group[0] if per_batch == 1 else BatchTask(group[0].key, tuple(group)))
                    for job, result, error in engine.wait(0.5 if engine.in_flight else 0.0):
                        runs = job.tasks if isinstance(job, BatchTask) else (job,)
                        results = result["results"] if error is None and "results" in result else [result] * len(runs)
                        for task, res in zip(runs, results):
                            if error is None:
                                if store.record_result(res):
                                    report.trained += 1
                            elif disk_full(error):  # not the run's fault, and every other run would fail too
                                raise MixoptError(f"cannot write run {task.key[:12]}'s files: disk full, file size "
                                                  f"limit or I/O error ({_last_line(error)[:160]})",
                                                  "free space (or raise the quota) and rerun; finished runs are kept")
                            else:
                                store.record_failure(task.key, error)
                                report.failed.append((task.key, _last_line(error)))
                            bars.finish(task.key)
                    if engine.in_flight or claimed:
                        continue
                    done = {r["key"] for r in store.runs(plan.context, "done")}
                    left = [k for k in tasks if k not in tried and k not in done]
                    if not left:
                        break
                    time.sleep(1.0)  # another sweep holds the rest: wait for it to finish them (or die)
        finally:
            engine.close()
            bars.close()
            store.release(owner)
        done = {r["key"] for r in store.runs(plan.context, "done")}
        report.elsewhere = sum(k in done for k in tasks) - report.trained - report.adopted
        if report.adopted:  # adopted sidecars may predate the current suite
            evaluate_stored(plan, store, workers, progress, say)
        record_scores(plan, store)
        store.finish_sweep(sweep_id, report.trained, ev.evaluations)
    report.seconds = time.time() - t0
    return report


def _batch_size(choice: int | str, spec: ProxySpec, backend: str) -> int:
    """Proxies per worker task: `auto` batches only where it pays, on a GPU this process sees."""
    if choice != "auto":
        return max(1, int(choice))
    if backend != "local":
        return 1  # the workers' devices are not visible from here: pass --batch-proxies N
    import torch

    return proxies_per_batch(spec, "cuda" if torch.cuda.is_available() else "cpu")


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


DISK_FULL = ("Errno 28", "Errno 27", "Errno 122", "No space left", "File too large", "FileTooLarge",
             "StorageFull", "disk is full", "file write failed", "disk I/O error")


def disk_full(error: str) -> bool:
    """Does this error text say the disk (or the file size limit, or the quota) is exhausted?"""
    return any(s in error for s in DISK_FULL)


def _last_line(error: str) -> str:
    return error.strip().splitlines()[-1] if error.strip() else "unknown error"


def run_eval(exp: Experiment, workers: int = 1, progress: bool = True, say: Say = print) -> EvalReport:
    """`mixopt eval`: every finished run of this design gets what the current suite lacks."""
    plan = load_plan(exp)
    prepare_suite(exp, plan.suite, plan.workspace)
    with Store(plan.workspace.db_path) as store:
        sweep_id = store.start_sweep("eval")
        store.add_suite(plan.suite.to_dict())
        report = evaluate_stored(plan, store, workers, progress, say)
        record_scores(plan, store)
        store.finish_sweep(sweep_id, 0, report.evaluations)
    return report


def missing_measures(plan: Plan, store: Store) -> dict[str, list]:
    """run key -> the current suite's measures that finished run lacks."""
    have = store.measurements()
    out = {}
    for r in store.runs(plan.context, "done"):
        lack = [m for m in plan.suite.measures if m.key not in have.get(r["key"], {})]
        if lack:
            out[r["key"]] = lack
    return out


def evaluate_stored(plan: Plan, store: Store, workers: int = 1, progress: bool = True,
                    say: Say = print) -> EvalReport:
    """Evaluate stored checkpoints on the measures they lack; never trains."""
    t0 = time.time()
    report = EvalReport()
    missing = missing_measures(plan, store)
    runs = {r["key"]: r for r in store.runs(plan.context, "done")}
    report.up_to_date = len(runs) - len(missing)
    if not missing:
        return report
    names = sorted({m.name for lack in missing.values() for m in lack})
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    say(f"eval suite changed since these results: {len(missing)} finished runs lack {shown}; "
        f"evaluating their checkpoints (no training)")
    threads = _worker_threads(workers)
    tasks = [EvalTask(key=k, checkpoint=runs[k]["checkpoint"], sha256=runs[k]["sha256"], spec=plan.spec.to_dict(),
                      sample_dir=str(plan.workspace.sample_dir), measures=tuple(m.__dict__ for m in lack),
                      threads=threads) for k, lack in missing.items()]
    bars = Bars(len(tasks), enabled=progress, desc="eval", unit="run", step_unit="eval")
    try:
        for task, result, error in run_local(eval_checkpoint, tasks, workers, on_progress=bars.step):
            if error is None:
                store.record_measurements(task.key, result["measurements"])
                report.runs += 1
                report.evaluations += len(task.measures)
            elif "CheckpointMismatch" in error:
                store.reset_run(task.key, _last_line(error))
                report.reset.append(task.key)
                say(f"run {task.key[:12]}: {_last_line(error).split(': ', 1)[-1]}; "
                    f"it goes back to pending and the next sweep retrains it")
            else:
                report.failed.append((task.key, _last_line(error)))
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
    for r in store.runs(plan.context, "done"):
        metrics = _metrics_of(plan.suite, have.get(r["key"], {}))
        if metrics is not None:
            scores[r["key"]] = sum(a * metrics[m] for m, a in terms.items())
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
    for r in store.runs(plan.context, "done"):
        metrics = _metrics_of(plan.suite, have.get(r["key"], {}))
        if metrics is not None:
            rows.append((r["weights"], metrics))
            keys.append(r["key"])
    if not rows:
        return np.zeros((0, len(plan.prior))), {}, []
    names = sorted(set.intersection(*(set(m) for _, m in rows)))
    return np.array([w for w, _ in rows]), {n: np.array([m[n] for _, m in rows]) for n in names}, keys


def _worker_threads(workers: int) -> int:
    """torch threads per local worker process: the cores shared out; 0 (torch's default) in-process."""
    return max(1, (os.cpu_count() or 1) // workers) if workers > 1 else 0


def _task(exp: Experiment, plan: Plan, key: str, m: Mixture, workers: int, backend: str = "local") -> RunTask:
    threads = _worker_threads(workers) if backend == "local" else 0
    return RunTask(key=key, weights=m.weights, domains=tuple(exp.domain_names), seed=exp.seed,
                   spec=plan.spec.to_dict(), sample_dir=str(plan.workspace.sample_dir),
                   checkpoint=str(plan.workspace.checkpoints_dir / f"{key[:24]}.safetensors"),
                   measures=tuple(x.__dict__ for x in plan.suite.measures), threads=threads)
