"""multitask: one quadratic model across every metric of the table (the objective's and any fitted
at weight 0): a ridge with one shared penalty, then reduced to the rank (chosen by inner
cross-validation) that the metrics share. Correlated evals lend each other their runs: a noisy
metric is predicted through the structure the others show. Predicts like quadratic."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mixopt.fit.families.base import fold_indices
from mixopt.fit.families.quadratic import Quadratic, pairs, quadratic_ridge

MULTITASK_FOLDS = 5  # inner folds choosing the shared rank


@dataclass(frozen=True)
class Multitask(Quadratic):
    kind = "multitask"
    shared = True

    @classmethod
    def fit_terms(cls, X, metrics, terms, seed, start, members):
        return cls(terms, _fit_multitask(X, metrics))

    @classmethod
    def offered(cls, n_runs, domains, metrics):
        return metrics > 1  # nothing to share with one metric


def _reduced(C: np.ndarray, F: np.ndarray, rank: int) -> np.ndarray:
    """C with its fitted values F @ C projected onto their top `rank` directions across the columns
    (reduced-rank regression: the columns share `rank` underlying responses)."""
    V = np.linalg.svd(F @ C, full_matrices=False)[2][:rank].T
    return C @ V @ V.T


def _fit_multitask(X: np.ndarray, metrics: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every metric's quadratic coefficients from one fit: standardized metrics, a shared-penalty
    ridge, reduced to the rank that predicts held-out runs best (inner k-fold, summed squared error
    over the standardized metrics; the lower rank on a tie)."""
    names = list(metrics)
    Y = np.column_stack([metrics[m] for m in names])
    mu, sd = Y.mean(axis=0), Y.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    Z = (Y - mu) / sd
    m, n = Z.shape[1], Z.shape[0]
    rank = m
    if m > 1 and n >= 2 * MULTITASK_FOLDS:
        err = np.zeros(m)
        for test in fold_indices(n, MULTITASK_FOLDS, 0):
            train = np.setdiff1d(np.arange(n), test)
            C = quadratic_ridge(X[train], Z[train])
            F_train, F_test = (np.hstack([X[ix], pairs(X[ix])]) for ix in (train, test))
            for r in range(1, m + 1):
                err[r - 1] += float(((F_test @ _reduced(C, F_train, r) - Z[test]) ** 2).sum())
        rank = int(np.flatnonzero(err <= err.min() * (1 + 1e-9))[0]) + 1
    C = _reduced(quadratic_ridge(X, Z), np.hstack([X, pairs(X)]), rank) * sd
    C[:X.shape[1]] += mu  # rows of X sum to 1: the level goes into the linear part
    return {k: C[:, i] for i, k in enumerate(names)}

