"""The sweep's candidate mixtures: RegMix-style Dirichlet draws around the token prior, plus the
natural prior, each single-domain mixture and the user's own, all within the bounds."""

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

ATTEMPTS_PER_RUN = 2000  # rejection sampling gives up after this many draws per wanted mixture
STALL_DRAWS = 20_000  # ... or after this many draws in a row found nothing new: the room is full (seconds)
RUNS_PER_DOMAIN, MIN_RUNS = 4, 32  # design.runs' default: enough for the smooth families to fit


def random_runs(exp: Experiment) -> int:
    """design.runs, or by default 4 per domain (at least 32): the swarm grows with the domains."""
    runs = exp.design.runs
    return runs if runs is not None else max(MIN_RUNS, RUNS_PER_DOMAIN * len(exp.domain_names))


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
    runs = random_runs(exp)
    if runs == 0:
        return []
    rng = np.random.default_rng([exp.seed, 1])
    sampler = Sampler.of(cfg)
    centre = sampler.centre(prior)
    if not np.isfinite(centre).all() or centre.max() > 0.999:
        top = int(np.nanargmax(np.nan_to_num(centre, nan=-1.0))) if np.isfinite(centre).any() else 0
        raise MixoptError(f"design.temperature {cfg.temperature:g}: prior ** temperature puts "
                          f"{'all' if not np.isfinite(centre).all() else f'{centre.max():.4f}'} of the weight on "
                          f"'{exp.domain_names[top]}', so random mixtures are all near that one domain",
                          "use a temperature in (0, 1], e.g. 0.5 (RegMix's)")
    cap = cfg.max_prior_multiple * centre if cfg.max_prior_multiple else np.ones_like(centre)
    free = 1.0 - bounds.lower.sum()  # mass left once every domain has its minimum
    out: list[Mixture] = []
    taken = list(taken)
    draws = since_last = non_finite = 0
    for _ in range(ATTEMPTS_PER_RUN * runs):
        draws += 1
        since_last += 1
        if since_last > STALL_DRAWS:
            break
        g = sampler.draw(prior, 1, rng)[0]
        if not np.isfinite(g).all():
            non_finite += 1
            continue
        w = bounds.lower + free * g
        w = drop_small_weights(w, cfg.min_weight)
        if not bounds.contains(w) or np.any(w > np.maximum(cap, bounds.lower) + BOUND_SLACK):
            continue
        if taken and min(np.abs(t - w).sum() for t in taken) < cfg.min_distance:
            continue
        taken.append(w)
        since_last = 0
        out.append(Mixture(f"random:{len(out)}", tuple(float(x) for x in w)))
        if len(out) == runs:
            return out
    if non_finite > draws // 2:
        raise MixoptError(f"design.concentration {list(cfg.concentration)}: most Dirichlet draws underflowed "
                          f"({non_finite} of {draws}), so only {len(out)} of design.runs={runs} mixtures were "
                          "drawn", "raise the low end of design.concentration (e.g. [0.1, 5.0])")
    raise MixoptError(
        f"design.runs is {runs} but at most about {len(out)} distinct mixtures fit (L1 distance >= "
        f"design.min_distance {cfg.min_distance:g}, within the bounds and max_prior_multiple): {draws} draws found "
        f"only {len(out)}", f"set design.runs <= {len(out)}, or lower design.min_distance, raise "
        "max_prior_multiple, or loosen the bounds")
