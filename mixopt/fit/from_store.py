"""`mixopt fit CONFIG`: the swarm of an experiment's finished runs, read from its store (checkpoints
first evaluated on what the suite added), fitted by recommend.py and saved in the workspace.

The one fit module for `fit CONFIG` that reads the sweep's plan, store and results: recommend.py
and the rest of the core fit arrays and tables, so `fit --runs TABLE` loads no sweep module
(tests/test_layout.py).
"""

from __future__ import annotations

import json
from dataclasses import astuple, replace
from pathlib import Path

import numpy as np

from mixopt.config.runtime import Runtime
from mixopt.config.schema import Experiment
from mixopt.core.keys import content_hash
from mixopt.core.mixtures import Bounds, Sampler, name_list
from mixopt.errors import MixoptError
from mixopt.evals.suites import prepare_suite
from mixopt.fit.noise import collapse_replicates
from mixopt.fit.recommend import WORKSPACE_LINE, Recommendation, fit_swarm, save_fit, write_optimal
from mixopt.fit.swarm import FitSettings, Swarm
from mixopt.sweep.plan import load_plan, mixed_measurements
from mixopt.sweep.reeval import evaluate_stored, record_scores
from mixopt.sweep.results import missing_measures, training_table
from mixopt.sweep.store import Store


def recommend_mixture(exp: Experiment, runtime: Runtime = Runtime(), reeval: bool = True,
                      plots: bool = True, against: list[tuple[str, np.ndarray]] | tuple = (),
                      force: bool = False) -> Recommendation:
    """Fit on every finished run; first evaluate stored checkpoints on what the suite added,
    unless `reeval` is off (then runs lacking the current suite are left out, with a warning).
    Refused before any work when the optimal YAML is a file mixopt did not write (unless `force`), and
    again before writing it when such a file appeared there during the fit."""
    check_beside_config(exp, exp.optimal_path, force)
    plan, swarm, settings, fit_key = experiment_swarm(exp, runtime, reeval)
    reused = None
    if plan.change is not None and plan.change.virtual is not None:  # design.after_change: reuse
        from mixopt.fit.reuse import expand_recommendation, reused_swarm

        swarm, space, fit_key = reused_swarm(plan, full := swarm, fit_key)
        # --against and optimize's candidate are full mixtures: judged in the fit's own (reduced) coordinates
        against = [(name, space.reduce(x)[0][0]) for name, x in against]
        runtime.say(f"mixture reuse: fitting {len(swarm.keys)} runs over {name_list(swarm.domains)}; the unchanged "
                    f"domains keep the proportions of {plan.change.virtual_from}")
    rec, model = fit_swarm(swarm, settings, fit_key, against)
    if plan.change is not None and plan.change.virtual is not None:
        reused, rec = rec, expand_recommendation(rec, space, full)
    fitted = collapse_replicates(swarm, swarm.replicate).swarm  # the table as fitted: replicates averaged
    if (exp.design.fidelities or exp.optimum.target_size) and reused is None:
        from mixopt.fit.fidelity import fit_across_sizes

        joint = fit_across_sizes(exp, plan, swarm, settings, rec, model, fit_key, runtime, reeval, against)
        if joint is not None:
            rec, model, fitted = joint[0], joint[1], fitted if joint[2] is None else joint[2]
    with Store(plan.workspace.db_path) as store:
        rec = replace(rec, suspect=tuple(r.key for r in plan.runs(store, "suspect")),
                      failed=tuple((r.key, ((r.error or "").strip().splitlines() or ["?"])[-1][:300])
                                   for r in plan.runs(store, "failed")))
        readonly = store.readonly
    out = plan.workspace.fit_dir(rec.fit_key)
    if readonly:  # a read-only mount: the recommendation still goes next to the config
        runtime.say(f"note: the workspace {plan.workspace.root} is read-only: {out.relative_to(plan.workspace.root)}/ "
                    "(fit.json, runs.parquet, plots) is not written")
    else:
        # the table as fitted (replicates averaged; reuse: the fit as done, reduced; across sizes: every size's runs)
        save_fit(out, fitted, settings, reused or rec, model, plots=plots)
    # again, right before writing: a file the user made there during the fit is left alone (the fit folder stays)
    check_beside_config(exp, exp.optimal_path, force)
    write_optimal(exp.optimal_path, rec, exp.name, None if readonly else out, exp.overrides,
                  workspace=exp.workspace_dir, record=not readonly)
    return rec


# The verbs whose output beside the config mixopt replaces: the first line of the file names one.
BESIDE_CONFIG = {".optimal.yaml": ("`mixopt fit`", "`mixopt optimize`"), ".proposed.yaml": ("`mixopt propose`",)}


