"""Regressions from mixture weights to scores, judged by how well they rank unseen mixtures.

Each metric (e.g. held-out BPB of one domain) gets its own fit; the objective is the weighted sum
of the metric predictions. Two families:

- linear:    m(w) = coef . w. Weights sum to 1, so coef[d] is the score of the pure-d mixture.
- loglinear: m(w) = exp(c) + exp(w . t), per metric (Olmix's default; the shape of the Data
  Mixing Laws): a floor plus a convex, monotone term. It captures that a domain's loss rises
  steeply as its own weight nears 0, which a linear model cannot.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares
from scipy.stats import spearmanr
from sklearn.metrics import r2_score
from sklearn.model_selection import KFold

MODELS = ("linear", "loglinear")
LOGLINEAR_RIDGE = 0.05  # pulls t towards its starting point: stable fits from ~10 runs


@dataclass(frozen=True)
class MixtureModel:
    kind: str
    terms: dict[str, float]  # metric -> weight in the objective
    params: dict[str, np.ndarray]  # metric -> linear coef, or loglinear [c, t_1..t_d]

    def predict_metric(self, metric: str, X: np.ndarray) -> np.ndarray:
        p, X = self.params[metric], np.atleast_2d(X)
        if self.kind == "linear":
            return X @ p
        return np.exp(p[0]) + np.exp(X @ p[1:])

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The objective (lower is better)."""
        return sum(a * self.predict_metric(m, X) for m, a in self.terms.items())

    def gradient(self, w: np.ndarray) -> np.ndarray:
        g = np.zeros_like(w, dtype=float)
        for m, a in self.terms.items():
            p = self.params[m]
            g += a * (p if self.kind == "linear" else np.exp(w @ p[1:]) * p[1:])
        return g

    def linear_coef(self) -> np.ndarray:
        """The objective's coefficients, for a linear model."""
        return sum(a * self.params[m] for m, a in self.terms.items())


@dataclass(frozen=True)
class CrossValidation:
    spearman: float  # rank correlation of out-of-fold predictions with measured objective
    r2: float
    folds: int
    oof: np.ndarray  # out-of-fold prediction for every run


def fit_model(kind: str, X: np.ndarray, metrics: dict[str, np.ndarray], terms: dict[str, float]) -> MixtureModel:
    fit_one = _fit_linear if kind == "linear" else _fit_loglinear
    return MixtureModel(kind, dict(terms), {m: fit_one(X, metrics[m]) for m in terms})


def _fit_linear(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.linalg.lstsq(X, y, rcond=None)[0]


def _fit_loglinear(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    floor0 = 0.5 * max(float(y.min()), 1e-6)
    t0 = np.log(max(float(y.mean()) - floor0, 1e-6))
    p0 = np.r_[np.log(floor0), np.full(X.shape[1], t0)]

    def residuals(p):
        pred = np.exp(p[0]) + np.exp(np.clip(X @ p[1:], -50, 50))
        return np.r_[pred - y, LOGLINEAR_RIDGE * (p[1:] - t0)]

    return least_squares(residuals, p0, method="trf").x


def cross_validate(kind: str, X: np.ndarray, metrics: dict[str, np.ndarray], terms: dict[str, float],
                   folds: int, seed: int) -> CrossValidation:
    """k-fold (seeded, k capped at the number of runs) out-of-fold predictions of the objective."""
    y = sum(a * metrics[m] for m, a in terms.items())
    k = min(folds, len(y))
    oof = np.empty(len(y))
    for train, test in KFold(k, shuffle=True, random_state=seed).split(X):
        model = fit_model(kind, X[train], {m: v[train] for m, v in metrics.items()}, terms)
        oof[test] = model.predict(X[test])
    rho = spearmanr(oof, y).statistic if np.ptp(y) > 0 and np.ptp(oof) > 0 else float("nan")
    return CrossValidation(float(rho), float(r2_score(y, oof)), k, oof)
