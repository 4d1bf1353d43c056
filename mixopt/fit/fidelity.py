"""One fit across proxy sizes: the runs of every size the store holds (design.fidelities, `verify
--size`) fit one law over (size, [tokens,] mixture) (fit/scaling.py: Shukor et al.'s additive form
and a pooled one, CV picking), and the recommendation is for optimum.target_size (parameters).

Reported besides: the noise at each size (from its replicates), how well the cheap swarm's fit
ranks what the larger proxies measured (the cross-scale rank correlation), and how far the larger
proxies moved the answer (the swarm's own recommendation against the joint one)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from mixopt.config.runtime import Runtime
from mixopt.config.schema import Experiment
from mixopt.core.keys import content_hash
from mixopt.fit.families.base import MixtureModel
from mixopt.fit.noise import collapse_replicates
from mixopt.fit.regress import spearman
from mixopt.fit.swarm import FitSettings, Swarm
from mixopt.sweep.fidelity import params_of, size_plans
from mixopt.sweep.plan import Plan
from mixopt.sweep.reeval import evaluate_stored, record_scores
from mixopt.sweep.results import training_table
from mixopt.sweep.store import Store

SCALE, TOKENS = "params", "tokens"  # the joint table's covariate columns
NEITHER = "neither: no fit cross-validates"  # info["used"] when the law and the swarm's own fit both fail CV


def size_swarms(exp: Experiment, plan: Plan, swarm: Swarm, runtime: Runtime, reeval: bool) -> list[dict]:
    """Each proxy size with finished runs under the current suite, smallest first: label, params,
    tokens, its runs (replicates averaged) and the noise its replicates measured. The swarm's own
    size is `swarm` (already evaluated by experiment_swarm)."""
    out = []
    with Store(plan.workspace.db_path) as store:
        for i, (label, p) in enumerate(size_plans(exp)):
            if i == 0:
                s = swarm
            else:
                if reeval and not store.readonly:  # a larger proxy is re-evaluated on a new suite like the swarm
                    evaluate_stored(p, store, runtime)
                    record_scores(p, store)
                X, metrics, keys = training_table(p, store)
                if not keys:
                    continue
                done = p.runs(store, "done")
                seed, how = {r.key: r.replicate for r in done}, {r.key: r.measured_as or "" for r in done}
                s = Swarm(swarm.domains, X, metrics, swarm.terms, keys, swarm.prior, swarm.bounds, swarm.objective,
                          swarm.available, replicate=np.array([seed.get(k, 0) for k in keys], dtype=int),
                          trained_as=tuple(how.get(k, "") for k in keys))
            c = collapse_replicates(s, s.replicate)
            out.append({"size": label, "params": params_of(p), "tokens": p.spec.tokens, "swarm": c.swarm,
                        "runs": len(s.keys), "mixtures": len(c.swarm.keys),
                        "noise_sd": None if c.noise is None else c.noise.sd_total})
    return sorted(out, key=lambda z: z["params"])


def joint_swarm(sizes: list[dict]) -> Swarm:
    """The sizes' tables stacked, with each run's parameters (and tokens) as covariates."""
    first = sizes[0]["swarm"]
    metrics = sorted(set.intersection(*(set(z["swarm"].metrics) for z in sizes)))
    cov = {SCALE: np.concatenate([np.full(len(z["swarm"].keys), float(z["params"])) for z in sizes]),
           TOKENS: np.concatenate([np.full(len(z["swarm"].keys), float(z["tokens"])) for z in sizes])}
    return replace(first, X=np.vstack([z["swarm"].X for z in sizes]),
                   metrics={m: np.concatenate([z["swarm"].metrics[m] for z in sizes]) for m in metrics},
                   keys=[k for z in sizes for k in z["swarm"].keys], covariates=cov, replicate=None, trained_as=None)


def cross_scale(sizes: list[dict], single_model: MixtureModel) -> list[dict]:
    """For each larger size: Spearman of the swarm fit's predictions vs that size's measurements (its
    mixtures), and of the swarm's measurements vs that size's on the mixtures measured at both."""
    base = sizes[0]["swarm"]
    out = []
    for z in sizes[1:]:
        s = z["swarm"]
        pred = single_model.predict(s.X)
        pairs = [(int(np.abs(base.X - x).sum(1).argmin()), j) for j, x in enumerate(s.X)
                 if np.abs(base.X - x).sum(1).min() <= 1e-6]
        small = np.array([base.y[i] for i, _ in pairs])
        large = np.array([s.y[j] for _, j in pairs])
        out.append({"size": z["size"], "mixtures": len(s.keys), "shared": len(pairs),
                    "spearman_predicted": _rho(pred, s.y), "spearman_measured": _rho(small, large)})
    return out


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _rho(a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 3:
        return None
    r = spearman(np.asarray(a, float), np.asarray(b, float))
    return float(r) if np.isfinite(r) else None


def fit_across_sizes(exp: Experiment, plan: Plan, swarm: Swarm, settings: FitSettings, single, single_model,
                     fit_key: str, runtime: Runtime, reeval: bool, against=()):
    """(recommendation, model, table fitted) at optimum.target_size, or None with one size only (the
    swarm's own fit stands; said on `runtime`). The law's prediction at each of `against` ((name,
    weights)) is in the fidelity info's "against" (the swarm's own fit has them in its gains)."""
    from mixopt.fit.scaling import fit_scaled

    sizes = size_swarms(exp, plan, swarm, runtime, reeval)
    if len(sizes) < 2:
        runtime.say(f"note: only proxies of {sizes[0]['size']} have finished runs: the fit is at that size, not "
                    "across sizes (`mixopt sweep CONFIG` trains the larger fidelities)")
        return None
    joint = joint_swarm(sizes)
    target = float(exp.optimum.target_size or sizes[-1]["params"])
    with_tokens = len({z["tokens"] for z in sizes}) > 1
    at_tokens = float(exp.optimum.target_tokens or max(z["tokens"] for z in sizes)) if with_tokens else None
    rec, model = fit_scaled(joint, settings, SCALE, target, TOKENS if with_tokens else None, at_tokens)
    moved = float(np.abs(single.weights - rec.weights).sum())
    lost = float(model.predict(single.weights)[0] - model.predict(rec.weights)[0])
    top = sizes[-1]
    proxy_ci = None
    if rec.predicted_ci is not None and top["noise_sd"] is not None:  # one new proxy: the largest size's noise
        from scipy.stats import norm

        half = (rec.predicted_ci[1] - rec.predicted_ci[0]) / 2
        z = float(norm.ppf(0.5 + settings.ci / 2))
        spread = float(np.hypot(half, z * top["noise_sd"]))
        proxy_ci = [rec.predicted - spread, rec.predicted + spread]
    info = {
        "target_size": target, "target_tokens": at_tokens, "law": rec.law,
        "law_cv": {k: {"spearman": _finite(v.spearman), "r2": _finite(v.r2)} for k, v in rec.candidates.items()},
        "sizes": [{k: v for k, v in z.items() if k != "swarm"} for z in sizes],
        "cross_scale": cross_scale(sizes, single_model),
        "single_fidelity": {"size": sizes[0]["size"], "weights": dict(zip(single.domains, map(float, single.weights))),
                            "predicted_at_its_size": single.predicted, "model": single.model,
                            "reliable": single.reliable},
        "moved_l1": moved,
        # the joint law's objective at the swarm's own recommendation less at the joint one (>= 0: what
        # following the cheap proxies alone would cost at the target size, as the law sees it)
        "predicted_difference": lost,
        "new_proxy_interval": proxy_ci,
        "noise_at_target": "the largest size's replicates" if proxy_ci else None,
        "against": {name: float(model.predict(np.asarray(x, float))[0]) for name, x in against},
    }
    if not rec.reliable and single.reliable:
        # A law that predicts held-out runs worse than their mean must not replace a fit that does:
        # the swarm's own recommendation stands, at its size, and the law's numbers are reported.
        info["used"] = f"the {sizes[0]['size']} swarm's own fit"
        why = (f"the law across sizes does not cross-validate (CV R^2 {rec.cv.r2:.3g} for the {rec.law} form): the "
               f"recommendation is the {sizes[0]['size']} swarm's own fit, for its size, not for "
               f"{target:g} parameters; add runs at the larger sizes")
        info["law_recommendation"] = dict(zip(rec.domains, map(float, rec.weights)))
        return replace(single, fidelity=info, warnings=(*single.warnings, why)), single_model, None
    if not rec.reliable:
        # Neither predicts held-out runs better than their mean: neither may carry the decision. The
        # swarm's own recommendation is shown with its own verdict ("cannot tell": it is unreliable),
        # never the law's at the target (which once replaced it and left the verdict to chance).
        info["used"] = NEITHER
        why = (f"neither the law across sizes (CV R^2 {rec.cv.r2:.3g} for the {rec.law} form) nor the "
               f"{sizes[0]['size']} swarm's own fit (CV R^2 {single.honest_cv.r2:.3g}) predicts held-out runs better "
               f"than their mean: neither is trusted, and the verdict stays \"cannot tell\"; add runs at every size")
        info["law_recommendation"] = dict(zip(rec.domains, map(float, rec.weights)))
        return replace(single, fidelity=info, warnings=(*single.warnings, why)), single_model, None
    info["used"] = "the law across sizes"
    key = content_hash({"single": fit_key, "runs": sorted(joint.keys), "target": [target, at_tokens]})
    return replace(rec, fit_key=key, fidelity=info), model, joint
