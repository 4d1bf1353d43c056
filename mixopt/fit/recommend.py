"""`mixopt fit`: regress the objective on the finished runs, cross-validate every model, solve
the optimum, bootstrap its uncertainty, and write the recommended ratio.

The same core fits our own sweep (`recommend_mixture`) and an external swarm table (tables.py).
"""

from __future__ import annotations

import io
from dataclasses import astuple, dataclass, replace
from pathlib import Path

import numpy as np
import yaml

from mixopt import __version__
from mixopt.config.runtime import Runtime
from mixopt.config.schema import Experiment
from mixopt.core.keys import content_hash
from mixopt.core.mixtures import Sampler
from mixopt.core.workspace import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)
from mixopt.errors import MixoptError
from mixopt.evals.suites import prepare_suite
from mixopt.fit.optimize import (
    binding_constraints,
    check_feasible,
    penalized_scores,
    simulated_pool,
    solve_by_simulation,
    solve_optimum,
)
from mixopt.fit.regress import (
    CrossValidation,
    MixtureModel,
    candidates_for,
    cross_validate,
    fit_model,
    select_model,
)
from mixopt.fit.swarm import FitSettings, Swarm
from mixopt.sweep.plan import load_plan
from mixopt.sweep.reeval import (
    evaluate_stored,
    missing_measures,
    record_scores,
    training_table,
)
from mixopt.sweep.store import Store

BOOTSTRAP_POOL = 20_000  # simulated mixtures each tree-model replicate scores


@dataclass(frozen=True)
class Recommendation:
    domains: list[str]
    weights: np.ndarray
    prior: np.ndarray
    available: list[int] | None
    binding: list[str]
    predicted: float  # objective predicted at the recommended mixture
    predicted_prior: float  # ... and at the natural prior
    best_run: float  # the best measured objective among the runs
    cv: CrossValidation
    candidates: dict[str, CrossValidation]  # every model's cross-validation, the chosen one too
    model: str
    runs: int
    objective: str
    fit_key: str
    weights_ci: np.ndarray | None = None  # domains x 2: the bootstrap's interval for each weight
    predicted_ci: tuple[float, float] | None = None  # ... for the objective at the recommendation
    bootstrap: int = 0
    ci: float = 0.9
    suspect: tuple[str, ...] = ()  # run keys left out: their checkpoint is missing or damaged

    def to_json(self) -> dict:
        ci = None
        if self.weights_ci is not None:
            ci = {"level": self.ci, "replicates": self.bootstrap,
                  "weights": {d: [float(a), float(b)] for d, (a, b) in zip(self.domains, self.weights_ci)},
                  "predicted": list(self.predicted_ci)}
        return {
            "weights": dict(zip(self.domains, map(float, self.weights))),
            "interval": ci,
            "predicted": self.predicted,
            "predicted_at_prior": self.predicted_prior,
            "best_run": self.best_run,
            "cv": {"spearman": self.cv.spearman, "r2": self.cv.r2, "folds": self.cv.folds},
            "model": self.model,
            "candidates": {k: {"spearman": v.spearman, "r2": v.r2} for k, v in self.candidates.items()},
            "objective": self.objective,
            "runs": self.runs,
            "prior": dict(zip(self.domains, map(float, self.prior))),
            "available_tokens": dict(zip(self.domains, self.available)) if self.available else None,
            "binding": dict(zip(self.domains, self.binding)),
            "fit_key": self.fit_key,
            "suspect_runs": list(self.suspect),
        }


def fit_swarm(swarm: Swarm, settings: FitSettings, fit_key: str | None = None) -> tuple[Recommendation, MixtureModel]:
    """Cross-validate the candidates, fit the chosen model on every run, solve, bootstrap."""
    n, names = len(swarm.keys), swarm.domains
    if n < len(names) + 2:
        raise MixoptError(f"only {n} runs; fitting {len(names)} domains and cross-validating needs at least "
                          f"{len(names) + 2}", "train or add more runs")
    check_feasible(swarm.bounds, names)
    kinds = candidates_for(n)
    if settings.model not in ("auto", *kinds):
        kinds = (*kinds, settings.model)
    cvs = {k: cross_validate(k, swarm.X, swarm.metrics, swarm.terms, settings.cv_folds, settings.seed) for k in kinds}
    kind = select_model(cvs) if settings.model == "auto" else settings.model
    model = fit_model(kind, swarm.X, swarm.metrics, swarm.terms, settings.seed)
    w = solve_optimum(model, swarm.prior, swarm.bounds, settings.kl_weight, settings.seed, settings.sampler)
    weights_ci = predicted_ci = None
    if settings.bootstrap:
        weights_ci, predicted_ci = _bootstrap(swarm, settings, model, w)
    y = swarm.y
    rec = Recommendation(
        domains=names, weights=w, prior=swarm.prior, available=swarm.available,
        binding=binding_constraints(w, swarm.bounds), predicted=float(model.predict(w)[0]),
        predicted_prior=float(model.predict(swarm.prior)[0]), best_run=float(y.min()), cv=cvs[kind],
        candidates=cvs, model=kind, runs=n, objective=swarm.objective,
        fit_key=fit_key or content_hash({"keys": swarm.keys, "X": swarm.X.tolist(), "y": y.tolist(),
                                         "settings": settings.__dict__}),
        weights_ci=weights_ci, predicted_ci=predicted_ci, bootstrap=settings.bootstrap, ci=settings.ci)
    return rec, model


