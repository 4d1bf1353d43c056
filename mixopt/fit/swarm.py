"""What a fit takes: a swarm of runs (ours or an external table) and the fit's settings."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mixopt.core.mixtures import Bounds, Sampler
from mixopt.evals.objective import objective_of


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
    covariates: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. model size per run (scaling.py)
    replicate: np.ndarray | None = None  # each run's seed index (0: the sweep's own); None: not labelled
    # how each run trained ('' for a CPU in float32, 'cuda/bf16-autocast', ...; Run.measured_as): runs of
    # one mixture trained two ways are not seed replicates (noise.collapse_replicates). None: all alike.
    trained_as: tuple[str, ...] | None = None

    @property
    def y(self) -> np.ndarray:
        return objective_of(self.terms, self.metrics)


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
    # Where the recommendation may go: "range" keeps each weight within what the runs covered,
    # "none" only within the bounds (optimize.evidence_bounds).
    trust_region: str = "range"

    @property
    def sampler(self) -> Sampler:
        return Sampler(self.temperature, tuple(self.concentration))


FLAT = 1e-6  # a domain whose weight spans less than this across the runs did not vary
NEAR_CONSTANT = 1e-7  # an objective whose spread is below this fraction of its size is rounding, not signal


def flat_domains(X: np.ndarray) -> list[int]:
    """Domains whose weight no run varied: the runs say nothing about changing them."""
    return [j for j in range(X.shape[1]) if np.ptp(X[:, j]) <= FLAT]


def check_swarm(swarm: Swarm) -> list[str]:
    """Raise where no fit can mean anything (non-finite values, a constant objective, too few distinct
    mixtures); return warnings for what the fit can work around (domains no run varied)."""
    from mixopt.errors import MixoptError

    X, n, d = swarm.X, len(swarm.keys), len(swarm.domains)
    bad = np.flatnonzero(~np.isfinite(X).all(axis=1))
    if bad.size:
        raise MixoptError(f"run {swarm.keys[bad[0]]}: a weight is not a finite number", "fix or drop that run")
    for m, v in swarm.metrics.items():
        bad = np.flatnonzero(~np.isfinite(v))
        if bad.size:
            raise MixoptError(f"{m}: run {swarm.keys[bad[0]]} has no finite score", "fill or drop that run")
    y = swarm.y
    scale = max(float(np.abs(y).max()), 1e-300)
    levels = len(np.unique(np.round(y / scale, 9)))
    if levels == 1:
        raise MixoptError(f"the objective ({swarm.objective}) is constant ({y[0]:.6g}) across the {n} runs: nothing "
                          "to fit", "pick a target that the mixture changes, or check the score column")
    if np.ptp(y) <= NEAR_CONSTANT * scale:
        raise MixoptError(f"the objective ({swarm.objective}) varies by only {np.ptp(y):.3g} across the {n} runs "
                          f"({np.ptp(y) / scale:.1e} of its size): below what a score can resolve",
                          "pick a target that the mixture changes, or check the score column")
    if levels < 3:
        raise MixoptError(f"the objective ({swarm.objective}) takes only 2 distinct values across the {n} runs: "
                          "nothing to rank", "pick a continuous target (e.g. a loss or BPB, not an accuracy)")
    flat = flat_domains(X)
    free = d - len(flat)
    distinct = len(np.unique(np.round(X, 6), axis=0))
    if distinct < free + 2:
        raise MixoptError(f"only {distinct} distinct mixtures among the {n} runs; fitting {free} varying domains "
                          f"and cross-validating needs at least {free + 2}", "train or add runs on other mixtures")
    if not flat:
        return []
    names = ", ".join(f"{swarm.domains[j]} (always {X[0, j]:.4g})" for j in flat[:6]) + (" ..." if len(flat) > 6 else "")
    return [f"{len(flat)} domain(s) did not vary across the runs: {names}; their weight is held at that value, "
            "since no run shows what changing it does"]
