"""Candidate mixtures on the simplex: RegMix-style Dirichlet draws around the token prior, plus
the natural prior, each single-domain mixture and the user's own, all within the bounds."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import Experiment, check_weights
from .errors import MixoptError

ATTEMPTS_PER_RUN = 2000  # rejection sampling gives up after this many draws per wanted mixture
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


def design_mixtures(exp: Experiment, prior: np.ndarray, bounds: Bounds) -> list[Mixture]:
    """The sweep's mixtures, deterministic for a given config and seed."""
    names, cfg = exp.domain_names, exp.design
    fixed: list[Mixture] = []
    if cfg.include_prior and bounds.contains(prior):
        fixed.append(Mixture("prior", tuple(prior)))
    if cfg.include_vertices:
        for i, name in enumerate(names):
            e = np.eye(len(names))[i]
            if bounds.contains(e):
                fixed.append(Mixture(f"vertex:{name}", tuple(e)))
    for i, m in enumerate(cfg.mixtures):
        fixed.append(Mixture(f"user:{i}", tuple(check_weights(m, names, f"design.mixtures[{i}]"))))
    return fixed + _draw_random(exp, prior, bounds, [np.array(m.weights) for m in fixed])


def _draw_random(exp: Experiment, prior: np.ndarray, bounds: Bounds, taken: list[np.ndarray]) -> list[Mixture]:
    cfg = exp.design
    if cfg.runs == 0:
        return []
    rng = np.random.default_rng([exp.seed, 1])
    centre = prior ** cfg.temperature
    centre /= centre.sum()
    cap = cfg.max_prior_multiple * centre if cfg.max_prior_multiple else np.ones_like(centre)
    free = 1.0 - bounds.lower.sum()  # mass left once every domain has its minimum
    lo, hi = np.log(cfg.concentration[0]), np.log(cfg.concentration[1])
    out: list[Mixture] = []
    taken = list(taken)
    for _ in range(ATTEMPTS_PER_RUN * cfg.runs):
        scale = np.exp(rng.uniform(lo, hi))
        g = rng.standard_gamma(centre * scale)
        if not np.isfinite(g).all() or g.sum() <= 0:
            continue
        w = bounds.lower + free * (g / g.sum())
        w[w < cfg.min_weight] = 0.0
        w /= w.sum()
        if not bounds.contains(w) or np.any(w > np.maximum(cap, bounds.lower) + BOUND_SLACK):
            continue
        if taken and min(np.abs(t - w).sum() for t in taken) < cfg.min_distance:
            continue
        taken.append(w)
        out.append(Mixture(f"random:{len(out)}", tuple(float(x) for x in w)))
        if len(out) == cfg.runs:
            return out
    raise MixoptError(
        f"could draw only {len(out)} of design.runs={cfg.runs} distinct mixtures within the bounds",
        "lower design.runs or design.min_distance, raise max_prior_multiple, or loosen the bounds")
