"""gbm: gradient-boosted trees (LightGBM, as RegMix uses), RegMix's choice for hundreds of runs: no
shape assumed, so it captures interactions, but it is piecewise constant, so its optimum is found
by simulation (optimize.py), not by a solver."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from mixopt.fit.families.base import MixtureModel

# Fewer, larger steps than RegMix's notebook (1000 x 0.01): the same ranking on its 1M test set
# (Spearman 0.990 vs 0.990) at a seventh of the time, which CV and the bootstrap multiply.
GBM_PARAMS = dict(objective="regression", n_estimators=150, learning_rate=0.1, num_leaves=15, min_child_samples=5,
                  reg_lambda=1.0, verbose=-1, deterministic=True, force_row_wise=True, n_jobs=1)
MIN_RUNS_FOR_GBM = 30  # below this, trees memorize; auto does not consider gbm


@dataclass(frozen=True)
class BoostedTrees(MixtureModel):
    trees: dict  # metric -> fitted LightGBM booster

    kind = "gbm"

    @classmethod
    def fit_terms(cls, X, metrics, terms, seed, start, members):
        return cls(terms, {m: _fit_gbm(X, metrics[m], seed) for m in terms})

    @classmethod
    def offered(cls, n_runs, domains, metrics):
        return n_runs >= MIN_RUNS_FOR_GBM

    @classmethod
    def runs_wanted(cls, domains, members=()):
        return max(MIN_RUNS_FOR_GBM, 10 * domains)

    @property
    def smooth(self) -> bool:
        return False

    def predict_metric(self, metric, X):
        return self.trees[metric].predict(np.atleast_2d(X), num_threads=os.cpu_count() or 1)


def _fit_gbm(X: np.ndarray, y: np.ndarray, seed: int):
    import lightgbm

    return lightgbm.LGBMRegressor(random_state=seed, **GBM_PARAMS).fit(X, y).booster_
