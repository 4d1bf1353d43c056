"""`mixopt verify`: train proxies on the recommended mixture and the natural prior, and compare what
they measure with what the fit predicted."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from mixopt.config.runtime import Runtime
from mixopt.config.schema import Experiment
from mixopt.config.yaml_file import read_yaml
from mixopt.core.keys import trained_as
from mixopt.core.mixtures import Mixture, read_mixtures
from mixopt.errors import MixoptError
from mixopt.fit.from_store import experiment_swarm
from mixopt.fit.noise import collapse_replicates
from mixopt.fit.recommend import fit_swarm
from mixopt.fit.reuse import model_space
from mixopt.fit.verdict import paired_gain
from mixopt.sweep.reeval import record_scores
from mixopt.sweep.plan import load_plan
from mixopt.sweep.run import run_sweep, sweep_measurement
from mixopt.sweep.store import Store


@dataclass(frozen=True)
class Measured:
    """One mixture trained with K seeds for the check."""

    name: str
    predicted: float  # the verified fit's prediction
    values: tuple[float, ...]  # measured objective, seed by seed (replicate 0, 1, ...)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def sd(self) -> float | None:
        return float(np.std(self.values, ddof=1)) if len(self.values) > 1 else None

    def to_json(self) -> dict:
        return {"name": self.name, "predicted": self.predicted, "measured": list(self.values), "mean": self.mean,
                "sd": self.sd}


@dataclass(frozen=True)
class Verification:
    objective: str
    predicted: float  # the verified fit's prediction at the recommendation
    measured: float  # mean over the seeds of the proxies trained on it
    prior_predicted: float
    prior_measured: float
    rank: int  # 1 = better than every run the fit saw (replicated runs: their mean)
    runs: int
    best_run: float
    trained: int  # proxies trained for this check (0 when they already existed)
    space: str = "full"  # the fit's coordinates: "full", or the reduced ones of mixture reuse (see below)
    seeds: int = 1
    mixtures: tuple[Measured, ...] = ()  # the recommendation, the prior, then --against
    interval: tuple[float, float] | None = None  # the fit's interval for the seed-mean at the recommendation
    proxy_interval: tuple[float, float] | None = None  # ... for one new proxy
    level: float = 0.9
    fit_verdict: str | None = None  # what `fit` said against the prior
    # the measured paired difference prior - recommendation over the seeds (positive: better)
    gain: float = 0.0
    gain_interval: tuple[float, float] | None = None  # t interval at `level` (two seeds or more)
    p_better: float | None = None
    warnings: tuple[str, ...] = ()  # the verified fit's
    size: str | None = None  # after a fit across sizes: the size verified at, and why (else the swarm's)

    @property
    def inside(self) -> bool | None:
        """Whether what was measured falls in the fit's interval: the seed-mean's (several seeds), one
        proxy's (a single seed)."""
        ci = self.interval if self.seeds > 1 else self.proxy_interval
        return None if ci is None else bool(ci[0] <= self.measured <= ci[1])

    @property
    def verdict(self) -> str:
        """better / worse / cannot tell, from the measured paired differences alone."""
        if self.gain_interval is None:
            return "cannot tell"
        lo, hi = self.gain_interval
        return "better" if lo > 0 else "worse" if hi < 0 else "cannot tell"

    @property
    def agrees(self) -> bool | None:
        """Whether the fit's verdict holds up: never 'better' when the measured mean is worse."""
        if self.fit_verdict is None:
            return None
        if self.fit_verdict == "better":
            return self.gain > 0
        return True

    def to_json(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "mixtures"}
        out["mixtures"] = [m.to_json() for m in self.mixtures]
        return {**out, "inside_interval": self.inside, "verdict": self.verdict, "agrees_with_fit": self.agrees}


