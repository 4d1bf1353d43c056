"""What a fit takes: a swarm of runs (ours or an external table) and the fit's settings."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mixopt.core.mixtures import Bounds, Sampler


@dataclass(frozen=True)
class Swarm:
    """What a fit needs, from our own sweep or from an external table."""

    domains: list[str]
    X: np.ndarray  # runs x domains
    metrics: dict[str, np.ndarray]  # metric -> value per run
    terms: dict[str, float]  # metric -> signed weight: objective = sum, lower is better
    keys: list[str]  # one id per run
    prior: np.ndarray
    bounds: Bounds
    objective: str
    available: list[int] | None = None  # tokens per domain, when known

    @property
    def y(self) -> np.ndarray:
        return sum(a * self.metrics[m] for m, a in self.terms.items())


@dataclass(frozen=True)
class FitSettings:
    model: str = "auto"
    cv_folds: int = 5
    seed: int = 0
    kl_weight: float = 0.0
    bootstrap: int = 50  # replicates; 0 = no intervals
    ci: float = 0.9
    # The simulated mixtures of the tree optimum follow the design's distribution (RegMix's defaults).
    temperature: float = 0.5
    concentration: tuple[float, float] = (0.1, 5.0)

    @property
    def sampler(self) -> Sampler:
        return Sampler(self.temperature, tuple(self.concentration))
