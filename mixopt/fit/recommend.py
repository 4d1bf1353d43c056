"""`mixopt fit`: regress the objective on the finished runs, cross-validate every model, solve
the optimum, bootstrap its uncertainty, and write the recommended ratio.

The same core fits our own sweep (from_store.py builds its swarm from the store) and an external
swarm table (external.py); it reads no store itself.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from mixopt import __version__
from mixopt.core.keys import content_hash
from mixopt.core.workspace import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)
from mixopt.errors import MixoptError
from mixopt.fit.families.base import MixtureModel
from mixopt.fit.noise import NoiseModel, collapse_replicates
from mixopt.fit.optimize import (
    binding_constraints,
    check_feasible,
    evidence_bounds,
    penalized_scores,
    simulated_pool,
    solve_by_simulation,
    solve_optimum,
    solve_with_trust_region,
)
from mixopt.fit.regress import (
    CrossValidation,
    candidates_for,
    cross_validate_selection,
    fit_model,
    runs_wanted,
    score_text,
    select_by_cv,
)
from mixopt.fit.swarm import FitSettings, Swarm, check_swarm, flat_domains
from mixopt.fit.verdict import (
    Decision,
    decide,
    gain_against,
    mean_interval,
    model_error,
    proxy_interval,
)

BOOTSTRAP_POOL = 6_000  # simulated mixtures each tree-model replicate scores


@dataclass(frozen=True)
class Recommendation:
    domains: list[str]
    weights: np.ndarray
    prior: np.ndarray
    available: list[int] | None
    binding: list[str]
    predicted: float  # objective predicted at the recommended mixture
    predicted_prior: float  # ... and at the natural prior
    best_run: float  # the best measured objective among the runs
    cv: CrossValidation
    candidates: dict[str, CrossValidation]  # every model's cross-validation, the chosen one too
    model: str
    runs: int
    objective: str
    fit_key: str
    weights_ci: np.ndarray | None = None  # domains x 2: the bootstrap's interval for each weight
    predicted_ci: tuple[float, float] | None = None  # ... for the objective at the recommendation
    bootstrap: int = 0
    ci: float = 0.9
    suspect: tuple[str, ...] = ()  # run keys left out: their checkpoint is missing or damaged
    failed: tuple[tuple[str, str], ...] = ()  # (run key, why) of this design's failed runs, left out
    warnings: tuple[str, ...] = ()  # what a reader must know before trusting the numbers
    reliable: bool = True  # False: the chosen model's CV R^2 <= 0 (then no interval is given)
    trust_region: str = "none"
    trust_bounds: np.ndarray | None = None  # domains x 2: where the recommendation was allowed to go
    unconstrained: np.ndarray | None = None  # the optimum without the trust region, when it lies outside
    predicted_unconstrained: float | None = None
    decision: Decision | None = None  # the intervals for the mean and for one new proxy, and the verdict
    best_run_proxies: int = 1  # proxies (seeds) behind best_run: a single one is a noise-selected minimum
    bootstrap_ci: tuple[float, float] | None = None  # the bootstrap's own interval at the recommendation
    # mixture reuse: the unchanged domains, whose proportions among themselves the fit held fixed (their
    # weights_ci rows are the virtual domain's interval split at those proportions, not their own)
    held_fixed: tuple[str, ...] = ()
    law: str | None = None  # a fit across sizes (scaling.py): the law's form CV picked, additive or pooled
    fidelity: dict | None = None  # a fit across proxy sizes (fit/fidelity.py): sizes, cross-scale ranks, moves

    @property
    def noise(self) -> NoiseModel | None:
        return self.decision.noise if self.decision else None
    # auto's nested CV: the selection repeated inside each fold, its oof in the runs' order; the
    # honest figure for a picked model (cv is the pick's own CV, which chose it). None: the user fixed it.
    selection_cv: CrossValidation | None = None

    @property
    def honest_cv(self) -> CrossValidation:
        """The cross-validation to judge the fit by: the nested one when auto picked the model."""
        return self.selection_cv if self.selection_cv is not None else self.cv

    @property
    def pulled_in(self) -> float:
        """L1 distance from the unconstrained optimum to the recommendation (0 when it was inside)."""
        return 0.0 if self.unconstrained is None else float(np.abs(self.unconstrained - self.weights).sum())

    def held_share(self) -> tuple[float, float] | None:
        """The interval of the held-fixed domains' share together (the virtual domain's), if any."""
        if not self.held_fixed or self.weights_ci is None:
            return None
        rows = [i for i, d in enumerate(self.domains) if d in self.held_fixed]
        return float(self.weights_ci[rows, 0].sum()), float(self.weights_ci[rows, 1].sum())

    def weight_intervals(self, digits: int | None = None) -> dict[str, list[float] | None]:
        """Each domain's interval; None for a domain held fixed by reuse (no interval of its own)."""
        r = (lambda x: round(float(x), digits)) if digits is not None else float
        return {d: None if d in self.held_fixed else [r(a), r(b)] for d, (a, b) in zip(self.domains, self.weights_ci)}

    def held_json(self, digits: int | None = None) -> dict | None:
        share = self.held_share()
        if share is None:
            return None
        r = (lambda x: round(float(x), digits)) if digits is not None else float
        return {"domains": list(self.held_fixed), "share_interval": [r(share[0]), r(share[1])],
                "note": "mixture reuse held these domains' proportions fixed: their weights move only with "
                        "their share together"}

    def to_json(self) -> dict:
        ci = None
        if self.weights_ci is not None:
            ci = {"level": self.ci, "replicates": self.bootstrap, "weights": self.weight_intervals(),
                  "predicted": list(self.predicted_ci),
                  **({"held_fixed_by_reuse": self.held_json()} if self.held_fixed else {})}
        return {
            "weights": dict(zip(self.domains, map(float, self.weights))),
            "interval": ci,
            "predicted": self.predicted,
            "predicted_at_prior": self.predicted_prior,
            "best_run": self.best_run,
            "best_run_proxies": self.best_run_proxies,
            "decision": {**self.decision.to_json(), "reliable": self.reliable} if self.decision else None,
            "cv": {"spearman": _num(self.cv.spearman), "r2": _num(self.cv.r2), "folds": self.cv.folds},
            "cv_nested": None if self.selection_cv is None else {
                "spearman": _num(self.selection_cv.spearman), "r2": _num(self.selection_cv.r2),
                "folds": self.selection_cv.folds},
            "model": self.model,
            "candidates": {k: {"spearman": _num(v.spearman), "r2": _num(v.r2), **({"members": list(v.members)} if v.members else {})}
                           for k, v in self.candidates.items()},
            "objective": self.objective,
            "runs": self.runs,
            "prior": dict(zip(self.domains, map(float, self.prior))),
            "available_tokens": dict(zip(self.domains, self.available)) if self.available else None,
            "binding": dict(zip(self.domains, self.binding)),
            "fit_key": self.fit_key,
            "suspect_runs": list(self.suspect),
            "failed_runs": [{"key": k, "error": e} for k, e in self.failed],
            "warnings": list(self.warnings),
            "reliable": self.reliable,
            "ensemble_members": list(self.cv.members) or None,
            "trust_region": {
                "mode": self.trust_region,
                "bounds": None if self.trust_bounds is None else
                {d: [float(a), float(b)] for d, (a, b) in zip(self.domains, self.trust_bounds)},
                "unconstrained_weights": None if self.unconstrained is None else
                dict(zip(self.domains, map(float, self.unconstrained))),
                "predicted_unconstrained": self.predicted_unconstrained,
                "pulled_in_l1": self.pulled_in,
            },
            **({"law": self.law} if self.law else {}),
            **({"fidelity": self.fidelity} if self.fidelity else {}),
        }


