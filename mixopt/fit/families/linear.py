"""linear: m(w) = coef . w. Weights sum to 1, so coef[d] is the score of the pure-d mixture."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mixopt.fit.families.base import ParametricModel


@dataclass(frozen=True)
class Linear(ParametricModel):
    kind = "linear"

    @classmethod
    def runs_wanted(cls, domains, members=()):
        return 2 * domains

    @staticmethod
    def fit_metric(X, y, start):
        return fit_linear(X, y)

    def linear_coef(self) -> np.ndarray:
        return sum(a * self.params[m] for m, a in self.terms.items())

    def convex(self) -> bool:
        return True

    def evaluate(self, p, X):
        return X @ p

    def term_gradient(self, metric, a, w):
        return a * self.params[metric]


def fit_linear(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.linalg.lstsq(X, y, rcond=None)[0]
