"""`mixopt status`: what a workspace holds, for people and scripts; and what a data change costs
(`status` and `sweep --dry-run`): runs still valid, superseded, to train, and why."""

from __future__ import annotations

from collections import Counter

from mixopt.config.schema import Experiment
from mixopt.core.keys import trained_as
from mixopt.core.mixtures import Mixture, name_list
from mixopt.core.workspace import Workspace
from mixopt.proxy.model import proxy_spec
from mixopt.sweep.change import is_base
from mixopt.sweep.plan import (
    Plan,
    StaleSample,
    done_other_ways,
    measurement_counts,
    plan_context,
    superseded_runs,
    sweep_plan,
    weights_on,
)
from mixopt.sweep.results import missing_measures
from mixopt.sweep.store import Store


def experiment_status(exp: Experiment, extra: list[Mixture] | tuple = (), measured_as: str | None = None) -> dict:
    """What the workspace holds; "design" counts the design's runs and `extra` (a sweep's --mixtures):
    with `measured_as` (a sweep's work.planned_measurement; '' a CPU in float32), as a sweep trained
    that way would find them; None (`status`), a mixture is done when it is done however it trained
    ("design_done_as" counts the done ones per device and precision; with `measured_as`,
    "done_other_ways" counts those done only another way, when there are any)."""
    ws = Workspace(exp.workspace_dir)
    out = {"workspace": str(ws.root), "sample": "missing", "suite": None,
           "design": {"planned": 0, "done": 0, "failed": 0, "suspect": 0, "pending": 0}, "design_done_as": {},
           "runs": {"planned": 0, "running": 0, "done": 0, "failed": 0, "suspect": 0}, "trainings": 0, "measurements": 0, "suites": {},
           "current_suite": None}
    if not ws.manifest_path.is_file():
        return out
    manifest = ws.read_manifest()
    if manifest.get("pools"):  # each pool's domains with their documents (cluster names and examples)
        out["pools"] = [{**p, "documents": {n: manifest["domains"].get(n, {}).get("documents") for n in p["domains"]}}
                        for p in manifest["pools"]]
    try:
        plan = sweep_plan(exp, extra, measured_as=measured_as or "")
    except StaleSample as e:  # any other problem (a damaged store, a bad config) is an error, not a state
        out["sample"] = f"stale: {e.problem}"
        from mixopt.data.resample import preview

        manifest = ws.read_manifest()
        out["resample"] = preview(exp, manifest)
        if ws.db_path.is_file() and "error" not in out["resample"]:
            with Store(ws.db_path) as store:
                out.update(store.summary())  # what the store holds does not depend on the sample
                out["resample"]["runs"] = kept_by_resample(exp, manifest, out["resample"], store)
        return out
    out["sample"] = "up to date"
    out["suite"] = plan.suite.key
    lacking = {}
    if ws.db_path.is_file():
        with Store(ws.db_path) as store:
            out.update(store.summary())
            valid = plan.runs(store)
            state = {r.key: r.status for r in valid}
            out["failed_runs"] = failed_runs(valid)
            out["replicates"] = replicate_groups(valid)
            trained = measurement_counts([r for r in valid if r.status in ("done", "suspect")])
            if len(trained) > 1:  # runs of one design trained on different devices or precisions
                out["precisions"] = trained
            lacking = missing_measures(plan, store)
            from mixopt.sweep.fidelity import size_plans, size_table

            others = {p.context for _, p in size_plans(exp)[1:]}  # runs at other proxy sizes: not superseded
            statuses, done_as = design_states(plan, state, _kinds(plan, valid, measured_as))
            done_otherwise = {k for k, s in zip(plan.keys, statuses) if s == "done" and state.get(k) != "done"}
            out["cost"] = change_cost(plan, store, state, lacking, others, done_otherwise)
            if measured_as is not None and (other := done_other_ways(plan, valid)):
                out["done_other_ways"] = other  # finished as another device or precision: not this plan's
            out["sizes"] = size_table(exp, store)
            # the experiment's own total: every size it has runs at (the store may hold other experiments')
            out["experiment_compute"] = {k: float(sum(z[k] for z in out["sizes"])) for k in ("flops", "device_seconds")}
            from mixopt.sweep.budget import budget_status

            out["budget"] = budget_status(exp, store)  # None until `mixopt optimize --budget` ran here
    else:
        statuses, done_as = design_states(plan, {}, [plan.measured_as])
    out["current_suite"] = {"key": plan.suite.key, "objective": plan.suite.describe_objective(),
                            "evaluations": [m.name for m in plan.suite.measures],
                            "runs_lacking": len(lacking)}
    out["design"] = {"planned": len(plan.keys), "done": statuses.count("done"),
                     "failed": statuses.count("failed"), "suspect": statuses.count("suspect"),
                     "pending": statuses.count("planned")}
    out["design_done_as"] = done_as
    return out


