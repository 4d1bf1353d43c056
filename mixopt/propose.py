"""`mixopt propose` and `mixopt verify`: close the loop on a fit.

propose: the next mixtures to train, where they most reduce the uncertainty about the optimum.
verify:  train proxies on the recommended mixture and the natural prior, and compare what they
         measure with what the fit predicted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from . import __version__
from .config import Experiment
from .design import Mixture
from .errors import MixoptError
from .optimize import penalized_scores, simulated_pool, solve_optimum
from .recommend import experiment_swarm, fit_swarm, refit_resampled
from .store import Store
from .sweep import Say, record_scores, run_key, run_sweep
from .workspace import atomic_write_text

MIN_REPLICATES = 16  # bootstrap models behind the uncertainty, even when fit.bootstrap is lower
EXPLORATION = 2.0  # lower confidence bound: mean - EXPLORATION x sd of the replicates' predictions


def propose_mixtures(exp: Experiment, n: int, say: Say = print) -> tuple[list[np.ndarray], Path]:
    """n mixtures, each the lowest lower-confidence-bound candidate (optimistic about the objective,
    so it goes where the optimum may be but the fit is unsure) that is at least design.min_distance
    (L1) from every trained run and every earlier pick. Written to <config dir>/<name>.proposed.yaml."""
    plan, swarm, settings, _ = experiment_swarm(exp, say=say)
    rec, model = fit_swarm(swarm, settings)
    rng = np.random.default_rng([exp.seed, 13])
    pool = simulated_pool(swarm.prior, swarm.bounds, n=20_000, seed=exp.seed)
    replicates, optima = [], [rec.weights]
    for _ in range(max(settings.bootstrap, MIN_REPLICATES)):
        m = refit_resampled(swarm, model, rng, exp.seed)
        replicates.append(m)
        if m.smooth:
            optima.append(solve_optimum(m, swarm.prior, swarm.bounds, settings.kl_weight, exp.seed))
    candidates = np.vstack([np.array(optima), pool])
    preds = np.array([penalized_scores(m, swarm.prior, settings.kl_weight, candidates) for m in replicates])
    lcb = preds.mean(axis=0) - EXPLORATION * preds.std(axis=0)
    taken = list(swarm.X)
    picks: list[np.ndarray] = []
    for i in np.argsort(lcb, kind="stable"):
        w = candidates[i]
        if min(np.abs(t - w).sum() for t in taken) < max(exp.design.min_distance, 1e-6):
            continue
        picks.append(w)
        taken.append(w)
        if len(picks) == n:
            break
    if not picks:
        raise MixoptError("every candidate is within design.min_distance of a trained run",
                          "lower design.min_distance to propose closer mixtures")
    out = Path(exp.optimal_path).with_name(f"{exp.name}.proposed.yaml")
    doc = {"mixtures": [{d: round(float(v), 6) for d, v in zip(swarm.domains, w)} for w in picks]}
    header = (f"# {len(picks)} mixtures proposed by mixopt {__version__} `mixopt propose` for '{exp.name}' "
              f"({model.kind} fit on {len(swarm.keys)} runs).\n# Train them: mixopt sweep CONFIG --mixtures {out.name}\n")
    atomic_write_text(out, header + yaml.safe_dump(doc, sort_keys=False))
    return picks, out


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


def verify_recommendation(exp: Experiment, workers: int = 1, progress: bool = True, say: Say = print) -> Verification:
    """Train (or reuse) proxies on the written recommendation and on the prior; compare with the fit."""
    if not exp.optimal_path.is_file():
        raise MixoptError(f"no recommendation at {exp.optimal_path}", "run `mixopt fit CONFIG` first")
    doc = yaml.safe_load(exp.optimal_path.read_text())
    plan, swarm, settings, _ = experiment_swarm(exp, say=say)
    if list(doc.get("weights", {})) != swarm.domains:
        raise MixoptError(f"{exp.optimal_path} is for other domains than the config", "run `mixopt fit CONFIG` again")
    w = np.array([doc["weights"][d] for d in swarm.domains], dtype=float)
    w /= w.sum()
    # The swarm as the fit saw it, before the verification runs join the store.
    _, model = fit_swarm(swarm, settings.__class__(**{**settings.__dict__, "bootstrap": 0}))
    y = swarm.y
    extra = [Mixture("verify:recommended", tuple(w)), Mixture("verify:prior", tuple(plan.prior))]
    report = run_sweep(exp, workers, progress, say, extra=extra, design=False)
    if report.failed:
        raise MixoptError(f"a verification run failed: {report.failed[0][1]}", "see the error above and rerun")
    with Store(plan.workspace.db_path) as store:
        scores = record_scores(plan, store)
    measured = scores[run_key(plan.context, extra[0].weights)]
    prior_measured = scores[run_key(plan.context, extra[1].weights)]
    return Verification(
        objective=swarm.objective, predicted=float(model.predict(w)[0]), measured=float(measured),
        prior_predicted=float(model.predict(plan.prior)[0]), prior_measured=float(prior_measured),
        rank=int((y < measured).sum()) + 1, runs=len(y), best_run=float(y.min()), trained=report.trained)
