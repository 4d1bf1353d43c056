"""A compute budget for `mixopt optimize --budget`: parsed from the flag, spent as counted from the
store, and each planned run's cost, known before it trains.

Units: proxies (`40`: runs trained, any size), FLOPs (`3e12flops`: 6 x parameters x tokens) or
device-hours (`0.5h`: seconds a run held its device, training and evaluation). What is spent is
the experiment's whole store at its fidelities' sizes, not only what optimize trained: a run a
sweep trained before counts, and a resumed optimize counts what its killed predecessor finished.
A failed run counts at its planned cost (it held the device, and its FLOPs are not recorded)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from mixopt.config.schema import Experiment
from mixopt.core.mixtures import Mixture
from mixopt.errors import MixoptError
from mixopt.sweep.plan import Plan, load_plan
from mixopt.sweep.store import Run, Store

UNITS = {"proxies": "proxies", "flops": "FLOPs", "seconds": "device-hours"}
SPENT = ("done", "suspect", "failed")  # a run in one of these states has used its device
MARGIN = 1.25  # device-seconds of a size never trained here: its speed measured on a few steps, x this


@dataclass(frozen=True)
class Budget:
    """What `--budget` allows: `amount` in `unit` (proxies, flops, seconds); `text` as given."""

    text: str
    unit: str
    amount: float

    def show(self, value: float) -> str:
        """A spent or planned amount in the budget's own unit."""
        if self.unit == "proxies":
            return f"{value:g} prox{'y' if value == 1 else 'ies'}"
        if self.unit == "flops":
            return f"{value:.3g} FLOPs"
        return f"{value / 3600:.3g} device-hours"

    def flag(self, value: float) -> str:
        """`value` as a --budget that allows at least it (rounded up, in the unit the flag was given in)."""
        if self.unit == "proxies":
            return f"{math.ceil(value - 1e-9):d}"
        if self.unit == "flops":
            return f"{_up(value):.3g}flops"
        return f"{_up(value / 3600):.3g}h"

    def to_json(self, spent: float | None = None) -> dict:
        out = {"given": self.text, "unit": self.unit, "amount": self.amount}
        return out if spent is None else {**out, "spent": spent, "left": max(self.amount - spent, 0.0)}


def _up(x: float) -> float:
    """`x` rounded up to 3 significant digits (a --budget shown that way still covers `x`)."""
    if x <= 0:
        return 0.0
    step = 10.0 ** (math.floor(math.log10(x)) - 2)
    return math.ceil(x / step - 1e-9) * step


_FORM = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(flops|h)?\s*$", re.IGNORECASE)


def parse_budget(text: str) -> Budget:
    """`40` proxies, `3e12flops` FLOPs, `0.5h` device-hours; anything else is one line."""
    fix = "e.g. --budget 40 (proxies), --budget 3e12flops (FLOPs) or --budget 0.5h (device-hours)"
    m = _FORM.match(text or "")
    if not m:
        raise MixoptError(f"--budget {text!r}: not a number of proxies, FLOPs or device-hours", fix)
    value, suffix = float(m.group(1)), (m.group(2) or "").lower()
    if not math.isfinite(value) or value <= 0:
        raise MixoptError(f"--budget {text!r}: must be a finite number above 0", fix)
    if suffix == "flops":
        return Budget(text, "flops", value)
    if suffix == "h":
        return Budget(text, "seconds", value * 3600.0)
    if value != int(value):
        raise MixoptError(f"--budget {text!r}: a number of proxies is a whole number", fix)
    return Budget(text, "proxies", value)