def check_beside_config(exp: Experiment, path: Path, force: bool = False) -> Path:
    """Before any work (and again right before writing): `path` (<name>.optimal.yaml or <name>.proposed.yaml beside the config) is
    absent or mixopt's own, else one MixoptError (--force replaces it). mixopt's own: listed in this
    workspace's record with its current content, or headed by the verb that writes it (an older
    mixopt's, before the record; a read-only workspace's) and not another workspace's: a header that
    names a workspace still listing the file in its record is that workspace's (two configs of one
    `name:` in one folder never replace each other's file; a copied or moved project's file is no
    longer claimed and is replaced). The config itself is never written over."""
    import os

    from mixopt.core.outputs import RECORD, check_output, recorded
    from mixopt.data.sources import local_inputs

    kind = next(k for k in BESIDE_CONFIG if path.name.endswith(k))
    verb = BESIDE_CONFIG[kind][0].strip("`")
    ws = os.path.realpath(exp.workspace_dir)

    def looks_mine(p: Path) -> bool:
        if recorded(exp.workspace_dir, p):
            return True
        try:
            if p.stat().st_size > 1 << 24:
                return False
            lines = p.read_text().splitlines()
        except (OSError, UnicodeDecodeError):
            return False
        if not lines or "by mixopt" not in lines[0] or not any(v in lines[0] for v in BESIDE_CONFIG[kind]):
            return False
        named = next((x[len(WORKSPACE_LINE):] for x in lines[:4] if x.startswith(WORKSPACE_LINE)), None)
        if named is None or named == ws:
            return True
        try:  # another workspace's header: still that workspace's output when its record lists this file
            return str(p) not in json.loads((Path(named) / RECORD).read_text())
        except (OSError, ValueError, TypeError):
            return True

    inputs = tuple((p, what) for p, what in local_inputs(exp) if not Path(p).is_dir())
    real = check_output(path, "", force=force, protected=inputs, looks_mine=looks_mine,
                        instead=f"move it away (`{verb}` writes {path.name} beside the config)")
    if not os.access(real.parent, os.W_OK):  # a read-only mount: said now, before a fit folder is written
        raise MixoptError(f"cannot write {path}: its folder {path.parent} is not writable (`{verb}` writes "
                          f"{path.name} beside the config)", "run it with the config in a folder you can write")
    return real


def experiment_swarm(exp: Experiment, runtime: Runtime = Runtime(), reeval: bool = True):
    """(plan, swarm, settings, fit key): the experiment's finished runs under its current suite."""
    plan = load_plan(exp)
    with Store(plan.workspace.db_path) as store:
        if reeval and not store.readonly:
            prepare_suite(exp, plan.suite, plan.workspace)
            evaluate_stored(plan, store, runtime)
        else:
            lacking = missing_measures(plan, store)
            why = "the workspace is read-only" if store.readonly else "--no-reeval"
            needed = {m.key for m in plan.suite.objective_measures()}
            partial = {k: v for k, v in lacking.items() if not needed & {m.key for m in v}}
            lacking = {k: v for k, v in lacking.items() if k not in partial}
            if partial:  # complete for the objective: fitted, the weight-0 evaluations left out for them
                names = sorted({m.name for v in partial.values() for m in v})
                runtime.say(f"note: {len(partial)} finished runs lack only {name_list(names)} (weight 0 in the "
                            f"objective; {why}): fitted on the objective, {name_list(names)} left out for them")
            if lacking:
                keys = ", ".join(k[:12] for k in list(lacking)[:5]) + (" ..." if len(lacking) > 5 else "")
                runtime.say(f"warning: {len(lacking)} finished runs lack the current eval suite and are left out "
                            f"({keys}; {why}); run `mixopt eval CONFIG` on a writable copy")
        if not store.readonly:  # the objective of each run under this suite, kept for status and export
            store.add_suite(plan.suite.to_dict())
            record_scores(plan, store)
        X, metrics, keys = training_table(plan, store)
        done = plan.runs(store, "done")
        seed_of, how = {r.key: r.replicate for r in done}, {r.key: r.measured_as or "" for r in done}
        if mixed := mixed_measurements([r for r in done if r.key in set(keys)]):
            runtime.say(mixed)
        failed = len(plan.runs(store, "failed"))
    if len(keys) < len(exp.domain_names) + 2:
        also = f" ({failed} failed runs left out: `mixopt status CONFIG` says why)" if failed else ""
        raise MixoptError(f"only {len(keys)} finished runs with current evals{also}; fitting "
                          f"{len(exp.domain_names)} domains and cross-validating needs at least "
                          f"{len(exp.domain_names) + 2}", "run `mixopt sweep CONFIG`")
    swarm = Swarm(exp.domain_names, X, metrics, plan.suite.objective_terms(), keys, plan.prior, fit_bounds(exp, plan.bounds),
                  plan.suite.describe_objective(), plan.available,
                  replicate=np.array([seed_of.get(k, 0) for k in keys], dtype=int),
                  trained_as=tuple(how.get(k, "") for k in keys))
    seed = exp.seed if exp.fit.seed is None else exp.fit.seed
    settings = FitSettings(exp.fit.model, exp.fit.cv_folds, seed, exp.optimum.kl_weight, exp.fit.bootstrap,
                           exp.fit.ci, *astuple(Sampler.of(exp.design)), trust_region=exp.optimum.trust_region)
    fit_key = content_hash({"context": plan.context, "suite": plan.suite.key, "runs": sorted(keys),
                            "fit": exp.fit.model_dump(exclude={"seed"} if exp.fit.seed is None else None),  # keys as before
                            "optimum": exp.optimum.model_dump(exclude={"bounds"} if not exp.optimum.bounds else None),
                            "sampler": [settings.temperature, list(settings.concentration)],
                            "bounds": [plan.bounds.lower.tolist(), plan.bounds.upper.tolist()]})
    return plan, swarm, settings, fit_key


def fit_bounds(exp: Experiment, bounds: Bounds) -> Bounds:
    """The design's bounds, tightened by optimum.bounds (the recommendation's alone)."""
    if not exp.optimum.bounds:
        return bounds
    lower, upper, reason = bounds.lower.copy(), bounds.upper.copy(), list(bounds.upper_reason)
    for i, name in enumerate(exp.domain_names):
        low, high = exp.optimum.bounds.get(name, (0.0, 1.0))
        lower[i] = max(lower[i], low)
        if high < upper[i]:
            upper[i], reason[i] = high, "max"
    return Bounds(lower, upper, tuple(reason))
