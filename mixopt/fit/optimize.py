"""The recommended mixture: the best predicted score under bounds, repetition limits and a
KL(w || prior) penalty that keeps a linear model from collapsing onto one vertex.

Smooth models are solved (exactly for linear; SLSQP for the exp families); tree models, which are
piecewise constant, by RegMix's recipe: score many simulated mixtures and average the top ones.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy.optimize import minimize

from mixopt.core.mixtures import (
    TINY,
    Bounds,
    Sampler,
    project_to_bounds,
    sample_mixtures,
)
from mixopt.errors import MixoptError

AT_BOUND = 1e-9


SIMULATIONS = 100_000  # mixtures scored for a tree model (RegMix's recipe)


TOP_K = 100  # ... whose best TOP_K are averaged: the mean of near-optimal mixtures is more stable


START_POOL = 10_000  # simulated mixtures whose best starts the solver on a non-convex smooth model
TRUST_REGIONS = ("range", "none")
LOW_EDGE = 1e-3  # weights the runs took below this count as reaching 0


def check_feasible(bounds: Bounds, names: list[str]) -> None:
    lo, hi = bounds.lower.sum(), bounds.upper.sum()
    if lo > 1 + 1e-9 or hi < 1 - 1e-9:
        raise MixoptError(f"no mixture satisfies the bounds: minimums sum to {lo:.4g}, maximums to {hi:.4g}",
                          "lower some minimums or raise some maximums")
    bad = np.flatnonzero(bounds.lower > bounds.upper + 1e-12)
    if bad.size:
        raise MixoptError(f"domain '{names[bad[0]]}': min above max", "fix its bounds")


def solve_optimum(model, prior: np.ndarray, bounds: Bounds, kl_weight: float, seed: int = 0,
                  sampler: Sampler = Sampler()) -> np.ndarray:
    """The mixture minimizing predicted objective + kl_weight x KL(w || prior) within the bounds
    (`sampler` draws the simulated mixtures where a solver cannot be used)."""
    coef = model.linear_coef()
    if coef is not None:  # a linear objective: the optimum in closed form
        return solve_linear_kl(coef, prior, bounds, kl_weight)
    if not model.smooth:
        return solve_by_simulation(model, prior, bounds, kl_weight, seed, sampler=sampler)
    w = solve_convex_kl(model, prior, bounds, kl_weight)
    if model.convex():
        return w
    # Some terms enter negated (accuracy-like metrics): not convex, so also start from the best
    # simulated mixture and keep the better local optimum.
    w2 = solve_convex_kl(model, prior, bounds, kl_weight, start=solve_by_simulation(
        model, prior, bounds, kl_weight, seed, top_k=1, n=START_POOL, sampler=sampler))
    f = _penalized(model, prior, kl_weight)
    return w2 if f(w2) < f(w) else w


def _penalized(model, prior: np.ndarray, kl_weight: float):
    safe_prior = np.maximum(prior, TINY)

    def f(w):
        W = np.atleast_2d(w)
        kl = np.sum(np.where(W > 0, W * np.log(np.maximum(W, TINY) / safe_prior), 0.0), axis=1)
        out = model.predict(W) + kl_weight * kl
        return out if np.ndim(w) == 2 else float(out[0])

    return f


def solve_by_simulation(model, prior: np.ndarray, bounds: Bounds, kl_weight: float, seed: int = 0,
                        top_k: int = TOP_K, n: int = SIMULATIONS, pool: np.ndarray | None = None,
                        sampler: Sampler = Sampler()) -> np.ndarray:
    """Score n simulated mixtures (and the prior), or the given pool, and average the top_k: RegMix's optimum."""
    W = simulated_pool(prior, bounds, n, seed, sampler) if pool is None else pool
    scores = _penalized(model, prior, kl_weight)(W)
    best = np.argsort(scores, kind="stable")[:top_k]
    w = W[best].mean(axis=0)  # a mean of points in a convex set stays in it
    return w / w.sum()


