"""The candidate of `mixopt optimize --budget`: the mixture under verification, measured against the
prior seed after seed at the verify size until their paired difference decides. It persists across
rounds (the store's budget_rounds rows) so the pairs accumulate: a refit moves the recommendation
a little every round, and pairing the current recommendation lost every earlier seed. RULE is when
a new fit may replace it; the pairs then restart."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RULE = ("the candidate is replaced only when the fit predicts its new recommendation better than the candidate by "
        "more than one proxy's seed noise at {size}")


@dataclass(frozen=True)
class Candidate:
    """The mixture under verification: measured against the prior seed after seed at the verify size
    until their paired difference decides; `since`: the round that made it the candidate."""

    weights: tuple[float, ...]
    since: int


def choose_candidate(rec, cand: Candidate | None, pairs, n: int, size: str) -> tuple[Candidate | None, str | None]:
    """The candidate for round `n` and what happened to it: the first is the fit's recommendation once
    the fit says it is better (or leaves the verdict to measurement); it is replaced only by RULE."""
    w = tuple(map(float, rec.weights))
    verdict = rec.decision.verdict if rec.decision is not None else None
    if cand is None:
        if verdict not in ("better", None):
            return None, None
        return Candidate(w, n), (f"the fit's recommendation becomes the candidate, measured against the prior at "
                                 f"{size} seed after seed until their paired difference decides")
    if same_mixture(cand.weights, w):
        return cand, None
    rule = RULE.format(size=size)
    if not getattr(rec, "reliable", True):
        return cand, f"kept: the fit does not cross-validate, so it cannot move the candidate ({rule})"
    gain = predicted_gain(rec, "candidate")
    sd, source = seed_noise(rec, pairs, size)
    if gain is None or sd is None:
        return cand, f"kept: {source} ({rule})"
    if gain > sd:
        return Candidate(w, n), (f"replaced: the fit predicts its new recommendation {gain:.4f} better than the "
                                 f"candidate of round {cand.since}, more than one proxy's seed noise at {size} "
                                 f"(sd {sd:.4f}, {source}); the paired seeds restart with the new candidate")
    return cand, (f"kept: the fit's new recommendation is predicted {gain:+.4f} against it, within one proxy's seed "
                  f"noise at {size} (sd {sd:.4f}, {source}); {rule}")


def predicted_gain(rec, name: str) -> float | None:
    """The fit's objective at the `against` mixture `name` less at its recommendation (> 0: the
    recommendation is predicted better); None when the fit did not score it."""
    f = rec.fidelity or {}
    if f.get("used") == "the law across sizes":
        at = (f.get("against") or {}).get(name)
        return None if at is None else float(at - rec.predicted)
    for g in (rec.decision.gains if rec.decision is not None else ()):
        if g.against == name:
            return float(g.gain)
    return None


def seed_noise(rec, pairs, size: str) -> tuple[float | None, str]:
    """One proxy's seed noise at the verify size, and where it comes from: that size's replicates in
    the fit, else the candidate's paired seeds (sd of their differences / sqrt 2)."""
    f = rec.fidelity or {}
    sd = None
    if f:
        sd = next((z["noise_sd"] for z in f.get("sizes") or [] if z["size"] == size), None)
    elif rec.decision is not None and rec.decision.noise is not None:
        sd = rec.decision.noise.sd_total
    if sd is not None:
        return float(sd), f"from the replicates at {size}"
    if len(pairs) >= 2:
        d = np.array([b - a for _, a, b in pairs])
        return float(np.std(d, ddof=1) / np.sqrt(2)), f"from the candidate's {len(pairs)} paired seeds"
    return None, f"the seed noise at {size} is not measured yet (no replicates, fewer than 2 paired seeds)"


def same_mixture(a, b) -> bool:
    """Two weight vectors are one mixture (their run keys would be one)."""
    return float(np.abs(np.asarray(a, float) - np.asarray(b, float)).sum()) <= 1e-9
