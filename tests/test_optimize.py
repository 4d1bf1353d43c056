import numpy as np
import pytest
from scipy.optimize import minimize

from mixopt.core.mixtures import Bounds
from mixopt.fit.optimize import binding_constraints, solve_linear_kl, solve_optimum
from mixopt.fit.regress import cross_validate, fit_model

RNG = np.random.default_rng(0)


def _bounds(lo, hi, why=None):
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    return Bounds(lo, hi, tuple(why or ["max"] * len(lo)))


def _brute(coef, prior, b, lam):
    def f(w):
        return coef @ w + lam * np.sum(w * np.log(np.maximum(w, 1e-15) / prior))
    best = None
    for s in range(20):
        w0 = RNG.dirichlet(np.ones(len(prior)))
        r = minimize(f, np.clip(w0, b.lower, b.upper), method="SLSQP", bounds=list(zip(b.lower, b.upper)),
                     constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}], options={"ftol": 1e-14})
        if best is None or r.fun < best.fun:
            best = r
    return best.x, f


@pytest.mark.parametrize("lam", [0.01, 0.1, 1.0])
def test_linear_kl_matches_a_generic_solver_and_respects_bounds(lam):
    coef, prior = np.array([3.0, 2.5, 2.9, 3.4]), np.array([0.4, 0.05, 0.3, 0.25])
    b = _bounds([0.05, 0, 0, 0], [1, 0.2, 0.6, 1])
    w = solve_linear_kl(coef, prior, b, lam)
    ref, f = _brute(coef, prior, b, lam)
    assert abs(w.sum() - 1) < 1e-12 and b.contains(w)
    assert f(w) <= f(ref) + 1e-9


def test_no_kl_fills_best_domains_and_binding_is_reported():
    b = _bounds([0.1, 0, 0], [1, 0.3, 1], ["none", "repetition", "max"])
    w = solve_linear_kl(np.array([3.0, 1.0, 2.0]), np.ones(3) / 3, b, 0.0)
    assert np.allclose(w, [0.1, 0.3, 0.6])
    assert binding_constraints(w, b) == ["min", "repetition", ""]


def test_loglinear_recovers_a_known_law_and_its_optimum():
    # Synthetic swarm from a known per-domain law; the fit must rank unseen mixtures and find its optimum.
    d = 4
    t_true = np.array([[-6, 0.5, 0.3, 0.2], [0.4, -5, 0.2, 0.4], [0.1, 0.3, -4, 0.5], [0.3, 0.2, 0.6, -3.0]])
    floors = np.array([1.0, 1.5, 2.0, 0.8])

    def law(W):
        return {f"m{j}": floors[j] + np.exp(W @ t_true[j]) for j in range(d)}

    X = RNG.dirichlet(np.ones(d) * 0.7, size=60)
    metrics = {k: v + RNG.normal(0, 0.005, len(v)) for k, v in law(X).items()}
    terms = {f"m{j}": 0.25 for j in range(d)}
    cv = cross_validate("loglinear", X, metrics, terms, 5, 0)
    assert cv.spearman > 0.97
    model = fit_model("loglinear", X, metrics, terms)
    prior = np.ones(d) / d
    b = _bounds(np.zeros(d), np.ones(d))
    w = solve_optimum(model, prior, b, kl_weight=0.0 + 1e-6)

    def true_obj(w):
        return sum(0.25 * v for v in law(np.atleast_2d(w)).values())[0]

    ref, _ = _brute_true(true_obj, d)
    assert true_obj(w) - true_obj(ref) < 0.01  # within 0.01 of the true law's optimum
    assert np.abs(w - ref).sum() < 0.1


def _brute_true(f, d):
    best = None
    for s in range(10):
        r = minimize(f, RNG.dirichlet(np.ones(d)), method="SLSQP", bounds=[(0, 1)] * d,
                     constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}], options={"ftol": 1e-14})
        if best is None or r.fun < best.fun:
            best = r
    return best.x, best.fun


def test_linear_ranks_a_linear_truth():
    X = RNG.dirichlet(np.ones(5), size=40)
    y = X @ np.array([3.0, 2.0, 2.5, 4.0, 3.3]) + RNG.normal(0, 0.01, 40)
    cv = cross_validate("linear", X, {"y": y}, {"y": 1.0}, 5, 0)
    assert cv.spearman > 0.99 and cv.r2 > 0.98


def test_simulated_mixtures_lie_in_the_bounded_simplex():
    from mixopt.core.mixtures import sample_mixtures

    prior = np.array([0.7, 0.2, 0.05, 0.05])
    b = Bounds(np.array([0.0, 0.1, 0.0, 0.0]), np.array([0.5, 1.0, 0.3, 0.3]), ("max", "none", "max", "max"))
    W = sample_mixtures(prior, b, 20_000, np.random.default_rng(0))
    assert np.allclose(W.sum(axis=1), 1, atol=1e-9)
    assert np.all(W >= b.lower - 1e-12) and np.all(W <= b.upper + 1e-12)
    assert W[:, 0].max() > 0.49 and W[:, 2].min() < 0.01  # the projection reaches the bounds, not only the centre