def _kinds(plan: Plan, valid: list, measured_as: str | None) -> list[str]:
    """The ways (measured_as) a design mixture's run counts as trained: the given one, or (None) any
    of the plan's runs trained."""
    return [plan.measured_as] if measured_as is not None else sorted({plan.measured_as} | {r.measured_as or ""
                                                                                          for r in valid})


# Which of a mixture's runs (one per device and precision) stands for it: the most finished one.
_RANK = {"done": 0, "suspect": 1, "running": 2, "failed": 3, "planned": 4}


def design_states(plan: Plan, state: dict[str, str], kinds: list[str]) -> tuple[list[str], dict[str, int]]:
    """Each planned mixture's status, its runs keyed as trained under each of `kinds` (measured_as
    values) and the most finished taken; and how many are done under each kind ('cpu/fp32', ...): a
    mixture done under several counts once, under this plan's own kind where it is done there."""
    statuses, done_as = [], Counter()
    for key, m in zip(plan.keys, plan.mixtures):
        seen = {plan.measured_as: state.get(key, "planned")}
        for kind in kinds:
            if kind not in seen:
                seen[kind] = state.get(plan.key(m.weights, m.replicate, kind), "planned")
        best = min(seen.values(), key=_RANK.__getitem__)
        statuses.append(best)
        if best == "done":
            done_as[trained_as(next(k for k, s in seen.items() if s == "done"))] += 1
    return statuses, dict(sorted(done_as.items(), key=lambda kv: (-kv[1], kv[0])))


def done_kinds(st: dict) -> str:
    """' (6 cuda/bf16-autocast, 2 cpu/fp32)': how the design's done runs trained (experiment_status),
    when any of them trained other than on a CPU in float32; else ''."""
    kinds = st.get("design_done_as") or {}
    return f" ({', '.join(f'{n} {m}' for m, n in kinds.items())})" if set(kinds) - {"cpu/fp32"} else ""


def fidelity_costs(exp: Experiment, st: dict) -> list[dict]:
    """`sweep --dry-run` with design.fidelities: for each size, the runs the next sweep trains, their
    FLOPs (6 x params x tokens) and an estimated time: the size's mean device-seconds per run where
    it has trained runs, else the FLOPs at the rate (FLOPs per device-second) the other sizes measured,
    else unknown. A larger fidelity's count is what it asked less what it has: its mixtures are
    chosen from what the size below measured once that is trained."""
    from mixopt.sweep.budget import trained_tokens
    from mixopt.sweep.fidelity import fidelities, params_of
    from mixopt.sweep.plan import load_plan

    have = {z["size"]: z for z in st.get("sizes") or []}
    measured = [z for z in have.values() if z["device_seconds"] > 0 and z["flops"] > 0]
    rate = sum(z["flops"] for z in measured) / sum(z["device_seconds"] for z in measured) if measured else None
    out = []
    for i, f in enumerate(fidelities(exp)):
        plan = load_plan(f.exp, design=False)
        z = have.get(f.label, {"done": 0, "suspect": 0, "device_seconds": 0.0})
        n = st["design"]["pending"] + st["design"]["failed"] if i == 0 else max(f.runs - z["done"], 0)
        per = 6.0 * params_of(plan) * trained_tokens(plan.spec)
        trained = z["done"] + z["suspect"]
        secs = z["device_seconds"] / trained if trained and z["device_seconds"] else per / rate if rate else None
        out.append({"size": f.label, "params": params_of(plan), "tokens": plan.spec.tokens, "to_train": n,
                    "flops": per * n, "seconds": None if secs is None else secs * n,
                    "seconds_from": "measured at this size" if trained and z["device_seconds"] else
                    "the other sizes' FLOPs per second" if rate else None})
    return out