def _num(x: float) -> float | None:
    """JSON has no NaN or infinity: an undefined score is null."""
    return float(x) if np.isfinite(x) else None


LOW_SPEARMAN = 0.5  # below this CV Spearman the fit ranks unseen runs poorly: say so
PULLED_IN = 0.05  # L1 distance from the unconstrained optimum worth reporting (below: simulation noise)
# How much worse than a run the recommendation may be predicted before fit says so, in units of the
# fit's CV error (RMSE of held-out predictions): against the model's prediction at a run, half of it
# (a tree model's optimum is the mean of its 100 best simulated mixtures: RegMix's 512 runs put it
# 0.005 above the best run's prediction, at CV RMSE 0.06); against a measured score, all of it (the
# best of n noisy runs is lucky by about its noise).
WORSE_THAN_RUN = 0.5
WORSE_THAN_MEASURED = 1.0
AT_BOUND = 1e-6  # a weight this close to its bound (or to 0) sits on it


def fit_swarm(swarm: Swarm, settings: FitSettings, fit_key: str | None = None,
              against: list[tuple[str, np.ndarray]] | tuple = ()) -> tuple[Recommendation, MixtureModel]:
    """Measure the seed noise and average replicates, check the swarm, cross-validate the
    candidates, fit the chosen model on every mixture, solve within the runs' evidence, bootstrap,
    and judge the recommendation against the prior (and each of `against`: (name, weights))."""
    from threadpoolctl import threadpool_limits

    # The matrices here are at most runs x runs (a few hundred): one BLAS thread is fastest, and
    # several spin against each other on a busy machine (a GP fit of 60 runs: 0.12 s vs 2.7 s).
    with threadpool_limits(1, user_api="blas"):
        return _fit_swarm(swarm, settings, fit_key, against)


