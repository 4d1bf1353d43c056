"""Fits across scales: a table whose runs were trained at several model sizes (and/or token
counts) fits one joint law in (mixture, size, tokens), and the recommendation is solved at a
target size larger than any run (`fit --runs ... --scale-column N --at-scale 1e9`).

Per metric, with n = ln(N / N_min) and t = ln(D / D_min) (the smallest run's size and tokens):

    L(w, N, D) = w . e + exp(w . a - alpha n) + exp(w . b - beta t)

w . e is the loss the mixture tends to as the model and data grow; the exp terms are what a
finite model (data) adds, each with its own dependence on the mixture, shrinking as a power of
N (D). This is the additive form of Shukor et al. 2025 ("Scaling Laws for Optimal Data
Mixtures": L = E(h) + A(h)/N^alpha + B(h)/D^beta), with E linear and A, B log-linear in the
mixture. Because the terms shrink at different rates, the best mixture moves with the size:
a small run alone can point the wrong way.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import least_squares

from mixopt.errors import MixoptError
from mixopt.fit.families.base import fold_indices
from mixopt.fit.families.scaling import ScalingLaw
from mixopt.fit.optimize import (
    binding_constraints,
    check_feasible,
    evidence_bounds,
    solve_optimum,
)
from mixopt.fit.regress import (
    CrossValidation,
    _scored,
    spearman,
)
from mixopt.fit.swarm import FitSettings, Swarm, check_swarm, flat_domains

FAR = 100.0  # a target size this many times the largest run's is a long extrapolation: say so


LAW_RIDGE = 0.05  # pulls each mixture vector (a, b, m) towards flat, as loglinear's ridge does (regress.py)


def _split(theta: np.ndarray, d: int, tokens: bool):
    """The additive layout [e, a, (b), ln alpha, (ln beta), (m)] as (e, a, b, rates, m); b, m None if absent.
    The rates are kept finite (alpha <= e^5): an overflowing one times the smallest size's ln 0 was NaN."""
    k = 2 if tokens else 1
    base = (2 + k - 1) * d
    return (theta[:d], theta[d:2 * d], theta[2 * d:3 * d] if tokens else None, np.exp(np.clip(theta[base:base + k], -20.0, 5.0)),
            theta[base + k:] if len(theta) > base + k else None)


def _law(theta: np.ndarray, X: np.ndarray, n: np.ndarray, t: np.ndarray | None) -> np.ndarray:
    e, a, b, rates, m = _split(theta, X.shape[1], t is not None)
    out = X @ e + np.exp(np.clip(X @ a - rates[0] * n, -50, 50))
    if t is not None:
        out = out + np.exp(np.clip(X @ b - rates[1] * t, -50, 50))
    if m is not None:
        out = out + np.exp(np.clip(X @ m, -50, 50))
    return out


FORMS = ("additive", "pooled")  # the law's forms `fit` cross-validates (see _expand)


def _expand(theta: np.ndarray, d: int, form: str, tokens: bool) -> np.ndarray:
    """A form's parameters in the additive layout [e, a, (b), ln alpha, (ln beta), (m)]. additive:
    each finite-size term depends on the mixture (Shukor et al.), so the best mixture moves with
    size. pooled: one mixture effect for every size, w . e + exp(w . m) (the shape of the swarm's
    own loglinear/law fits: a linear w . e alone cannot follow the curvature between a vertex and
    the mixtures, which is what made the pooled law fail CV on the demo's corpora), plus a size
    offset (a = c x 1: rows sum to 1, so w . a = c): the runs of all sizes pooled, the best mixture
    the same at every size. Fewer parameters: it wins where the larger runs are too few to say how
    the mixture effect moves."""
    if form == "additive":
        return theta
    k = 2 if tokens else 1
    consts, rates, m = theta[d:d + k], theta[d + k:d + 2 * k], theta[d + 2 * k:]
    return np.r_[theta[:d], *[np.full(d, c) for c in consts], rates, m]