def failed_runs(runs) -> list[dict]:
    """This design's failed runs: why (the error's last line, cut to 300 characters) and whether the
    next sweep retrains them (not one whose result was no number: only `sweep --retry-failed` does)."""
    out = []
    for r in runs:
        if r.status == "failed":
            lines = (r.error or "").strip().splitlines() or ["?"]
            out.append({"key": r.key, "origin": r.origin, "error": lines[-1][:300], "kind": r.failure or "error",
                        "retried_by_next_sweep": r.failure != "nonfinite"})
    return out


def kept_by_resample(exp: Experiment, manifest: dict, resample: dict, store: Store) -> dict:
    """Before `mixopt sample` draws again: the finished runs the new sample keeps valid (every domain
    they trained on keeps its slice) and those it supersedes, each with why. A domain drawn again is
    counted as changed: its runs stay valid only if its new slice comes out identical."""
    names = exp.domain_names
    was = {**{n: n for n in resample["kept"]}, **resample["renamed"]}
    slices = tuple(manifest["domains"][was[n]]["train_sha256"] if n in was else f"drawn again: {n}" for n in names)
    tokenizer = manifest["tokenizer_sha256"] if resample["tokenizer"] == "kept" else "new"
    context = plan_context(exp, proxy_spec(exp.proxy, manifest["vocab_size"]), tokenizer)
    kept = [r for r in store.runs(context, "done") if weights_on(r, context, slices) is not None]
    superseded = superseded_runs(store, context, tuple(names), slices, tokenizer)
    base = any(is_base(r.origin) for r in kept)
    return {"valid": len(kept), "superseded": len(superseded),
            "superseded_why": dict(Counter(w for _, w in superseded)),
            "after_change": exp.design.after_change if base and resample["sampled"] else None}


def replicate_groups(runs) -> list[dict]:
    """Mixtures trained with several seeds (replicates): weights, seeds planned and done. Runs of a
    mixture trained another way (device, precision: `trained_as`, given where not a CPU in float32)
    are not its replicates: their difference is not a seed's."""
    groups: dict[tuple, dict] = {}
    for r in runs:
        how = r.measured_as or ""
        g = groups.setdefault((tuple(round(x, 9) for x in r.weights), how),
                              {"weights": list(r.weights), "seeds": 0, "done": 0, "replicates": []}
                              | ({"trained_as": how} if how else {}))
        g["seeds"] += 1
        g["done"] += r.status == "done"
        g["replicates"].append(r.replicate)
    return [{**g, "replicates": sorted(g["replicates"])} for g in groups.values() if g["seeds"] > 1]


