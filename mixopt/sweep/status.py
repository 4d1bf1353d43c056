"""`mixopt status`: what a workspace holds, for people and scripts."""

from __future__ import annotations

from mixopt.config.schema import Experiment
from mixopt.core.workspace import Workspace
from mixopt.errors import MixoptError
from mixopt.sweep.plan import load_plan
from mixopt.sweep.reeval import missing_measures
from mixopt.sweep.store import Store


def experiment_status(exp: Experiment) -> dict:
    ws = Workspace(exp.workspace_dir)
    out = {"workspace": str(ws.root), "sample": "missing", "suite": None,
           "design": {"planned": 0, "done": 0, "failed": 0, "suspect": 0, "pending": 0},
           "runs": {"planned": 0, "running": 0, "done": 0, "failed": 0, "suspect": 0}, "trainings": 0, "measurements": 0, "suites": {},
           "current_suite": None}
    if not ws.manifest_path.is_file():
        return out
    try:
        plan = load_plan(exp)
    except MixoptError as e:
        out["sample"] = f"stale: {e.problem}"
        return out
    out["sample"] = "up to date"
    out["suite"] = plan.suite.key
    lacking = {}
    if ws.db_path.is_file():
        with Store(ws.db_path) as store:
            out.update(store.summary())
            state = {r.key: r.status for r in store.runs(plan.context)}
            lacking = missing_measures(plan, store)
    else:
        state = {}
    out["current_suite"] = {"key": plan.suite.key, "objective": plan.suite.describe_objective(),
                            "evaluations": [m.name for m in plan.suite.measures],
                            "runs_lacking": len(lacking)}
    statuses = [state.get(k, "planned") for k in plan.keys]
    out["design"] = {"planned": len(plan.keys), "done": statuses.count("done"),
                     "failed": statuses.count("failed"), "suspect": statuses.count("suspect"),
                     "pending": statuses.count("planned")}
    return out
