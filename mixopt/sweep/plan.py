"""What a sweep of this config trains: the sample it reads, the proxy spec, the bounds, the
design's mixtures and their run keys; and which stored runs are still valid for it.

A run is valid when what it trained on is still in the sample: its key (core.keys.run_key) is
recomputed from the current slices and its stored weights mapped onto the current domains. So a
run from before a domain was added is the same run as one with that domain at weight 0, and a run
that trained on a domain whose data changed (or that was removed) is superseded: kept, not used."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from mixopt.config.schema import Experiment
from mixopt.config.validate import check_seq_len, read_model_config
from mixopt.core.keys import content_hash, trained_as
from mixopt.core.keys import run_key as _run_key
from mixopt.core.mixtures import Bounds, Mixture, domain_bounds
from mixopt.core.workspace import Workspace
from mixopt.data.sample import sample_key
from mixopt.errors import MixoptError
from mixopt.evals.suites import Suite, resolve_suite
from mixopt.proxy.model import ProxySpec, proxy_spec
from mixopt.proxy.train import TRAINER_VERSION
from mixopt.sweep.change import Change, detect_change, is_base
from mixopt.sweep.design import design_mixtures
from mixopt.sweep.store import Run, Store


class StaleSample(MixoptError):
    """The workspace's sample was drawn for other sources or settings: `mixopt sample` again."""

Say = Callable[[str], None]


@dataclass(frozen=True)
class Plan:
    """What a sweep of this config trains, and what its results are compared against."""

    workspace: Workspace
    manifest: dict
    spec: ProxySpec
    bounds: Bounds
    prior: np.ndarray
    available: list[int]
    context: str  # hash of what a run trains with besides its data: trainer, seed, proxy spec, tokenizer
    suite: Suite
    mixtures: list[Mixture]
    keys: list[str]
    domains: tuple[str, ...] = ()  # canonical order
    slices: tuple[str, ...] = ()  # each domain's train slice sha256
    tokenizer: str = ""  # sha256 of the workspace's tokenizer
    change: Change | None = None  # how the data changed since the base design, if it did
    # Where and how this plan's runs train when that changes their numbers (core.keys.measurement_of):
    # '' for a CPU in float32. Part of each key; a stored run keeps its own (Run.measured_as).
    measured_as: str = ""

    def key(self, weights, replicate: int = 0, measured_as: str | None = None) -> str:
        """The run key of these weights, trained as this plan's runs are (or as `measured_as` says)."""
        return _run_key(self.context, self.slices, weights, replicate,
                        self.measured_as if measured_as is None else measured_as)

    def weights_of(self, run: Run) -> tuple[float, ...] | None:
        """The run's weights over the current domains, or None when it is not valid for this plan."""
        return weights_on(run, self.context, self.slices)

    def runs(self, store: Store, status: str | None = None) -> list[Run]:
        """The store's runs valid for this plan, weights in the current domain order."""
        out = []
        for r in store.runs(self.context, status):
            w = self.weights_of(r)
            if w is not None:
                out.append(replace(r, weights=w, domains=self.domains))
        return out

    def superseded(self, store: Store) -> list[tuple[Run, str]]:
        """Trained runs (done or suspect) this plan cannot use, each with why."""
        return superseded_runs(store, self.context, self.domains, self.slices, self.tokenizer)


def weights_on(run: Run, context: str, slices: tuple[str, ...]) -> tuple[float, ...] | None:
    """The run's weights over domains with these train slices, or None when it trained on anything
    else (another context, a slice not among them)."""
    if run.context != context or run.slices is None:
        return None
    where = {s: i for i, s in enumerate(slices)}
    w = [0.0] * len(slices)
    for s, x in zip(run.slices, run.weights):
        if x > 0:
            if s not in where:
                return None
            w[where[s]] = x
    same = _run_key(context, slices, w, run.replicate, run.measured_as or "") == run.key
    return tuple(w) if same else None  # same slices in another order: another training


