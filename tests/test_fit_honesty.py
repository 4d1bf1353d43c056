"""Fits that tell the truth on tables they were not tuned on: the target-column collision, the
log-weight family, auto judged by nested cross-validation, and the warnings a weak or odd fit earns."""

import subprocess
import sys

import numpy as np
import pytest
from conftest import write_csv

from mixopt.core.mixtures import Bounds
from mixopt.fit.optimize import solve_optimum
from mixopt.fit.regress import LOGWEIGHT_EPS, cross_validate, fit_model

D = 5


def test_a_target_named_like_a_weight_column_is_refused(tmp_path):
    """RegMix-style files name a domain's weight and its loss alike: the join would keep the weight."""
    rng = np.random.default_rng(0)
    X = rng.dirichlet(np.ones(3), 20)
    runs = write_csv(tmp_path / "runs.csv", ["id", "Pile-CC", "web", "code"], [[i, *x] for i, x in enumerate(X)])
    scores = write_csv(tmp_path / "scores.csv", ["id", "Pile-CC"],
                       [[i, 3.0 - x[0] + 0.01 * rng.normal()] for i, x in enumerate(X)])
    r = subprocess.run([sys.executable, "-m", "mixopt.cli", "fit", "--runs", runs, "--scores", scores, "--key", "id",
                        "--target", "Pile-CC", "--bootstrap", "0", "--no-plots"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and r.stdout == "", r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert "--target Pile-CC names a column of both" in lines[0] and "rename the score column" in lines[0]


def _logweight_table(n=40, seed=0, noise=0.002):
    """y = 2 + b . log(w + eps) with every b < 0 (each domain helps, with diminishing returns); weights
    rounded to 1e-3 as published swarms are."""
    rng = np.random.default_rng(seed)
    b = np.array([-0.05, -0.02, -0.10, -0.01, -0.03])
    X = np.round(rng.dirichlet(np.full(D, 0.5), n), 3)
    X /= X.sum(axis=1, keepdims=True)
    return X, 2.0 + np.log(X + LOGWEIGHT_EPS) @ b + rng.normal(0, noise, n), b


def test_logweight_recovers_a_known_log_weight_law_and_its_optimum():
    X, y, b = _logweight_table()
    model = fit_model("logweight", X, {"y": y}, {"y": 1.0})
    assert model.params["y"][0] == pytest.approx(2.0, abs=0.01)
    assert np.abs(model.params["y"][1:] - b).max() < 0.002  # 0.0009 here, at 0.002 noise
    assert model.convex()  # every coefficient < 0
    cv = {k: cross_validate(k, X, {"y": y}, {"y": 1.0}, 5, 0) for k in ("linear", "loglinear", "logweight")}
    assert cv["logweight"].spearman > 0.99 and cv["logweight"].r2 > 0.99
    assert cv["linear"].spearman < 0.8 and cv["loglinear"].spearman < 0.85  # 0.72 and 0.81: the shape matters
    # The true optimum of b . log(w + eps) on the simplex: w + eps proportional to b.
    truth = b / b.sum() * (1 + D * LOGWEIGHT_EPS) - LOGWEIGHT_EPS
    w = solve_optimum(model, np.full(D, 1 / D), Bounds(np.zeros(D), np.ones(D), ("none",) * D), 0.0)
    assert np.abs(w - truth).max() < 0.01