class Costs:
    """Per-run cost at each proxy size of the experiment, from its spec and what the store measured."""

    def __init__(self, plans: list[Plan], store: Store | None, device: str = "cpu"):
        """`store` None: no store yet (nothing measured)."""
        from mixopt.proxy.model import param_count

        self.plans, self.device = plans, device
        self.params = {p.context: param_count(p.spec) for p in plans}
        self.tokens = {p.context: trained_tokens(p.spec) for p in plans}
        self.seconds: dict[str, float] = {}
        for p in plans if store is not None else ():  # the slowest run measured at each size: planned device-seconds err on the safe side
            took = [_seconds(r) for r in store.runs(p.context, "done") if _seconds(r)]
            if took:
                self.seconds[p.context] = max(took)

    def flops(self, context: str) -> float:
        return 6.0 * self.params[context] * self.tokens[context]

    def run(self, plan: Plan, unit: str) -> float:
        """One new run's planned cost at `plan`'s size, in `unit`."""
        if unit == "proxies":
            return 1.0
        if unit == "flops":
            return self.flops(plan.context)
        if plan.context not in self.seconds:
            self.seconds[plan.context] = measured_seconds(plan, self.device)
        return self.seconds[plan.context]

    def spent(self, store: Store, unit: str) -> float:
        """What the store's runs at these sizes used, in `unit` (see the module's note)."""
        total = 0.0
        for p in self.plans:
            for r in store.runs(p.context):
                if r.status not in SPENT:
                    continue
                if unit == "proxies":
                    total += 1.0
                elif unit == "flops":
                    total += r.flops if r.status != "failed" and r.flops is not None else self.flops(p.context)
                else:
                    total += _seconds(r) if r.status != "failed" and _seconds(r) else self.run(p, unit)
        return total


def trained_tokens(spec) -> int:
    """The tokens a proxy of `spec` trains: whole steps of seq_len x batch_size (what its FLOPs count)."""
    return spec.steps * spec.seq_len * spec.batch_size


def _seconds(r: Run) -> float | None:
    return r.device_seconds if r.device_seconds is not None else r.train_seconds


def measured_seconds(plan: Plan, device: str) -> float:
    """A size nothing was trained at yet: seconds for its tokens at the speed a few real steps
    measure on this device (proxy/speed.py), x MARGIN for evaluation and noise."""
    from mixopt.proxy.speed import training_rates

    rate = training_rates(plan.spec, (1,), device)[1]  # proxy-steps per second
    steps = plan.spec.tokens / (plan.spec.seq_len * plan.spec.batch_size)
    return MARGIN * steps / max(rate, 1e-9)


def within(budget: Budget, left: float, costs: Costs,
           batch: list[tuple[Plan, Mixture]]) -> tuple[list[tuple[Plan, Mixture]], float]:
    """The runs of `batch`, in order, whose planned costs fit in `left` (a run that does not fit is
    skipped, a cheaper one after it may), and their planned total."""
    out, total = [], 0.0
    for plan, m in batch:
        c = costs.run(plan, budget.unit)
        if total + c <= left + 1e-9 * max(budget.amount, 1.0):
            out.append((plan, m))
            total += c
    return out, total


def budget_status(exp: Experiment, store: Store) -> dict | None:
    """The budget of the latest `mixopt optimize` call on this workspace, what is spent of it now, and
    how that call ended: `state` finished, interrupted, failed, or running (it never ended: killed, or
    still running); `stopped` is the last round's reason only when that call finished. A store from
    before version 11 records no calls: the last round's budget, as finished."""
    rows = store.rounds()
    call = store.last_call()
    if not rows and call is None:
        return None
    last = rows[-1] if rows else {"verdict": None, "stopped": None, "round": 0}
    src = call or last
    budget = Budget(src["budget"], src["unit"], src["amount"])
    plans = fidelity_plans(exp)
    spent = Costs([p for _, p in plans], store).spent(store, budget.unit) if budget.unit != "seconds" else \
        _spent_seconds(plans, store)
    state = call["state"] if call else "finished"
    mine = [r for r in rows if call is None or r["round"] >= call["first_round"]]  # the rounds this call finished
    return {**budget.to_json(spent), "rounds": len(rows), "rounds_by_call": len(mine), "state": state,
            "round": call["last_round"] if call and call["last_round"] is not None else last["round"],
            "verdict": last["verdict"], "verdict_round": last["round"] if rows else None,
            "stopped": last["stopped"] if state == "finished" else None}


def _spent_seconds(plans, store: Store) -> float:
    """Device-seconds spent, without timing anything: a failed run at the size's slowest measured run."""
    costs = Costs([p for _, p in plans], store)
    total = 0.0
    for _, p in plans:
        for r in store.runs(p.context):
            if r.status in SPENT:
                total += (_seconds(r) if r.status != "failed" else None) or costs.seconds.get(p.context, 0.0)
    return total


def fidelity_plans(exp: Experiment) -> list[tuple[Experiment, Plan]]:
    """(experiment at that size, its plan without the design) for each fidelity, cheapest first."""
    from mixopt.sweep.fidelity import fidelities

    return [(f.exp, load_plan(f.exp, design=False)) for f in fidelities(exp)]
