"""Seed noise: how much a proxy's score moves when only its init / data-order seed changes.

Measured from replicates (the same mixture trained with several seeds, `design.replicates`) with
a two-way model: score(mixture m, seed s) = mu_m + c_s + e. The seed effect c_s is shared by every
mixture trained with that seed (mixopt initializes every proxy of a seed alike: common random
numbers), so it shifts all of a sweep's runs together and cancels in comparisons between them;
e is what differs between mixtures at one seed. Hence three figures:

- sd_within:  sd of e, the noise between mixtures at one seed: what the fit's runs carry, the
              floor under its out-of-fold error, and the noise of a paired difference;
- sd_seed:    sd of c_s, the common shift a new seed brings;
- sd_total:   sqrt(sd_seed^2 + sd_within^2), how far one new proxy lands from the seed-mean.

Runs are brought to the mean over the measured seeds (their c_s subtracted) and replicates of a
mixture averaged, so the fit predicts what many seeds would average. A table without seed labels
(an external swarm with repeated mixtures) gives the pooled within-mixture sd only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from mixopt.fit.swarm import Swarm

SAME = 9  # decimals: weights equal to this many are one mixture
HETERO_P = 0.05  # Bartlett's test below this: the noise depends on the mixture


@dataclass(frozen=True)
class NoiseModel:
    mixtures: int  # replicated mixtures (two or more runs)
    proxies: int  # runs in replicated mixtures
    seeds: int  # distinct seeds among them (0 when the table has no seed labels)
    dof: int  # degrees of freedom of sd_within
    sd_within: float | None  # between mixtures at one seed (None: not separable from the seed shift)
    sd_seed: float | None  # the shift one seed gives every mixture
    sd_total: float  # one new proxy around the seed-mean
    offset_se: float  # standard error of the shift applied to bring the sweep's seed to the seed-mean
    per_mixture: tuple[tuple[tuple[float, ...], float, int], ...] = ()  # (weights, sd, runs) per replicated mixture
    bartlett_p: float | None = None  # equal noise at every replicated mixture? (None: fewer than 3)

    @property
    def mixture_dependent(self) -> bool:
        return self.bartlett_p is not None and self.bartlett_p < HETERO_P

    @property
    def paired_sd(self) -> float:
        """The noise of one run relative to another of the same seed (sd_total where not separable)."""
        return self.sd_within if self.sd_within is not None else self.sd_total

    def sd_at(self, w: np.ndarray) -> float:
        """One new proxy's sd at `w`: pooled, or the nearest replicated mixture's (never below pooled)
        where Bartlett's test says the noise depends on the mixture."""
        if not self.mixture_dependent:
            return self.sd_total
        W = np.array([p[0] for p in self.per_mixture])
        near = int(np.abs(W - np.asarray(w)).sum(1).argmin())
        return max(self.sd_total, float(np.sqrt(self.per_mixture[near][1] ** 2 + (self.sd_seed or 0.0) ** 2)))

    def ceiling_r2(self, y: np.ndarray) -> float:
        """The most CV R^2 can reach on `y`: the share of its variance that is not seed noise."""
        v = float(np.var(y))
        return float(1 - self.paired_sd ** 2 / v) if v > 0 else float("nan")

    @classmethod
    def from_json(cls, d: dict) -> NoiseModel:
        """What to_json wrote (a saved fit's), for predict."""
        return cls(d["replicated_mixtures"], d["proxies"], d["seeds"], d["dof"], d["sd_within_seed"], d["sd_seed"],
                   d["sd_one_proxy"], d["offset_se"],
                   tuple((tuple(m["weights"]), m["sd"], m["runs"]) for m in d["per_mixture"]), d["bartlett_p"])

    def to_json(self) -> dict:
        return {"replicated_mixtures": self.mixtures, "proxies": self.proxies, "seeds": self.seeds, "dof": self.dof,
                "sd_within_seed": self.sd_within, "sd_seed": self.sd_seed, "sd_one_proxy": self.sd_total,
                "offset_se": self.offset_se, "mixture_dependent": self.mixture_dependent,
                "bartlett_p": self.bartlett_p,
                "per_mixture": [{"weights": list(w), "sd": sd, "runs": k} for w, sd, k in self.per_mixture]}


@dataclass(frozen=True)
class Collapsed:
    """A swarm with replicates averaged, and what the averaging found."""

    swarm: Swarm  # one row per mixture, at the seed-mean level
    noise: NoiseModel | None  # None: no mixture was replicated
    counts: np.ndarray  # runs behind each row
    measured: np.ndarray  # each row's raw mean objective (no seed shift): what was measured


