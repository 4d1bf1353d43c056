"""law: m(w) = c + exp(w . t), the Data Mixing Laws' c + k exp(sum t_j r_j) (with sum r = 1, k folds
into t): loglinear's shape with a free floor and no regularization, fitted from several starts.
Wants more runs than loglinear; better when it has them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mixopt.fit.families.base import max_evals
from mixopt.fit.families.loglinear import LogLinear


@dataclass(frozen=True)
class Law(LogLinear):
    """loglinear's exp term (its gradient and convexity) with a free floor, unregularized."""

    kind = "law"
    warm_inner = True  # three least-squares starts: most of an inner selection's time after the GP

    @staticmethod
    def fit_metric(X, y, start):
        return _fit_law(X, y, start)

    @classmethod
    def offered(cls, n_runs, domains, metrics):
        # Unregularized, it needs twice as many runs as its d + 1 coefficients: with fewer, its
        # least squares runs away (CV R^2 of -1e46 at 49 runs x 32 domains) after seconds of work.
        return n_runs >= 2 * (domains + 1)

    @classmethod
    def runs_wanted(cls, domains, members=()):
        return 3 * (domains + 1)

    def evaluate(self, p, X):
        return p[0] + np.exp(np.clip(X @ p[1:], -50, 50))


def _fit_law(X: np.ndarray, y: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
    """c + exp(X t), least squares from three floors (0, half and 90% of the smallest score),
    or from `start` alone."""
    from scipy.optimize import least_squares

    best = None
    starts = [start] if start is not None else []
    for frac in () if starts else (0.0, 0.5, 0.9):
        c0 = frac * float(y.min())
        starts.append(np.r_[c0, np.full(X.shape[1], np.log(max(float(y.mean()) - c0, 1e-6)))])
    for p0 in starts:
        res = least_squares(lambda p: p[0] + np.exp(np.clip(X @ p[1:], -50, 50)) - y, p0, method="trf",
                            jac=lambda p: np.column_stack([np.ones(len(y)), np.exp(np.clip(X @ p[1:], -50, 50))[:, None] * X]),
                            max_nfev=max_evals(X))
        if best is None or res.cost < best.cost:
            best = res
    return best.x
