"""quadratic: m(w) = a . w + sum_{i<j} b_ij w_i w_j (Scheffe's quadratic mixture model): linear plus
every pairwise interaction, the interactions ridge-penalized with the penalty chosen by generalized
cross-validation. RegMix's paper ranks it above linear."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mixopt.fit.families.base import RIDGE_GRID, ParametricModel


@dataclass(frozen=True)
class Quadratic(ParametricModel):
    kind = "quadratic"
    chunked = True  # runs x pairs temporaries

    @staticmethod
    def fit_metric(X, y, start):
        return _fit_quadratic(X, y)

    @classmethod
    def runs_wanted(cls, domains, members=()):
        return 3 * domains + domains * (domains - 1) // 2  # the interactions are penalized: a third count

    def evaluate(self, p, X):
        i, j = np.triu_indices(X.shape[1], 1)
        return X @ p[:X.shape[1]] + (X[:, i] * X[:, j]) @ p[X.shape[1]:]

    def term_gradient(self, metric, a, w):
        p, d = self.params[metric], len(w)
        B = np.zeros((d, d))
        B[np.triu_indices(d, 1)] = p[d:]
        return a * (p[:d] + (B + B.T) @ w)


def _fit_quadratic(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[a, b]: y ~ X a + P b with P the pairwise products; only b is penalized (a carries the level),
    its penalty picked by generalized cross-validation over RIDGE_GRID."""
    return quadratic_ridge(X, y[:, None])[:, 0]


def pairs(X: np.ndarray) -> np.ndarray:
    i, j = np.triu_indices(X.shape[1], 1)
    return X[:, i] * X[:, j]


def quadratic_ridge(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Coefficients [a; b] (features x columns of Y) of Y ~ X a + P b, one interaction penalty for
    every column, chosen by generalized cross-validation summed over the columns."""
    n = X.shape[0]
    P = pairs(X)
    U0, s0, _ = np.linalg.svd(X, full_matrices=False)
    U0 = U0[:, s0 > 1e-10 * s0.max()]
    proj = lambda M: M - U0 @ (U0.T @ M)  # noqa: E731  (remove what the linear part explains)
    Q, R = proj(P), proj(Y)
    U, s, Vt = np.linalg.svd(Q, full_matrices=False)
    UtR = U.T @ R
    best = None
    for lam in RIDGE_GRID * max(s.max() ** 2, 1e-12):
        f = s ** 2 / (s ** 2 + lam)
        resid = R - U @ (f[:, None] * UtR)
        dof = U0.shape[1] + f.sum()
        gcv = float((resid ** 2).sum()) / max(n - dof, 1e-3) ** 2
        if best is None or gcv < best[0]:
            best = (gcv, lam)
    lam = best[1]
    B = Vt.T @ ((s / (s ** 2 + lam))[:, None] * UtR)
    A = np.linalg.lstsq(X, Y - P @ B, rcond=None)[0]
    return np.vstack([A, B])

