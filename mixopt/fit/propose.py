"""`mixopt propose`: the next mixtures to train, where they most reduce the uncertainty about the optimum."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import yaml

from mixopt import __version__
from mixopt.config.runtime import Runtime
from mixopt.config.schema import Experiment
from mixopt.core.mixtures import drop_small_weights, read_mixtures
from mixopt.core.workspace import atomic_write_text
from mixopt.errors import MixoptError
from mixopt.fit.families.base import MixtureModel
from mixopt.fit.from_store import check_beside_config, experiment_swarm
from mixopt.fit.noise import collapse_replicates
from mixopt.fit.optimize import penalized_scores, simulated_pool, solve_optimum
from mixopt.fit.recommend import WORKSPACE_LINE, fit_swarm, record_written, refit_resampled
from mixopt.fit.reuse import model_space
from mixopt.fit.swarm import FitSettings, Swarm

MIN_REPLICATES = 16  # bootstrap models behind the uncertainty, even when fit.bootstrap is lower


EXPLORATION = 2.0  # lower confidence bound: mean - EXPLORATION x sd of the replicates' predictions


def propose_mixtures(exp: Experiment, n: int, runtime: Runtime = Runtime(),
                     candidates: Path | None = None, force: bool = False) -> tuple[list[np.ndarray], Path]:
    """n mixtures where the fit is least sure about the optimum (see pick_mixtures), written to
    <config dir>/<name>.proposed.yaml for `mixopt sweep --mixtures`. With `candidates` (any mixture
    file: proposed YAML, optimal.yaml, CSV, Parquet) the picks are among those mixtures only.

    After a data change under `design.after_change: reuse` the fit is the reduced one, so the picks
    lie on its plane (the unchanged domains at the virtual proportions): candidates off it are left out.
    Refused before any work when that file is one mixopt did not write (unless `force`), and again
    before writing it when such a file appeared there during the fit."""
    out = proposed_path(exp)
    check_beside_config(exp, out, force)
    plan, full, settings, _ = experiment_swarm(exp, runtime)
    swarm, space, _ = model_space(plan, full)
    given = None
    if candidates is not None:
        _, ids, W = read_mixtures(candidates, exp.domain_names)
        snapped = [plan.bounds.snap(w) for w in W]
        outside = [str(i) for i, w in zip(ids, snapped) if w is None]
        if len(outside) == len(ids):
            raise MixoptError(f"--candidates {candidates}: every mixture is outside the domain bounds (or "
                              "repetition limits)", "give candidates within the bounds")
        if outside:
            runtime.say(f"propose: {len(outside)} candidate(s) outside the bounds left out: {', '.join(outside[:5])}")
        given = np.array([w for w in snapped if w is not None])
        if space is not None:
            reduced, on = space.reduce(given)
            if not on.any():
                raise MixoptError(f"--candidates {candidates}: no mixture keeps the unchanged domains at the virtual "
                                  "proportions of mixture reuse, so the reduced fit cannot rank them",
                                  "give candidates on that plane, or use design.after_change: extend")
            if not on.all():
                runtime.say(f"propose: {int((~on).sum())} candidate(s) off the plane of mixture reuse left out")
            given = reduced[on]
    swarm = collapse_replicates(swarm, swarm.replicate).swarm  # one row per mixture, as the fit sees it
    rec, model = fit_swarm(swarm, settings)
    for w in rec.warnings:  # proposals from a weak fit are a guess: say so where they are made
        runtime.say(f"warning: {w}")
    if rec.decision is not None and rec.decision.verdict != "better":
        runtime.say(f"note: {rec.decision.line}")
    picks = pick_mixtures(swarm, settings, model, rec.weights, n, exp.design.min_weight, exp.design.min_distance,
                          exp.seed, candidates=given)
    if not picks:
        raise MixoptError(f"every candidate{' in ' + str(candidates) if candidates else ''} is within "
                          "design.min_distance of a trained run",
                          "lower design.min_distance to propose closer mixtures")
    if space is not None:  # back onto every domain
        picks = list(space.expand(np.array(picks)))
    doc = {"mixtures": [{d: round(float(v), 6) for d, v in zip(full.domains, w)} for w in picks]}
    header = (f"# {len(picks)} mixtures proposed by mixopt {__version__} `mixopt propose` for '{exp.name}' "
              f"({model.kind} fit on {len(swarm.keys)} runs).\n{WORKSPACE_LINE}{os.path.realpath(exp.workspace_dir)}\n"
              f"# Train them: mixopt sweep CONFIG --mixtures {out.name}\n")
    check_beside_config(exp, out, force)  # again: a file the user made there during the fit is left alone
    atomic_write_text(out, header + yaml.safe_dump(doc, sort_keys=False))
    record_written(exp.workspace_dir, out)
    return picks, out


def proposed_path(exp: Experiment) -> Path:
    """<config folder>/<name>.proposed.yaml: where `mixopt propose` writes."""
    return Path(exp.optimal_path).with_name(f"{exp.name}.proposed.yaml")


def pick_mixtures(swarm: Swarm, settings: FitSettings, model: MixtureModel, optimum: np.ndarray, n: int,
                  min_weight: float, min_distance: float, seed: int,
                  candidates: np.ndarray | None = None) -> list[np.ndarray]:
    """Up to n mixtures, each the lowest lower-confidence-bound candidate (optimistic about the
    objective, so it goes where the optimum may be but the fit is unsure).

    Candidates are the bootstrap replicates' optima and simulated mixtures, with weights under
    `min_weight` set to 0 as the design does. A pick keeps `min_distance` (L1) from every trained run
    and a wider berth from earlier picks: half the typical distance between neighbouring runs, so
    a batch spreads over the region of doubt instead of piling near-copies into one corner.
    Given `candidates` (rows inside the bounds), the picks are among those alone."""
    rng = np.random.default_rng([seed, 13])
    pool = simulated_pool(swarm.prior, swarm.bounds, n=20_000, seed=seed, sampler=settings.sampler) \
        if candidates is None else None
    replicates, optima = [], [optimum]
    for _ in range(max(settings.bootstrap, MIN_REPLICATES)):
        m = refit_resampled(swarm, model, rng, seed)
        replicates.append(m)
        if m.smooth and candidates is None:
            optima.append(solve_optimum(m, swarm.prior, swarm.bounds, settings.kl_weight, seed, settings.sampler))
    if candidates is None:
        candidates = drop_small_weights(np.vstack([np.array(optima), pool]), min_weight)
        candidates = candidates[[np.isfinite(w).all() and swarm.bounds.contains(w) for w in candidates]]
    preds = np.array([penalized_scores(m, swarm.prior, settings.kl_weight, candidates) for m in replicates])
    lcb = preds.mean(axis=0) - EXPLORATION * preds.std(axis=0)
    runs = np.asarray(swarm.X)
    gaps = [np.sort(np.abs(runs - r).sum(axis=1))[1] for r in runs] if len(runs) > 1 else [0.0]
    spread = max(min_distance, 0.5 * float(np.median(gaps)), 1e-6)
    picks: list[np.ndarray] = []
    for i in np.argsort(lcb, kind="stable"):
        w = candidates[i]
        if np.abs(runs - w).sum(axis=1).min() < max(min_distance, 1e-6):
            continue
        if picks and min(np.abs(p - w).sum() for p in picks) < spread:
            continue
        picks.append(w)
        if len(picks) == n:
            break
    return picks