def _fit_swarm(swarm: Swarm, settings: FitSettings, fit_key: str | None,
               against=()) -> tuple[Recommendation, MixtureModel]:
    n, names = len(swarm.keys), swarm.domains
    if n < len(names) + 2:
        raise MixoptError(f"only {n} runs; fitting {len(names)} domains and cross-validating needs at least "
                          f"{len(names) + 2}", "train or add more runs")
    warns = check_swarm(swarm)  # on every run: "only k distinct mixtures among n runs" names both
    collapsed = collapse_replicates(swarm, swarm.replicate)
    swarm = collapsed.swarm
    n = len(swarm.keys)
    check_feasible(swarm.bounds, names)
    y = swarm.y
    kinds = candidates_for(n, len(names), len(swarm.metrics))
    if settings.model not in ("auto", "ensemble", *kinds):
        kinds = (*kinds, settings.model)
    pick, cvs = select_by_cv(kinds, swarm.X, swarm.metrics, swarm.terms, settings.cv_folds, settings.seed)
    if settings.model == "ensemble" and "ensemble" not in cvs:
        raise MixoptError("no ensemble: fewer than two models predict held-out runs better than their mean",
                          "pick one model, or add runs")
    kind = pick if settings.model == "auto" else settings.model
    cv = cvs[kind]
    # The pick's own CV chose it, so it flatters it (0.667 vs 0.396 held out on small tables): auto is
    # judged, warned on and given intervals by the nested CV. A fixed model's plain CV is already honest.
    selection_cv = None if settings.model != "auto" else cross_validate_selection(
        cvs, swarm.X, swarm.metrics, swarm.terms, settings.cv_folds, settings.seed)
    honest = selection_cv or cv
    model = fit_model(kind, swarm.X, swarm.metrics, swarm.terms, settings.seed, members=cv.members)
    flat = flat_domains(swarm.X)
    trust, trust_warns = evidence_bounds(swarm.X, swarm.bounds, settings.trust_region, names, flat)
    warns += trust_warns
    # Where the model alone would go (still holding domains no run varied), to say how far the
    # trust region pulled the recommendation in.
    loose = evidence_bounds(swarm.X, swarm.bounds, "none", names, flat)[0] if settings.trust_region != "none" else None
    w, free, pool = solve_with_trust_region(model, swarm.prior, trust, loose, settings.kl_weight, settings.seed,
                                            settings.sampler)
    if free is not None and np.abs(free - w).sum() < PULLED_IN:
        free = None
    warns += fit_warnings(honest, kind, n, len(names) - len(flat), nested=selection_cv is not None)
    warns += recommendation_warnings(model, w, swarm, honest, trust, settings.kl_weight)
    unreliable = not (honest.r2 > 0)
    weights_ci = predicted_ci = boot = None
    points = np.vstack([w, swarm.prior] + [np.asarray(x, float) for _, x in against])
    if settings.bootstrap and not unreliable:
        weights_ci, predicted_ci, boot = _bootstrap(swarm, settings, model, w, trust, pool, points)
    pred_points = model.predict(points)
    # intervals calibrated on the honest held-out residuals: auto's nested CV, a fixed model's own
    decision = judge(swarm, settings, honest, collapsed.noise, w, pred_points, boot, predicted_ci, not unreliable,
                     [name for name, _ in against], points, collapsed.counts)
    best = int(np.argmin(y))
    warns += choice_warnings(settings.model, cv, cvs, float(model.predict(w)[0]), float(collapsed.measured[best]))
    binding = binding_constraints(w, trust, swarm.bounds)
    binding = ["held" if j in flat else b for j, b in enumerate(binding)]
    rec = Recommendation(
        domains=names, weights=w, prior=swarm.prior, available=swarm.available,
        binding=binding, predicted=float(model.predict(w)[0]),
        predicted_prior=float(pred_points[1]), best_run=float(collapsed.measured[best]), cv=cv,
        candidates=cvs, model=kind, runs=n, objective=swarm.objective,
        fit_key=fit_key or content_hash({"keys": swarm.keys, "X": swarm.X.tolist(), "y": y.tolist(),
                                         "settings": settings.__dict__}),
        weights_ci=weights_ci, predicted_ci=decision.mean if weights_ci is not None else None,
        bootstrap_ci=predicted_ci, decision=decision, best_run_proxies=int(collapsed.counts[best]),
        bootstrap=settings.bootstrap if weights_ci is not None else 0,
        ci=settings.ci, warnings=tuple(warns), reliable=not unreliable, trust_region=settings.trust_region,
        trust_bounds=np.column_stack([trust.lower, trust.upper]), unconstrained=free,
        predicted_unconstrained=None if free is None else float(model.predict(free)[0]), selection_cv=selection_cv)
    return rec, model


