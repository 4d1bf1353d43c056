"""Mixtures on the simplex: bounds, the one Dirichlet sampler, projection onto the bounds, and the
one reader of mixture files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mixopt.config.schema import Experiment
from mixopt.config.validate import WEIGHT_TOLERANCE, check_weight_rows, check_weights
from mixopt.errors import MixoptError

BOUND_SLACK = 1e-9
ROUNDING_SLACK = 1e-5  # how far a mixture read from a file may stray outside the bounds by rounding (6 decimals)


NAMES_SHOWN = 8  # a line of text names at most this many domains (64 names would make it 2,000 characters)


def name_list(names, limit: int = NAMES_SHOWN, empty: str = "none") -> str:
    """Names for one line of text: all of them up to `limit`; else the first three, the last, and the count."""
    names = list(names)
    if len(names) <= limit:
        return ", ".join(names) or empty
    return ", ".join(names[:3]) + f", ..., {names[-1]} ({len(names)} in all)"


@dataclass(frozen=True)
class Bounds:
    """Per-domain weight bounds, in canonical order, with the reason for each upper bound."""

    lower: np.ndarray
    upper: np.ndarray
    upper_reason: tuple[str, ...]  # "max" (the config's bound), "repetition", or "none"

    def contains(self, w: np.ndarray) -> bool:
        return bool(np.all(w >= self.lower - BOUND_SLACK) and np.all(w <= self.upper + BOUND_SLACK))

    def snap(self, w: np.ndarray) -> np.ndarray | None:
        """`w` if inside; its projection if it is outside by rounding only (a file's 6 decimals put a
        weight at its cap 1e-7 over it); None if it is really outside."""
        if self.contains(w):
            return w
        off = max(float(np.max(self.lower - w)), float(np.max(w - self.upper)), 0.0)
        return project_to_bounds(w[None, :], self)[0] if off <= ROUNDING_SLACK else None


@dataclass(frozen=True)
class Mixture:
    origin: str  # "prior", "vertex:<domain>", "user:<i>" or "random:<i>"
    weights: tuple[float, ...]  # canonical domain order, sums to 1
    replicate: int = 0  # the proxy's seed: 0 the experiment's, k > 0 another one (core.keys.replicate_seed)


def domain_bounds(exp: Experiment, available_tokens: list[float]) -> Bounds:
    """Config bounds, tightened by the repetition limit w x target_tokens <= max_epochs x available."""
    lower = np.array([d.min for d in exp.domains], dtype=float)
    upper = np.array([d.max for d in exp.domains], dtype=float)
    reason = ["max" if d.max < 1 else "none" for d in exp.domains]
    target = exp.optimum.target_tokens
    if target:
        for i, avail in enumerate(available_tokens):
            cap = exp.optimum.max_epochs * avail / target
            if cap < upper[i]:
                upper[i], reason[i] = cap, "repetition"
    if upper.sum() < 1 - 1e-9:
        raise MixoptError(
            f"no mixture fits: upper bounds (with the repetition limit {exp.optimum.max_epochs:g} epochs of "
            f"{target:.3g} target tokens) sum to {upper.sum():.3f} < 1",
            "lower optimum.target_tokens, raise optimum.max_epochs or add text")
    bad = np.flatnonzero(lower > upper + BOUND_SLACK)
    if bad.size:
        i = int(bad[0])
        raise MixoptError(f"domain '{exp.domains[i].name}': min {lower[i]:.4g} is above its repetition limit "
                          f"{upper[i]:.4g}", "lower its min, lower optimum.target_tokens or add text")
    return Bounds(lower, upper, tuple(reason))


TINY = 1e-12  # weights are floored here inside log()


@dataclass(frozen=True)
class Sampler:
    """RegMix's distribution of mixtures, the one the design draws from and the tree optimum simulates:
    Dirichlet(centre x s) with centre = prior ** temperature (normalized) and the concentration s drawn
    log-uniformly from `concentration`."""

    temperature: float = 0.5
    concentration: tuple[float, float] = (0.1, 5.0)

    @classmethod
    def of(cls, design) -> Sampler:
        """The sampler a config's `design:` section describes."""
        return cls(design.temperature, tuple(design.concentration))

    def centre(self, prior: np.ndarray) -> np.ndarray:
        c = np.asarray(prior, dtype=float) ** self.temperature
        return c / c.sum()

    def draw(self, prior: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        """n raw draws (rows sum to 1); a row whose gammas all underflowed to 0 is NaN. For n = 1
        the random stream is that of one scale then one gamma vector, as the design has always drawn."""
        centre = self.centre(prior)
        lo, hi = np.log(self.concentration[0]), np.log(self.concentration[1])
        scale = np.exp(rng.uniform(lo, hi, size=(n, 1)))
        g = rng.standard_gamma(centre * scale)
        total = g.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(np.isfinite(total) & (total > 0), g / total, np.nan)


def drop_small_weights(W: np.ndarray, min_weight: float) -> np.ndarray:
    """Weights under `min_weight` set to 0 and each row renormalized (a proxy cannot learn from a
    1e-5 share); a row whose every weight is dropped comes back NaN."""
    W = np.where(np.asarray(W) < min_weight, 0.0, W)
    with np.errstate(invalid="ignore", divide="ignore"):
        return W / W.sum(axis=-1, keepdims=True)


def sample_mixtures(prior: np.ndarray, bounds: Bounds, n: int, rng: np.random.Generator,
                    sampler: Sampler = Sampler()) -> np.ndarray:
    """n mixtures within the bounds: the sampler's draws (the centre where a draw underflowed),
    projected onto {lower <= w <= upper, sum w = 1}."""
    w = sampler.draw(prior, n, rng)
    bad = ~np.isfinite(w).all(axis=1)
    w[bad] = sampler.centre(prior)
    return project_to_bounds(w, bounds)


def project_to_bounds(W: np.ndarray, bounds: Bounds) -> np.ndarray:
    """Each row's Euclidean projection onto the bounded simplex: clip(w - tau, lower, upper), tau by bisection."""
    lo, hi = bounds.lower, bounds.upper
    outside = np.flatnonzero(np.any(W < lo, axis=1) | np.any(W > hi, axis=1) | (np.abs(W.sum(axis=1) - 1) > 1e-9))
    if outside.size < len(W):  # rows already inside are their own projection
        W = W.copy()
        if outside.size:
            W[outside] = project_to_bounds(W[outside], bounds)
        return W
    a = (W - hi).min(axis=1) - 1.0  # tau here: every weight at its upper bound (sum >= 1)
    b = (W - lo).max(axis=1) + 1.0  # tau here: every weight at its lower bound (sum <= 1)
    for _ in range(50):  # the bracket is < 4 wide: 2^-50 of it is below float noise
        mid = 0.5 * (a + b)
        s = np.clip(W - mid[:, None], lo, hi).sum(axis=1)
        a, b = np.where(s > 1, mid, a), np.where(s > 1, b, mid)
    return np.clip(W - (0.5 * (a + b))[:, None], lo, hi)


def read_mixtures(path: Path, domains: list[str], tolerance: float = WEIGHT_TOLERANCE, key: str | None = None
                  ) -> tuple[str, list, np.ndarray]:
    """The one reader of mixture files: (id name, ids, weights as rows in `domains` order, normalized).

    YAML: `mixtures: [{domain: weight, ...}, ...]` (what `mixopt propose` writes), a bare list of such
    mappings, or a recommendation (`weights: {...}`, what `mixopt fit` writes). CSV / Parquet: one
    weight column per domain; ids from `key`, else the first other column, else row numbers."""
    if not path.is_file():
        raise MixoptError(f"mixtures file not found: {path}", "pass a YAML, CSV or Parquet file of mixtures")
    if path.name.lower().endswith((".yaml", ".yml")):
        return _read_yaml_mixtures(path, domains, tolerance)
    from mixopt.core.tables import read_table, weight_matrix

    table = read_table(path)
    missing = [d for d in domains if d not in table.columns]
    if missing:
        raise MixoptError(f"{path}: no column for domain '{missing[0]}' ({len(missing)} missing)",
                          "give one weight column per domain, named as the domains")
    if key is not None and key not in table.columns:
        raise MixoptError(f"{path}: no column '{key}'", f"columns: {', '.join(table.columns[:12])}")
    key = key or next((c for c in table.columns if c not in domains), None)
    if table.height == 0:
        raise MixoptError(f"{path}: no mixtures in the table", "add rows")
    W = check_weight_rows(weight_matrix(table, domains, str(path)), domains, str(path), tolerance)
    return key or "row", (table[key].to_list() if key else list(range(table.height))), W


def _read_yaml_mixtures(path: Path, domains: list[str], tolerance: float) -> tuple[str, list, np.ndarray]:
    from mixopt.config.yaml_file import read_yaml

    raw = read_yaml(path)
    if isinstance(raw, dict) and isinstance(raw.get("weights"), dict):  # a recommendation: optimal.yaml
        return "mixture", ["recommended"], np.array([check_weights(raw["weights"], domains, f"{path}: weights",
                                                                   tolerance)])
    items = raw.get("mixtures") if isinstance(raw, dict) else raw
    if not isinstance(items, list) or not items or not all(isinstance(m, dict) for m in items):
        raise MixoptError(f"{path}: expected a list of mixtures (domain: weight mappings)",
                          "write `mixtures: [{code: 0.5, wiki: 0.5}]`")
    W = np.array([check_weights(m, domains, f"{path}: mixtures[{i}]", tolerance) for i, m in enumerate(items)])
    return "mixture", list(range(len(items))), W