def collapse_replicates(swarm: Swarm, replicate: np.ndarray | None = None) -> Collapsed:
    """Measure the seed noise from runs that share a mixture, and return the swarm with one row per
    mixture. `replicate`: each run's seed index (0 = the sweep's own); None: no labels."""
    # runs at another size or token count (covariates), or trained on another device or at another
    # precision (trained_as: the difference is theirs, not a seed's), are other experiments, not replicates
    kinds = [np.unique(np.asarray(swarm.trained_as), return_inverse=True)[1].ravel().astype(float)] \
        if swarm.trained_as is not None else []
    X = np.round(np.column_stack([swarm.X, *swarm.covariates.values(), *kinds]), SAME)
    _, group, counts = np.unique(X, axis=0, return_inverse=True, return_counts=True)
    group = group.ravel()
    if counts.max() < 2:
        return Collapsed(swarm, None, np.ones(len(swarm.keys), int), swarm.y)
    labelled = replicate is not None and len(np.unique(replicate)) > 1
    seeds = np.asarray(replicate, int) if labelled else np.arange(len(group))  # unlabelled: every run its own seed
    shifts = {m: _seed_effects(v, group, seeds, counts)[0] for m, v in swarm.metrics.items()} if labelled else {}
    y = swarm.y
    if labelled:
        eff, dof, sd_within, sd_seed, offset_se, total = _seed_effects(y, group, seeds, counts)
    else:  # no seed labels: runs of a mixture differ by everything a seed changes
        eff, (dof, total), sd_within, sd_seed, offset_se = None, _pooled(y, group, counts), None, None, 0.0
    metrics = {m: _means(v - (shifts[m][seeds] if labelled else 0.0), group, len(counts)) for m, v in swarm.metrics.items()}
    first = np.array([np.flatnonzero(group == g)[0] for g in range(len(counts))])
    adjusted = y - (eff[seeds] if labelled else 0.0)
    per = []
    for g in np.flatnonzero(counts > 1):
        v = adjusted[group == g]
        per.append((tuple(map(float, swarm.X[first[g]])), float(np.std(v, ddof=1)), int(counts[g])))
    bart = None
    if len(per) >= 3 and all(p[1] > 0 for p in per):
        from scipy.stats import bartlett

        bart = float(bartlett(*[adjusted[group == g] for g in np.flatnonzero(counts > 1)]).pvalue)
    noise = NoiseModel(int((counts > 1).sum()), int(counts[counts > 1].sum()),
                       len(np.unique(seeds[counts[group] > 1])) if labelled else 0, int(dof),
                       sd_within, sd_seed, float(total),
                       float(offset_se), tuple(per), bart)
    out = replace(swarm, X=swarm.X[first], metrics=metrics, keys=[swarm.keys[i] for i in first],
                  covariates={k: v[first] for k, v in swarm.covariates.items()}, replicate=None,
                  trained_as=None if swarm.trained_as is None else tuple(swarm.trained_as[i] for i in first))
    return Collapsed(out, noise, counts, _means(y, group, len(counts)))


def _means(v: np.ndarray, group: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(group, weights=v, minlength=n) / np.bincount(group, minlength=n)


def _pooled(y: np.ndarray, group: np.ndarray, counts: np.ndarray) -> tuple[int, float]:
    """Degrees of freedom and pooled within-mixture sd."""
    m = _means(y, group, len(counts))
    dof = int((counts - 1).sum())
    return dof, float(np.sqrt(((y - m[group]) ** 2).sum() / dof)) if dof else 0.0


def _seed_effects(y: np.ndarray, group: np.ndarray, seeds: np.ndarray, counts: np.ndarray):
    """The two-way fit y = mu_mixture + c_seed on the replicated mixtures' runs (least squares,
    c centred on the mean over the seeds seen). Returns (c per seed index, dof, sd_within, sd_seed,
    standard error of c at the sweep's seed, sd_total); sd_within and sd_seed are None when one
    mixture alone was replicated (then sd_total is its runs' sd)."""
    rep = counts[group] > 1
    g_ids, g = np.unique(group[rep], return_inverse=True)
    s_ids, s = np.unique(seeds[rep], return_inverse=True)
    G, S, n = len(g_ids), len(s_ids), int(rep.sum())
    A = np.zeros((n, G + S - 1))
    A[np.arange(n), g] = 1.0
    for j in range(1, S):
        A[s == j, G + j - 1] = 1.0
    coef, *_ = np.linalg.lstsq(A, y[rep], rcond=None)
    resid = y[rep] - A @ coef
    dof = n - np.linalg.matrix_rank(A)
    sd_within = float(np.sqrt((resid ** 2).sum() / dof)) if dof > 0 else None
    c = np.r_[0.0, coef[G:]]
    c = c - c.mean()
    full = np.zeros(int(seeds.max()) + 1)
    full[s_ids] = c
    if sd_within is None:  # one mixture: the seed shift and the within-seed noise are not separable
        total = float(np.std(y[rep], ddof=1))
        return full, n - G, None, None, total / np.sqrt(S), total
    # the seeds' spread, less what estimating each from G mixtures adds
    sd_seed = float(np.sqrt(max(float(np.var(c, ddof=1)) - sd_within ** 2 / G, 0.0)))
    # c at the sweep's seed is estimated from G mixtures, and the mean over S seeds stands for the
    # mean over all seeds within sd_seed / sqrt(S)
    offset_se = float(np.sqrt(sd_seed ** 2 / S + sd_within ** 2 / G))
    return full, dof, sd_within, sd_seed, offset_se, float(np.hypot(sd_seed, sd_within))