DECISION_RUNS = 8  # fewer runs in the better half: the recommendation's error is calibrated on every run


def measured_at(swarm: Swarm, x: np.ndarray, noise: NoiseModel | None, counts: np.ndarray | None = None):
    """(seed-mean, its standard error) where a fitted row is the mixture `x` itself, else None. The
    error is the noise between mixtures at one seed over the row's runs: the seed shift was taken
    out of every row alike, so it does not separate the row from a prediction. Unmeasured noise:
    the row counts as measured without error beyond what the fit's held-out error covers."""
    d = np.abs(swarm.X - np.asarray(x)).sum(1)
    i = int(d.argmin())
    if d[i] > 1e-6:
        return None
    k = 1 if counts is None else int(counts[i])
    return float(swarm.y[i]), (noise.paired_sd / math.sqrt(k) if noise is not None else 0.0)


def judge(swarm: Swarm, settings: FitSettings, cv: CrossValidation, noise: NoiseModel | None, w: np.ndarray,
          preds: np.ndarray, boot: np.ndarray | None, boot_ci, reliable: bool, against_names: list[str],
          points: np.ndarray | None = None, counts: np.ndarray | None = None) -> Decision:
    """The intervals at the recommendation `w` (preds[0]) and its gains over the prior (preds[1]) and
    each `against` mixture (preds[2:]); `boot`: the bootstrap refits' predictions there."""
    level = settings.ci
    resid = swarm.y - cv.oof
    h_all = model_error(resid, level, noise)[0]  # anywhere in the swarm: what `predict` widens by
    # At the recommendation: calibrated where decisions are made, on the runs held-out predicted
    # in the better half (the optimum is predicted low, and that half carries the selection's own
    # optimism), not on the pure-domain corners whose misfit is 3x larger (the demo: 0.20 vs 0.085).
    good = cv.oof <= np.median(cv.oof)
    h, sd = model_error(resid[good] if good.sum() >= DECISION_RUNS else resid, level, noise)
    mean = mean_interval(float(preds[0]), boot_ci, h, noise.offset_se if noise else 0.0, level)
    proxy = proxy_interval(float(preds[0]), mean, noise.sd_at(w) if noise else None, level)
    gains = [gain_against(name, float(preds[0]), float(preds[i + 1]), None if boot is None else boot[:, 0],
                          None if boot is None else boot[:, i + 1], h, level,
                          None if points is None else measured_at(swarm, points[i + 1], noise, counts))
             for i, name in enumerate(["prior", *against_names])]
    verdict, line, step = decide(gains, reliable, h, noise, level, len(swarm.domains))
    return Decision(level, mean, proxy, sd, h_all, noise, noise.ceiling_r2(swarm.y) if noise else None, tuple(gains),
                    verdict, line, step)