def measurement_counts(runs: list[Run]) -> dict[str, int]:
    """How many of these runs trained each way ('cpu/fp32', 'cuda/bf16-autocast', ...), most first."""
    counts: dict[str, int] = {}
    for r in runs:
        counts[trained_as(r.measured_as)] = counts.get(trained_as(r.measured_as), 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


MIXED_WARNING = "warning: these runs trained on different devices or precisions"  # mixed_measurements' line starts so


def mixed_measurements(runs: list[Run]) -> str:
    """One warning line when these runs trained on different devices or precisions, else ''."""
    counts = measurement_counts(runs)
    if len(counts) < 2:
        return ""
    each = ", ".join(f"{n} {m}" for m, n in counts.items())
    return (f"{MIXED_WARNING} ({each}), "
            "which changes their numbers: fitted together as they are; for one kind, sweep on one device "
            "(`mixopt sweep CONFIG --device ...`)")


def done_other_ways(plan: Plan, runs: list[Run]) -> dict[str, int]:
    """How many of the plan's mixtures, not done as it keys them, are done under another device or
    precision: {trained_as: count}, most first (`runs`: the store's runs valid for the plan)."""
    done = {r.key for r in runs if r.status == "done"}
    kinds = sorted({r.measured_as or "" for r in runs if r.status == "done"} - {plan.measured_as})
    counts: dict[str, int] = {}
    for key, m in zip(plan.keys, plan.mixtures):
        for kind in kinds if key not in done else ():
            if plan.key(m.weights, m.replicate, kind) in done:
                counts[trained_as(kind)] = counts.get(trained_as(kind), 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def other_ways_note(counts: dict[str, int], measured_as: str) -> str:
    """One line when finished runs of the design trained another way than this plan trains (done_other_ways):
    they are not this plan's runs (other keys), so it trains those mixtures again; else ''."""
    if not counts:
        return ""
    (first, n), *rest = counts.items()
    device, _, precision = first.partition("/")
    flags = (f"--device {device} " if device != trained_as(measured_as).partition("/")[0] else "") + \
        f"--precision {precision.removesuffix('-autocast')}"  # the flags that key runs as `first`
    also = "".join(f", {k} as {m}" for m, k in rest)
    them = "them" if not rest else f"the {first} ones"
    return (f"note: {n} runs of this design finished as {first}{also}; this plan trains at {trained_as(measured_as)} "
            f"(pass {flags} to use {them})")


def superseded_runs(store: Store, context: str, domains: tuple[str, ...], slices: tuple[str, ...],
                    tokenizer: str) -> list[tuple[Run, str]]:
    """Trained runs (done or suspect) not valid for these domains' slices, each with why."""
    names, current = set(domains), set(slices)
    out = []
    for r in store.runs():
        if r.status not in ("done", "suspect") or weights_on(r, context, slices) is not None:
            continue
        if r.slices is None:
            why = "trained by an older mixopt on other data or settings"
        elif r.tokenizer != tokenizer:
            why = "trained with another tokenizer"
        elif r.context != context:
            why = "trained with another proxy, seed or trainer version"
        else:
            gone = [d for d, s, x in zip(r.domains, r.slices, r.weights) if x > 0 and s not in current]
            if not gone:
                why = "trained with the domains in another order"
            elif gone[0] in names:
                why = f"domain '{gone[0]}' changed since"
            else:
                why = f"domain '{gone[0]}' was removed"
        out.append((r, why))
    return out


def plan_context(exp: Experiment, spec: ProxySpec, tokenizer: str) -> str:
    """What a run trains with besides its data: trainer version, seed, proxy spec, tokenizer."""
    return content_hash({"trainer": TRAINER_VERSION, "seed": exp.seed, "spec": spec.to_dict(), "tokenizer": tokenizer})


def sweep_plan(exp: Experiment, extra: list[Mixture] | tuple = (), design: bool = True,
               measured_as: str = "") -> Plan:
    """What a sweep trains: load_plan, with a mixtures file's weights rounded just past a bound
    projected onto the bounds (the mixture trained is the projected one)."""
    plan = load_plan(exp, extra, design, measured_as)
    snapped = []
    for m in extra:
        w = plan.bounds.snap(np.asarray(m.weights)) if m.origin.startswith("file:") else np.asarray(m.weights)
        if w is None:
            raise MixoptError(f"mixture {m.origin} is outside the domain bounds (or repetition limits)",
                              "fix its weights or the bounds")
        snapped.append(Mixture(m.origin, tuple(float(x) for x in w), m.replicate))
    return plan if snapped == list(extra) else load_plan(exp, snapped, design, measured_as)


def load_plan(exp: Experiment, extra: list[Mixture] | tuple = (), design: bool = True,
              measured_as: str = "") -> Plan:
    """The design's mixtures (unless design=False) plus `extra` ones (proposed, verification), keyed
    as trained under `measured_as` (core.keys.measurement_of; '' a CPU in float32)."""
    ws = Workspace(exp.workspace_dir)
    manifest = ws.read_manifest()
    if manifest.get("key") != sample_key(exp):
        raise StaleSample(f"the sample in {ws.root} is stale (config or corpus changed since)",
                          "run `mixopt sample CONFIG` again")
    names = exp.domain_names
    available = [manifest["domains"][n]["tokens"] for n in names]
    prior = np.array([manifest["domains"][n]["prior"] for n in names])
    spec = proxy_spec(exp.proxy, manifest["vocab_size"], read_model_config(exp.resolve(exp.proxy.hf_config))
                      if exp.proxy.hf_config else None)
    check_seq_len(spec.seq_len, {n: manifest["domains"][n].get("train_tokens") for n in names})
    bounds = domain_bounds(exp, available)
    tokenizer = manifest["tokenizer_sha256"]
    context = plan_context(exp, spec, tokenizer)
    slices = tuple(manifest["domains"][n]["train_sha256"] for n in names)
    plan = Plan(ws, manifest, spec, bounds, prior, available, context, resolve_suite(exp, manifest, ws), [], [],
                tuple(names), slices, tokenizer, measured_as=measured_as)
    change, back = None, []
    if design and ws.db_path.is_file():
        with Store(ws.db_path) as store:
            adopt_legacy(plan, exp, store)
            base = [r for r in store.runs(context, "done") if is_base(r.origin)]
            valid = {r.key: r.weights for r in plan.runs(store, "done")}
            back = sent_back(plan.runs(store))
        aliases = {n: manifest["domains"][n].get("drawn_as", n) for n in names}
        change = detect_change(exp.design.after_change, names, slices, base, valid, prior,
                               ws.root / CHANGE_RECORD, exp.optimal_path, aliases)
    # After a change the design is the finished base runs plus what the change adds: base runs sent
    # back for retraining (`check --repair`, a damaged checkpoint) stay in it, as without a change.
    back = back if change is not None else []
    mixtures, keys = [], []
    for m in (design_mixtures(exp, prior, bounds, change) if design else []) + back + list(extra):
        key = plan.key(m.weights, m.replicate)
        if key not in keys:
            mixtures.append(m)
            keys.append(key)
    return replace(plan, mixtures=mixtures, keys=keys, change=change)


def sent_back(runs: list[Run]) -> list[Mixture]:
    """Base-design runs that were trained and are waiting to be trained again: sent back to planned
    by `check --repair`, or suspect (a damaged checkpoint)."""
    return [Mixture(r.origin, r.weights, r.replicate) for r in runs
            if is_base(r.origin) and (r.status == "suspect" or (r.status == "planned" and r.trainings > 0))]


CHANGE_RECORD = "after-change.json"  # in the workspace: the virtual proportions mixture reuse trains with


def legacy_context(plan: Plan, exp: Experiment) -> str:
    """The context of a run key as mixopt computed it before store version 3 (every domain's name
    and slice in it), for the current config and sample."""
    return content_hash({
        "trainer": TRAINER_VERSION, "seed": exp.seed, "spec": plan.spec.to_dict(), "domains": list(plan.domains),
        "slices": dict(zip(plan.domains, plan.slices)), "tokenizer": plan.tokenizer,
    })


def adopt_legacy(plan: Plan, exp: Experiment, store: Store) -> int:
    """Runs recorded before run keys followed the data (store version < 3) whose context is this
    config's and sample's under the old scheme: give them their current key, keeping checkpoints and
    measurements. Runs of another old context stay as they are (shown as superseded)."""
    if store.readonly:
        return 0
    old = legacy_context(plan, exp)
    moves = [{"old": r.key, "new": _run_key(plan.context, plan.slices, r.weights),  # CPU fp32 keys, as they were
              "context": plan.context, "slices": list(plan.slices), "tokenizer": plan.tokenizer}
             for r in store.runs(old) if r.slices is None and list(r.domains) == list(plan.domains)]
    return store.rekey(moves) if moves else 0
