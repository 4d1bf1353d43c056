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
STALL_DRAWS = 20_000  # ... or after this many draws in a row found nothing new: the room is full (seconds)
RUNS_PER_DOMAIN, MIN_RUNS = 4, 32  # design.runs' default: enough for the smooth families to fit


def random_runs(exp: Experiment) -> int:
    """design.runs, or by default 4 per domain (at least 32): the swarm grows with the domains."""
    runs = exp.design.runs
    return runs if runs is not None else max(MIN_RUNS, RUNS_PER_DOMAIN * len(exp.domain_names))


def design_mixtures(exp: Experiment, prior: np.ndarray, bounds: Bounds, change: Change | None = None
                    ) -> list[Mixture]:
    """The sweep's mixtures, deterministic for a given config, seed and (after a change) store."""
    if change is not None:
        return _after_change(exp, prior, bounds, change)
    cfg = exp.design
    fixed = _fixed_mixtures(exp, prior, bounds)
    rng = np.random.default_rng([exp.seed, 1])
    out = fixed + _draw_random(exp, prior, bounds, [np.array(m.weights) for m in fixed], random_runs(exp), rng,
                                "random")
    return out + replicate_mixtures(out, cfg.replicates)


def _fixed_mixtures(exp: Experiment, prior: np.ndarray, bounds: Bounds) -> list[Mixture]:
    """The design's mixtures that are not drawn: the prior, each vertex (within the bounds), the user's."""
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
    return fixed


def change_runs(exp: Experiment, prior: np.ndarray, bounds: Bounds, changed: int, fixed: int) -> int:
    """Random runs a data change adds. The change explores changed + 1 coordinates (reuse: the
    virtual domain and each changed one; extend: what the base runs left at 0) where a design from
    scratch explores every domain: its runs in all, `fixed` ones (vertices, prior) included, are the
    scratch design's runs per domain x (changed + 1); at least changed + 1 random, at most
    design.after_change_runs x (changed + 1)."""
    scratch = len(_fixed_mixtures(exp, prior, bounds)) + random_runs(exp)
    budget = scratch * (changed + 1) // len(exp.domain_names)
    return int(np.clip(budget - fixed, changed + 1, exp.design.after_change_runs * (changed + 1)))


def replicate_mixtures(design: list[Mixture], cfg) -> list[Mixture]:
    """Seeds 1 .. seeds-1 of the replicated mixtures (seed 0 is the design's own run): the prior
    first, then, one at a time, the design mixture farthest (L1) from those already chosen, so the
    noise is seen across the simplex, not at one point. Single-domain mixtures are left out: they
    are where noise is largest (Marin: 25x at code-only) and never where a recommendation lies."""
    if cfg is None or not design:
        return []
    pool = [m for m in design if not m.origin.startswith("vertex:")] or list(design)
    extra_each = cfg.seeds - 1
    k = cfg.mixtures if cfg.mixtures is not None else max(1, int(cfg.budget * len(design) / extra_each + 1e-9))
    chosen = [next((m for m in pool if m.origin == "prior"), pool[0])]
    while len(chosen) < min(k, len(pool)):
        W = np.array([m.weights for m in chosen])
        far = max((m for m in pool if m not in chosen), key=lambda m: np.abs(W - np.array(m.weights)).sum(1).min())
        chosen.append(far)
    return [Mixture(f"replicate:{m.origin}:{r}", m.weights, r) for m in chosen for r in range(1, cfg.seeds)]


def _after_change(exp: Experiment, prior: np.ndarray, bounds: Bounds, change: Change) -> list[Mixture]:
    """The base runs still valid, then: reuse, a swarm over (virtual, changed...) mapped onto every
    domain; extend, the changed domains' vertices and random runs over the whole simplex. Either
    adds change_runs random runs (none when a domain was only removed), each giving the changed
    domains a share drawn over their useful range (the base runs all have them at 0)."""
    names = exp.domain_names
    out = [Mixture(o, w) for o, w in change.base]
    taken = [np.array(w) for _, w in change.base]
    k = len(change.changed)
    if k == 0:
        return out
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
        n = change_runs(exp, prior, bounds, k, len(mine))
        for m in _draw_random(exp, rp, rb, reduced_taken, n, rng, "reuse:random", tuple(range(1, k + 1))):
            out.append(Mixture(m.origin, tuple(float(x) for x in space.expand(np.array(m.weights))[0])))
        return out
    vertices = 0
    for i in change.changed:
        e = np.eye(len(names))[i]
        if bounds.contains(e) and not any(np.abs(t - e).sum() < 1e-9 for t in taken):
            out.append(Mixture(f"extend:vertex:{names[i]}", tuple(e)))
            taken.append(e)
            vertices += 1
    n = change_runs(exp, prior, bounds, k, vertices)
    return out + _draw_random(exp, prior, bounds, taken, n, rng, "extend:random", change.changed)


