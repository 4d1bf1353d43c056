"""One `mixopt optimize` call as the store records it (optimize_calls: the round it began at, how it
ended and the round it was in) and its Ctrl-C: `Interrupted`, what the round in progress was training
and what is spent, for the CLI's one line."""

from __future__ import annotations

from mixopt.sweep.budget import Budget, Costs
from mixopt.sweep.store import Store


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during `mixopt optimize`: what the round in progress was training, and what is spent."""

    def __init__(self, round: int, done: int, asked: int, spent: str):
        super().__init__()
        self.round, self.done, self.asked, self.spent = round, done, asked, spent


class RecordedCall:
    """The rounds of one call, from round `first` on, inside its optimize_calls row: begun on entry, ended
    on exit as finished (in its last round), interrupted (a Ctrl-C, raised again as Interrupted) or failed
    (an error: a fit that failed). `rounds` is the call's list of finished rounds, as it grows; `taking`
    ((plan, mixture)) what the current round trains: a Ctrl-C's line counts them."""

    def __init__(self, db, budget: Budget, costs: Costs, first: int, rounds: list):
        self.db, self.budget, self.costs, self.first, self.rounds = db, budget, costs, first, rounds
        self.taking: list = []

    def __enter__(self) -> RecordedCall:
        with Store(self.db) as store:
            self.call = store.start_call(self.budget.text, self.budget.unit, self.budget.amount, self.first)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        state = "finished" if exc_type is None else \
            "interrupted" if issubclass(exc_type, KeyboardInterrupt) else "failed"
        n = self.first + len(self.rounds)  # the round it was in (a finished call: its last)
        raised = _interrupted_in(self.budget, self.costs, self.db, n, self.taking) if state == "interrupted" else None
        with Store(self.db) as store:
            store.end_call(self.call, state, n - (state == "finished"))
        if raised is not None:
            raise raised from None
        return False


def _interrupted_in(budget: Budget, costs: Costs, db, n: int, taking: list) -> KeyboardInterrupt:
    """What round `n` was training ((plan, mixture) in `taking`), counted in the store after the sweep
    put its unfinished runs back to planned; a plain KeyboardInterrupt when the store cannot be read."""
    try:
        with Store(db) as store:
            spent = costs.spent(store, budget.unit)
            done = {(p.context, tuple(round(float(w), 9) for w in r.weights), r.replicate or 0)
                    for p in {id(p): p for p, _ in taking}.values() for r in p.runs(store, "done")}
    except Exception:  # the interrupt must not be hidden by a store it cannot read
        return KeyboardInterrupt()
    finished = sum((p.context, tuple(round(float(w), 9) for w in m.weights), m.replicate or 0) in done
                   for p, m in taking)
    return Interrupted(n, finished, len(taking), f"{budget.show(spent)} of {budget.show(budget.amount)}")
