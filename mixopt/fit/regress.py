"""Regressions from mixture weights to scores, judged by how well they rank unseen mixtures.

Each metric (e.g. held-out BPB of one domain) gets its own fit; the objective is the weighted sum
of the metric predictions. The families:

- linear:    m(w) = coef . w. Weights sum to 1, so coef[d] is the score of the pure-d mixture.
- loglinear: m(w) = exp(c) + exp(w . t) (Olmix's default), ridge-regularized towards a flat start
  so it is stable out-of-fold from ~10 runs: a positive floor plus a convex, monotone term.
- law:       m(w) = c + exp(w . t), the Data Mixing Laws' c + k exp(sum t_j r_j) (with sum r = 1,
  k folds into t): the same shape with a free floor and no regularization, fitted from several
  starts. Wants more runs than loglinear; better when it has them.
- gbm:       gradient-boosted trees (LightGBM, as RegMix uses), RegMix's choice for
  hundreds of runs: no shape assumed, so it captures interactions, but it is piecewise constant,
  so its optimum is found by simulation (optimize.py), not by a solver.
- auto:      k-fold cross-validated Spearman picks among the four.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import least_squares
from scipy.stats import spearmanr
from sklearn.metrics import r2_score
from sklearn.model_selection import KFold

MODELS = ("linear", "loglinear", "law", "gbm")
LOGLINEAR_RIDGE = 0.05  # pulls t towards its starting point: stable fits from ~10 runs
# Fewer, larger steps than RegMix's notebook (1000 x 0.01): the same ranking on its 1M test set
# (Spearman 0.990 vs 0.990) at a seventh of the time, which CV and the bootstrap multiply.
GBM_PARAMS = dict(objective="regression", n_estimators=150, learning_rate=0.1, num_leaves=15, min_child_samples=5,
                  reg_lambda=1.0, verbose=-1, deterministic=True, force_row_wise=True, n_jobs=1)
MIN_RUNS_FOR_GBM = 30  # below this, trees memorize; auto does not consider gbm


@dataclass(frozen=True)
class MixtureModel:
    kind: str
    terms: dict[str, float]  # metric -> signed weight in the objective
    params: dict[str, np.ndarray] = field(default_factory=dict)  # linear coef, or [floor, t_1..t_d]
    trees: dict = field(default_factory=dict)  # metric -> fitted gbm

    @property
    def smooth(self) -> bool:
        """Differentiable, so a solver finds its optimum; trees are piecewise constant."""
        return self.kind != "gbm"

    def predict_metric(self, metric: str, X: np.ndarray) -> np.ndarray:
        X = np.atleast_2d(X)
        if self.kind == "gbm":
            return self.trees[metric].predict(X, num_threads=os.cpu_count() or 1)
        p = self.params[metric]
        if self.kind == "linear":
            return X @ p
        floor = np.exp(p[0]) if self.kind == "loglinear" else p[0]
        return floor + np.exp(np.clip(X @ p[1:], -50, 50))

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The objective (lower is better)."""
        return sum(a * self.predict_metric(m, X) for m, a in self.terms.items())

    def gradient(self, w: np.ndarray) -> np.ndarray:
        g = np.zeros_like(w, dtype=float)
        for m, a in self.terms.items():
            p = self.params[m]
            g += a * (p if self.kind == "linear" else np.exp(np.clip(w @ p[1:], -50, 50)) * p[1:])
        return g

    def linear_coef(self) -> np.ndarray:
        """The objective's coefficients, for a linear model."""
        return sum(a * self.params[m] for m, a in self.terms.items())

    def convex(self) -> bool:
        """Every term convex (exp terms with positive weight, or linear): SLSQP's optimum is global."""
        return self.kind == "linear" or all(a > 0 for a in self.terms.values())


@dataclass(frozen=True)
class CrossValidation:
    spearman: float  # rank correlation of out-of-fold predictions with measured objective
    r2: float
    folds: int
    oof: np.ndarray  # out-of-fold prediction for every run


