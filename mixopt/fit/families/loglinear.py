"""loglinear: m(w) = exp(c) + exp(w . t) (Olmix's default), ridge-regularized towards a flat start
so it is stable out-of-fold from ~10 runs: a positive floor plus a convex, monotone term."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mixopt.fit.families.base import ParametricModel, max_evals

LOGLINEAR_RIDGE = 0.05  # pulls t towards its starting point: stable fits from ~10 runs


@dataclass(frozen=True)
class LogLinear(ParametricModel):
    kind = "loglinear"

    @staticmethod
    def fit_metric(X, y, start):
        return _fit_loglinear(X, y, start)

    @classmethod
    def runs_wanted(cls, domains, members=()):
        return 2 * (domains + 1)

    def convex(self) -> bool:
        return all(a > 0 for a in self.terms.values())  # exp terms with positive weight

    def evaluate(self, p, X):
        return np.exp(p[0]) + np.exp(np.clip(X @ p[1:], -50, 50))

    def term_gradient(self, metric, a, w):
        p = self.params[metric]
        return a * np.exp(np.clip(w @ p[1:], -50, 50)) * p[1:]


def _fit_loglinear(X: np.ndarray, y: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
    from scipy.optimize import least_squares

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

    return least_squares(residuals, p0, jac=jacobian, method="trf", max_nfev=max_evals(X)).x
