"""`mixopt propose`: the next mixtures to train, where they most reduce the uncertainty about the optimum."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from mixopt import __version__
from mixopt.config.schema import Experiment
from mixopt.core.workspace import atomic_write_text
from mixopt.errors import MixoptError
from mixopt.fit.optimize import penalized_scores, simulated_pool, solve_optimum
from mixopt.fit.recommend import experiment_swarm, fit_swarm, refit_resampled
from mixopt.sweep.plan import Say

MIN_REPLICATES = 16  # bootstrap models behind the uncertainty, even when fit.bootstrap is lower


EXPLORATION = 2.0  # lower confidence bound: mean - EXPLORATION x sd of the replicates' predictions


def propose_mixtures(exp: Experiment, n: int, say: Say = print) -> tuple[list[np.ndarray], Path]:
    """n mixtures, each the lowest lower-confidence-bound candidate (optimistic about the objective,
    so it goes where the optimum may be but the fit is unsure) that is at least design.min_distance
    (L1) from every trained run and every earlier pick. Written to <config dir>/<name>.proposed.yaml."""
    plan, swarm, settings, _ = experiment_swarm(exp, say=say)
    rec, model = fit_swarm(swarm, settings)
    rng = np.random.default_rng([exp.seed, 13])
    pool = simulated_pool(swarm.prior, swarm.bounds, n=20_000, seed=exp.seed, sampler=settings.sampler)
    replicates, optima = [], [rec.weights]
    for _ in range(max(settings.bootstrap, MIN_REPLICATES)):
        m = refit_resampled(swarm, model, rng, exp.seed)
        replicates.append(m)
        if m.smooth:
            optima.append(solve_optimum(m, swarm.prior, swarm.bounds, settings.kl_weight, exp.seed, settings.sampler))
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