def fit_warnings(cv: CrossValidation, kind: str, n: int, varying: int, nested: bool = False) -> list[str]:
    """What a reader must know before trusting the numbers: a fit worse than the mean, a poor
    ranking, a swarm too small for the model. `nested`: cv is auto's nested CV (its pick judged)."""
    out = []
    who, how = (f"auto (picking {kind})", "nested CV") if nested else (kind, "CV")
    if not (cv.r2 > 0):
        out.append(f"{who} predicts held-out runs no better than their mean ({how} R^2 {score_text(cv.r2)}): the runs "
                   "do not show how the mixture moves this objective; the recommendation is unsupported and no "
                   "interval is given. Add runs, or pick an objective the mixture changes")
    elif not (cv.spearman >= LOW_SPEARMAN):
        out.append(f"{who} ranks held-out runs poorly ({how} Spearman {cv.spearman:.3f}): treat the recommendation "
                   "as a guess")
    wanted = runs_wanted(kind, varying, cv.members)
    if n < wanted:
        out.append(f"the swarm is small for {kind}: {n} runs for {varying} varying domains, about {wanted} wanted; "
                   "add runs (design.runs) or expect a noisier recommendation")
    return out


def choice_warnings(setting: str, cv: CrossValidation, cvs: dict, predicted: float, best_run: float) -> list[str]:
    """Warnings fit prints and the report shows alike: a fixed fit.model that another model out-ranks,
    and a prediction at the recommendation worse than the best measured run."""
    out = []
    best = max(cvs, key=lambda k: cvs[k].spearman)
    if setting != "auto" and cvs[best].spearman > cv.spearman + 0.1:
        out.append(f"fit.model is {setting} (Spearman {cv.spearman:.2f}) while {best} ranks held-out runs better "
                   f"({cvs[best].spearman:.2f}): consider fit.model: auto")
    if predicted > best_run:
        out.append(f"the predicted objective at the recommendation ({predicted:.4f}) is worse than the best measured "
                   f"run ({best_run:.4f}): the fit found nothing better than a run you have")
    return out


