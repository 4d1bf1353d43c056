"""How sure a fit is: two intervals at any mixture, and a plain verdict against the prior.

- The interval for the mean (what many seeds would average at a mixture): the bootstrap's spread
  of refitted predictions, widened where the fit's own held-out error says it is too narrow. That
  error is calibrated on out-of-fold residuals (conformal: their empirical quantile at the
  interval's level), less the seed noise they contain, plus the uncertainty of the seed shift.
- The interval for one new proxy: the mean's, plus one proxy's seed noise (noise.NoiseModel).
- The gain over the prior (or any mixture): the bootstrap's paired differences (one refit predicts
  both mixtures, so what moves both cancels), widened by the held-out model error; P(better) from
  the same interval. The seed shift cancels in a difference: it is not in the gain's interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

from mixopt.fit.noise import NoiseModel


@dataclass(frozen=True)
class Gain:
    """The recommendation against another mixture: objective there minus at the recommendation
    (positive: the recommendation is better)."""

    against: str
    gain: float
    low: float
    high: float
    p_better: float
    measured: bool = False  # the other mixture's value is its runs' seed-mean, not a prediction

    @property
    def verdict(self) -> str:
        return "better" if self.low > 0 else "worse" if self.high < 0 else "cannot tell"

    def to_json(self) -> dict:
        return {"against": self.against, "gain": self.gain, "interval": [self.low, self.high],
                "p_better": self.p_better, "verdict": self.verdict,
                "from": "measured" if self.measured else "predicted"}


@dataclass(frozen=True)
class Decision:
    level: float
    mean: tuple[float, float]  # interval for the seed-mean at the recommendation
    proxy: tuple[float, float]  # ... for what one new proxy there measures
    model_error: float  # sd of the fit's held-out error, seed noise taken out
    model_halfwidth: float  # the conformal half-width over every run: what predict widens any mixture by
    noise: NoiseModel | None
    ceiling_r2: float | None  # the most CV R^2 can reach, given the seed noise
    gains: tuple[Gain, ...]  # the prior first, then --against
    verdict: str  # better | worse | cannot tell
    line: str  # the plain sentence
    next_step: str | None

    def to_json(self) -> dict:
        return {"level": self.level, "mean_interval": list(self.mean), "new_proxy_interval": list(self.proxy),
                "model_error_sd": self.model_error,
                "model_halfwidth": self.model_halfwidth, "noise": self.noise.to_json() if self.noise else None,
                "cv_r2_ceiling": self.ceiling_r2, "gains": [g.to_json() for g in self.gains],
                "verdict": self.verdict, "summary": self.line, "next_step": self.next_step}


def conformal_halfwidth(resid: np.ndarray, level: float) -> float:
    """The split-conformal quantile of |residual|: covers a new point at `level` when residuals are
    exchangeable with it (rank ceil((n + 1) level) of n; the largest when n is small)."""
    r = np.sort(np.abs(resid[np.isfinite(resid)]))
    if not len(r):
        return float("inf")
    k = min(len(r), math.ceil((len(r) + 1) * level))
    return float(r[k - 1])


def model_error(resid: np.ndarray, level: float, noise: NoiseModel | None) -> tuple[float, float]:
    """(half-width, sd) of the fit's own error at `level`: held-out residuals less the seed noise
    between runs they carry (all of it counts as model error when the noise is not measured)."""
    z = norm.ppf(0.5 + level / 2)
    q = conformal_halfwidth(resid, level)
    floor = noise.paired_sd if noise is not None else 0.0
    # The noise comes from a few replicates (the default: 6 runs): never let it erase more than
    # three quarters of the residuals' variance (seen: a noisy estimate took all of it, and the
    # gain's interval was the bootstrap's alone, 3x too narrow).
    h = math.sqrt(max(q ** 2 - (z * floor) ** 2, (q / 2) ** 2))
    return h, h / z


def mean_interval(pred: float, boot: tuple[float, float] | None, h_model: float, offset_se: float,
                  level: float) -> tuple[float, float]:
    """The bootstrap's interval at a mixture, each side at least the calibrated model error (with
    the seed shift's uncertainty), never beside the point."""
    z = norm.ppf(0.5 + level / 2)
    h = math.hypot(h_model, z * offset_se)
    lo, hi = boot if boot is not None else (pred, pred)
    return float(min(lo, pred - h)), float(max(hi, pred + h))


def proxy_interval(pred: float, mean: tuple[float, float], sd: float | None, level: float) -> tuple[float, float]:
    """The mean's interval with one proxy's seed noise added to each side."""
    z = norm.ppf(0.5 + level / 2)
    s = z * (sd or 0.0)
    return float(pred - math.hypot(pred - mean[0], s)), float(pred + math.hypot(mean[1] - pred, s))


