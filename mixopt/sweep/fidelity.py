"""Several proxy sizes in one experiment (design.fidelities): many cheap proxies for breadth, a few
larger ones where the decision is made.

The first fidelity is the swarm (proxy.size, design.runs; its runs keep the keys of a one-size
config). Each later fidelity trains `runs` mixtures already measured at the fidelity before it:
the prior, then alternately the best measured mixture not yet chosen and the one farthest (L1)
from those chosen. Mixtures it trained before stay chosen, so a resumed or repeated sweep adds
nothing (and a new best below does not reshuffle what was trained). Runs of each size are keyed
by its proxy spec as today: a run at 1m is a different run from the same mixture at tiny."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mixopt.config.schema import Experiment
from mixopt.core.mixtures import Mixture
from mixopt.errors import MixoptError
from mixopt.proxy.model import SIZES, param_count
from mixopt.sweep.plan import Plan, load_plan
from mixopt.sweep.reeval import record_scores
from mixopt.sweep.store import Store

ORIGIN = "fidelity"  # origin of a larger fidelity's runs: fidelity:<label>:prior|best|spread:<i>


@dataclass(frozen=True)
class Fidelity:
    """One proxy size of the experiment: its label, config and plan (design=False for the larger ones)."""

    label: str
    exp: Experiment
    runs: int  # the first: random design runs; the others: proxies in all


def at_size(exp: Experiment, size: str | None = None, hf_config: str | None = None,
            tokens: int | None = None) -> Experiment:
    """The experiment with its proxy at another size (or model config): the same data, seed and suite."""
    proxy = exp.proxy.model_copy(update={"size": size or exp.proxy.size, "hf_config": hf_config,
                                         "tokens": tokens or exp.proxy.tokens})
    return exp.model_copy(update={"proxy": proxy})


def fidelities(exp: Experiment) -> list[Fidelity]:
    """The experiment's fidelities, cheapest first; one (the swarm) for a one-size config."""
    fids = exp.design.fidelities
    if not fids:
        label = exp.proxy.size if not exp.proxy.hf_config else Path(exp.proxy.hf_config).stem
        return [Fidelity(label, exp, exp.design.runs or 0)]
    out = [Fidelity(fids[0].label, exp, fids[0].runs)]
    out += [Fidelity(f.label, at_size(exp, f.size, f.hf_config, f.tokens), f.runs) for f in fids[1:]]
    return out


def size_plans(exp: Experiment) -> list[tuple[str, Plan]]:
    """(label, plan) of every proxy size this experiment has or may have runs at: its fidelities,
    then the other built-in sizes (where `verify --size` trains). Plans without the design (keys of
    what the store holds are all they are for)."""
    out = [(f.label, load_plan(f.exp, design=False)) for f in fidelities(exp)]
    seen = {p.context for _, p in out}
    for size in SIZES:
        if size in {label for label, _ in out}:
            continue
        try:
            plan = load_plan(at_size(exp, size), design=False)
        except MixoptError:  # e.g. its seq_len does not fit this sample: it has no runs here either
            continue
        if plan.context not in seen:
            out.append((size, plan))
    return out


def size_table(exp: Experiment, store: Store) -> list[dict]:
    """Runs per proxy size (the fidelities, and any other size with runs in the store): parameters,
    runs by status, FLOPs (6 x params x tokens; estimated from the spec for runs recorded before
    mixopt kept it) and device-seconds."""
    asked = {f.label: f.runs for f in fidelities(exp)} if exp.design.fidelities else {}
    rows = []
    for i, (label, plan) in enumerate(size_plans(exp)):
        runs = plan.runs(store)
        if not runs and label not in asked and i > 0:
            continue
        n = params_of(plan)
        trained = [r for r in runs if r.status in ("done", "suspect")]
        rows.append({"size": label, "params": n, "asked": asked.get(label) if i > 0 else None,
                     **{s: sum(r.status == s for r in runs) for s in ("done", "failed", "suspect", "planned")},
                     "flops": float(sum(r.flops if r.flops is not None else 6.0 * n * (r.tokens or 0) for r in trained)),
                     "device_seconds": float(sum(r.device_seconds if r.device_seconds is not None else
                                                 (r.train_seconds or 0.0) for r in trained))})
    return rows


def params_of(plan: Plan) -> int:
    return param_count(plan.spec)


def choose_mixtures(below: Plan, plan: Plan, store: Store, runs: int, label: str) -> list[Mixture]:
    """A larger fidelity's mixtures: those it already has (any status), then, up to `runs`, the
    mixtures measured at the fidelity below (replicates averaged, single-domain ones left out): the
    prior first, then alternately the best measured not yet chosen and the farthest from those chosen."""
    have = [Mixture(r.origin, r.weights) for r in plan.runs(store) if r.origin.startswith(f"{ORIGIN}:")
            and r.replicate == 0]
    if len(have) >= runs:
        return have
    scores = record_scores(below, store)
    groups: dict[tuple, list] = {}
    origin: dict[tuple, str] = {}
    for r in below.runs(store, "done"):
        if r.key in scores and not r.origin.startswith("vertex:") and sum(x > 0 for x in r.weights) > 1:
            k = tuple(round(x, 9) for x in r.weights)
            groups.setdefault(k, []).append(scores[r.key])
            origin.setdefault(k, r.origin)
    taken = [np.array(m.weights) for m in have]
    pool = [k for k in groups if not any(np.abs(np.array(k) - t).sum() < 1e-6 for t in taken)]
    out = list(have)

    def take(k: tuple, why: str) -> None:
        out.append(Mixture(f"{ORIGIN}:{label}:{why}:{len(out)}", tuple(float(x) for x in k)))
        taken.append(np.array(k))
        pool.remove(k)

    prior = [k for k in pool if origin[k] == "prior"]
    if prior and not any(m.origin.startswith(f"{ORIGIN}:{label}:prior") for m in have):
        take(prior[0], "prior")
    best = sorted(pool, key=lambda k: float(np.mean(groups[k])))
    turn = 0
    while pool and len(out) < runs:
        if turn % 2 == 0:
            take(next(k for k in best if k in pool), "best")
        else:
            W = np.array(taken)
            take(max(pool, key=lambda k: np.abs(W - np.array(k)).sum(1).min()), "spread")
        turn += 1
    return out


def larger_mixtures(exp: Experiment, fids: list[Fidelity], i: int) -> list[Mixture]:
    """What fidelity i (> 0) trains, from what fidelity i-1 measured."""
    below, plan = load_plan(fids[i - 1].exp, design=False), load_plan(fids[i].exp, design=False)
    if not plan.workspace.db_path.is_file():
        return []
    with Store(plan.workspace.db_path) as store:
        return choose_mixtures(below, plan, store, fids[i].runs, fids[i].label)