def recommendation_warnings(model: MixtureModel, w: np.ndarray, swarm: Swarm, cv: CrossValidation, allowed,
                            kl_weight: float = 0.0) -> list[str]:
    """Where the recommendation itself is doubtful, by the fit's own numbers: a run within the allowed
    bounds that the model predicts better, a measured run better than the recommendation's
    prediction by more than the CV error, and a corner of the simplex that no run is near."""
    out = []
    p = float(model.predict(w)[0])
    y = swarm.y
    rmse = float(np.sqrt(np.mean((cv.oof - y) ** 2))) if np.isfinite(cv.oof).all() else float("inf")
    why = " (the KL penalty trades predicted objective for closeness to the prior)" if kl_weight > 0 else ""
    inside = np.flatnonzero(((swarm.X >= allowed.lower - 1e-9) & (swarm.X <= allowed.upper + 1e-9)).all(axis=1))
    if inside.size:
        pred = model.predict(swarm.X[inside])
        i = int(np.argmin(pred))
        if p > pred[i] + WORSE_THAN_RUN * rmse:
            out.append(f"the model predicts run {swarm.keys[inside[i]]} ({pred[i]:.4g}) better than its own "
                       f"recommendation ({p:.4g}) by more than half its CV error ({rmse:.3g}){why}: that run's "
                       "mixture is at least as good a choice")
    best = int(np.argmin(y))
    if p > y[best] + WORSE_THAN_MEASURED * rmse:
        out.append(f"the best measured run ({swarm.keys[best]}, {y[best]:.4g}) beats the recommendation's predicted "
                   f"objective ({p:.4g}) by more than the fit's CV error ({rmse:.3g}){why}: train the recommendation "
                   "before preferring it to that run")
    held = flat_domains(swarm.X)  # no run varied them: where they sit is no corner
    edge = [swarm.domains[j] for j in range(len(w)) if j not in held and (
            w[j] <= max(swarm.bounds.lower[j], 0.0) + AT_BOUND or w[j] >= swarm.bounds.upper[j] - AT_BOUND)]
    if edge:
        sparsest = float(_nearest_other_l1(swarm.X).max())  # the largest distance from a run to its nearest other
        near = float(np.abs(swarm.X - w).sum(axis=1).min())
        if near > sparsest:
            out.append(f"the recommendation sits at a corner no run is near: L1 {near:.3f} to the nearest run, "
                       f"farther than any run is from its own nearest ({sparsest:.3f}), with "
                       f"{', '.join(edge[:2])}{f' and {len(edge) - 2} more' if len(edge) > 2 else ''} at a bound; the model "
                       "extrapolates "
                       "there: train it (or runs near it) before trusting it")
    return out


