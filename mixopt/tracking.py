"""Optional experiment tracking (`--track wandb`, `--track mlflow`; the `track` extra): each finished
run's config, loss curve and measurements, and each fit's CV table, plots and recommendation.

Tracking reads what the store already holds, after the work: it never slows or breaks a sweep, a
run is logged once per destination (remembered in the workspace's tracking/ folder), and runs a
killed sweep finished are logged by the next `sweep --track`.

W&B: offline unless WANDB_MODE or WANDB_API_KEY says otherwise (`wandb sync` uploads later);
project WANDB_PROJECT (default mixopt-<experiment name>), files under WANDB_DIR (default the
workspace). MLflow: MLFLOW_TRACKING_URI (default a local store, <workspace>/mlflow/mlflow.db, with
artifacts beside it), experiment MLFLOW_EXPERIMENT_NAME (default the experiment's name).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from mixopt.config.schema import Experiment
from mixopt.core.keys import content_hash
from mixopt.core.workspace import Workspace, atomic_write_json
from mixopt.errors import MixoptError
from mixopt.proxy.checkpoint import result_path
from mixopt.sweep.export import export_rows
from mixopt.sweep.plan import load_plan
from mixopt.sweep.store import Store

TRACKERS = ("wandb", "mlflow")
PACKAGES = {"wandb": "wandb", "mlflow": "mlflow"}


def check_trackers(names: list[str]) -> list[str]:
    """The trackers asked for, each installed; else one line naming the extra to install."""
    import importlib.util

    out = []
    for name in names:
        for n in filter(None, (s.strip() for s in name.split(","))):
            if n not in TRACKERS:
                raise MixoptError(f"--track {n}: unknown tracker", f"use one of {', '.join(TRACKERS)}")
            if importlib.util.find_spec(PACKAGES[n]) is None:
                raise MixoptError(f"--track {n} needs the {PACKAGES[n]} package",
                                  "pip install 'mixopt[track]' (or pip install " + PACKAGES[n] + ")")
            if n not in out:
                out.append(n)
    return out


@dataclass(frozen=True)
class Logged:
    """What one tracker run receives."""

    name: str
    kind: str  # proxy | fit
    config: dict
    curve: list[float]  # train loss per step ([] for a fit)
    summary: dict[str, float]  # final numbers
    tables: dict[str, tuple[list[str], list[list]]]  # name -> (columns, rows)
    files: list[Path]  # plots (PNG) and documents (YAML, JSON)


def track_runs(exp: Experiment, trackers: list[str], say) -> int:
    """Log every finished run of the experiment not yet logged to each tracker; how many were logged."""
    if not trackers:
        return 0
    plan = load_plan(exp)
    if not plan.workspace.db_path.is_file():
        return 0
    columns, rows = export_rows(exp)
    with Store(plan.workspace.db_path) as store:
        checkpoints = {r.key: plan.workspace.root / r.checkpoint for r in store.runs(plan.context, "done")}
    logged = {}
    for name in trackers:
        sink = _sink(name, exp, plan.workspace)
        seen = sink.seen()
        for row in rows:
            if row["status"] != "done" or row["key"] in seen["runs"]:
                continue
            sink.log(_run_record(exp, plan, row, checkpoints.get(row["key"])))
            seen["runs"].append(row["key"])
            sink.remember(seen)  # after each run: a kill here loses at most one run's log
            logged[name] = logged.get(name, 0) + 1
        sink.close()
    for name, n in logged.items():
        say(f"tracking: {n} runs logged to {name}")
    return sum(logged.values())


def _run_record(exp: Experiment, plan, row: dict, checkpoint: Path | None) -> Logged:
    domains = exp.domain_names
    side = result_path(checkpoint) if checkpoint else None
    curve = json.loads(side.read_text()).get("losses", []) if side and side.is_file() else []
    config = {"experiment": exp.name, "key": row["key"], "origin": row["origin"], "seed": exp.seed,
              "weights": {d: row[d] for d in domains}, "proxy": plan.spec.to_dict(), "context": plan.context,
              "suite": plan.suite.key, "objective": plan.suite.describe_objective()}
    skip = {"key", "origin", "status", "error", "finished", *domains}
    summary = {k: v for k, v in row.items() if k not in skip and isinstance(v, (int, float))}
    return Logged(f"run-{row['key'][:12]}", "proxy", config, [float(x) for x in curve], summary, {}, [])


def track_fit(exp: Experiment, rec, trackers: list[str], say) -> None:
    """Log a fit once per tracker: settings, the CV table of every model, plots, the recommendation."""
    if not trackers:
        return
    ws = Workspace(exp.workspace_dir)
    fit_dir = ws.fit_dir(rec.fit_key)
    files = sorted(fit_dir.glob("*.png")) + [p for p in (exp.optimal_path, fit_dir / "fit.json") if p.is_file()]
    cv_rows = [[m, v.spearman, v.r2, m == rec.model] for m, v in rec.candidates.items()]
    summary = {"predicted": rec.predicted, "predicted_at_prior": rec.predicted_prior, "best_run": rec.best_run,
               "cv_spearman": rec.cv.spearman, "cv_r2": rec.cv.r2, "runs": rec.runs,
               **{f"weight/{d}": float(w) for d, w in zip(rec.domains, rec.weights)}}
    config = {"experiment": exp.name, "fit_key": rec.fit_key, "model": rec.model, "objective": rec.objective,
              "fit": exp.fit.model_dump(mode="json"), "optimum": exp.optimum.model_dump(mode="json"),
              "recommendation": rec.to_json()}
    weights = [[d, float(p), float(w), b or ""] for d, p, w, b in zip(rec.domains, rec.prior, rec.weights,
                                                                        rec.binding)]
    record = Logged(f"fit-{rec.fit_key[:12]}", "fit", config, [], summary,
                    {"cv": (["model", "spearman", "r2", "chosen"], cv_rows),
                     "recommendation": (["domain", "prior", "recommended", "binding"], weights)}, files)
    for name in trackers:
        sink = _sink(name, exp, ws)
        seen = sink.seen()
        if rec.fit_key not in seen["fits"]:
            sink.log(record)
            seen["fits"].append(rec.fit_key)
            sink.remember(seen)
            say(f"tracking: fit {rec.fit_key[:12]} logged to {name}")
        sink.close()


class _Sink:
    """One destination; remembers in the workspace what it already received."""

    def __init__(self, exp: Experiment, ws: Workspace, destination: str):
        self.exp, self.ws = exp, ws
        self.marker = ws.root / "tracking" / f"{type(self).__name__.lower()}-{content_hash(destination)[:12]}.json"

    def seen(self) -> dict:
        if self.marker.is_file():
            return json.loads(self.marker.read_text())
        return {"destination": self.destination, "runs": [], "fits": []}

    def remember(self, seen: dict) -> None:
        self.marker.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.marker, seen)

    def close(self) -> None:
        pass


class Wandb(_Sink):
    def __init__(self, exp: Experiment, ws: Workspace):
        self.project = os.environ.get("WANDB_PROJECT") or f"mixopt-{exp.name}"
        self.mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        self.dir = Path(os.environ.get("WANDB_DIR") or ws.root)
        self.destination = f"wandb:{self.mode}:{self.project}:{self.dir}"
        super().__init__(exp, ws, self.destination)

    def log(self, rec: Logged) -> None:
        import wandb

        self.dir.mkdir(parents=True, exist_ok=True)
        settings = wandb.Settings(console="off", silent=True, x_disable_stats=True, save_code=False)
        run = wandb.init(project=self.project, group=self.exp.name, job_type=rec.kind, name=rec.name,
                         config=rec.config, dir=str(self.dir), mode=self.mode, settings=settings)
        try:
            for step, loss in enumerate(rec.curve, 1):
                run.log({"train/loss": loss}, step=step)
            for name, (columns, rows) in rec.tables.items():
                run.log({name: wandb.Table(columns=columns, data=rows)})
            for f in rec.files:
                if f.suffix == ".png":
                    run.log({f"plots/{f.stem}": wandb.Image(str(f))})
                else:  # a copy inside the run's folder: W&B warns about (and may lose) links to outside files
                    shutil.copyfile(f, Path(run.dir) / f.name)
                    run.save(str(Path(run.dir) / f.name), base_path=run.dir, policy="now")
            run.summary.update(rec.summary)
        finally:
            run.finish()


class Mlflow(_Sink):
    def __init__(self, exp: Experiment, ws: Workspace):
        self.own = not os.environ.get("MLFLOW_TRACKING_URI")
        self.uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{ws.root.absolute() / 'mlflow' / 'mlflow.db'}"
        self.experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or exp.name
        self.destination = f"mlflow:{self.uri}:{self.experiment}"
        self.client = None
        super().__init__(exp, ws, self.destination)

    def _experiment_id(self) -> str:
        from mlflow.tracking import MlflowClient

        for name in ("mlflow", "alembic"):  # its database setup logs at INFO on stderr
            logging.getLogger(name).setLevel(logging.WARNING)
        if self.own:
            (self.ws.root / "mlflow").mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(self.uri)
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        where = (self.ws.root.absolute() / "mlflow" / "artifacts").as_uri() if self.own else None
        return self.client.create_experiment(self.experiment, artifact_location=where)

    def log(self, rec: Logged) -> None:
        import tempfile

        from mlflow.entities import Metric, Param, RunTag

        exp_id = self._experiment_id()
        run = self.client.create_run(exp_id, run_name=rec.name, tags={"mixopt.kind": rec.kind})
        rid = run.info.run_id
        try:
            # MLflow keeps a parameter's value up to 6000 characters: the whole config is config.json too.
            params = [Param(k, (v if isinstance(v, str) else json.dumps(v))[:6000]) for k, v in rec.config.items()]
            metrics = [Metric("train/loss", float(v), 0, i) for i, v in enumerate(rec.curve, 1)]
            metrics += [Metric(k, float(v), 0, 0) for k, v in rec.summary.items() if v is not None]
            self.client.log_batch(rid, metrics=metrics[:1000], params=params, tags=[RunTag("mixopt.experiment",
                                                                                            self.exp.name)])
            for i in range(1000, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
                self.client.log_batch(rid, metrics=metrics[i:i + 1000])
            self.client.log_dict(rid, rec.config, "config.json")
            for name, (columns, rows) in rec.tables.items():
                self.client.log_dict(rid, [dict(zip(columns, r)) for r in rows], f"{name}.json")
            for f in rec.files:
                self.client.log_artifact(rid, str(f), "plots" if f.suffix == ".png" else None)
            if rec.curve:
                with tempfile.TemporaryDirectory() as tmp:  # the curve as a file too, for a quick look
                    p = Path(tmp) / "loss_curve.json"
                    p.write_text(json.dumps(rec.curve))
                    self.client.log_artifact(rid, str(p))
        except BaseException:
            self.client.set_terminated(rid, "FAILED")
            raise
        self.client.set_terminated(rid, "FINISHED")


def _sink(name: str, exp: Experiment, ws: Workspace) -> _Sink:
    return {"wandb": Wandb, "mlflow": Mlflow}[name](exp, ws)