def refit_resampled(swarm: Swarm, model: MixtureModel, rng: np.random.Generator, seed: int) -> MixtureModel:
    """One bootstrap replicate: `model`'s kind refit on the runs drawn with replacement, warm-started from it."""
    n = len(swarm.keys)
    idx = rng.integers(0, n, n)
    return fit_model(model.kind, swarm.X[idx], {k: v[idx] for k, v in swarm.metrics.items()}, swarm.terms, seed,
                     start=model)


def _bootstrap(swarm: Swarm, settings: FitSettings, model: MixtureModel, w: np.ndarray):
    """Refit on runs drawn with replacement and re-solve: percentile intervals for each weight, and
    for the objective predicted at the recommendation `w`.

    A tree model's replicates re-rank a fifth of the main fit's simulated mixtures: the
    BOOTSTRAP_POOL / 2 it scored best and as many others at random (scoring all 100k per replicate
    would take ~0.3 s each); a replicate's top mixtures are almost always among the former."""
    rng = np.random.default_rng([settings.seed, 11])
    pool = None
    if not model.smooth:
        full = simulated_pool(swarm.prior, swarm.bounds, seed=settings.seed, sampler=settings.sampler)
        order = np.argsort(penalized_scores(model, swarm.prior, settings.kl_weight, full), kind="stable")
        half = BOOTSTRAP_POOL // 2
        pool = full[np.r_[order[:half], rng.choice(order[half:], min(half, len(order) - half), replace=False)]]
    ws, preds = [], []
    for _ in range(settings.bootstrap):
        m = refit_resampled(swarm, model, rng, settings.seed)
        if m.smooth:
            ws.append(solve_optimum(m, swarm.prior, swarm.bounds, settings.kl_weight, settings.seed, settings.sampler))
        else:
            ws.append(solve_by_simulation(m, swarm.prior, swarm.bounds, settings.kl_weight, pool=pool))
        preds.append(float(m.predict(w)[0]))
    q = [50 * (1 - settings.ci), 100 - 50 * (1 - settings.ci)]
    return np.percentile(np.array(ws), q, axis=0).T, tuple(float(x) for x in np.percentile(preds, q))


def recommend_mixture(exp: Experiment, runtime: Runtime = Runtime(), reeval: bool = True,
                      plots: bool = True) -> Recommendation:
    """Fit on every finished run; first evaluate stored checkpoints on what the suite added,
    unless `reeval` is off (then runs lacking the current suite are left out, with a warning)."""
    plan, swarm, settings, fit_key = experiment_swarm(exp, runtime, reeval)
    reused = None
    if plan.change is not None and plan.change.virtual is not None:  # design.after_change: reuse
        from mixopt.fit.reuse import expand_recommendation, reused_swarm

        swarm, space, fit_key = reused_swarm(plan, full := swarm, fit_key)
        runtime.say(f"mixture reuse: fitting {len(swarm.keys)} runs over {', '.join(swarm.domains)}; the unchanged "
                    f"domains keep the proportions of {plan.change.virtual_from}")
    rec, model = fit_swarm(swarm, settings, fit_key)
    if plan.change is not None and plan.change.virtual is not None:
        reused, rec = rec, expand_recommendation(rec, space, full)
    with Store(plan.workspace.db_path) as store:
        rec = replace(rec, suspect=tuple(r.key for r in plan.runs(store, "suspect")))
        readonly = store.readonly
    out = plan.workspace.fits_dir / rec.fit_key[:16]
    if readonly:  # a read-only mount: the recommendation still goes next to the config
        runtime.say(f"note: the workspace {plan.workspace.root} is read-only: {out.relative_to(plan.workspace.root)}/ "
                    "(fit.json, runs.parquet, plots) is not written")
    else:
        save_fit(out, swarm, settings, reused or rec, model, plots=plots)  # reuse: the fit as done, reduced
    write_optimal(exp.optimal_path, rec, exp.name, None if readonly else out)
    return rec