def fit_law(X: np.ndarray, y: np.ndarray, n: np.ndarray, t: np.ndarray | None,
            start: np.ndarray | None = None, form: str = "additive") -> np.ndarray:
    """theta in the additive layout (pooled: its own, see _expand) by least squares with a ridge on
    the mixture vectors (LAW_RIDGE: without it a mixture measured once, e.g. a vertex, leaves its
    coefficient free and a fold that holds it out runs away: CV R^2 < -1000 on the demo's
    corpora), from a flat start or `start` (in the additive layout)."""
    d, k = X.shape[1], 2 if t is not None else 1
    sd = max(float(y.std()), 1e-6)
    if start is None:
        e0 = np.linalg.lstsq(X, y, rcond=None)[0] - (0.5 if form == "additive" else 1.0) * sd
        c0 = np.log(sd if form == "additive" else 0.5 * sd)
        a0 = np.full(d, c0) if form == "additive" else np.array([c0])
        start = np.r_[e0, *[a0] * k, [np.log(0.3)] * k, [] if form == "additive" else np.full(d, c0)]
    else:
        e, a, b, rates, m = _split(start, d, t is not None)
        vecs = [a] if t is None else [a, b]
        if form == "additive":
            start = np.r_[e, *vecs, np.log(rates)]
        else:
            m = np.full(d, np.log(0.5 * sd)) if m is None else m
            start = np.r_[e, [v.mean() for v in vecs], np.log(rates), m]
    flat = d + k * (d if form == "additive" else 1)  # where the rates start in the form's own layout

    def residuals(th):
        full = _expand(th, d, form, t is not None)
        vecs = [th[d + j * d:d + (j + 1) * d] for j in range(k)] if form == "additive" else [th[flat + k:]]
        return np.r_[_law(full, X, n, t) - y, *[LAW_RIDGE * (v - v.mean()) for v in vecs]]

    res = least_squares(residuals, start, method="trf", max_nfev=60 * (len(start) + 1))
    return _expand(res.x, d, form, t is not None)


def held_out_largest(X: np.ndarray, y: np.ndarray, n: np.ndarray, t: np.ndarray | None, start: np.ndarray,
                     form: str) -> np.ndarray:
    """Predictions for each run of the largest size by the law fit without that run (the other runs
    of its size kept): whether the law predicts a new proxy at the size the decision is made. (Fitting
    without the whole largest size cannot: with two sizes its rate is then undetermined.)"""
    big = np.flatnonzero(n == n.max())
    out = np.empty(len(big))
    for j, i in enumerate(big):
        keep = np.setdiff1d(np.arange(len(y)), [i])
        th = fit_law(X[keep], y[keep], n[keep], None if t is None else t[keep], start, form)
        out[j] = _law(th, X[i:i + 1], n[i:i + 1], None if t is None else t[i:i + 1])[0]
    return out


def _at(theta: np.ndarray, d: int, n_star: float, t_star: float | None) -> np.ndarray:
    """The law at one size, in families/scaling.py's layout."""
    e, a, b, rates, m = _split(theta, d, t_star is not None)
    tail = [] if m is None else m
    if t_star is None:
        return np.r_[e, a, np.full(d, -50.0), rates[0], 0.0, n_star, 0.0, tail]
    return np.r_[e, a, b, rates[0], rates[1], n_star, t_star, tail]


