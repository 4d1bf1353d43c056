"""What every model family is: a fitted map from mixture weights to each metric, and the objective
(the weighted sum of the metrics' predictions) with its gradient, for the optimizer and the CV.

A family is one subclass of MixtureModel in its own module of this package, registered by name in
`mixopt.fit.families.FAMILIES`; regress.py and optimize.py call these methods and never ask which
family a model is.

These modules import numpy alone at the top; scipy, scikit-learn and LightGBM load where a family
fits, so importing a family costs no more than numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

CHUNK = 10_000  # mixtures predicted at once by the families with large temporaries
RIDGE_GRID = np.logspace(-6, 1, 15)  # ridge penalties tried by GCV, relative to the largest singular value^2


@dataclass(frozen=True)
class MixtureModel:
    """A fitted family: `terms` maps each metric to its signed weight in the objective."""

    terms: dict[str, float]

    kind: ClassVar[str]  # the family's name: `--model`, `fit.model`, fit.json's "model"
    # Fit jointly across all the metrics (a metric at weight 0 still lends its runs); the rest fit
    # one model per metric of the objective.
    shared: ClassVar[bool] = False
    # runs x pairs (quadratic) or mixtures x runs (gp) temporaries: predicted CHUNK mixtures at a time
    chunked: ClassVar[bool] = False
    # inner-fold fits keep the outer fold's hyperparameters (cross_validate_selection's warm start)
    warm_inner: ClassVar[bool] = False

    @classmethod
    def fit(cls, X: np.ndarray, metrics: dict[str, np.ndarray], terms: dict[str, float], seed: int = 0,
            start: MixtureModel | None = None, members: tuple[str, ...] = ()) -> MixtureModel:
        """Fit each metric of the objective; `start` (a fit of the same family on similar data, e.g.
        the full swarm for a bootstrap replicate) warm-starts it where the family can; `members`
        names an ensemble's families. A metric at weight 0 is fit only by a shared family."""
        terms = dict(terms) if cls.shared else {m: a for m, a in terms.items() if a}
        return cls.fit_terms(X, metrics, terms, seed, start if start is not None and start.kind == cls.kind else None,
                             members)

    @classmethod
    def fit_terms(cls, X: np.ndarray, metrics: dict[str, np.ndarray], terms: dict[str, float], seed: int,
                  start: MixtureModel | None, members: tuple[str, ...]) -> MixtureModel:
        """fit, with `terms` the metrics to fit and `start` None unless it is of this family."""
        raise NotImplementedError

    @classmethod
    def offered(cls, n_runs: int, domains: int, metrics: int) -> bool:
        """Whether `auto` considers this family for a swarm of this shape."""
        return True

    @classmethod
    def runs_wanted(cls, domains: int, members: tuple[str, ...] = ()) -> int:
        """Runs below which the family is short of evidence (about three per coefficient)."""
        return 3 * domains

    @property
    def smooth(self) -> bool:
        """Differentiable, so a solver finds its optimum; trees are piecewise constant."""
        return True

    @property
    def member_kinds(self) -> list[str]:
        return []

    def coefficients(self) -> dict[str, list[float]]:
        """fit.json's "params": what a model evaluated as fitted needs (the scaling law); others are refit from runs.parquet."""
        return {}

    def linear_coef(self) -> np.ndarray | None:
        """The objective's coefficients where it is linear in the weights (a closed-form optimum), else None."""
        return None

    def convex(self) -> bool:
        """Every term convex: SLSQP's optimum is global."""
        return False

    def predict_metric(self, metric: str, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The objective (lower is better)."""
        X = np.atleast_2d(X)
        if len(X) > CHUNK and self.chunked:
            # 100k simulated mixtures at 32 domains would need ~0.4 GB at once
            return np.concatenate([self.predict(X[i:i + CHUNK]) for i in range(0, len(X), CHUNK)])
        return self._objective(X)

    def _objective(self, X: np.ndarray) -> np.ndarray:
        return sum(a * self.predict_metric(m, X) for m, a in self.terms.items())

    def gradient(self, w: np.ndarray) -> np.ndarray:
        g = np.zeros_like(w, dtype=float)
        for m, a in self.terms.items():
            g += self.term_gradient(m, a, w)
        return g

    def term_gradient(self, metric: str, a: float, w: np.ndarray) -> np.ndarray:
        """The gradient of `a` x the metric's prediction at `w`."""
        raise NotImplementedError


@dataclass(frozen=True)
class ParametricModel(MixtureModel):
    """A family with one coefficient vector per metric (what fit.json's "params" holds)."""

    params: dict[str, np.ndarray]

    def coefficients(self) -> dict[str, list[float]]:
        return {m: p.tolist() for m, p in self.params.items()}

    @classmethod
    def fit_terms(cls, X, metrics, terms, seed, start, members):
        return cls(terms, {m: cls.fit_metric(X, metrics[m], start.params[m] if start else None) for m in terms})

    @staticmethod
    def fit_metric(X: np.ndarray, y: np.ndarray, start: np.ndarray | None) -> np.ndarray:
        """One metric's coefficients; `start`: the same family's, to warm-start from (or None)."""
        raise NotImplementedError

    def predict_metric(self, metric: str, X: np.ndarray) -> np.ndarray:
        return self.evaluate(self.params[metric], np.atleast_2d(X))

    def evaluate(self, p: np.ndarray, X: np.ndarray) -> np.ndarray:
        """The metric's prediction at the rows of X from coefficients p."""
        raise NotImplementedError


def max_evals(X: np.ndarray) -> int:
    """A cap on least-squares evaluations: a metric the shape cannot follow (e.g. a near-constant
    accuracy) would otherwise drift along a flat valley for thousands of steps, to no better fit."""
    return 30 * (X.shape[1] + 1)


def fold_indices(n: int, folds: int, seed: int) -> list[np.ndarray]:
    """The test indices of each of k seeded folds (k capped at n); the same for every model."""
    from sklearn.model_selection import KFold  # seconds to import: not on the CLI's start-up path

    return [test for _, test in KFold(min(folds, n), shuffle=True, random_state=seed).split(np.zeros((n, 1)))]
