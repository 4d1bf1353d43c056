"""`mixopt sweep`: design the mixtures, train and evaluate each proxy not yet finished, record it.

The driver alone writes the store; workers return results. A run whose key already has a
finished result is never retrained, and a result a worker left next to its checkpoint is adopted.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .backends import run_local
from .config import Experiment
from .corpus import sample_key
from .design import Bounds, Mixture, design_mixtures, domain_bounds
from .errors import MixoptError
from .evals import Suite, default_suite
from .keys import content_hash
from .proxy import ProxySpec, proxy_spec
from .store import Store
from .train import TRAINER_VERSION, RunTask, read_result, train_run
from .workspace import Workspace


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
    seconds: float = 0.0


def load_plan(exp: Experiment) -> Plan:
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
    mixtures = design_mixtures(exp, prior, bounds)
    keys = [content_hash({"context": context, "weights": list(m.weights)}) for m in mixtures]
    return Plan(ws, manifest, spec, bounds, prior, available, context, default_suite(exp, manifest),
                mixtures, keys)


def run_sweep(exp: Experiment, workers: int = 1, progress: bool = True) -> SweepReport:
    t0 = time.time()
    plan = load_plan(exp)
    ws = plan.workspace
    report = SweepReport(planned=len(plan.mixtures))
    with Store(ws.db_path) as store:
        store.add_suite(plan.suite.to_dict())
        store.add_planned([{"key": k, "context": plan.context, "origin": m.origin, "weights": list(m.weights),
                            "domains": exp.domain_names} for k, m in zip(plan.keys, plan.mixtures)])
        done = {r["key"] for r in store.runs(plan.context, "done")}
        tasks = []
        for key, m in zip(plan.keys, plan.mixtures):
            if key in done:
                report.already_done += 1
                continue
            task = _task(exp, plan, key, m, workers)
            left = read_result(Path(task.checkpoint))
            if left and left.get("suite") == plan.suite.key:
                store.record_result(left)  # trained before a crash, never recorded: adopt it
                report.adopted += 1
                continue
            tasks.append(task)
        bars = _Bars(len(tasks), enabled=progress)
        try:
            for task, result, error in run_local(train_run, tasks, workers, on_progress=bars.step):
                if error is None:
                    store.record_result(result)
                    report.trained += 1
                else:
                    store.record_failure(task.key, error)
                    report.failed.append((task.key, error.strip().splitlines()[-1]))
                bars.finish(task.key)
        finally:
            bars.close()
    report.seconds = time.time() - t0
    return report


def _task(exp: Experiment, plan: Plan, key: str, m: Mixture, workers: int) -> RunTask:
    threads = max(1, (os.cpu_count() or 1) // workers) if workers > 1 else 0
    return RunTask(key=key, weights=m.weights, domains=tuple(exp.domain_names), seed=exp.seed,
                   spec=plan.spec.to_dict(), sample_dir=str(plan.workspace.sample_dir),
                   checkpoint=str(plan.workspace.checkpoints_dir / f"{key[:24]}.safetensors"),
                   suite=plan.suite.to_dict(), threads=threads)


class _Bars:
    """One bar for the sweep, one per run in flight."""

    def __init__(self, total: int, enabled: bool):
        self.enabled = enabled and total > 0
        self.sweep = tqdm(total=total, desc="sweep", unit="run", position=0, disable=not self.enabled)
        self.runs: dict[str, tqdm] = {}

    def step(self, key: str, step: int, total: int, loss: float) -> None:
        if not self.enabled:
            return
        bar = self.runs.get(key)
        if bar is None:
            used = {b.pos for b in self.runs.values()}
            pos = next(i for i in range(1, len(used) + 2) if i not in used)
            bar = self.runs[key] = tqdm(total=total, desc=f"run {key[:8]}", unit="step", position=pos, leave=False)
        bar.update(step - bar.n)
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    def finish(self, key: str) -> None:
        bar = self.runs.pop(key, None)
        if bar is not None:
            bar.close()
        if self.enabled:
            self.sweep.update(1)

    def close(self) -> None:
        for bar in self.runs.values():
            bar.close()
        self.sweep.close()