def verify_recommendation(exp: Experiment, runtime: Runtime = Runtime(), seeds: int = 1,
                          against: list[tuple[str, np.ndarray]] | tuple = ()) -> Verification:
    """Train (or reuse) proxies on the written recommendation, the prior and each `against`
    mixture, with `seeds` seeds each (replicate 0 is the sweep's own seed; replicate k the same
    seed for every mixture, so differences are paired); compare with the fit that made the
    recommendation: the one saved in fits/ and named by optimal.yaml, never a refit that would
    include these runs.

    After a data change under `design.after_change: reuse` the fit is the reduced one (the unchanged
    domains as one virtual domain): predictions are that model's, and the prior's is at the prior's
    point of the reduced space (the unchanged domains' prior mass at the virtual proportions), while
    its proxy trains on the exact prior."""
    from mixopt.fit.external import load_fit

    if seeds < 1:
        raise MixoptError(f"--seeds {seeds}: must be 1 or more", "e.g. --seeds 3")
    if not exp.optimal_path.is_file():
        raise MixoptError(f"no recommendation at {exp.optimal_path}", "run `mixopt fit CONFIG` first")
    doc = read_yaml(exp.optimal_path)
    _check_domains(exp, doc)
    plan, swarm, _, _ = experiment_swarm(exp, runtime)
    if not isinstance(doc, dict) or list(doc.get("weights") or {}) != swarm.domains:
        raise MixoptError(f"{exp.optimal_path} is for other domains than the config", "run `mixopt fit CONFIG` again")
    fit_json = doc.get("fit")
    if not fit_json or not Path(fit_json).is_file():
        raise MixoptError(f"{exp.optimal_path} names no saved fit (fits/<key>/fit.json) to verify",
                          "run `mixopt fit CONFIG` on a writable workspace first")
    meta, model = load_fit(Path(fit_json).parent)
    w = read_mixtures(exp.optimal_path, swarm.domains)[2][0]
    fitted, space, _ = model_space(plan, swarm)
    at = (lambda x: np.atleast_2d(x)) if space is None else (lambda x: space.reduce(x)[0])
    named = [("recommended", np.asarray(w, float)), ("prior", np.asarray(plan.prior, float)), *against]
    extra = [Mixture(f"verify:{name}", tuple(map(float, x)), r) for name, x in named for r in range(seeds)]
    where, size_note = verify_size(exp, meta)
    if size_note:
        runtime.say(size_note)
    if line := _other_kind(swarm.trained_as, sweep_measurement(where, runtime)):
        runtime.say(line)
    report = run_sweep(where, runtime, extra=extra, design=False)
    if report.failed:
        raise MixoptError(f"a verification run failed: {report.failed[0][1]}", "see the error above and rerun")
    plan = replace(plan, measured_as=sweep_measurement(exp, runtime))  # the keys the sweep trained under
    measured_plan = plan if where is exp else replace(load_plan(where, extra, design=False),
                                                      measured_as=sweep_measurement(where, runtime))
    with Store(plan.workspace.db_path) as store:
        scores = record_scores(measured_plan, store)
    rows = []
    for name, x in named:
        values = tuple(float(scores[measured_plan.key(tuple(map(float, x)), r)]) for r in range(seeds))
        rows.append(Measured(name, float(model.predict(at(x))[0]), values))
    rec, prior = rows[0], rows[1]
    y = np.asarray(meta.get("measured") or swarm.y, float)
    diffs = np.array(prior.values) - np.array(rec.values)  # paired by seed
    level = float(meta.get("settings", {}).get("ci", 0.9))
    gain_ci, p_better = paired_gain(diffs, level)
    decision = meta.get("decision") or {}
    interval = (doc.get("interval") or {}).get("predicted_objective")
    return Verification(
        objective=swarm.objective, predicted=rec.predicted, measured=rec.mean, prior_predicted=prior.predicted,
        prior_measured=prior.mean, rank=int((y < rec.mean).sum()) + 1, runs=len(y), best_run=float(y.min()),
        trained=report.trained, space="full" if space is None else "mixture reuse: " + ", ".join(fitted.domains),
        seeds=seeds, mixtures=tuple(rows), interval=tuple(interval) if interval else None,
        proxy_interval=tuple(doc["new_proxy_objective"]) if doc.get("new_proxy_objective") else None, level=level,
        fit_verdict=decision.get("verdict"), gain=float(diffs.mean()), gain_interval=gain_ci, p_better=p_better,
        warnings=tuple(doc.get("warnings") or ()), size=None if where is exp else size_note)


def _other_kind(fitted: tuple[str, ...] | None, verify_as: str) -> str:
    """A warning line when the verification proxies train another way (device, precision) than any of
    the fitted runs did: their numbers differ by that too, not only by the fit's error. '' otherwise."""
    kinds = sorted({trained_as(k) for k in fitted or ()})
    mine = trained_as(verify_as)
    if not kinds or mine in kinds:
        return ""
    return (f"warning: the fit's runs trained as {', '.join(kinds)}; these verification proxies train as {mine}, "
            "which changes their numbers beyond the fit's error: pass the sweep's --device and --precision to "
            "verify like for like")