def size_warnings(X: np.ndarray, y: np.ndarray, N: np.ndarray, held: np.ndarray, scale: str) -> list[str]:
    """The law fit without the largest size (two sizes: without each of its runs in turn; `held`: its
    predictions of those runs) should rank them at least as well as the next size's own measurements
    of the same mixtures do; if not, the law adds error across sizes, not signal. Judged on the mixtures trained at both sizes (at least 3)."""
    big = np.flatnonzero(N == N.max())
    below = N[N < N.max()].max()
    small = np.flatnonzero(N == below)
    pairs = []
    for k, i in enumerate(big):  # the same mixture at the size below: weights within rounding
        d = np.abs(X[small] - X[i]).sum(axis=1)
        if d.min() <= 1e-6:
            pairs.append((k, small[int(np.argmin(d))]))
    if len(pairs) < 3:
        return []
    k, j = map(np.array, zip(*pairs))
    law, naive = spearman(held[k], y[big[k]]), spearman(y[j], y[big[k]])
    if not np.isfinite(naive) or (np.isfinite(law) and law >= naive):
        return []
    without = f"each {scale}={N.max():g} run in turn" if len(np.unique(N)) == 2 else f"{scale}={N.max():g}"
    return [f"the scaling law fit without {without} ranks those runs worse (Spearman {law:.3f} over "
            f"{len(pairs)} mixtures) than the {scale}={below:g} runs' own measurements of the same mixtures do "
            f"({naive:.3f}): across sizes the law adds error, not signal; compare with a fit of the largest size's "
            "runs alone"]


