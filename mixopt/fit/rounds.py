"""`mixopt optimize CONFIG --budget B`: rounds of sweep -> fit -> verify -> propose under a compute
budget, until the verdict against the prior is decided or the budget is spent.

Each round
1. trains, capped by the budget left (each run's cost planned before it trains, sweep/budget.py):
   the runs an earlier round planned and did not finish (a resumed optimize), else the config's
   design not yet trained (every fidelity, cheapest first), else what the last round proposed;
2. fits (the joint law across sizes where there are several, fit/fidelity.py);
3. verifies a *candidate*: the mixture under verification, trained with the prior at the same seed
   at the verify size (the largest fidelity after a fit across sizes: the nearest to the target;
   the swarm's size otherwise). The first candidate is the fit's recommendation once the fit says it
   is better or leaves the verdict to measurement (a fit across sizes); it persists across rounds
   (store's budget_rounds) and is replaced only when a new fit predicts its own recommendation
   better than the candidate by more than one proxy's seed noise at the verify size (fit/candidate.py); its
   paired seeds then restart. The verdict and the optimal YAML are about the candidate;
4. stops when the verdict is decided: the candidate's paired differences at the verify size exclude
   0 (fit/verdict.py's paired_gain), or the fit's own verdict (fit/verdict.py's decide) is "worse",
   or "better" and the verification agrees (the recommendation, still the candidate, measured below
   the prior);
5. otherwise proposes the next round's runs: the next seed of the candidate and of the prior at the
   verify size (their paired difference is the verdict: nothing else narrows it), or, with no
   candidate yet (a one-size fit that cannot tell), max(4, domains) cheap runs where the fit is least
   sure (fit/propose.py).
A rerun of a finished optimize prints the recorded outcome and does nothing; after "the budget is
spent" a larger --budget continues where it stopped (fit/outcome.py).
What a round plans is written to the store as planned runs before it trains, and rounds are
numbered in the store: kill -9 at any point and rerun the same command, nothing is trained twice.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from mixopt.config.runtime import Runtime
from mixopt.config.schema import Experiment
from mixopt.core.mixtures import Mixture
from mixopt.errors import MixoptError
from mixopt.fit.calls import RecordedCall
from mixopt.fit.candidate import Candidate, choose_candidate, same_mixture
from mixopt.fit.outcome import Outcome, Round, recorded_outcome, reopens, write_candidate
from mixopt.fit.verdict import paired_gain
from mixopt.sweep.budget import Budget, Costs, fidelity_plans, within
from mixopt.sweep.plan import MIXED_WARNING, Plan, sweep_plan
from mixopt.sweep.reeval import record_scores
from mixopt.sweep.run import run_sweep, sweep_measurement
from mixopt.sweep.store import Store

ORIGIN = "optimize"  # origin of what optimize plans: optimize:<round>:verify|replicate|propose:<name>
MAX_ROUNDS = 100  # a guard: every round trains at least one run or stops


def optimize_budget(exp: Experiment, budget: Budget, runtime: Runtime = Runtime(), say=print,
                    force: bool = False) -> Outcome:
    """Rounds until decided or spent (see the module's note); `say` gets each round's lines. Before a
    round trains, refused when the optimal or proposed YAML beside the config is a file mixopt did not
    write (unless `force`); a rerun of a finished optimize writes neither and is not refused. Such a file
    that appears while the rounds run stops them, unrecorded, before they write (_appeared)."""
    from mixopt.sweep.work import device_of

    # (exp at that size, plan), cheapest first; keyed as this call's sweeps train (device, --precision):
    # the rounds look runs up by key (the candidate's paired seeds, what is left to train)
    sizes = [(e, replace(p, measured_as=sweep_measurement(e, runtime))) for e, p in fidelity_plans(exp)]
    db = sizes[0][1].workspace.db_path
    device = device_of(runtime) or ("cuda" if _cuda() else "cpu")
    out = Outcome(budget)
    if db.is_file():
        with Store(db) as store:
            costs = Costs([p for _, p in sizes], store, device)
            rows = store.rounds()
    else:  # no store yet: none is made for a budget refused below
        costs, rows = Costs([p for _, p in sizes], None, device), []
    verify_at = len(sizes) - 1  # the largest fidelity: the nearest to the target (the swarm itself with one)
    out.verify_size = _label(exp, verify_at)
    if rows and rows[-1]["stopped"] and not reopens(rows[-1], budget):
        return recorded_outcome(exp, budget, costs, db, rows, out, say)
    from mixopt.fit.from_store import check_beside_config
    from mixopt.fit.propose import proposed_path

    for path in (exp.optimal_path, proposed_path(exp)):
        check_beside_config(exp, path, force)
    _refuse_unreachable(exp, sizes[0][1], budget, costs)  # before anything is trained or recorded
    first = len(rows) + 1
    out.rounds_before = len(rows)
    with RecordedCall(db, budget, costs, first, out.rounds) as call:
        return _rounds(exp, sizes, budget, costs, runtime, say, out, rows, first, call.taking, force)


def _rounds(exp: Experiment, sizes, budget: Budget, costs: Costs, runtime: Runtime, say, out: Outcome,
            rows: list[dict], first: int, taking: list, force: bool = False) -> Outcome:
    """The rounds themselves (the module's note), from round `first` on."""
    db = sizes[0][1].workspace.db_path
    verify_at = len(sizes) - 1
    size = out.verify_size
    notices = _Once(runtime.say)  # the fit's and the proposal's notices: each once per call
    fit_rt = replace(runtime, say=notices)
    vexp, vplan = sizes[verify_at]
    cand = _candidate_of(rows[-1], exp.domain_names) if rows else None
    for n in range(first, first + MAX_ROUNDS):
        taking.clear()
        dropped = _drop_replaced(vplan, cand, db)  # e.g. one a budget cut left planned, or a killed round's
        trained, what = _train_round(exp, sizes, budget, costs, runtime, n, taking)
        if dropped:
            what += f"; dropped {dropped} planned run(s) of a replaced candidate"
        if blocked := _appeared(exp, force):  # before the fit writes: not recorded, a rerun fits this round
            out.stopped = blocked
            return out
        try:
            from mixopt.fit.from_store import recommend_mixture

            rec = recommend_mixture(exp, fit_rt, plots=False,
                                    against=[("candidate", np.asarray(cand.weights))] if cand else (), force=force)
        except MixoptError as e:  # e.g. too few runs: what was trained is kept, and the round says why
            if blocked := _appeared(exp, force):  # the fit refused to write over a file made during it: not recorded
                out.stopped = blocked
                return out
            raise MixoptError(f"round {n}: the fit failed after training {trained} proxies ({e.problem})",
                              e.fix or "raise --budget, or lower design.runs") from None
        fit_verdict = rec.decision.verdict if rec.decision is not None else None
        cand, note = choose_candidate(rec, cand, _pairs(vplan, cand.weights, db) if cand else [], n, size)
        if cand is not None and (dropped := _drop_replaced(vplan, cand, db)):
            note += f"; {dropped} planned run(s) of the replaced candidate dropped, untrained"
        pairs = _pairs(vplan, cand.weights, db) if cand else []
        if cand is not None and not pairs:  # a new candidate: its first seed, with the prior's
            got, cut = _train(budget, costs, runtime, db,
                              [(vexp, vplan, m) for m in _verify(vplan, cand.weights, n, 0)], taking)
            trained += got
            pairs = _pairs(vplan, cand.weights, db)
            what += f"; {'verified' if pairs else 'could not verify'} the candidate at {size} " \
                    f"against the prior (seed 0){': over the budget' if cut else ''}"
        if cand is not None and not same_mixture(cand.weights, rec.weights):
            fit_verdict = None  # the fit's verdict is about its own recommendation: the candidate's is measured
        verdict, line = judge(fit_verdict, [(a, b) for _, a, b in pairs], rec.ci, size, rec.decision)
        with Store(db) as store:
            spent = costs.spent(store, budget.unit)
        out.rounds.append(Round(n, what, trained, spent, verdict, line, cand.since if cand else None))
        out.spent, out.verdict, out.paired = spent, verdict, pairs
        out.fit_weights = dict(zip(rec.domains, map(float, rec.weights)))
        out.weights = dict(zip(rec.domains, cand.weights)) if cand else out.fit_weights
        out.candidate_round = cand.since if cand else None
        blocked = _appeared(exp, force)  # during the fit or the verification: written by neither
        out.written = None if blocked and cand is not None else str(exp.optimal_path)
        if cand is not None and not blocked:
            write_candidate(exp, sizes[0][1], rec, cand, verdict, line, pairs, size)
        say(f"round {n}: trained {trained} prox{'y' if trained == 1 else 'ies'} ({what}); spent {budget.show(spent)} of {budget.show(budget.amount)}")
        if cand is not None:
            say(f"  candidate (round {cand.since}): " + ", ".join(f"{d} {v:.3f}" for d, v in out.weights.items())
                + (f"; {note}" if note else ""))
            say(f"  paired seeds at {size} (prior - candidate, > 0: the candidate is better): "
                + (", ".join(f"seed {r} {b - a:+.4f}" for r, a, b in pairs) or "none yet"))
        say(f"  verdict: {line}")
        notices.seen.add(f"note: {line}")  # the proposal's fit says its verdict as a note: said just above
        stop = None
        if blocked:  # the round is recorded, its stop is not: a rerun goes on with round n + 1
            _record(db, n, budget, trained, what, costs, verdict, None, out.weights, out.candidate_round, line)
            out.stopped = blocked
            return out
        if verdict in ("better", "worse"):
            stop = f"the verdict is decided ({verdict})"
        elif trained == 0 and n > first:
            stop = f"the budget is spent ({budget.show(spent)} of {budget.show(budget.amount)}): no run of the " \
                   "next round fits in what is left"
        if stop is None:
            try:
                why = _propose(exp, sizes, cand, n, fit_rt, db, force)
            except MixoptError as e:
                if blocked := _appeared(exp, force):  # propose refused to write over a file made during it
                    _record(db, n, budget, trained, what, costs, verdict, None, out.weights, out.candidate_round, line)
                    out.stopped = blocked
                    return out
                stop = f"nothing left to propose ({e.problem})"
            else:
                say(f"  next: {why}")
                stop = _unaffordable(db, budget, costs)
        _record(db, n, budget, trained, what, costs, verdict, stop, out.weights, out.candidate_round, line)
        if stop is not None:
            out.stopped = stop
            return out
    out.stopped = f"{MAX_ROUNDS} rounds"
    return out


def _appeared(exp: Experiment, force: bool) -> str | None:
    """Why the rounds stop when a file mixopt did not write appeared beside the config (<name>.optimal.yaml
    or .proposed.yaml, checked free when the call began) while they ran: it is left alone; else None."""
    from mixopt.fit.from_store import check_beside_config
    from mixopt.fit.propose import proposed_path

    for path in (exp.optimal_path, proposed_path(exp)):
        try:
            check_beside_config(exp, path, force)
        except MixoptError:
            if not path.exists():  # not a file of the user's (e.g. its folder turned read-only): the error itself
                raise
            return (f"{path.name} appeared beside the config during this run and was left alone (mixopt did not "
                    "write it); to go on, move it away and rerun, or rerun with --force to replace it")
    return None


class _Once:
    """A `say` for the fits of one optimize call (a round's fit, the proposal's refit of the same runs):
    each line once, and the device/precision warning once whatever its counts (they grow each round)."""

    def __init__(self, say):
        self.say, self.seen = say, set()

    def __call__(self, line: str) -> None:
        key = MIXED_WARNING if line.startswith(MIXED_WARNING) else line
        if key not in self.seen:
            self.seen.add(key)
            self.say(line)


def _refuse_unreachable(exp: Experiment, plan: Plan, budget: Budget, costs: Costs) -> None:
    """One line, before anything trains, when what the budget has left cannot bring the runs finished
    at the swarm's size (`plan`) up to the fewest a fit needs (domains + 2: a fit and its
    cross-validation): rounds would train up to the budget and then fail to fit."""
    need = len(exp.domain_names) + 2
    done = spent = 0
    if plan.workspace.db_path.is_file():
        with Store(plan.workspace.db_path) as store:
            done = len(plan.runs(store, "done"))
            spent = costs.spent(store, budget.unit)
    if done >= need:
        return
    each = costs.run(plan, budget.unit)  # one new run at the swarm's size, in the budget's unit
    affordable = math.floor((budget.amount - spent) / each + 1e-9) if budget.amount > spent else 0
    if done + affordable >= need:
        return
    spent_now = f", {budget.show(spent)} of it spent" if spent else ""
    raise MixoptError(f"--budget {budget.text}" + (" proxies" if budget.unit == "proxies" else f" ({budget.show(budget.amount)})")
                      + f" cannot reach the {need} finished runs a fit of {len(exp.domain_names)} domains needs "
                      f"({done} finished now{spent_now})",
                      f"raise --budget to at least {budget.flag(spent + (need - done) * each)}")


def judge(fit_verdict: str | None, pairs: list[tuple[float, float]], level: float, size: str,
          decision=None) -> tuple[str, str]:
    """(verdict, sentence): the paired seeds at the verify size when two or more decide; else the
    fit's verdict, a "better" one only once its verification agrees."""
    diffs = np.array([p - r for r, p in pairs])  # prior - recommendation, seed by seed: > 0 is better
    if len(diffs) >= 2:
        ci, p = paired_gain(diffs, level)
        v = "better" if ci[0] > 0 else "worse" if ci[1] < 0 else "cannot tell"
        if v != "cannot tell" or fit_verdict is None:
            return v, (f"{v} than the prior at {size}, measured over {len(diffs)} paired seeds: gain "
                       f"{diffs.mean():+.4f} ({level:.0%} interval {ci[0]:+.4f} .. {ci[1]:+.4f}; P(better) {p:.2f})")
    fit_line = decision.line if decision is not None else "no verdict from the fit"
    if fit_verdict == "worse":
        return "worse", fit_line
    if fit_verdict == "better" and len(diffs) and diffs.mean() > 0:
        return "better", f"{fit_line}; verified at {size}: measured {diffs.mean():+.4f} below the prior"
    if fit_verdict == "better" and len(diffs):
        return "cannot tell", (f"the fit says better, but at {size} the recommendation measured {-diffs.mean():+.4f} "
                               "above the prior: not borne out")
    if fit_verdict is None:
        return "cannot tell", (f"{len(diffs)} paired seed(s) at {size}: "
                               + (f"gain {diffs.mean():+.4f}, " if len(diffs) else "") + "too few to decide")
    return "cannot tell", fit_line


def _train_round(exp: Experiment, sizes, budget: Budget, costs: Costs, runtime: Runtime, n: int,
                 taking: list | None = None) -> tuple[int, str]:
    """Step 1 of a round: what an earlier round left planned, else the design, else nothing (the
    proposal was planned into the store by the round before, so it is 'left planned')."""
    db = sizes[0][1].workspace.db_path
    left_over = []
    with Store(db) as store:
        for fexp, plan in sizes:
            left_over += [(fexp, plan, Mixture(r.origin, r.weights, r.replicate)) for r in plan.runs(store)
                          if r.origin.startswith(f"{ORIGIN}:") and _pending(r)]
    if left_over:
        got, cut = _train(budget, costs, runtime, db, left_over, taking)
        kinds = sorted({m.origin.split(":")[2] for _, _, m in left_over})
        return got, _described(left_over, "what the last round proposed (" + ", ".join(kinds) + ")", cut)
    from mixopt.sweep.fidelity import fidelities, larger_mixtures

    fids, got, parts = fidelities(exp), 0, []
    for i, (fexp, plan) in enumerate(sizes):
        if i == 0:
            full = sweep_plan(exp)
            with Store(db) as store:
                skip = {r.key for r in full.runs(store) if not _pending(r)}
            todo = [(fexp, plan, m) for k, m in zip(full.keys, full.mixtures) if k not in skip]
        else:
            with Store(db) as store:
                skip = {r.key for r in plan.runs(store) if not _pending(r)}
            todo = [(fexp, plan, m) for m in larger_mixtures(exp, fids, i) if plan.key(m.weights, m.replicate) not in skip]
        if todo:
            trained, cut = _train(budget, costs, runtime, db, todo, taking)
            got += trained
            parts.append(_described(todo, f"the design at {fids[i].label}", cut))
    return got, "; ".join(parts) or "nothing: the design is trained and no proposal is pending"


def _described(todo, why: str, cut: int) -> str:
    return why + (f", {cut} of {len(todo)} cut: over the budget" if cut else "")


def _pending(r) -> bool:
    """A run still to train: planned, running (its driver died), or failed other than by a non-number."""
    return r.status in ("planned", "running") or (r.status == "failed" and r.failure != "nonfinite")


def _train(budget: Budget, costs: Costs, runtime: Runtime, db, todo, taking: list | None = None) -> tuple[int, int]:
    """Train the runs of `todo` ((exp, plan, mixture)) that fit in what is left, each size as one
    sweep; (trained, left out for the budget). Costs are planned before anything trains; what will
    train is added to `taking` ((plan, mixture)) first."""
    with Store(db) as store:
        left = budget.amount - costs.spent(store, budget.unit)
        done = {(r.context, r.key) for _, p, _ in todo for r in p.runs(store) if not _pending(r)}
    fresh = [(e, p, m) for e, p, m in todo if (p.context, p.key(m.weights, m.replicate)) not in done]
    fits, _ = within(budget, left, costs, [(p, m) for _, p, m in fresh])
    kept = {id(m) for _, m in fits}
    if taking is not None:
        taking.extend(fits)
    trained = 0
    for fexp, plan in {id(p): (e, p) for e, p, _ in fresh}.values():
        ms = [m for e, p, m in fresh if p is plan and id(m) in kept]
        if ms:
            report = run_sweep(fexp, runtime, extra=ms, design=False)
            trained += report.trained + report.adopted
    return trained, len(fresh) - len(kept)


def _verify(plan: Plan, w, n: int, seed: int) -> list[Mixture]:
    return [Mixture(f"{ORIGIN}:{n}:verify:recommended", tuple(map(float, w)), seed),
            Mixture(f"{ORIGIN}:{n}:verify:prior", tuple(map(float, plan.prior)), seed)]


def _pairs(plan: Plan, w, db) -> list[tuple[int, float, float]]:
    """(seed, candidate `w`, prior) measured at `plan`'s size with the same seed, every seed both have."""
    with Store(db) as store:
        scores = record_scores(plan, store)
    out = []
    for r in range(64):
        a, b = scores.get(plan.key(tuple(map(float, w)), r)), scores.get(plan.key(tuple(map(float, plan.prior)), r))
        if a is not None and b is not None:
            out.append((r, float(a), float(b)))
    return out


def _drop_replaced(plan: Plan, cand: Candidate | None, db) -> int:
    """Drop the planned, never started verification runs of a candidate that is no longer the
    candidate (its next seed, planned by a round that still had it), so they neither train nor count
    against the budget; the prior's runs stay (they pair with any candidate). How many."""
    if cand is None:
        return 0
    with Store(db) as store:
        stale = [r.key for r in plan.runs(store, "planned") if r.origin.startswith(f"{ORIGIN}:")
                 and r.origin.endswith(":recommended") and not same_mixture(r.weights, cand.weights)]
        return store.drop_planned(stale) if stale else 0


def _next_seed(plan: Plan, w, db) -> int:
    """The first seed at which the candidate or the prior has no finished (or for good failed) run."""
    with Store(db) as store:
        taken = {r.key for r in plan.runs(store) if not _pending(r)}
    return next(r for r in range(10_000) if plan.key(tuple(map(float, w)), r) not in taken
                or plan.key(tuple(map(float, plan.prior)), r) not in taken)


def _propose(exp: Experiment, sizes, cand: Candidate | None, n: int, runtime: Runtime, db,
             force: bool = False) -> str:
    """Plan the next round's runs into the store (step 5 of the module's note); what and why."""
    if cand is not None:
        fexp, plan = sizes[-1]
        seed = _next_seed(plan, cand.weights, db)
        ms = [Mixture(f"{ORIGIN}:{n + 1}:replicate:{m.origin.split(':')[-1]}", m.weights, seed)
              for m in _verify(plan, cand.weights, n + 1, seed)]
        _plan_runs(fexp, plan, ms, db)
        return (f"seed {seed} of the candidate and of the prior at {_label(exp, len(sizes) - 1)}: the verdict is "
                "their paired difference, and only another seed of both narrows it")
    from mixopt.fit.propose import propose_mixtures

    k = max(4, len(exp.domain_names))
    picks, _ = propose_mixtures(exp, k, runtime, force=force)
    fexp, plan = sizes[0]
    _plan_runs(fexp, plan, [Mixture(f"{ORIGIN}:{n + 1}:propose:{i}", tuple(map(float, x))) for i, x in enumerate(picks)], db)
    return (f"{len(picks)} cheap runs at {_label(exp, 0)} where the fit is least sure (the fit is not yet decided, "
            "and nothing is verified yet)")


def _plan_runs(fexp: Experiment, plan: Plan, ms: list[Mixture], db) -> None:
    """Write a proposal as planned runs before anything trains: a killed optimize resumes it."""
    p = sweep_plan(fexp, ms, design=False, measured_as=plan.measured_as)  # the keys its sweep trains under
    with Store(db) as store:
        store.add_planned([{"key": k, "context": p.context, "origin": m.origin, "weights": list(m.weights),
                            "domains": fexp.domain_names, "slices": list(p.slices), "tokenizer": p.tokenizer,
                            "replicate": m.replicate, "measured_as": p.measured_as}
                           for k, m in zip(p.keys, p.mixtures)])


def _unaffordable(db, budget: Budget, costs: Costs) -> str | None:
    """Why the next round cannot train (None when its cheapest planned run fits in what is left)."""
    with Store(db) as store:
        spent = costs.spent(store, budget.unit)
        cheapest = [costs.run(p, budget.unit) for p in costs.plans
                    for r in p.runs(store) if r.origin.startswith(f"{ORIGIN}:") and _pending(r)]
    if not cheapest:
        return "nothing new to train: every run proposed is trained already"
    if min(cheapest) > budget.amount - spent + 1e-9 * max(budget.amount, 1.0):
        return (f"the budget is spent ({budget.show(spent)} of {budget.show(budget.amount)}): the next round's "
                f"cheapest run ({budget.show(min(cheapest))}) does not fit in what is left")
    return None


def _record(db, n: int, budget: Budget, trained: int, what: str, costs: Costs, verdict: str, stop,
            weights: dict | None, candidate_round: int | None, summary: str) -> None:
    with Store(db) as store:
        store.record_round({"round": n, "budget": budget.text, "unit": budget.unit, "amount": budget.amount,
                            "trained": trained, "what": what, "spent": costs.spent(store, budget.unit),
                            "verdict": verdict, "stopped": stop, "weights": weights,
                            "candidate_round": candidate_round, "summary": summary})


def _candidate_of(row: dict, domains: list[str]) -> Candidate | None:
    """The candidate the last recorded round left (None: none yet, or a row of store version < 9)."""
    if row.get("candidate_round") is None or not row.get("weights") or list(row["weights"]) != list(domains):
        return None
    return Candidate(tuple(float(row["weights"][d]) for d in domains), int(row["candidate_round"]))


def _label(exp: Experiment, i: int) -> str:
    from mixopt.sweep.fidelity import fidelities

    return fidelities(exp)[i].label


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
