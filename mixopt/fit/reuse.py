"""The fit after a data change under `design.after_change: reuse` (Olmix's mixture reuse): regress
on the runs of the reduced simplex (the unchanged domains as one virtual domain at fixed
proportions, and each changed domain), solve there, and map the optimum and its interval back
onto every domain."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from mixopt.core.keys import content_hash
from mixopt.errors import MixoptError
from mixopt.fit.optimize import binding_constraints
from mixopt.fit.swarm import Swarm
from mixopt.sweep.change import ReusedSpace
from mixopt.sweep.plan import Plan


def reused_swarm(plan: Plan, swarm: Swarm, fit_key: str) -> tuple[Swarm, ReusedSpace, str]:
    """The runs on the reused plane, in reduced coordinates (virtual first, then changed domains)."""
    change = plan.change
    space = ReusedSpace.of(change, len(swarm.domains))
    R, on = space.reduce(swarm.X)
    names = ["virtual(" + "+".join(swarm.domains[i] for i in change.unchanged) + ")"] + \
        [swarm.domains[i] for i in change.changed]
    if on.sum() < len(names) + 2:
        raise MixoptError(f"mixture reuse: only {int(on.sum())} finished runs on the reused plane; fitting "
                          f"{len(names)} coordinates needs at least {len(names) + 2}", "run `mixopt sweep CONFIG`")
    keys = [k for k, o in zip(swarm.keys, on) if o]
    sub = Swarm(names, R[on], {m: v[on] for m, v in swarm.metrics.items()}, swarm.terms, keys,
                space.prior(swarm.prior), space.bounds(swarm.bounds, swarm.domains), swarm.objective)
    return sub, space, content_hash({"fit": fit_key, "reuse": space.r.tolist(), "changed": list(change.changed)})


def expand_recommendation(rec, space: ReusedSpace, full: Swarm):
    """A reduced-space recommendation as weights (and intervals) over every domain."""
    w = space.expand(rec.weights)[0]
    ci = None
    if rec.weights_ci is not None:
        ci = np.zeros((space.n, 2))
        ci[list(space.unchanged)] = np.outer(space.r, rec.weights_ci[0])
        ci[list(space.changed)] = rec.weights_ci[1:]
    return replace(rec, domains=full.domains, weights=w, prior=full.prior, available=full.available,
                   binding=binding_constraints(w, full.bounds), weights_ci=ci,
                   held_fixed=tuple(full.domains[i] for i in space.unchanged))


def model_space(plan: Plan, swarm: Swarm, fit_key: str = ""):
    """(swarm, space, key) as the fit regresses: after a change under `reuse`, the runs on the reused
    plane in reduced coordinates and the ReusedSpace that maps them (see reused_swarm); otherwise the
    swarm itself and None. verify and propose use it so that they predict with the fit's own model."""
    if plan.change is None or plan.change.virtual is None:
        return swarm, None, fit_key
    return reused_swarm(plan, swarm, fit_key)