def fit_scaled(swarm: Swarm, settings: FitSettings, scale: str, at_scale: float, tokens: str | None = None,
               at_tokens: float | None = None, forms: tuple[str, ...] = FORMS):
    """(Recommendation, model at the target size) for a table with a size column (and a tokens column):
    each of `forms` cross-validated, the one with the best CV R^2 kept (candidates: "scaling" is the
    additive form, "scaling: pooled" the pooled one; rec.law names the pick)."""
    from mixopt.fit.recommend import PULLED_IN, Recommendation, fit_warnings, widened

    if tokens is not None and at_tokens is None:
        raise MixoptError("--tokens-column needs --at-tokens: the target run's tokens", "e.g. --at-tokens 1e11")
    if not (at_scale > 0) or (at_tokens is not None and not at_tokens > 0):
        raise MixoptError("--at-scale and --at-tokens must be positive numbers", "e.g. --at-scale 1e9")
    names, X, n_runs = swarm.domains, swarm.X, len(swarm.keys)
    warns = check_swarm(swarm)
    check_feasible(swarm.bounds, names)
    N = swarm.covariates[scale]
    if len(np.unique(N)) < 2:
        raise MixoptError(f"every run has the same {scale} ({N[0]:g}): a law across sizes needs at least two",
                          "add runs at another size, or fit without --scale-column")
    n, n_star = np.log(N / N.min()), float(np.log(at_scale / N.min()))
    t = t_star = None
    if tokens is not None:
        D = swarm.covariates[tokens]
        t, t_star = np.log(D / D.min()), float(np.log(at_tokens / D.min()))
    y = swarm.y

    form = forms[0]

    def fit_all(idx, start=None, how=None):
        return {m: fit_law(X[idx], v[idx], n[idx], None if t is None else t[idx],
                           None if start is None else start[m], how or form)
                for m, v in swarm.metrics.items() if m in swarm.terms}

    def predict(thetas, idx):
        return sum(a * _law(thetas[m], X[idx], n[idx], None if t is None else t[idx]) for m, a in swarm.terms.items())

    everything = np.arange(n_runs)
    tests = fold_indices(n_runs, settings.cv_folds, settings.seed)
    candidates, fits = {}, {}
    for how in forms:
        fits[how] = fit_all(everything, how=how)
        oof = np.empty(n_runs)
        for test in tests:
            oof[test] = predict(fit_all(np.setdiff1d(everything, test), fits[how], how), test)
        candidates["scaling" if how == "additive" else f"scaling: {how}"] = _scored(oof, y, tests)
    score = {how: candidates["scaling" if how == "additive" else f"scaling: {how}"] for how in forms}
    form = max(forms, key=lambda h: (np.nan_to_num(score[h].r2, nan=-np.inf), -forms.index(h)))
    full, cv = fits[form], score[form]
    big = N == N.max()
    if len(np.unique(N)) > 2:  # the sizes below determine the rate: the whole largest size held out
        held = predict(fit_all(np.flatnonzero(~big)), np.flatnonzero(big))
        how = "held out"
    else:  # with two sizes the rate needs some of the larger one's runs: each held out in turn
        held = sum(a * held_out_largest(X, swarm.metrics[m], n, t, full[m], form) for m, a in swarm.terms.items())
        how = "runs held out one at a time"
    candidates[f"scaling, {scale}={N.max():g} {how}"] = CrossValidation(
        spearman(held, y[big]), float(1 - ((held - y[big]) ** 2).sum() / max(((y[big] - y[big].mean()) ** 2).sum(), 1e-300)),
        1, held)
    d = len(names)
    model = ScalingLaw(dict(swarm.terms), {m: _at(th, d, n_star, t_star) for m, th in full.items()})
    flat = flat_domains(X)
    trust, trust_warns = evidence_bounds(X, swarm.bounds, settings.trust_region, names, flat)
    warns += trust_warns
    w = solve_optimum(model, swarm.prior, trust, settings.kl_weight, settings.seed, settings.sampler)
    free = None
    if settings.trust_region != "none":
        loose = evidence_bounds(X, swarm.bounds, "none", names, flat)[0]
        free = solve_optimum(model, swarm.prior, loose, settings.kl_weight, settings.seed, settings.sampler)
        free = free if np.abs(free - w).sum() >= PULLED_IN else None
    if at_scale > FAR * N.max():
        warns.append(f"the target {scale}={at_scale:g} is {at_scale / N.max():.0f}x the largest run's: a long "
                     "extrapolation of the law")
    warns += fit_warnings(cv, "scaling", n_runs, d - len(flat))
    warns += size_warnings(X, y, N, held, scale)
    weights_ci = predicted_ci = None
    if settings.bootstrap and cv.r2 > 0:
        rng = np.random.default_rng([settings.seed, 11])
        ws, preds = [], []
        for _ in range(settings.bootstrap):
            idx = rng.integers(0, n_runs, n_runs)
            m = ScalingLaw(dict(swarm.terms),
                           {k: _at(th, d, n_star, t_star) for k, th in fit_all(idx, full).items()})
            ws.append(solve_optimum(m, swarm.prior, trust, settings.kl_weight, settings.seed, settings.sampler))
            preds.append(float(m.predict(w)[0]))
        q = [50 * (1 - settings.ci), 100 - 50 * (1 - settings.ci)]
        weights_ci = widened(np.percentile(np.array(ws), q, axis=0).T, w)
        predicted_ci = widened(np.percentile(preds, q), float(model.predict(w)[0]))
    at = f"{scale}={at_scale:g}" + (f", {tokens}={at_tokens:g}" if tokens else "")
    binding = ["held" if j in flat else b for j, b in enumerate(binding_constraints(w, trust, swarm.bounds))]
    rec = Recommendation(
        domains=names, weights=w, prior=swarm.prior, available=None, binding=binding,
        predicted=float(model.predict(w)[0]), predicted_prior=float(model.predict(swarm.prior)[0]),
        best_run=float(y[big].min()), cv=cv, candidates=candidates, model="scaling", runs=n_runs,
        objective=f"{swarm.objective} at {at}", fit_key="", weights_ci=weights_ci,
        predicted_ci=None if predicted_ci is None else tuple(map(float, predicted_ci)),
        bootstrap=settings.bootstrap if weights_ci is not None else 0, ci=settings.ci, warnings=tuple(warns),
        reliable=bool(cv.r2 > 0), trust_region=settings.trust_region,
        trust_bounds=np.column_stack([trust.lower, trust.upper]), unconstrained=free,
        predicted_unconstrained=None if free is None else float(model.predict(free)[0]), law=form)
    return rec, model
