"""The one place numbers given by a user are validated: weights, bounds, finite values."""

from __future__ import annotations

import math

from mixopt.errors import MixoptError

WEIGHT_TOLERANCE = 1e-3  # weights given by a user must sum to 1 within this; then they are normalized


def check_weights(weights: dict[str, float], domains: list[str], where: str,
                  tolerance: float = WEIGHT_TOLERANCE) -> list[float]:
    """Validate a mixture given as domain -> weight; return it normalized, in canonical order."""
    unknown = sorted(set(weights) - set(domains))
    if unknown:
        raise MixoptError(f"{where}: unknown domain '{unknown[0]}'", f"use one of: {', '.join(domains)}")
    values = [weights.get(d, 0.0) for d in domains]
    for d, v in zip(domains, values):
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            raise MixoptError(f"{where}: weight of '{d}' is {v!r}, not a finite number", "give a number in [0, 1]")
        if v < 0:
            raise MixoptError(f"{where}: weight of '{d}' is negative ({v})", "weights must be >= 0")
    total = sum(values)
    if abs(total - 1.0) > tolerance:
        raise MixoptError(f"{where}: weights sum to {total:.6g}, not 1 (tolerance {tolerance})",
                          "make the weights sum to 1")
    return [v / total for v in values]