def gain_against(name: str, pred_w: float, pred_other: float, boot_w: np.ndarray | None,
                 boot_other: np.ndarray | None, h_model: float, level: float,
                 measured: tuple[float, float] | None = None) -> Gain:
    """The recommendation's expected gain over another mixture, with its interval and P(better).

    `measured` (seed-mean, its standard error): the other mixture was trained, so the gain is taken
    from what it measured, not from the model there (the smooth families misfit the balanced prior
    against a swarm of sparse mixtures: in bench/calibration.py the model put the prior too high in
    26 of 27 fits, and the whole error went into the gain). Otherwise both ends are predictions,
    each with the fit's held-out error."""
    z = norm.ppf(0.5 + level / 2)
    if measured is not None:
        other, se = measured
        g = float(other - pred_w)
        h = math.hypot(h_model, z * se)
        d = None if boot_w is None or len(boot_w) < 2 else other - np.asarray(boot_w)
    else:
        g = float(pred_other - pred_w)
        h = math.sqrt(2) * h_model
        d = None if boot_w is None or boot_other is None or len(boot_w) < 2 else \
            np.asarray(boot_other) - np.asarray(boot_w)
    lo_b, hi_b = (g, g) if d is None else np.percentile(d, [50 * (1 - level), 100 - 50 * (1 - level)])
    lo, hi = min(lo_b, g - h), max(hi_b, g + h)
    sd = max((hi - lo) / (2 * z), 1e-12)
    return Gain(name, g, float(lo), float(hi), float(norm.cdf(g / sd)), measured is not None)


def paired_gain(diffs: np.ndarray, level: float) -> tuple[tuple[float, float] | None, float | None]:
    """(t interval, P(better)) of the mean of paired differences (other - recommendation, seed by
    seed); (None, None) from one seed."""
    from scipy.stats import t as student

    k = len(diffs)
    if k < 2:
        return None, None
    mean, se = float(np.mean(diffs)), float(np.std(diffs, ddof=1) / math.sqrt(k))
    q = float(student.ppf(0.5 + level / 2, k - 1))
    return (mean - q * se, mean + q * se), float(student.cdf(mean / se, k - 1)) if se > 0 else float(mean > 0)


def decide(gains: list[Gain], reliable: bool, h_model: float, noise: NoiseModel | None, level: float,
           n_domains: int, reason: str | None = None) -> tuple[str, str, str | None]:
    """(verdict, the plain line, the cheapest next step) against the prior (gains[0])."""
    g = gains[0]
    if not reliable:
        verdict = "cannot tell"
        line = (f"no mixture is measurably better than the prior at this budget: {reason or 'the fit predicts held-out runs no better than their mean'}")
    elif g.verdict == "better":
        verdict = "better"
        line = (f"the recommendation is better than the prior{' (as measured)' if g.measured else ''}: expected gain "
                f"{g.gain:.4f} ({level:.0%} interval {g.low:.4f} .. {g.high:.4f}; P(better) {g.p_better:.2f})")
    elif g.verdict == "worse":
        verdict = "worse"
        line = (f"the recommendation is worse than the prior: expected gain {g.gain:.4f} ({level:.0%} interval "
                f"{g.low:.4f} .. {g.high:.4f}); keep the prior")
    else:
        verdict = "cannot tell"
        line = (f"no mixture is measurably better than the prior at this budget: expected gain {g.gain:.4f} over the "
                f"prior {'as measured' if g.measured else 'as predicted'}, {level:.0%} interval {g.low:.4f} .. "
                f"{g.high:.4f} crosses zero (P(better) {g.p_better:.2f})")
    step = None
    if verdict != "better":
        k = max(4, n_domains)
        if noise is None:
            step = (f"measure the seed noise (design.replicates) and add runs where the fit is unsure: "
                    f"`mixopt propose CONFIG --n {k}`, then `mixopt sweep CONFIG --mixtures` the proposed file")
        elif h_model / norm.ppf(0.5 + level / 2) > noise.paired_sd:
            step = (f"the fit's own error (sd {h_model / norm.ppf(0.5 + level / 2):.4f}) is above the seed noise (sd {noise.paired_sd:.4f}): add runs "
                    f"where it is unsure: `mixopt propose CONFIG --n {k}`, then `mixopt sweep CONFIG --mixtures` "
                    "the proposed file")
        else:
            step = (f"the seed noise ({noise.paired_sd:.4f} between mixtures) is as large as what the fit can "
                    "resolve: train more tokens per proxy (proxy.tokens) or more replicates (design.replicates.seeds)")
    return verdict, line, step


def noise_line(d: Decision, rec=None) -> str:
    """The noise floor, in one line: what one proxy's seed moves, and the CV ceiling it implies."""
    n = d.noise
    if n is None:
        return ("noise floor: not measured (no mixture trained with several seeds; design.replicates measures it): "
                f"the held-out error {d.model_error:.4f} holds seed noise and model error together")
    within = f"; {n.sd_within:.4f} between mixtures at one seed" if n.sd_within is not None else ""
    ceiling = f"; CV R^2 can reach at most {d.ceiling_r2:.2f}" if d.ceiling_r2 is not None else ""
    dep = "; it depends on the mixture (Bartlett p {:.3f})".format(n.bartlett_p) if n.mixture_dependent else ""
    return (f"noise floor: one proxy's objective moves by sd {n.sd_total:.4f} with its seed ({n.mixtures} mixture{'s' if n.mixtures > 1 else ''} x "
            f"{n.proxies // max(n.mixtures, 1)} seeds, {n.dof} dof){within}{ceiling}{dep}; the fit's own error "
            f"beyond it: sd {d.model_error:.4f}")
