"""Mixtures on the simplex: bounds, the one Dirichlet sampler, projection onto the bounds, and the
one reader of mixture files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mixopt.config.schema import Experiment
from mixopt.config.validate import check_weights
from mixopt.errors import MixoptError

BOUND_SLACK = 1e-9


@dataclass(frozen=True)
class Bounds:
    """Per-domain weight bounds, in canonical order, with the reason for each upper bound."""

    lower: np.ndarray
    upper: np.ndarray
    upper_reason: tuple[str, ...]  # "max" (the config's bound), "repetition", or "none"

    def contains(self, w: np.ndarray) -> bool:
        return bool(np.all(w >= self.lower - BOUND_SLACK) and np.all(w <= self.upper + BOUND_SLACK))


@dataclass(frozen=True)
class Mixture:
    origin: str  # "prior", "vertex:<domain>", "user:<i>" or "random:<i>"
    weights: tuple[float, ...]  # canonical domain order, sums to 1


def domain_bounds(exp: Experiment, available_tokens: list[float]) -> Bounds:
    """Config bounds, tightened by the repetition limit w x target_tokens <= max_epochs x available."""
    lower = np.array([d.min for d in exp.domains], dtype=float)
    upper = np.array([d.max for d in exp.domains], dtype=float)
    reason = ["max" if d.max < 1 else "none" for d in exp.domains]
    target = exp.optimum.target_tokens
    if target:
        for i, avail in enumerate(available_tokens):
            cap = exp.optimum.max_epochs * avail / target
            if cap < upper[i]:
                upper[i], reason[i] = cap, "repetition"
    if upper.sum() < 1 - 1e-9:
        raise MixoptError(
            f"no mixture fits: upper bounds (with the repetition limit {exp.optimum.max_epochs:g} epochs of "
            f"{target:.3g} target tokens) sum to {upper.sum():.3f} < 1",
            "lower optimum.target_tokens, raise optimum.max_epochs or add text")
    bad = np.flatnonzero(lower > upper + BOUND_SLACK)
    if bad.size:
        i = int(bad[0])
        raise MixoptError(f"domain '{exp.domains[i].name}': min {lower[i]:.4g} is above its repetition limit "
                          f"{upper[i]:.4g}", "lower its min, lower optimum.target_tokens or add text")
    return Bounds(lower, upper, tuple(reason))


TINY = 1e-12  # weights are floored here inside log()


def sample_mixtures(prior: np.ndarray, bounds: Bounds, n: int, rng: np.random.Generator) -> np.ndarray:
    """n mixtures within the bounds: Dirichlet draws around prior**0.5 at log-uniform concentrations
    (0.1..5, as the design draws them), projected onto {lower <= w <= upper, sum w = 1}."""
    centre = np.maximum(prior, TINY) ** 0.5
    centre /= centre.sum()
    scale = np.exp(rng.uniform(np.log(0.1), np.log(5.0), size=(n, 1)))
    g = rng.standard_gamma(np.maximum(centre * scale, 1e-3))
    total = g.sum(axis=1, keepdims=True)
    w = np.where(total > 0, g / np.maximum(total, TINY), centre)  # tiny concentrations can underflow to 0
    return project_to_bounds(w, bounds)


def project_to_bounds(W: np.ndarray, bounds: Bounds) -> np.ndarray:
    """Each row's Euclidean projection onto the bounded simplex: clip(w - tau, lower, upper), tau by bisection."""
    lo, hi = bounds.lower, bounds.upper
    outside = np.flatnonzero(np.any(W < lo, axis=1) | np.any(W > hi, axis=1) | (np.abs(W.sum(axis=1) - 1) > 1e-9))
    if outside.size < len(W):  # rows already inside are their own projection
        W = W.copy()
        if outside.size:
            W[outside] = project_to_bounds(W[outside], bounds)
        return W
    a = (W - hi).min(axis=1) - 1.0  # tau here: every weight at its upper bound (sum >= 1)
    b = (W - lo).max(axis=1) + 1.0  # tau here: every weight at its lower bound (sum <= 1)
    for _ in range(50):  # the bracket is < 4 wide: 2^-50 of it is below float noise
        mid = 0.5 * (a + b)
        s = np.clip(W - mid[:, None], lo, hi).sum(axis=1)
        a, b = np.where(s > 1, mid, a), np.where(s > 1, b, mid)
    return np.clip(W - (0.5 * (a + b))[:, None], lo, hi)


def read_mixtures_file(path: Path, exp: Experiment) -> list[Mixture]:
    """Mixtures to train besides the design: YAML `mixtures: [{domain: weight, ...}, ...]`
    (what `mixopt propose` writes) or a bare list of such mappings."""
    import yaml

    if not path.is_file():
        raise MixoptError(f"mixtures file not found: {path}", "pass the file `mixopt propose` wrote")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        raise MixoptError(f"{path}: not valid YAML", "fix the YAML syntax") from None
    items = raw.get("mixtures") if isinstance(raw, dict) else raw
    if not isinstance(items, list) or not items or not all(isinstance(m, dict) for m in items):
        raise MixoptError(f"{path}: expected a list of mixtures (domain: weight mappings)",
                          "write `mixtures: [{code: 0.5, wiki: 0.5}]`")
    return [Mixture(f"file:{path.stem}:{i}", tuple(check_weights(m, exp.domain_names, f"{path}: mixtures[{i}]")))
            for i, m in enumerate(items)]