def change_cost(plan: Plan, store: Store, state: dict[str, str], lacking: dict,
                other_sizes: set[str] | frozenset = frozenset(), done_otherwise: set[str] | frozenset = frozenset()
                ) -> dict:
    """What the next sweep costs: finished runs still valid (kept with their checkpoints and
    measurements), superseded ones (kept in the store, not used) and why, runs to train and why.
    `other_sizes`: contexts of this experiment's runs at other proxy sizes (fidelities, `verify
    --size`), which are in use, not superseded. `done_otherwise`: plan keys whose mixture is done
    under another device or precision (design_states), not counted as to train."""
    superseded = [(r, why) for r, why in plan.superseded(store) if r.context not in other_sizes]
    why_train: Counter = Counter()
    held = {r.key for r in plan.runs(store, "failed") if r.failure == "nonfinite"}  # not retrained by default
    for key, m in zip(plan.keys, plan.mixtures):
        if state.get(key) == "done" or key in held or key in done_otherwise:
            continue
        kind = m.origin.split(":")[0]
        if plan.change is not None and is_base(m.origin):
            why_train["sent back for retraining (`check --repair` or a damaged checkpoint)"] += 1
            continue
        why_train[{"reuse": "mixture reuse: virtual vs changed domains",
                   "extend": "new runs over the enlarged simplex",
                   "verify": "verification", "file": "mixtures file"}.get(kind, "design runs not trained yet")] += 1
    change = plan.change.to_json(list(plan.domains)) if plan.change else None
    return {"valid": sum(s == "done" for s in state.values()),
            "superseded": len(superseded), "superseded_why": dict(Counter(w for _, w in superseded)),
            "to_train": sum(why_train.values()), "to_train_why": dict(why_train),
            "held_back": sum(k in held for k in plan.keys),
            "to_evaluate": len(lacking), "change": change}


def cost_lines(st: dict) -> list[str]:
    """The cost of the next sweep, for people."""
    out = []
    if st.get("resample"):
        r = st["resample"]
        if "error" in r:
            return [f"the sample cannot be updated as configured: {r['error']}"]
        renamed = ", ".join(f"{n} (was {o})" for n, o in r["renamed"].items())
        out.append(f"`mixopt sample` will draw {name_list(r['sampled'], empty='no domain')} again; keep "
                   f"{name_list(r['kept'])}" + (f"; rename {renamed}" if renamed else "") +
                   (f"; drop {name_list(r['removed'])}" if r["removed"] else "") + f"; tokenizer {r['tokenizer']}")
        k = r.get("runs")
        if k:
            why = "; ".join(f"{n} {w}" for w, n in k["superseded_why"].items())
            out.append(f"after it: {k['valid']} finished runs stay valid (checkpoints and measurements reused); "
                       f"{k['superseded']} superseded (kept in the store, not used){': ' + why if why else ''}")
            if k["after_change"]:
                out.append(f"then `mixopt sweep` trains only what design.after_change: {k['after_change']} adds for "
                           f"{name_list(r['sampled'])} (`mixopt sweep --dry-run` counts the runs once sampled)")
        return out
    c = st.get("cost")
    if not c:
        return out
    ch = c["change"]
    if ch:
        how = f"{ch['mode']}"
        if ch["virtual"]:
            how += " (virtual domain " + ", ".join(f"{d} {v:.3f}" for d, v in ch["virtual"].items()) + \
                   f", from {ch['virtual_from']})"
        out.append(f"data changed since the base design: {name_list(ch['changed'], empty='no domain')} new or changed; "
                   f"after_change: {how}")
    out.append(f"still valid: {c['valid']} finished runs (checkpoints and measurements reused)")
    why = "; ".join(f"{n} {w}" for w, n in c["superseded_why"].items())
    out.append(f"superseded: {c['superseded']} runs (kept in the store, not used){': ' + why if why else ''}")
    why = "; ".join(f"{n} {w}" for w, n in c["to_train_why"].items())
    out.append(f"to train: {c['to_train']} runs{': ' + why if why else ''}")
    if c.get("held_back"):
        out.append(f"not retrained: {c['held_back']} failed runs whose result was no number (diverged); "
                   "`mixopt sweep CONFIG --retry-failed` retrains them")
    if c["to_evaluate"]:
        out.append(f"to evaluate: {c['to_evaluate']} finished runs lack part of the eval suite "
                   "(their checkpoints are evaluated, no training)")
    return out


def trained_runs(exp: Experiment) -> int:
    """Runs with a finished training in the workspace's store (0 without one)."""
    ws = Workspace(exp.workspace_dir)
    if not ws.db_path.is_file():
        return 0
    with Store(ws.db_path) as store:
        return sum(1 for r in store.runs() if r.status in ("done", "suspect"))
