"""`mixopt verify`: train proxies on the recommended mixture and the natural prior, and compare what
they measure with what the fit predicted."""

from __future__ import annotations

from dataclasses import dataclass, replace

from mixopt.config.load import read_yaml
from mixopt.config.runtime import Runtime
from mixopt.config.schema import Experiment
from mixopt.core.mixtures import Mixture, read_mixtures
from mixopt.errors import MixoptError
from mixopt.fit.recommend import experiment_swarm, fit_swarm
from mixopt.fit.reuse import model_space
from mixopt.sweep.reeval import record_scores
from mixopt.sweep.run import run_sweep
from mixopt.sweep.store import Store


@dataclass(frozen=True)
class Verification:
    objective: str
    predicted: float  # the fit's prediction at the recommendation
    measured: float  # a proxy trained on it
    prior_predicted: float
    prior_measured: float
    rank: int  # 1 = better than every run of the swarm
    runs: int
    best_run: float
    trained: int  # proxies trained for this check (0 when they already existed)
    space: str = "full"  # the fit's coordinates: "full", or the reduced ones of mixture reuse (see below)

    def to_json(self) -> dict:
        return self.__dict__.copy()


def verify_recommendation(exp: Experiment, runtime: Runtime = Runtime()) -> Verification:
    """Train (or reuse) proxies on the written recommendation and on the prior; compare with the fit.

    After a data change under `design.after_change: reuse` the fit is the reduced one (the unchanged
    domains as one virtual domain): predictions are that model's, the rank is among the runs it was
    fitted on, and the prior's prediction is at the prior's point of the reduced space (the unchanged
    domains' prior mass at the virtual proportions), while its proxy trains on the exact prior."""
    if not exp.optimal_path.is_file():
        raise MixoptError(f"no recommendation at {exp.optimal_path}", "run `mixopt fit CONFIG` first")
    doc = read_yaml(exp.optimal_path)
    plan, swarm, settings, _ = experiment_swarm(exp, runtime)
    if not isinstance(doc, dict) or list(doc.get("weights") or {}) != swarm.domains:
        raise MixoptError(f"{exp.optimal_path} is for other domains than the config", "run `mixopt fit CONFIG` again")
    w = read_mixtures(exp.optimal_path, swarm.domains)[2][0]
    # The swarm as the fit saw it, before the verification runs join the store.
    fitted, space, _ = model_space(plan, swarm)
    _, model = fit_swarm(fitted, replace(settings, bootstrap=0))
    y = fitted.y
    at = (lambda x: x) if space is None else (lambda x: space.reduce(x)[0])
    extra = [Mixture("verify:recommended", tuple(w)), Mixture("verify:prior", tuple(plan.prior))]
    report = run_sweep(exp, runtime, extra=extra, design=False)
    if report.failed:
        raise MixoptError(f"a verification run failed: {report.failed[0][1]}", "see the error above and rerun")
    with Store(plan.workspace.db_path) as store:
        scores = record_scores(plan, store)
    measured = scores[plan.key(extra[0].weights)]
    prior_measured = scores[plan.key(extra[1].weights)]
    return Verification(
        objective=swarm.objective, predicted=float(model.predict(at(w))[0]), measured=float(measured),
        prior_predicted=float(model.predict(at(plan.prior))[0]), prior_measured=float(prior_measured),
        rank=int((y < measured).sum()) + 1, runs=len(y), best_run=float(y.min()), trained=report.trained,
        space="full" if space is None else "mixture reuse: " + ", ".join(fitted.domains))


@dataclass(frozen=True)
class ScaleCheck:
    """The recommendation, the prior and the best swarm runs trained again at a larger proxy size."""

    objective: str
    size: str  # the swarm's proxy size
    at_size: str  # the size trained for this check
    mixtures: list[dict]  # name, weights, predicted (the fit, at the swarm's size), small and large measured
    spearman_scales: float  # rank correlation, small vs large measured, over mixtures measured at both
    spearman_predicted: float  # the fit's predictions vs large measured, over every mixture here
    recommended_rank: int  # 1 = the recommendation is the best of these mixtures at the larger size
    trained: int

    def to_json(self) -> dict:
        out = self.__dict__.copy()
        for k in ("spearman_scales", "spearman_predicted"):
            out[k] = out[k] if out[k] == out[k] else None  # NaN (too few mixtures) is null in JSON
        return out


def verify_at_size(exp: Experiment, size: str, top: int = 3, runtime: Runtime = Runtime()) -> ScaleCheck:
    """Train (or reuse) proxies of `size` on the recommendation, the prior and the `top` best swarm
    runs; compare their order there with the swarm's size (measured) and with the fit (predicted)."""
    import numpy as np

    from mixopt.fit.regress import spearman
    from mixopt.proxy.model import SIZES
    from mixopt.sweep.plan import load_plan

    if size not in SIZES:
        raise MixoptError(f"--size {size}: not a proxy size", f"sizes: {', '.join(SIZES)}")
    if size == exp.proxy.size:
        raise MixoptError(f"--size {size} is the swarm's own proxy size", "pick a larger one, or leave out --size")
    if top < 0:
        raise MixoptError(f"--top {top}: must be 0 or more", "e.g. --top 3")
    if not exp.optimal_path.is_file():
        raise MixoptError(f"no recommendation at {exp.optimal_path}", "run `mixopt fit CONFIG` first")
    plan, swarm, settings, _ = experiment_swarm(exp, runtime)
    if list((read_yaml(exp.optimal_path) or {}).get("weights") or {}) != swarm.domains:
        raise MixoptError(f"{exp.optimal_path} is for other domains than the config", "run `mixopt fit CONFIG` again")
    w = read_mixtures(exp.optimal_path, swarm.domains)[2][0]
    _, model = fit_swarm(swarm, replace(settings, bootstrap=0))
    y = swarm.y
    best = np.argsort(y, kind="stable")[:top]
    named = [("recommended", w), ("prior", plan.prior)] + [(f"run {swarm.keys[i][:12]}", swarm.X[i]) for i in best]
    big = exp.model_copy(update={"proxy": exp.proxy.model_copy(update={"size": size})})
    extra = [Mixture(f"verify:{size}:{n}", tuple(map(float, x))) for n, x in named]
    report = run_sweep(big, runtime, extra=extra, design=False)
    if report.failed:
        raise MixoptError(f"a verification run at {size} failed: {report.failed[0][1]}", "see the error above and rerun")
    big_plan = load_plan(big, extra, design=False)
    with Store(plan.workspace.db_path) as store:
        large = record_scores(big_plan, store)
        small = record_scores(plan, store)
    rows = []
    for (name, x), m in zip(named, extra):
        rows.append({"name": name, "weights": dict(zip(swarm.domains, map(float, x))),
                     "predicted": float(model.predict(np.asarray(x))[0]),
                     "measured": small.get(plan.key(m.weights)),
                     "measured_at_size": float(large[big_plan.key(m.weights)])})
    both = [r for r in rows if r["measured"] is not None]
    at = np.array([r["measured_at_size"] for r in rows])
    return ScaleCheck(
        objective=swarm.objective, size=exp.proxy.size, at_size=size, mixtures=rows,
        spearman_scales=spearman(np.array([r["measured"] for r in both]), np.array([r["measured_at_size"] for r in both]))
        if len(both) >= 3 else float("nan"),
        spearman_predicted=spearman(np.array([r["predicted"] for r in rows]), at) if len(rows) >= 3 else float("nan"),
        recommended_rank=int((at < at[0]).sum()) + 1, trained=report.trained)
