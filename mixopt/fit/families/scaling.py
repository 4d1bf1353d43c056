"""The joint scaling law at one size (fit/scaling.py fits it across sizes and evaluates it at the
target): not a family `--model` names, so not in the registry; fit.json keeps its coefficients."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mixopt.fit.families.base import ParametricModel


@dataclass(frozen=True)
class ScalingLaw(ParametricModel):
    kind = "scaling"

    def convex(self) -> bool:
        return all(a > 0 for a in self.terms.values())  # linear + exp terms

    def evaluate(self, p, X):
        return scaling_law(p, X)

    def term_gradient(self, metric, a, w):
        return a * scaling_law_gradient(self.params[metric], w)


def scaling_law(p: np.ndarray, X: np.ndarray) -> np.ndarray:
    """The joint law at one size: p = [e, a, b, alpha, beta, ln(N/N0), ln(D/D0), (m)] (scaling.py):
    X e + exp(X a - alpha ln N) + exp(X b - beta ln D) (+ exp(X m): the pooled form's mixture effect)."""
    d = X.shape[1]
    e, a, b = p[:d], p[d:2 * d], p[2 * d:3 * d]
    alpha, beta, ln_n, ln_d = p[3 * d:3 * d + 4]
    out = X @ e + np.exp(np.clip(X @ a - alpha * ln_n, -50, 50)) + np.exp(np.clip(X @ b - beta * ln_d, -50, 50))
    if len(p) > 3 * d + 4:
        out = out + np.exp(np.clip(X @ p[3 * d + 4:], -50, 50))
    return out


def scaling_law_gradient(p: np.ndarray, w: np.ndarray) -> np.ndarray:
    d = len(w)
    e, a, b = p[:d], p[d:2 * d], p[2 * d:3 * d]
    alpha, beta, ln_n, ln_d = p[3 * d:3 * d + 4]
    g = (e + a * np.exp(np.clip(w @ a - alpha * ln_n, -50, 50))
         + b * np.exp(np.clip(w @ b - beta * ln_d, -50, 50)))
    if len(p) > 3 * d + 4:
        m = p[3 * d + 4:]
        g = g + m * np.exp(np.clip(w @ m, -50, 50))
    return g