def _nearest_other_l1(X: np.ndarray) -> np.ndarray:
    """Each run's L1 distance to its nearest other run, in row blocks (runs x runs x domains at once
    would be 0.5 GB at 2,000 runs x 17 domains)."""
    step = max(1, 2_000_000 // max(X.size, 1))
    out = np.empty(len(X))
    for i in range(0, len(X), step):
        D = np.abs(X[i:i + step, None, :] - X[None, :, :]).sum(axis=2)
        D[np.arange(len(D)), np.arange(i, i + len(D))] = np.inf
        out[i:i + step] = D.min(axis=1)
    return out


def refit_resampled(swarm: Swarm, model: MixtureModel, rng: np.random.Generator, seed: int) -> MixtureModel:
    """One bootstrap replicate: `model`'s kind refit on the runs drawn with replacement, warm-started from it."""
    n = len(swarm.keys)
    idx = rng.integers(0, n, n)
    return fit_model(model.kind, swarm.X[idx], {k: v[idx] for k, v in swarm.metrics.items()}, swarm.terms, seed,
                     start=model)


def _bootstrap(swarm: Swarm, settings: FitSettings, model: MixtureModel, w: np.ndarray, bounds, scored_pool=None,
               points: np.ndarray | None = None):
    """Refit on runs drawn with replacement and re-solve: percentile intervals for each weight, and
    for the objective predicted at the recommendation `w`, and each replicate's predictions at
    `points` (replicates x points; default: `w` alone). Replicates run on threads (LightGBM
    and BLAS release the GIL); each one's resample is drawn up front, so results do not depend on
    the order they finish in.

    A tree model's replicates re-rank a slice of the main fit's simulated mixtures (`scored_pool`):
    the BOOTSTRAP_POOL / 2 it scored best and as many others at random (scoring all 100k per
    replicate would take ~0.3 s each); a replicate's top mixtures are almost always among the former."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng([settings.seed, 11])
    n = len(swarm.keys)
    draws = [rng.integers(0, n, n) for _ in range(settings.bootstrap)]
    pool = None
    if not model.smooth:
        full, scores = scored_pool if scored_pool is not None else _score_pool(swarm, settings, model, bounds)
        order = np.argsort(scores, kind="stable")
        half = BOOTSTRAP_POOL // 2
        pool = full[np.r_[order[:half], rng.choice(order[half:], max(0, min(half, len(order) - half)), replace=False)]]

    def replicate(idx):
        m = fit_model(model.kind, swarm.X[idx], {k: v[idx] for k, v in swarm.metrics.items()}, swarm.terms,
                      settings.seed, start=model)
        if m.smooth:
            wi = solve_optimum(m, swarm.prior, bounds, settings.kl_weight, settings.seed, settings.sampler)
        else:
            wi = solve_by_simulation(m, swarm.prior, bounds, settings.kl_weight, pool=pool)
        return wi, m.predict(at)

    at = np.atleast_2d(w if points is None else points)
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as ex:
        out = list(ex.map(replicate, draws))
    ws, preds = [o[0] for o in out], np.array([o[1] for o in out])
    q = [50 * (1 - settings.ci), 100 - 50 * (1 - settings.ci)]
    return (widened(np.percentile(np.array(ws), q, axis=0).T, w),
            widened(np.percentile(preds[:, 0], q), float(model.predict(w)[0])), preds)


def widened(interval: np.ndarray, point) -> np.ndarray | tuple:
    """A percentile interval stretched to hold its point estimate: replicates of a tree model rank a
    sub-pool of the simulated mixtures, so their percentiles can miss the full-pool optimum (seen on
    RegMix: 0.0000 recommended, 0.0005 .. 0.0066 from the replicates). Wider, never beside the point."""
    interval = np.asarray(interval, float)
    if interval.ndim == 1:
        return (float(min(interval[0], point)), float(max(interval[1], point)))
    return np.column_stack([np.minimum(interval[:, 0], point), np.maximum(interval[:, 1], point)])


def _score_pool(swarm: Swarm, settings: FitSettings, model: MixtureModel, bounds):
    full = simulated_pool(swarm.prior, bounds, seed=settings.seed, sampler=settings.sampler)
    return full, penalized_scores(model, swarm.prior, settings.kl_weight, full)


def save_fit(out: Path, swarm: Swarm, settings: FitSettings, rec: Recommendation, model: MixtureModel,
             plots: bool = True) -> None:
    """fit.json (the result, settings and data summary), runs.parquet (the table it was fit on:
    `mixopt predict` refits from it) and, unless disabled, plots."""
    import polars as pl

    table = pl.DataFrame({"key": swarm.keys, **{d: swarm.X[:, i] for i, d in enumerate(swarm.domains)},
                          **{m: v for m, v in swarm.metrics.items()}, **swarm.covariates})
    buf = io.BytesIO()  # in memory, then the atomic writer: fits running at once never share a temp file
    table.write_parquet(buf)
    atomic_write_bytes(out / "runs.parquet", buf.getvalue())
    atomic_write_json(out / "fit.json", {
        **rec.to_json(), "settings": settings.__dict__, "domains": swarm.domains, "terms": swarm.terms,
        "metrics": list(swarm.metrics),  # every metric fit (multitask learns from all, not only the terms)
        "bounds": {"lower": swarm.bounds.lower.tolist(), "upper": swarm.bounds.upper.tolist()},
        "run_keys": swarm.keys, "measured": swarm.y.tolist(), "out_of_fold": rec.cv.oof.tolist(),
        "params": model.coefficients(), "mixopt": __version__})
    if plots:
        from mixopt.fit.plots import plot_fit

        plot_fit(out, swarm, rec, model)


def write_optimal(path: Path, rec: Recommendation, name: str, fit_dir: Path | None,
                  overrides: dict[str, str] | None = None, rounds: dict | None = None,
                  workspace: Path | None = None, record: bool = True) -> None:
    """The recommendation as YAML; `fit` names the fit folder's fit.json when one was written, and the
    settings its command line overrode; `rounds`: `mixopt optimize`'s verdict on the mixture written.
    With `workspace` (an experiment's): its header names it and the workspace records the file, so the
    next fit replaces it and another workspace's does not (from_store.check_beside_config); `record`
    False: a read-only workspace, named in the header and left untouched."""
    doc = {
        "experiment": name,
        "weights": {d: round(float(v), 6) for d, v in zip(rec.domains, rec.weights)},
        "predicted_objective": round(rec.predicted, 6),
        "objective": rec.objective,
        "cv": {"spearman": round(rec.cv.spearman, 4), "r2": round(rec.cv.r2, 4), "folds": rec.cv.folds},
        "cv_nested": None if rec.selection_cv is None else _Flow({"spearman": round(rec.selection_cv.spearman, 4),
                                                                   "r2": round(rec.selection_cv.r2, 4)}),
        "model": rec.model,
        "runs": rec.runs,
        "constraints": {d: b for d, b in zip(rec.domains, rec.binding) if b},
        "trust_region": rec.trust_region,
        "pulled_in_l1": round(rec.pulled_in, 6),
        "warnings": list(rec.warnings),
        "fit": str(fit_dir / "fit.json") if fit_dir else None,
    }
    if overrides:
        doc["overrides"] = _Flow(overrides)  # from the command line, over the config's fit/optimum/domains
    if rec.weights_ci is not None:
        held = rec.held_json(6)
        doc["interval"] = {"level": rec.ci, "bootstrap": rec.bootstrap,
                           "weights": {d: None if v is None else _Pair(v) for d, v in rec.weight_intervals(6).items()},
                           **({"held_fixed_by_reuse": {**held, "domains": _Pair(held["domains"]),
                                                       "share_interval": _Pair(held["share_interval"])}}
                              if held else {}),
                           # the seed-mean (what many seeds would average); one new proxy: new_proxy_objective
                           "predicted_objective": _Pair([round(x, 6) for x in rec.predicted_ci])}
    if rec.fidelity:
        f = rec.fidelity
        doc["across_sizes"] = {
            "target_size": f["target_size"], "law": f["law"], "used": f["used"],
            "sizes": {z["size"]: _Flow({"params": z["params"], "runs": z["runs"], "noise_sd": z["noise_sd"]})
                      for z in f["sizes"]},
            "cross_scale_spearman": {c["size"]: c["spearman_predicted"] for c in f["cross_scale"]},
            "single_fidelity_weights": _Flow({d: round(v, 6) for d, v in f["single_fidelity"]["weights"].items()}),
            "moved_l1": round(f["moved_l1"], 6), "predicted_difference": round(f["predicted_difference"], 6)}
        if f["new_proxy_interval"]:
            doc["new_proxy_objective"] = _Pair([round(x, 6) for x in f["new_proxy_interval"]])
    d = rec.decision
    if d is not None:
        doc["new_proxy_objective"] = _Pair([round(x, 6) for x in d.proxy])
        doc["verdict"] = {"against_prior": d.verdict, "summary": d.line, "next_step": d.next_step,
                          "gains": {g.against: _Flow({"gain": round(g.gain, 6), "interval": [round(g.low, 6),
                                                round(g.high, 6)], "p_better": round(g.p_better, 4)})
                                    for g in d.gains}}
        n = d.noise
        doc["noise"] = None if n is None else _Flow({
            "sd_one_proxy": round(n.sd_total, 6), "sd_within_seed": None if n.sd_within is None else round(n.sd_within, 6),
            "replicated_mixtures": n.mixtures, "proxies": n.proxies})
    if rounds is not None:
        doc["optimize"] = rounds
    verb = "mixopt optimize" if rounds is not None else "mixopt fit"
    header = f"# Recommended mixture for '{name}', written by mixopt {__version__} `{verb}`.\n"
    if workspace is not None:
        header += f"{WORKSPACE_LINE}{os.path.realpath(workspace)}\n"
    atomic_write_text(path, header + yaml.dump(doc, Dumper=_OptimalDumper, sort_keys=False))
    if workspace is not None and record:
        record_written(workspace, path)


WORKSPACE_LINE = "# workspace: "  # the header line of a file written beside the config: whose it is


def record_written(workspace: Path, path: Path) -> None:
    """Record a file written beside the config in the workspace's outputs record (mixopt's to replace)."""
    from mixopt.core.keys import file_sha256
    from mixopt.core.outputs import record_output

    record_output(workspace, Path(os.path.realpath(path)), file_sha256(path))


class _Pair(list):
    """An interval, written on one line ([low, high]): one line per domain, not three."""


class _Flow(dict):
    """A small mapping written on one line."""


class _OptimalDumper(yaml.SafeDumper):
    pass


_OptimalDumper.add_representer(_Pair, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))
_OptimalDumper.add_representer(_Flow, lambda d, v: d.represent_mapping("tag:yaml.org,2002:map", v, flow_style=True))