def verify_size(exp: Experiment, meta: dict) -> tuple[Experiment, str | None]:
    """Where `verify` (no --size) trains: after a fit across sizes, at the largest fidelity (the
    trained size nearest the target: the law recommends for optimum.target_size, and a swarm-size proxy
    would test the mixture where it was not chosen for); else at the swarm's size."""
    from mixopt.sweep.fidelity import fidelities

    info = meta.get("fidelity") or {}
    if info.get("used") != "the law across sizes" or not exp.design.fidelities:
        return exp, None
    top = fidelities(exp)[-1]
    return top.exp, (f"verifying at {top.label}, the trained size nearest the target ({info['target_size']:g} "
                     f"parameters) the fit across sizes recommends for; its predictions are the law's at the target, "
                     f"so measured - predicted there includes the step from {top.label} to the target")


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


def _saved_model(exp: Experiment, swarm, settings):
    """The model of the fit optimal.yaml names (fits/<key>/); a refit where it was not saved (a
    read-only workspace)."""
    from mixopt.fit.external import load_fit

    doc = read_yaml(exp.optimal_path) or {}
    if doc.get("fit") and Path(doc["fit"]).is_file():
        return load_fit(Path(doc["fit"]).parent)[1]
    return fit_swarm(swarm, replace(settings, bootstrap=0))[1]


def verify_at_size(exp: Experiment, size: str, top: int = 3, runtime: Runtime = Runtime()) -> ScaleCheck:
    """Train (or reuse) proxies of `size` on the recommendation, the prior and the `top` best swarm
    runs; compare their order there with the swarm's size (measured) and with the fit (predicted)."""
    import numpy as np

    from mixopt.fit.regress import spearman
    from mixopt.proxy.model import SIZES
    from mixopt.sweep.plan import load_plan

    from mixopt.sweep.fidelity import at_size, fidelities

    own = {f.label: f.exp for f in fidelities(exp)[1:]}  # a fidelity's size, a model config's name too
    if size not in SIZES and size not in own:
        raise MixoptError(f"--size {size}: not a proxy size", f"sizes: {', '.join([*SIZES, *own])}")
    if size == fidelities(exp)[0].label:
        raise MixoptError(f"--size {size} is the swarm's own proxy size", "pick a larger one, or leave out --size")
    if top < 0:
        raise MixoptError(f"--top {top}: must be 0 or more", "e.g. --top 3")
    if not exp.optimal_path.is_file():
        raise MixoptError(f"no recommendation at {exp.optimal_path}", "run `mixopt fit CONFIG` first")
    _check_domains(exp, read_yaml(exp.optimal_path))
    plan, swarm, settings, _ = experiment_swarm(exp, runtime)
    if list((read_yaml(exp.optimal_path) or {}).get("weights") or {}) != swarm.domains:
        raise MixoptError(f"{exp.optimal_path} is for other domains than the config", "run `mixopt fit CONFIG` again")
    w = read_mixtures(exp.optimal_path, swarm.domains)[2][0]
    model = _saved_model(exp, swarm, settings)
    swarm = collapse_replicates(swarm, swarm.replicate).swarm  # one row per mixture (replicates averaged)
    y = swarm.y
    named = [("recommended", np.asarray(w, float)), ("prior", np.asarray(plan.prior, float))]
    for i in np.argsort(y, kind="stable"):  # the best runs, each mixture once: never the recommendation again
        if len(named) == top + 2:
            break
        if min(np.abs(x - swarm.X[i]).sum() for _, x in named) > 1e-6:
            named.append((f"run {swarm.keys[i][:12]}", swarm.X[i]))
    big = own.get(size) or at_size(exp, size)
    extra = [Mixture(f"verify:{size}:{n}", tuple(map(float, x))) for n, x in named]
    report = run_sweep(big, runtime, extra=extra, design=False)
    if report.failed:
        raise MixoptError(f"a verification run at {size} failed: {report.failed[0][1]}", "see the error above and rerun")
    big_plan = load_plan(big, extra, design=False, measured_as=sweep_measurement(big, runtime))
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


def _check_domains(exp, doc) -> None:
    """Before anything is evaluated or recorded: a recommendation for other domains is one line, and
    the store is left as it was."""
    if not isinstance(doc, dict) or list(doc.get("weights") or {}) != exp.domain_names:
        raise MixoptError(f"{exp.optimal_path} is for other domains than the config", "run `mixopt fit CONFIG` again")
