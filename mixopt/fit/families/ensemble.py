"""ensemble: the mean of the best few other families (by cross-validated Spearman; regress picks
them), each fitted on the whole swarm."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mixopt.fit.families.base import MixtureModel


@dataclass(frozen=True)
class Ensemble(MixtureModel):
    members: tuple[MixtureModel, ...]  # the fitted models averaged

    kind = "ensemble"
    chunked = True  # its members' temporaries

    @classmethod
    def fit_terms(cls, X, metrics, terms, seed, start, members):
        from mixopt.fit.families import family  # the registry imports this module

        starts = start.members if start is not None else (None,) * len(members)
        kinds = [s.kind for s in starts] if start is not None else list(members)
        if not kinds:
            raise ValueError("an ensemble needs its member families")
        return cls(terms, tuple(family(k).fit(X, metrics, terms, seed, s) for k, s in zip(kinds, starts)))

    @classmethod
    def offered(cls, n_runs, domains, metrics):
        return False  # built from the others' cross-validation (regress.cross_validate_ensemble)

    @classmethod
    def runs_wanted(cls, domains, members=()):
        from mixopt.fit.families import family

        return max((family(k).runs_wanted(domains) for k in members), default=3 * domains)

    @property
    def smooth(self) -> bool:
        return all(m.smooth for m in self.members)

    @property
    def member_kinds(self) -> list[str]:
        return [m.kind for m in self.members]

    def predict_metric(self, metric, X):
        X = np.atleast_2d(X)
        return np.mean([m.predict_metric(metric, X) for m in self.members], axis=0)

    def _objective(self, X):
        return np.mean([m.predict(X) for m in self.members], axis=0)

    def gradient(self, w):
        return np.mean([m.gradient(w) for m in self.members], axis=0)
