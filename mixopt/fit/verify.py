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

    def to_json(self) -> dict:
        return self.__dict__.copy()


def verify_recommendation(exp: Experiment, runtime: Runtime = Runtime()) -> Verification:
    """Train (or reuse) proxies on the written recommendation and on the prior; compare with the fit."""
    if not exp.optimal_path.is_file():
        raise MixoptError(f"no recommendation at {exp.optimal_path}", "run `mixopt fit CONFIG` first")
    doc = read_yaml(exp.optimal_path)
    plan, swarm, settings, _ = experiment_swarm(exp, runtime)
    if not isinstance(doc, dict) or list(doc.get("weights") or {}) != swarm.domains:
        raise MixoptError(f"{exp.optimal_path} is for other domains than the config", "run `mixopt fit CONFIG` again")
    w = read_mixtures(exp.optimal_path, swarm.domains)[2][0]
    # The swarm as the fit saw it, before the verification runs join the store.
    _, model = fit_swarm(swarm, replace(settings, bootstrap=0))
    y = swarm.y
    extra = [Mixture("verify:recommended", tuple(w)), Mixture("verify:prior", tuple(plan.prior))]
    report = run_sweep(exp, runtime, extra=extra, design=False)
    if report.failed:
        raise MixoptError(f"a verification run failed: {report.failed[0][1]}", "see the error above and rerun")
    with Store(plan.workspace.db_path) as store:
        scores = record_scores(plan, store)
    measured = scores[plan.key(extra[0].weights)]
    prior_measured = scores[plan.key(extra[1].weights)]
    return Verification(
        objective=swarm.objective, predicted=float(model.predict(w)[0]), measured=float(measured),
        prior_predicted=float(model.predict(plan.prior)[0]), prior_measured=float(prior_measured),
        rank=int((y < measured).sum()) + 1, runs=len(y), best_run=float(y.min()), trained=report.trained)