def solve_with_trust_region(model, prior: np.ndarray, trust: Bounds, loose: Bounds | None, kl_weight: float,
                            seed: int = 0, sampler: Sampler = Sampler()):
    """(optimum within `trust`, optimum within `loose` or None when not asked, and for a tree model
    the simulated mixtures within `trust` with their penalized scores, for the bootstrap to reuse).

    A tree model scores one pool drawn within `loose` for both optima when enough of it
    (20 x TOP_K) falls inside `trust`: the simulation, not the solve, is a tree fit's cost."""
    if model.smooth:
        w = solve_optimum(model, prior, trust, kl_weight, seed, sampler)
        return w, None if loose is None else solve_optimum(model, prior, loose, kl_weight, seed, sampler), None
    f = _penalized(model, prior, kl_weight)
    W = simulated_pool(prior, loose if loose is not None else trust, seed=seed, sampler=sampler)
    inside = np.all((W >= trust.lower - 1e-12) & (W <= trust.upper + 1e-12), axis=1)
    scores = f(W)
    free = None
    if loose is not None:
        free = W[np.argsort(scores, kind="stable")[:TOP_K]].mean(axis=0)
        free /= free.sum()
        if inside.sum() < 20 * TOP_K:  # the trust region is a sliver of the bounds: draw within it
            W = simulated_pool(prior, trust, seed=seed, sampler=sampler)
            scores, inside = f(W), np.ones(len(W), bool)
    W, scores = W[inside], scores[inside]
    w = W[np.argsort(scores, kind="stable")[:TOP_K]].mean(axis=0)
    return w / w.sum(), free, (W, scores)


def simulated_pool(prior: np.ndarray, bounds: Bounds, n: int = SIMULATIONS, seed: int = 0,
                   sampler: Sampler = Sampler()) -> np.ndarray:
    """The simulated mixtures for one (prior, bounds, n, seed, sampler), drawn once per process."""
    return _pool(prior.tobytes(), bounds.lower.tobytes(), bounds.upper.tobytes(), n, seed, sampler)


def penalized_scores(model, prior: np.ndarray, kl_weight: float, W: np.ndarray) -> np.ndarray:
    return _penalized(model, prior, kl_weight)(W)


@functools.lru_cache(maxsize=4)
def _pool(prior: bytes, lower: bytes, upper: bytes, n: int, seed: int, sampler: Sampler) -> np.ndarray:
    p, lo, hi = (np.frombuffer(b) for b in (prior, lower, upper))
    bounds = Bounds(lo, hi, ("none",) * len(p))
    rng = np.random.default_rng([seed, 7])
    W = np.vstack([project_to_bounds(p[None, :], bounds), sample_mixtures(p, bounds, n, rng, sampler)])
    W.flags.writeable = False
    return W


def solve_convex_kl(model, prior: np.ndarray, bounds: Bounds, kl_weight: float,
                    start: np.ndarray | None = None) -> np.ndarray:
    """SLSQP on a convex objective (loglinear terms are convex, KL is convex): the optimum is global.
    Started from the exact solution of the model's linearization at the prior, or from `start`."""
    upper = np.where(prior > 0, bounds.upper, bounds.lower)  # KL forbids weight where the prior is 0
    safe_prior = np.maximum(prior, TINY)
    f = _penalized(model, prior, kl_weight)

    def grad(w):
        return model.gradient(w) + kl_weight * (np.log(np.maximum(w, TINY) / safe_prior) + 1.0)

    box = Bounds(bounds.lower, upper, bounds.upper_reason)
    w0 = start if start is not None else solve_linear_kl(model.gradient(prior), prior, box, max(kl_weight, 1e-3))
    res = minimize(f, w0, jac=grad, method="SLSQP", bounds=list(zip(bounds.lower, upper)),
                   constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)}],
                   options={"maxiter": 500, "ftol": 1e-12})
    w = np.clip(res.x, bounds.lower, upper)
    if not np.isfinite(w).all() or abs(w.sum() - 1) > 1e-6:
        raise MixoptError(f"the optimizer did not converge ({res.message})", "report this with your fit.json")
    return w / w.sum()