def fit_model(kind: str, X: np.ndarray, metrics: dict[str, np.ndarray], terms: dict[str, float],
              seed: int = 0, start: MixtureModel | None = None) -> MixtureModel:
    """Fit each metric of the objective; `start` (a fit of the same kind on similar data, e.g. the
    full swarm for a bootstrap replicate) warm-starts the least-squares families."""
    if kind == "gbm":
        return MixtureModel(kind, dict(terms), trees={m: _fit_gbm(X, metrics[m], seed) for m in terms})
    if kind == "linear":
        return MixtureModel(kind, dict(terms), {m: _fit_linear(X, metrics[m]) for m in terms})
    fit_one = _fit_loglinear if kind == "loglinear" else _fit_law
    p0 = (lambda m: start.params[m]) if start is not None and start.kind == kind else (lambda m: None)
    return MixtureModel(kind, dict(terms), {m: fit_one(X, metrics[m], p0(m)) for m in terms})


def _fit_linear(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.linalg.lstsq(X, y, rcond=None)[0]


def _fit_loglinear(X: np.ndarray, y: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
    floor0 = 0.5 * max(float(y.min()), 1e-6)
    t0 = np.log(max(float(y.mean()) - floor0, 1e-6))  # the ridge's centre stays the flat start
    p0 = np.r_[np.log(floor0), np.full(X.shape[1], t0)] if start is None else start

    d = X.shape[1]

    def residuals(p):
        pred = np.exp(p[0]) + np.exp(np.clip(X @ p[1:], -50, 50))
        return np.r_[pred - y, LOGLINEAR_RIDGE * (p[1:] - t0)]

    def jacobian(p):
        e = np.exp(np.clip(X @ p[1:], -50, 50))
        top = np.column_stack([np.full(len(y), np.exp(p[0])), e[:, None] * X])
        return np.vstack([top, np.column_stack([np.zeros(d), LOGLINEAR_RIDGE * np.eye(d)])])

    return least_squares(residuals, p0, jac=jacobian, method="trf", max_nfev=_max_evals(X)).x


def _fit_law(X: np.ndarray, y: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
    """c + exp(X t), least squares from three floors (0, half and 90% of the smallest score),
    or from `start` alone."""
    best = None
    starts = [start] if start is not None else []
    for frac in () if starts else (0.0, 0.5, 0.9):
        c0 = frac * float(y.min())
        starts.append(np.r_[c0, np.full(X.shape[1], np.log(max(float(y.mean()) - c0, 1e-6)))])
    for p0 in starts:
        res = least_squares(lambda p: p[0] + np.exp(np.clip(X @ p[1:], -50, 50)) - y, p0, method="trf",
                            jac=lambda p: np.column_stack([np.ones(len(y)), np.exp(np.clip(X @ p[1:], -50, 50))[:, None] * X]),
                            max_nfev=_max_evals(X))
        if best is None or res.cost < best.cost:
            best = res
    return best.x


def _max_evals(X: np.ndarray) -> int:
    """A cap on least-squares evaluations: a metric the shape cannot follow (e.g. a near-constant
    accuracy) would otherwise drift along a flat valley for thousands of steps, to no better fit."""
    return 30 * (X.shape[1] + 1)


def _fit_gbm(X: np.ndarray, y: np.ndarray, seed: int):
    import lightgbm

    return lightgbm.LGBMRegressor(random_state=seed, **GBM_PARAMS).fit(X, y).booster_


def candidates_for(n_runs: int) -> tuple[str, ...]:
    """The models `auto` may pick from with this many runs."""
    return MODELS if n_runs >= MIN_RUNS_FOR_GBM else tuple(m for m in MODELS if m != "gbm")


def cross_validate(kind: str, X: np.ndarray, metrics: dict[str, np.ndarray], terms: dict[str, float],
                   folds: int, seed: int) -> CrossValidation:
    """k-fold (seeded, k capped at the number of runs) out-of-fold predictions of the objective."""
    y = sum(a * metrics[m] for m, a in terms.items())
    k = min(folds, len(y))
    oof = np.empty(len(y))
    for train, test in KFold(k, shuffle=True, random_state=seed).split(X):
        model = fit_model(kind, X[train], {m: v[train] for m, v in metrics.items()}, terms, seed)
        oof[test] = model.predict(X[test])
    return CrossValidation(spearman(oof, y), float(r2_score(y, oof)), k, oof)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def select_model(cvs: dict[str, CrossValidation]) -> str:
    """The best cross-validated Spearman; ties (within 0.002) go to the simpler model, in MODELS order."""
    scored = {k: v.spearman for k, v in cvs.items() if np.isfinite(v.spearman)}
    if not scored:
        return "linear"
    best = max(scored.values())
    return next(k for k in MODELS if k in scored and scored[k] >= best - 0.002)