def experiment_swarm(exp: Experiment, runtime: Runtime = Runtime(), reeval: bool = True):
    """(plan, swarm, settings, fit key): the experiment's finished runs under its current suite."""
    plan = load_plan(exp)
    with Store(plan.workspace.db_path) as store:
        if reeval and not store.readonly:
            prepare_suite(exp, plan.suite, plan.workspace)
            evaluate_stored(plan, store, runtime)
        else:
            lacking = missing_measures(plan, store)
            if lacking:
                keys = ", ".join(k[:12] for k in list(lacking)[:5]) + (" ..." if len(lacking) > 5 else "")
                why = "the workspace is read-only" if store.readonly else "--no-reeval"
                runtime.say(f"warning: {len(lacking)} finished runs lack the current eval suite and are left out "
                            f"({keys}; {why}); run `mixopt eval CONFIG` on a writable copy")
        if not store.readonly:  # the objective of each run under this suite, kept for status and export
            store.add_suite(plan.suite.to_dict())
            record_scores(plan, store)
        X, metrics, keys = training_table(plan, store)
    if len(keys) < len(exp.domain_names) + 2:
        raise MixoptError(f"only {len(keys)} finished runs with current evals; fitting {len(exp.domain_names)} "
                          f"domains and cross-validating needs at least {len(exp.domain_names) + 2}",
                          "run `mixopt sweep CONFIG`")
    swarm = Swarm(exp.domain_names, X, metrics, plan.suite.objective_terms(), keys, plan.prior, plan.bounds,
                  plan.suite.describe_objective(), plan.available)
    settings = FitSettings(exp.fit.model, exp.fit.cv_folds, exp.seed, exp.optimum.kl_weight, exp.fit.bootstrap,
                           exp.fit.ci, *astuple(Sampler.of(exp.design)))
    fit_key = content_hash({"context": plan.context, "suite": plan.suite.key, "runs": sorted(keys),
                            "fit": exp.fit.model_dump(), "optimum": exp.optimum.model_dump(),
                            "sampler": [settings.temperature, list(settings.concentration)],
                            "bounds": [plan.bounds.lower.tolist(), plan.bounds.upper.tolist()]})
    return plan, swarm, settings, fit_key


def save_fit(out: Path, swarm: Swarm, settings: FitSettings, rec: Recommendation, model: MixtureModel,
             plots: bool = True) -> None:
    """fit.json (the result, settings and data summary), runs.parquet (the table it was fit on:
    `mixopt predict` refits from it) and, unless disabled, plots."""
    import polars as pl

    table = pl.DataFrame({"key": swarm.keys, **{d: swarm.X[:, i] for i, d in enumerate(swarm.domains)},
                          **{m: v for m, v in swarm.metrics.items()}})
    buf = io.BytesIO()  # in memory, then the atomic writer: fits running at once never share a temp file
    table.write_parquet(buf)
    atomic_write_bytes(out / "runs.parquet", buf.getvalue())
    atomic_write_json(out / "fit.json", {
        **rec.to_json(), "settings": settings.__dict__, "domains": swarm.domains, "terms": swarm.terms,
        "bounds": {"lower": swarm.bounds.lower.tolist(), "upper": swarm.bounds.upper.tolist()},
        "run_keys": swarm.keys, "measured": swarm.y.tolist(), "out_of_fold": rec.cv.oof.tolist(),
        "params": {m: p.tolist() for m, p in model.params.items()}, "mixopt": __version__})
    if plots:
        from mixopt.fit.plots import plot_fit

        plot_fit(out, swarm, rec, model)


def write_optimal(path: Path, rec: Recommendation, name: str, fit_dir: Path | None) -> None:
    """The recommendation as YAML; `fit` names the fit folder's fit.json when one was written."""
    doc = {
        "experiment": name,
        "weights": {d: round(float(v), 6) for d, v in zip(rec.domains, rec.weights)},
        "predicted_objective": round(rec.predicted, 6),
        "objective": rec.objective,
        "cv": {"spearman": round(rec.cv.spearman, 4), "r2": round(rec.cv.r2, 4), "folds": rec.cv.folds},
        "model": rec.model,
        "runs": rec.runs,
        "constraints": {d: b for d, b in zip(rec.domains, rec.binding) if b},
        "fit": str(fit_dir / "fit.json") if fit_dir else None,
    }
    if rec.weights_ci is not None:
        doc["interval"] = {"level": rec.ci, "bootstrap": rec.bootstrap,
                           "weights": {d: [round(float(a), 6), round(float(b), 6)]
                                       for d, (a, b) in zip(rec.domains, rec.weights_ci)},
                           "predicted_objective": [round(x, 6) for x in rec.predicted_ci]}
    header = f"# Recommended mixture for '{name}', written by mixopt {__version__} `mixopt fit`.\n"
    atomic_write_text(path, header + yaml.safe_dump(doc, sort_keys=False))
