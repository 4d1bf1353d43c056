"""`mixopt fit`: regress the objective on the finished runs, cross-validate, solve the optimum,
and write the recommended ratio."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import yaml

from . import __version__
from .config import Experiment
from .errors import MixoptError
from .keys import content_hash
from .optimize import binding_constraints, solve_optimum
from .regress import MODELS, CrossValidation, cross_validate, fit_model
from .store import Store
from .suites import prepare_suite
from .sweep import Plan, Say, evaluate_stored, load_plan, missing_measures, record_scores, training_table
from .workspace import atomic_write_json, atomic_write_text


@dataclass(frozen=True)
class Recommendation:
    domains: list[str]
    weights: np.ndarray
    prior: np.ndarray
    available: list[int]
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

    def to_json(self) -> dict:
        return {
            "weights": dict(zip(self.domains, map(float, self.weights))),
            "predicted": self.predicted,
            "predicted_at_prior": self.predicted_prior,
            "best_run": self.best_run,
            "cv": {"spearman": self.cv.spearman, "r2": self.cv.r2, "folds": self.cv.folds},
            "model": self.model,
            "candidates": {k: {"spearman": v.spearman, "r2": v.r2} for k, v in self.candidates.items()},
            "objective": self.objective,
            "runs": self.runs,
            "prior": dict(zip(self.domains, map(float, self.prior))),
            "available_tokens": dict(zip(self.domains, self.available)),
            "binding": dict(zip(self.domains, self.binding)),
            "fit_key": self.fit_key,
        }


def recommend_mixture(exp: Experiment, reeval: bool = True, workers: int = 1, progress: bool = False,
                      say: Say = print) -> Recommendation:
    """Fit on every finished run; first evaluate stored checkpoints on what the suite added,
    unless `reeval` is off (then runs lacking the current suite are left out, with a warning)."""
    plan = load_plan(exp)
    with Store(plan.workspace.db_path) as store:
        if reeval:
            prepare_suite(exp, plan.suite, plan.workspace)
            evaluate_stored(plan, store, workers, progress, say)
        else:
            lacking = missing_measures(plan, store)
            if lacking:
                keys = ", ".join(k[:12] for k in list(lacking)[:5]) + (" ..." if len(lacking) > 5 else "")
                say(f"warning: {len(lacking)} finished runs lack the current eval suite and are left out "
                    f"({keys}); run `mixopt eval CONFIG` or drop --no-reeval")
        store.add_suite(plan.suite.to_dict())
        record_scores(plan, store)
        X, metrics, keys = training_table(plan, store)
    names = exp.domain_names
    if len(keys) < len(names) + 2:
        raise MixoptError(f"only {len(keys)} finished runs with current evals; fitting {len(names)} domains "
                          f"and cross-validating needs at least {len(names) + 2}", "run `mixopt sweep CONFIG`")
    terms = plan.suite.objective_terms()
    y = sum(w * metrics[m] for m, w in terms.items())
    candidates = {k: cross_validate(k, X, metrics, terms, exp.fit.cv_folds, exp.seed) for k in MODELS}
    kind = exp.fit.model
    fit = fit_model(kind, X, metrics, terms)
    cv = candidates[kind]
    w = solve_optimum(fit, plan.prior, plan.bounds, exp.optimum.kl_weight)
    fit_key = content_hash({"context": plan.context, "suite": plan.suite.key, "runs": sorted(keys),
                            "fit": exp.fit.model_dump(), "optimum": exp.optimum.model_dump(),
                            "bounds": [plan.bounds.lower.tolist(), plan.bounds.upper.tolist()]})
    objective = plan.suite.describe_objective()
    rec = Recommendation(
        domains=names, weights=w, prior=plan.prior, available=plan.available,
        binding=binding_constraints(w, plan.bounds), predicted=float(fit.predict(w)[0]),
        predicted_prior=float(fit.predict(plan.prior)[0]), best_run=float(y.min()), cv=cv,
        candidates=candidates, model=kind, runs=len(keys), objective=objective, fit_key=fit_key)
    _write(exp, plan, rec, keys, y, fit)
    return rec


def _write(exp: Experiment, plan: Plan, rec: Recommendation, keys: list[str], y: np.ndarray, fit) -> None:
    out = plan.workspace.fits_dir / rec.fit_key[:16]
    atomic_write_json(out / "fit.json", {**rec.to_json(), "run_keys": keys, "measured": y.tolist(),
                                         "out_of_fold": rec.cv.oof.tolist(),
                                         "params": {m: p.tolist() for m, p in fit.params.items()}})
    doc = {
        "experiment": exp.name,
        "weights": {d: round(float(v), 6) for d, v in zip(rec.domains, rec.weights)},
        "predicted_objective": round(rec.predicted, 6),
        "objective": rec.objective,
        "cv": {"spearman": round(rec.cv.spearman, 4), "r2": round(rec.cv.r2, 4), "folds": rec.cv.folds},
        "model": rec.model,
        "runs": rec.runs,
        "constraints": {d: b for d, b in zip(rec.domains, rec.binding) if b},
        "fit": str(out / "fit.json"),
    }
    header = f"# Recommended mixture for '{exp.name}', written by mixopt {__version__} `mixopt fit`.\n"
    atomic_write_text(exp.optimal_path, header + yaml.safe_dump(doc, sort_keys=False))
