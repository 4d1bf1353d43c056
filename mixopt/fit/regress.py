"""Regressions from mixture weights to scores, judged by how well they rank unseen mixtures.

Each metric (e.g. held-out BPB of one domain) gets its own fit; the objective is the weighted sum
of the metric predictions. The families (linear, loglinear, law, quadratic, logweight, multitask,
gp, gbm, ensemble) are one class each in mixopt/fit/families/, registered by name in FAMILIES;
this module cross-validates them by name:

- auto:      k-fold cross-validated ranking and error pick among all of them (select_model); the
  pick is itself judged by nested cross-validation (cross_validate_selection).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import r2_score

from mixopt.evals.objective import objective_of
from mixopt.fit.families import FAMILIES, family
from mixopt.fit.families.base import MixtureModel, fold_indices

ENSEMBLE_SIZE = 3  # the ensemble averages the best three other families
# Inner folds of auto's nested CV (cross_validate_selection): five up to SMALL_SWARM runs, where each
# inner fit sees few runs and three folds made the nested figure 0.03 more pessimistic against truly
# held-out Spearman (bench/fit_honesty.py, 48 synthetic swarms of 24-48 runs: -0.099 vs -0.126 bias,
# weak-fit warnings on strong fits 10% vs 17%); three above, where the inner pick is stable and fits
# are slow (RegMix's 512 runs: auto 2.3x plain CV's time with three, 3.2x with five).
SMALL_SWARM = 100


@dataclass(frozen=True)
class CrossValidation:
    spearman: float  # rank correlation of out-of-fold predictions with measured objective
    r2: float
    folds: int
    oof: np.ndarray  # out-of-fold prediction for every run
    fold_spearman: np.ndarray = field(default_factory=lambda: np.zeros(0))  # within each test fold
    members: tuple[str, ...] = ()  # ensemble: which families it averages


def fit_model(kind: str, X: np.ndarray, metrics: dict[str, np.ndarray], terms: dict[str, float],
              seed: int = 0, start: MixtureModel | None = None, members: tuple[str, ...] = ()) -> MixtureModel:
    """The family `kind` fit to the objective's metrics (MixtureModel.fit: `start` warm-starts it,
    `members` names an ensemble's families)."""
    return family(kind).fit(X, metrics, terms, seed, start, members)


def candidates_for(n_runs: int, domains: int = 0, metrics: int = 1) -> tuple[str, ...]:
    """The models `auto` may pick from with this many runs (the ensemble is built from the others;
    each family says when it is offered: MixtureModel.offered)."""
    return tuple(k for k, c in FAMILIES.items() if c.offered(n_runs, domains, metrics))


def runs_wanted(kind: str, domains: int, members: tuple[str, ...] = ()) -> int:
    """Runs below which a family is short of evidence (MixtureModel.runs_wanted); three per domain
    for a model no family names (the scaling law)."""
    return FAMILIES[kind].runs_wanted(domains, members) if kind in FAMILIES else 3 * domains


def cross_validate(kind: str, X: np.ndarray, metrics: dict[str, np.ndarray], terms: dict[str, float],
                   folds: int, seed: int, start: MixtureModel | None = None) -> CrossValidation:
    """k-fold (seeded, k capped at the number of runs) out-of-fold predictions of the objective;
    `start` (see fit_model) warm-starts every fold's fit."""
    y = objective_of(terms, metrics)
    oof = np.empty(len(y))
    tests = fold_indices(len(y), folds, seed)
    for test in tests:
        train = np.setdiff1d(np.arange(len(y)), test)
        model = fit_model(kind, X[train], {m: v[train] for m, v in metrics.items()}, terms, seed, start)
        oof[test] = model.predict(X[test])
    return _scored(oof, y, tests)


def _scored(oof: np.ndarray, y: np.ndarray, tests: list[np.ndarray], members: tuple[str, ...] = ()) -> CrossValidation:
    r2 = float(r2_score(y, oof)) if np.isfinite(oof).all() else float("-inf")
    per_fold = np.array([spearman(oof[t], y[t]) if len(t) > 2 else np.nan for t in tests])
    return CrossValidation(spearman(oof, y) if np.isfinite(oof).all() else float("nan"), r2, len(tests), oof,
                           per_fold, members)


def cross_validate_ensemble(cvs: dict[str, CrossValidation], y: np.ndarray, folds: int, seed: int,
                            size: int = ENSEMBLE_SIZE) -> CrossValidation | None:
    """The mean of the best `size` families' out-of-fold predictions: the ensemble's own out-of-fold
    prediction (each member was fit without the fold it predicts). None with fewer than two members."""
    ranked = sorted((k for k, v in cvs.items() if k != "ensemble" and np.isfinite(v.spearman) and v.r2 > 0),
                    key=lambda k: -cvs[k].spearman)[:size]
    if len(ranked) < 2:
        return None
    oof = np.mean([cvs[k].oof for k in ranked], axis=0)
    return _scored(oof, y, fold_indices(len(y), folds, seed), tuple(ranked))


