"""The recommended mixture: the best predicted score under bounds, repetition limits and a
KL(w || prior) penalty that keeps a linear model from collapsing onto one vertex."""

from __future__ import annotations

import numpy as np

from scipy.optimize import minimize

from .design import Bounds
from .errors import MixoptError

AT_BOUND = 1e-9
TINY = 1e-12  # weights are floored here inside log()


def solve_optimum(model, prior: np.ndarray, bounds: Bounds, kl_weight: float) -> np.ndarray:
    """The mixture minimizing predicted objective + kl_weight x KL(w || prior) within the bounds."""
    if model.kind == "linear":
        return solve_linear_kl(model.linear_coef(), prior, bounds, kl_weight)
    return solve_convex_kl(model, prior, bounds, kl_weight)


def solve_convex_kl(model, prior: np.ndarray, bounds: Bounds, kl_weight: float) -> np.ndarray:
    """SLSQP on a convex objective (loglinear terms are convex, KL is convex): the optimum is global.
    Started from the exact solution of the model's linearization at the prior."""
    upper = np.where(prior > 0, bounds.upper, bounds.lower)  # KL forbids weight where the prior is 0
    safe_prior = np.maximum(prior, TINY)

    def f(w):
        kl = np.sum(np.where(w > 0, w * np.log(np.maximum(w, TINY) / safe_prior), 0.0))
        return float(model.predict(w)[0]) + kl_weight * kl

    def grad(w):
        return model.gradient(w) + kl_weight * (np.log(np.maximum(w, TINY) / safe_prior) + 1.0)

    box = Bounds(bounds.lower, upper, bounds.upper_reason)
    w0 = solve_linear_kl(model.gradient(prior), prior, box, max(kl_weight, 1e-3))
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


def binding_constraints(w: np.ndarray, bounds: Bounds) -> list[str]:
    """For each domain: 'min', 'max', 'repetition' or '' (interior)."""
    out = []
    for wi, lo, hi, why in zip(w, bounds.lower, bounds.upper, bounds.upper_reason):
        if hi - lo > AT_BOUND and wi >= hi - AT_BOUND and why != "none":
            out.append(why)
        elif lo > 0 and wi <= lo + AT_BOUND:
            out.append("min")
        else:
            out.append("")
    return out
