"""What `mixopt optimize` leaves: its outcome (`Round`, `Outcome`), the candidate written as the
experiment's optimal YAML, and a rerun of a finished optimize (the outcome the store recorded, nothing
done; a larger --budget after "the budget is spent" reopens it)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from mixopt.config.schema import Experiment
from mixopt.fit.candidate import Candidate, predicted_gain, same_mixture
from mixopt.sweep.budget import Budget, Costs
from mixopt.sweep.plan import Plan
from mixopt.sweep.store import Store


@dataclass(frozen=True)
class Round:
    n: int
    what: str  # what it trained and why
    trained: int
    spent: float
    verdict: str
    line: str  # the verdict in a sentence
    candidate_round: int | None = None  # the round that made the judged mixture the candidate


@dataclass
class Outcome:
    budget: Budget
    rounds: list[Round] = field(default_factory=list)
    spent: float = 0.0
    stopped: str = ""
    verdict: str = "cannot tell"
    weights: dict[str, float] | None = None  # the mixture the verdict is about (the candidate once there is one)
    written: str | None = None  # the optimal YAML this run wrote
    recorded: str | None = None  # a rerun of a finished optimize: where its recorded result is (nothing written)
    verify_size: str | None = None
    candidate_round: int | None = None
    paired: list[tuple[int, float, float]] = field(default_factory=list)  # (seed, candidate, prior) at verify_size
    fit_weights: dict[str, float] | None = None  # the last fit's own recommendation
    already: bool = False  # a rerun of a finished optimize: the recorded outcome, nothing done
    rounds_before: int = 0  # rounds earlier calls finished (`rounds` is this call's, or all of a rerun's)

    @property
    def rounds_in_all(self) -> int:
        """Every round recorded in the store for this workspace, earlier calls' included."""
        return self.rounds_before + len(self.rounds)

    def to_json(self) -> dict:
        return {"budget": self.budget.to_json(self.spent), "stopped": self.stopped, "verdict": self.verdict,
                "recommendation": self.weights, "written": self.written, "recorded": self.recorded, "verify_size": self.verify_size,
                "candidate_round": self.candidate_round,
                "paired_seeds": [{"seed": r, "candidate": a, "prior": b} for r, a, b in self.paired],
                "fit_recommendation": self.fit_weights, "already_finished": self.already,
                "rounds_in_all": self.rounds_in_all,
                "rounds": [r.__dict__ for r in self.rounds]}


def reopens(last: dict, budget: Budget) -> bool:
    """Whether a finished optimize goes on: it stopped on the budget and this one is larger (or in
    another unit, counted again); a decided verdict, or nothing left to do, stays as recorded."""
    if not str(last["stopped"]).startswith("the budget is spent"):
        return False
    return budget.unit != last["unit"] or budget.amount > last["amount"] * (1 + 1e-9)


def recorded_outcome(exp: Experiment, budget: Budget, costs: Costs, db, rows: list[dict], out: Outcome, say) -> Outcome:
    """A rerun of a finished optimize: its recorded outcome; nothing trained, planned or recorded."""
    last = rows[-1]
    with Store(db) as store:
        out.spent = costs.spent(store, budget.unit)
    out.rounds = [Round(r["round"], r["what"], r["trained"], r["spent"], r["verdict"] or "cannot tell",
                        r["summary"] or "", r["candidate_round"]) for r in rows]
    out.stopped, out.verdict, out.already = last["stopped"], last["verdict"] or "cannot tell", True
    out.weights, out.candidate_round = last["weights"], last["candidate_round"]
    # nothing is written now: the outcome is the store's rounds, and the YAML the finishing round wrote
    path = exp.optimal_path
    if not path.is_file():
        out.recorded = (f"the store's rounds ({db}); {path.name} is not there now (`mixopt fit` writes the "
                        "fit's own recommendation there)")
    elif _holds_round(exp, last):
        out.recorded = f"{path}, written in round {last['round']}"
    else:  # the rounds' verified mixture is the store's; writing it again would need a fit (a rerun trains nothing)
        out.recorded = (f"the store's rounds ({db}); {path} was rewritten since round {last['round']} (by `mixopt "
                        "fit` or by hand) and does not hold this mixture")
    if str(last["stopped"]).startswith("the budget is spent"):
        why = (f"--budget {budget.text} is no more than the {Budget(last['budget'], last['unit'], last['amount']).show(last['amount'])} "
               "it stopped at; a larger --budget continues where it stopped")
    elif str(last["stopped"]).startswith("the verdict is decided"):
        why = "a decided verdict stays decided"
    else:
        why = "a rerun would do the same"
    say(f"already finished in round {last['round']} ({why}): nothing trained, planned or recorded")
    if last["summary"]:
        say(f"  verdict: {last['summary']}")
    return out


def _holds_round(exp: Experiment, last: dict) -> bool:
    """Whether the optimal YAML is the one the last round wrote: optimize's section with that round's
    verdict and mixture, and, where the workspace recorded the file, unchanged since (a `mixopt fit`
    after it, or an edit, rewrote it)."""
    import json
    import os

    import yaml

    from mixopt.core.keys import file_sha256
    from mixopt.core.outputs import RECORD

    path = exp.optimal_path
    try:
        known = json.loads((exp.workspace_dir / RECORD).read_text()).get(os.path.realpath(path))
    except (OSError, ValueError, AttributeError):
        known = None
    try:
        if known is not None and known != file_sha256(path):
            return False
        doc = yaml.safe_load(path.read_text()) or {}
        rounds, weights, said = doc.get("optimize") or {}, doc.get("weights") or {}, last.get("weights") or {}
        if last.get("candidate_round") is not None and (rounds.get("summary") != last.get("summary")
                                                        or rounds.get("verdict") != last.get("verdict")):
            return False  # a candidate's round writes the rounds' verdict with it (no candidate: the fit's own)
        return list(weights) == list(said) and all(abs(float(weights[d]) - float(said[d])) < 1e-5 for d in said)
    except (OSError, ValueError, TypeError, yaml.YAMLError, AttributeError):
        return False


def write_candidate(exp: Experiment, plan: Plan, rec, cand: Candidate, verdict: str, line: str, pairs,
                     size: str) -> None:
    """The candidate, the mixture the verdict is about, as the experiment's optimal YAML (fit wrote
    its own recommendation there): the fit's numbers at the candidate, and the rounds' verdict."""
    from mixopt.fit.recommend import write_optimal

    shown = rec
    if not same_mixture(cand.weights, rec.weights):
        gain = predicted_gain(rec, "candidate")
        shown = replace(rec, weights=np.asarray(cand.weights), predicted=rec.predicted + (gain or 0.0),
                        weights_ci=None, predicted_ci=None, unconstrained=None, predicted_unconstrained=None,
                        decision=None, binding=[""] * len(rec.domains),
                        fidelity={**rec.fidelity, "new_proxy_interval": None} if rec.fidelity else None)
    fit_dir = plan.workspace.fit_dir(rec.fit_key)
    rounds = {"verdict": verdict, "summary": line, "candidate_round": cand.since, "verify_size": size,
              "paired_seeds": [{"seed": r, "candidate": round(a, 6), "prior": round(b, 6)} for r, a, b in pairs],
              "fit_recommendation": {d: round(float(v), 6) for d, v in zip(rec.domains, rec.weights)}}
    write_optimal(exp.optimal_path, shown, exp.name, fit_dir if (fit_dir / "fit.json").is_file() else None,
                  exp.overrides, rounds, workspace=exp.workspace_dir)