def score_text(x: float) -> str:
    """A CV score for people: 3 decimals, and a runaway fit's R^2 (-1e46) as "< -1000", not 47 digits."""
    if x != x:
        return "nan"
    return "< -1000" if x < -1000 else f"{x:.3f}"


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def tied_with_best(cvs: dict[str, CrossValidation]) -> list[str]:
    """The models whose CV Spearman is within one standard error of the best's, the error taken
    over the folds' paired differences (a model that loses on every fold by a little is not tied)."""
    scored = {k: v for k, v in cvs.items() if np.isfinite(v.spearman)}
    if not scored:
        return []
    best = max(scored, key=lambda k: scored[k].spearman)
    out = []
    for k, v in scored.items():
        diff = scored[best].fold_spearman - v.fold_spearman
        diff = diff[np.isfinite(diff)]
        se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
        if scored[best].spearman - v.spearman <= se:
            out.append(k)
    return out


def select_model(cvs: dict[str, CrossValidation]) -> str:
    """Rank and error together: families that predict held-out runs worse than their mean (CV R^2
    <= 0) are out whenever one predicts better; among the rest, those tied with the best CV Spearman
    (tied_with_best), the one that ranks best fold by fold (the lowest mean rank across folds),
    then the one with the smaller error (higher CV R^2). Near-ties are not broken towards the
    simplest model: on a tie the better ranker is at least as safe. When no family beats the mean,
    the one with the smallest error: its ranks are noise, but it strays least (a runaway law once
    won on Spearman at CV R^2 -1.6e10)."""
    fitting = {k: v for k, v in cvs.items() if v.r2 > 0 and np.isfinite(v.spearman)}
    if not fitting:
        finite = [k for k, v in cvs.items() if np.isfinite(v.r2)]
        return max(finite, key=lambda k: cvs[k].r2) if finite else "linear"
    tied = tied_with_best(fitting)
    if not tied:
        return "linear"
    if len(tied) == 1:
        return tied[0]
    F = np.array([np.nan_to_num(cvs[k].fold_spearman, nan=-2.0) for k in tied])  # models x folds
    ranks = (-F).argsort(axis=0).argsort(axis=0).mean(axis=1)
    return tied[min(range(len(tied)), key=lambda i: (ranks[i], -cvs[tied[i]].r2, -cvs[tied[i]].spearman))]


def select_by_cv(kinds, X: np.ndarray, metrics: dict[str, np.ndarray], terms: dict[str, float], folds: int,
                 seed: int, starts: dict | None = None) -> tuple[str, dict[str, CrossValidation]]:
    """`auto`: every family in `kinds` cross-validated, the ensemble of the best, select_model's pick;
    `starts`: family -> a fit that warm-starts its folds."""
    y = objective_of(terms, metrics)
    cvs = {k: cross_validate(k, X, metrics, terms, folds, seed, (starts or {}).get(k)) for k in kinds}
    ensemble = cross_validate_ensemble(cvs, y, folds, seed)
    if ensemble is not None:
        cvs["ensemble"] = ensemble
    return select_model(cvs), cvs


def inner_folds(n_runs: int) -> int:
    """The inner folds auto's nested CV uses for a swarm of this many runs."""
    return 5 if n_runs <= SMALL_SWARM else 3


def cross_validate_selection(cvs: dict[str, CrossValidation], X: np.ndarray, metrics: dict[str, np.ndarray],
                             terms: dict[str, float], folds: int, seed: int,
                             inner: int | None = None) -> CrossValidation:
    """auto judged outside the CV that picks: in each outer fold, the whole selection (select_by_cv)
    rerun on the fold's training runs alone, with `inner` folds (default: inner_folds), and the fold
    predicted by the family chosen there. The outer folds are cross_validate's (same seed), so that
    prediction is the family's own out-of-fold one in `cvs`: no refit. `oof` is in the runs' order."""
    y = objective_of(terms, metrics)
    n, tests = len(y), fold_indices(len(y), folds, seed)
    inner = inner or inner_folds(n)
    offered = [k for k in cvs if k != "ensemble"]
    oof = np.empty(n)
    for test in tests:
        train = np.setdiff1d(np.arange(n), test)
        kinds = [k for k in candidates_for(len(train), X.shape[1], len(metrics)) if k in offered]
        part = {m: v[train] for m, v in metrics.items()}
        # The GP's marginal-likelihood search is ~60% of an inner selection (76 of 130 ms at 22 runs x
        # 4 domains), the law's three starts most of the rest: fit each once on the fold's training
        # runs and warm-start the inner folds from it (the GP keeps its hyperparameters). That fit saw
        # the inner test runs, never the outer fold, so the outer estimate stays honest.
        starts = {k: fit_model(k, X[train], part, terms, seed) for k in kinds if FAMILIES[k].warm_inner}
        kind, inner_cvs = select_by_cv(kinds, X[train], part, terms, inner, seed, starts)
        members = inner_cvs[kind].members if kind == "ensemble" else (kind,)
        oof[test] = np.mean([cvs[k].oof[test] for k in members], axis=0)
    return _scored(oof, y, tests)