def _draw_random(exp: Experiment, prior: np.ndarray, bounds: Bounds, taken: list[np.ndarray], runs: int,
                 rng: np.random.Generator, origin: str, vary: tuple[int, ...] = ()) -> list[Mixture]:
    """`runs` draws of the sampler within the bounds, the cap and min_distance. vary: domains whose
    total share is not left to the prior's Dirichlet (which puts a small new domain at 0 in most
    draws) but stratified: run j of n draws it uniformly from the j-th of n equal slices of its
    useful range (see _share_range), the other domains keep their drawn proportions."""
    cfg = exp.design
    if runs == 0:
        return []
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
    vary = vary if len(vary) < len(prior) else ()  # every domain changed: nothing to hold the rest of the mass
    if vary:
        lo, hi = _share_range(cfg, bounds, cap, free, vary)
        strata = rng.permutation(runs)
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
        if vary:
            g = _with_share(g, vary, lo + (hi - lo) * (strata[len(out)] + rng.uniform()) / runs, rng)
        w = bounds.lower + free * g
        w = drop_small_weights(w, cfg.min_weight)
        if not bounds.contains(w) or np.any(w > np.maximum(cap, bounds.lower) + BOUND_SLACK):
            continue
        if taken and min(np.abs(t - w).sum() for t in taken) < cfg.min_distance:
            continue
        taken.append(w)
        since_last = 0
        out.append(Mixture(f"{origin}:{len(out)}", tuple(float(x) for x in w)))
        if len(out) == runs:
            return out
    if non_finite > draws // 2:
        raise MixoptError(f"design.concentration {list(cfg.concentration)}: most Dirichlet draws underflowed "
                          f"({non_finite} of {draws}), so only {len(out)} of design.runs={runs} mixtures were "
                          "drawn", "raise the low end of design.concentration (e.g. [0.1, 5.0])")
    asked = "design.runs" if origin == "random" else "design.after_change_runs x (changed domains + 1)"
    raise MixoptError(
        f"{asked} is {runs} but at most about {len(out)} distinct mixtures fit (L1 distance >= "
        f"design.min_distance {cfg.min_distance:g}, within the bounds and max_prior_multiple): {draws} draws found "
        f"only {len(out)}", f"set {asked} lower, or lower design.min_distance, raise "
        "max_prior_multiple, or loosen the bounds")


def _share_range(cfg, bounds: Bounds, cap: np.ndarray, free: float, vary: tuple[int, ...]) -> tuple[float, float]:
    """The varied domains' useful total share, as a fraction of the free mass: from what survives
    design.min_weight (twice it each, so a draw is not rounded to 0) to what their upper bounds and
    the prior-multiple cap allow together."""
    v = list(vary)
    top = np.minimum(bounds.upper[v], np.maximum(cap[v], bounds.lower[v])) - bounds.lower[v]
    hi = min(1.0, float(top.sum()) / free) if free > 0 else 0.0
    lo = min(hi / 2, 2 * cfg.min_weight * len(v) / free) if free > 0 else 0.0
    return lo, hi


def _with_share(g: np.ndarray, vary: tuple[int, ...], share: float, rng: np.random.Generator) -> np.ndarray:
    """g with the domains `vary` at `share` in total (split uniformly at random between them), the
    others rescaled to the rest in their drawn proportions."""
    v = list(vary)
    rest = np.ones(len(g), dtype=bool)
    rest[v] = False
    out = np.zeros_like(g)
    mass = g[rest].sum()
    out[rest] = (1 - share) * (g[rest] / mass if mass > 0 else np.full(rest.sum(), 1 / max(rest.sum(), 1)))
    out[v] = share * (rng.dirichlet(np.ones(len(v))) if len(v) > 1 else 1.0)
    return out
