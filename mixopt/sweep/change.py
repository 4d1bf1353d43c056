"""After the data changed: which domains are new or changed, which earlier runs still hold, and the
reduced space of `design.after_change: reuse` (Olmix's mixture reuse).

The base design is what the experiment trained before any change: finished runs of the design's
own origins (prior, vertex:, random:, user:) under the plan's context. A domain is changed when
no base run was planned with its current train slice (a domain added since, or one whose sources
changed); a domain is unchanged when its slice is the one the base design saw (a rename is no
change). Base runs that trained on a slice no longer in the sample are superseded.

reuse: the unchanged domains enter as one virtual domain at fixed proportions (the last
recommendation, else their token prior), and a swarm of design.after_change_runs x (changed + 1)
random mixtures (plus each vertex and the prior) explores virtual vs changed; the fit maps its optimum back onto every domain.
extend: the base runs stay as points (changed domains at 0) and as many new runs explore the
enlarged simplex.

Changes chain (Olmix's sequential reuse): each reuse round is recorded in the workspace (its changed
slices and virtual proportions). A later change counts the earlier rounds' domains as known, so only
what changed since is new, and its virtual domain is every other domain at the last recommendation
(the previous round's combined result, once `fit` wrote it). A round stops counting when its data is
gone from the sample (a domain of it removed or updated); the rounds after it stop too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mixopt.config.yaml_file import read_yaml
from mixopt.core.mixtures import BOUND_SLACK, Bounds
from mixopt.core.workspace import atomic_write_json
from mixopt.errors import MixoptError

BASE_ORIGINS = ("prior", "vertex:", "random:", "user:")
ON_PLANE = 1e-6  # L1: a run whose unchanged domains are this close to the virtual proportions is on the plane


@dataclass(frozen=True)
class Change:
    """How the sample differs from what the base design trained on."""

    mode: str  # design.after_change: reuse | extend
    changed: tuple[int, ...]  # indices (canonical order) of domains no base run saw: new or updated
    unchanged: tuple[int, ...]
    base: tuple[tuple[str, tuple[float, ...]], ...]  # (origin, weights in current order) of still-valid base runs
    superseded: int  # base runs trained on a slice no longer in the sample
    virtual: tuple[float, ...] | None  # reuse: proportions of the unchanged domains (sum 1)
    virtual_from: str  # where the proportions came from
    rounds: tuple[dict, ...] = ()  # earlier reuse rounds still standing, as recorded (before this one)

    def to_json(self, names: list[str]) -> dict:
        return {"mode": self.mode, "changed": [names[i] for i in self.changed],
                "base_runs_valid": len(self.base), "base_runs_superseded": self.superseded,
                "virtual": None if self.virtual is None else
                {names[i]: v for i, v in zip(self.unchanged, self.virtual)}, "virtual_from": self.virtual_from,
                "earlier_rounds": len(self.rounds)}


def is_base(origin: str) -> bool:
    return origin.startswith(BASE_ORIGINS)


def detect_change(mode: str, names: list[str], slices: tuple[str, ...], base_runs: list, valid: dict,
                  prior: np.ndarray, record: Path, optimal: Path, aliases: dict[str, str]) -> Change | None:
    """The change since the base design, or None when there is none (or no base design yet).

    base_runs: the context's finished base-origin runs (store.Run); valid: run key -> weights in the
    current order, for those still valid. record: the workspace file that fixes the virtual
    proportions once a sweep used them; optimal: the config's last recommendation; aliases: current
    domain name -> the name it had when its slices were drawn (a renamed domain)."""
    if not base_runs:
        return None
    seen = {s for r in base_runs if r.slices for s in r.slices}
    rounds, known, current = _standing_rounds(_read_rounds(record), seen, set(slices))
    changed = tuple(i for i, s in enumerate(slices) if s not in known)
    superseded = sum(r.key not in valid for r in base_runs)
    base = tuple((r.origin, valid[r.key]) for r in base_runs if r.key in valid)
    if not changed and current is not None:  # the last recorded round is still the change under way
        changed = tuple(i for i, s in enumerate(slices) if s in current["changed"])
        unchanged = tuple(i for i in range(len(names)) if i not in changed)
        if mode == "reuse":
            virtual = tuple(float(current["virtual"][slices[i]]) for i in unchanged)
            return Change(mode, changed, unchanged, base, superseded, virtual, current.get("from", "recorded"),
                          tuple(rounds[:-1]))
        return Change(mode, changed, unchanged, base, superseded, None, "", tuple(rounds[:-1]))
    if not changed and not superseded:
        return None
    unchanged = tuple(i for i in range(len(names)) if i not in changed)
    virtual, source = None, ""
    if mode == "reuse" and changed and unchanged:
        virtual, source = _virtual(names, unchanged, prior, optimal, aliases)
    return Change(mode, changed, unchanged, base, superseded, virtual, source, tuple(rounds))


def _read_rounds(record: Path) -> list[dict]:
    """The recorded reuse rounds, oldest first (a record of one round, as mixopt wrote before
    rounds chained, is a dict)."""
    try:
        doc = read_yaml(record) if record.is_file() else None
    except MixoptError:  # unreadable, not YAML, or a YAML bomb: no recorded rounds
        return []
    rounds = doc.get("rounds", [doc]) if isinstance(doc, dict) else []
    return [r for r in rounds if isinstance(r, dict) and isinstance(r.get("changed"), list)
            and isinstance(r.get("virtual"), dict)]


def _standing_rounds(rounds: list[dict], seen: set[str], sample: set[str]):
    """(rounds still standing, slices they make known, the last one if the sample is exactly its
    plane: its changed slices plus its virtual domain's). A round stands when its changed slices are
    all in the sample and new to what came before, and its virtual domain's slices were all known
    and are all still in the sample; the first that does not stand ends the chain."""
    known, standing = set(seen), []
    for r in rounds:
        changed, virtual = set(r["changed"]), set(r["virtual"])
        if not changed or not changed <= sample or changed & known or not virtual <= known & sample:
            break
        known |= changed
        standing.append(r)
    last = standing[-1] if standing else None
    if last is not None and set(last["changed"]) | set(last["virtual"]) != sample:
        last = None
    return standing, known, last


def _virtual(names, unchanged, prior, optimal: Path, aliases):
    """The unchanged domains' proportions for a new round: the last recommendation (after a reuse
    round, its combined result over every domain), else their token prior. Once a sweep used them
    they are recorded (record_virtual), so later fits, which rewrite the recommendation, do not
    move the design."""
    try:
        rec = read_yaml(optimal) if optimal.is_file() else None
    except MixoptError:
        rec = None
    weights = (rec or {}).get("weights") if isinstance(rec, dict) else None
    if isinstance(weights, dict):
        w = [weights.get(names[i], weights.get(aliases.get(names[i], ""), None)) for i in unchanged]
        if all(isinstance(x, (int, float)) for x in w) and sum(w) > 0:
            w = np.asarray(w, dtype=float)
            return tuple(float(x) for x in w / w.sum()), f"the last recommendation ({optimal.name})"
    p = np.asarray([prior[i] for i in unchanged])
    return tuple(float(x) for x in p / p.sum()), "the token prior (no recommendation over these domains found)"


def record_virtual(change: Change | None, slices: tuple[str, ...], path: Path) -> None:
    """Fix the virtual proportions a sweep is about to use, so the design stays put: the standing
    earlier rounds, then this one (rounds that no longer stand are dropped)."""
    if change is None or change.virtual is None:
        return
    this = {"changed": sorted(slices[i] for i in change.changed), "from": change.virtual_from,
            "virtual": {slices[i]: v for i, v in zip(change.unchanged, change.virtual)}}
    atomic_write_json(path, {"rounds": [*change.rounds, this]})


@dataclass(frozen=True)
class ReusedSpace:
    """The reduced simplex of mixture reuse: coordinate 0 is the virtual domain (the unchanged
    domains at proportions r), then each changed domain."""

    n: int  # domains in the full space
    unchanged: tuple[int, ...]
    changed: tuple[int, ...]
    r: np.ndarray

    @classmethod
    def of(cls, change: Change, n: int) -> ReusedSpace:
        return cls(n, change.unchanged, change.changed, np.asarray(change.virtual, dtype=float))

    def expand(self, W: np.ndarray) -> np.ndarray:
        """Reduced rows -> full weights."""
        W = np.atleast_2d(W)
        out = np.zeros((len(W), self.n))
        out[:, list(self.unchanged)] = W[:, :1] * self.r
        out[:, list(self.changed)] = W[:, 1:]
        return out

    def reduce(self, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Full rows -> (reduced rows, mask of the rows that lie on the reused plane)."""
        W = np.atleast_2d(np.asarray(W, dtype=float))
        u = W[:, list(self.unchanged)]
        mass = u.sum(axis=1)
        on = np.abs(u - mass[:, None] * self.r).sum(axis=1) <= ON_PLANE
        return np.column_stack([mass, W[:, list(self.changed)]]), on

    def bounds(self, full: Bounds, names: list[str]) -> Bounds:
        """Each unchanged domain's bounds, as bounds on the virtual domain's share."""
        pos = self.r > 0
        u_lo, u_hi = full.lower[list(self.unchanged)], full.upper[list(self.unchanged)]
        if np.any(~pos & (u_lo > BOUND_SLACK)):
            i = self.unchanged[int(np.flatnonzero(~pos & (u_lo > BOUND_SLACK))[0])]
            raise MixoptError(f"domain '{names[i]}' has a min but weight 0 in the virtual domain of mixture reuse",
                              "use design.after_change: extend")
        lo_v = float(np.max(u_lo[pos] / self.r[pos], initial=0.0))
        hi_v = float(min(1.0, np.min(u_hi[pos] / self.r[pos], initial=1.0)))
        if lo_v > hi_v + BOUND_SLACK:
            raise MixoptError("the unchanged domains' bounds admit no share of the virtual domain of mixture reuse",
                              "loosen their min/max, or use design.after_change: extend")
        why = "max" if hi_v < 1 else "none"
        return Bounds(np.r_[lo_v, full.lower[list(self.changed)]], np.r_[hi_v, full.upper[list(self.changed)]],
                      (why, *(full.upper_reason[i] for i in self.changed)))

    def prior(self, prior: np.ndarray) -> np.ndarray:
        return np.r_[prior[list(self.unchanged)].sum(), prior[list(self.changed)]]
