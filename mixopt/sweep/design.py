"""The sweep's candidate mixtures: RegMix-style Dirichlet draws around the token prior, plus the
natural prior, each single-domain mixture and the user's own, all within the bounds. After the
data changed (sweep/change.py), the still-valid base runs plus what `design.after_change` adds."""

from __future__ import annotations

import numpy as np

from mixopt.config.schema import Experiment
from mixopt.config.validate import check_weights
from mixopt.core.mixtures import (
    BOUND_SLACK,
    Bounds,
    Mixture,
    Sampler,
    drop_small_weights,
)
from mixopt.errors import MixoptError
from mixopt.sweep.change import Change, ReusedSpace

ATTEMPTS_PER_RUN = 2000  # rejection sampling gives up after this many draws per wanted mixture


def design_mixtures(exp: Experiment, prior: np.ndarray, bounds: Bounds, change: Change | None = None
                    ) -> list[Mixture]:
    """The sweep's mixtures, deterministic for a given config, seed and (after a change) store."""
    if change is not None:
        return _after_change(exp, prior, bounds, change)
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
    rng = np.random.default_rng([exp.seed, 1])
    return fixed + _draw_random(exp, prior, bounds, [np.array(m.weights) for m in fixed], cfg.runs, rng, "random")


def _after_change(exp: Experiment, prior: np.ndarray, bounds: Bounds, change: Change) -> list[Mixture]:
    """The base runs still valid, then: reuse, a swarm over (virtual, changed...) mapped onto every
    domain; extend, the changed domains' vertices and random runs over the whole simplex. Either
    adds design.after_change_runs x (changed + 1) random runs (none when a domain was only removed)."""
    names = exp.domain_names
    out = [Mixture(o, w) for o, w in change.base]
    taken = [np.array(w) for _, w in change.base]
    k = len(change.changed)
    if k == 0:
        return out
    n = exp.design.after_change_runs * (k + 1)
    rng = np.random.default_rng([exp.seed, 3])
    if change.mode == "reuse" and change.virtual is not None:
        space = ReusedSpace.of(change, len(names))
        rb, rp = space.bounds(bounds, names), space.prior(prior)
        fixed = [("reuse:virtual", np.eye(k + 1)[0])]
        fixed += [(f"reuse:vertex:{names[i]}", np.eye(k + 1)[j + 1]) for j, i in enumerate(change.changed)]
        fixed.append(("reuse:prior", rp))
        mine = []
        for origin, r in fixed:
            w = space.expand(r)[0]
            if rb.contains(r) and bounds.contains(w) and not any(np.abs(t - w).sum() < 1e-9 for t in taken + mine):
                out.append(Mixture(origin, tuple(float(x) for x in w)))
                mine.append(w)
        reduced_taken = [space.reduce(w)[0][0] for w in mine]
        for m in _draw_random(exp, rp, rb, reduced_taken, n, rng, "reuse:random"):
            out.append(Mixture(m.origin, tuple(float(x) for x in space.expand(np.array(m.weights))[0])))
        return out
    for i in change.changed:
        e = np.eye(len(names))[i]
        if bounds.contains(e) and not any(np.abs(t - e).sum() < 1e-9 for t in taken):
            out.append(Mixture(f"extend:vertex:{names[i]}", tuple(e)))
            taken.append(e)
    return out + _draw_random(exp, prior, bounds, taken, n, rng, "extend:random")


def _draw_random(exp: Experiment, prior: np.ndarray, bounds: Bounds, taken: list[np.ndarray], runs: int,
                 rng: np.random.Generator, origin: str) -> list[Mixture]:
    cfg = exp.design
    if runs == 0:
        return []
    sampler = Sampler.of(cfg)
    centre = sampler.centre(prior)
    cap = cfg.max_prior_multiple * centre if cfg.max_prior_multiple else np.ones_like(centre)
    free = 1.0 - bounds.lower.sum()  # mass left once every domain has its minimum
    out: list[Mixture] = []
    taken = list(taken)
    for _ in range(ATTEMPTS_PER_RUN * runs):
        g = sampler.draw(prior, 1, rng)[0]
        if not np.isfinite(g).all():
            continue
        w = bounds.lower + free * g
        w = drop_small_weights(w, cfg.min_weight)
        if not bounds.contains(w) or np.any(w > np.maximum(cap, bounds.lower) + BOUND_SLACK):
            continue
        if taken and min(np.abs(t - w).sum() for t in taken) < cfg.min_distance:
            continue
        taken.append(w)
        out.append(Mixture(f"{origin}:{len(out)}", tuple(float(x) for x in w)))
        if len(out) == runs:
            return out
    raise MixoptError(
        f"could draw only {len(out)} of {runs} distinct mixtures within the bounds ({origin} runs)",
        "lower design.runs or design.min_distance, raise max_prior_multiple, or loosen the bounds")
