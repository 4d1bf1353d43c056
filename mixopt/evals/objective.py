"""The objective, one formula: a weighted sum of metrics (metric -> signed weight; lower is better).
Suite.objective_terms gives a suite's weights; the sweep's scores, the CSV export and the fit (on
arrays of measurements, or an external table's terms) all sum with this. Imports nothing: the fit
core uses it without loading the suite's readers."""

from __future__ import annotations


def objective_of(terms: dict, metrics: dict):
    """sum of weight x metric over the terms; metrics are numbers or arrays (one value per run)."""
    return sum(a * metrics[m] for m, a in terms.items())