def solve_linear_kl(coef: np.ndarray, prior: np.ndarray, bounds: Bounds, kl_weight: float) -> np.ndarray:
    """argmin_w coef.w + kl_weight * KL(w || prior)  s.t.  lower <= w <= upper, sum(w) = 1.

    Convex and separable, so the KKT conditions give w_i = clip(prior_i * exp(-(coef_i + nu) /
    kl_weight - 1), lower_i, upper_i) with one multiplier nu, found by bisection: exact, no solver.
    """
    lower, upper = bounds.lower, bounds.upper
    if kl_weight <= 0:
        return _fill_greedy(coef, lower, upper)
    with np.errstate(divide="ignore"):
        a = np.log(prior) - coef / kl_weight - 1.0  # log w_i = a_i - t, before clipping

    def weights(t: float) -> np.ndarray:
        w = np.exp(np.clip(a - t, -745, 700))
        w[~np.isfinite(a)] = 0.0  # a domain with zero prior stays at its lower bound
        return np.clip(w, lower, upper)

    finite = a[np.isfinite(a)]
    lo, hi = float(finite.min() - np.log(max(upper.max(), 1e-300))) - 1.0, float(finite.max()) + 800.0
    for _ in range(200):  # sum(weights(t)) falls as t rises
        mid = 0.5 * (lo + hi)
        if weights(mid).sum() > 1.0:
            lo = mid
        else:
            hi = mid
    w = weights(0.5 * (lo + hi))
    return w / w.sum()


def _fill_greedy(coef: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """With no KL term the problem is a linear program: fill the best domains first."""
    w = lower.copy()
    left = 1.0 - w.sum()
    for i in np.argsort(coef, kind="stable"):
        add = min(upper[i] - w[i], left)
        w[i] += add
        left -= add
    return w


def evidence_bounds(X: np.ndarray, bounds: Bounds, mode: str, names: list[str],
                    fixed: list[int] = ()) -> tuple[Bounds, list[str]]:
    """The bounds narrowed to where the runs give evidence, and warnings.

    Domains in `fixed` (no run varied them) are held at their one value whatever the mode; with
    mode "range" every other weight stays within [least, most] the runs gave it. Where that range
    and the configured bounds do not meet, the configured bounds win for that domain (and a
    warning says the recommendation there is an extrapolation)."""
    if mode not in TRUST_REGIONS:
        raise MixoptError(f"trust region '{mode}' is not one of {', '.join(TRUST_REGIONS)}", "use range or none")
    lo, hi = X.min(axis=0), X.max(axis=0)
    lo = np.where(lo < LOW_EDGE, 0.0, lo)  # a domain the runs took down to ~0 is covered down to 0
    keep = np.zeros(X.shape[1], bool)
    keep[list(fixed)] = True
    if mode == "range":
        keep[:] = True
    lower = np.where(keep, np.maximum(bounds.lower, lo), bounds.lower)
    upper = np.where(keep, np.minimum(bounds.upper, hi), bounds.upper)
    warns = []
    clash = np.flatnonzero(lower > upper + 1e-12)
    if clash.size:
        lower[clash], upper[clash] = bounds.lower[clash], bounds.upper[clash]
        j = clash[0]
        warns.append(f"{clash.size} domain(s) have bounds outside the range the runs covered (first: {names[j]}, "
                     f"runs {lo[j]:.4g}..{hi[j]:.4g}): there the recommendation extrapolates")
    if lower.sum() > 1 + 1e-9 or upper.sum() < 1 - 1e-9:  # the box met the bounds only outside the simplex
        return bounds, warns + ["the runs' range and the bounds leave no mixture in common: the recommendation "
                                "is held to the bounds alone and extrapolates"]
    reason = tuple("evidence" if u < b - 1e-12 else r for u, b, r in zip(upper, bounds.upper, bounds.upper_reason))
    return Bounds(lower, upper, reason), warns


def binding_constraints(w: np.ndarray, bounds: Bounds, configured: Bounds | None = None) -> list[str]:
    """For each domain: 'min', 'max', 'repetition', 'evidence' (the trust region) or '' (interior);
    `configured` (the bounds before the trust region) tells a configured minimum from the runs' least."""
    out = []
    base = configured.lower if configured is not None else bounds.lower
    for wi, lo, hi, why, lo0 in zip(w, bounds.lower, bounds.upper, bounds.upper_reason, base):
        if hi - lo > AT_BOUND and wi >= hi - AT_BOUND and why != "none":
            out.append(why)
        elif lo > 0 and wi <= lo + AT_BOUND:
            out.append("min" if lo <= lo0 + AT_BOUND else "evidence")
        else:
            out.append("")
    return out
