"""Fits that tell the truth on tables they were not tuned on: the target-column collision, the
log-weight family, auto judged by nested cross-validation, and the warnings a weak or odd fit earns."""

import subprocess
import sys

import numpy as np
import pytest
from conftest import write_csv

from mixopt.core.mixtures import Bounds
from mixopt.fit.families.logweight import LOGWEIGHT_EPS
from mixopt.fit.optimize import solve_optimum
from mixopt.fit.recommend import fit_swarm
from mixopt.fit.regress import cross_validate, fit_model, select_model
from mixopt.fit.swarm import FitSettings, Swarm

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


def _swarm(X, y, covariates=None):
    d = X.shape[1]
    return Swarm([f"d{i}" for i in range(d)], X, {"loss": y}, {"loss": 1.0}, [f"r{i}" for i in range(len(X))],
                 np.full(d, 1 / d), Bounds(np.zeros(d), np.ones(d), ("none",) * d), "loss",
                 covariates=covariates or {})


def test_auto_is_judged_by_nested_cv_where_its_own_cv_flatters_it():
    """20 runs, a weak trend under noise: the CV that picks among nine families reports the winner's
    luck; rerunning the pick inside each fold does not, and the warning follows the honest figure."""
    rng = np.random.default_rng(7)
    X = rng.dirichlet(np.ones(4), 20)
    y = 3.0 + 0.08 * X[:, 0] + rng.normal(0, 0.05, 20)
    rec, _ = fit_swarm(_swarm(X, y), FitSettings(bootstrap=0))
    nested = rec.selection_cv
    assert rec.model == "linear" and rec.cv.spearman == pytest.approx(0.544, abs=0.002)  # plain: no warning
    assert nested.spearman == pytest.approx(0.421, abs=0.002) and nested.spearman < rec.cv.spearman
    assert nested.r2 < rec.cv.r2 and nested.folds == 5
    assert nested.r2 == pytest.approx(-2.455, abs=0.01)  # a fold whose inner pick extrapolated wildly
    assert any(w.startswith("auto (picking linear) predicts held-out runs no better than their mean (nested CV R^2 "
                            "-2.455)") for w in rec.warnings)
    # oof in the runs' order: each run predicted by the family its fold's inner selection chose
    assert all(any(np.isclose(nested.oof[i], c.oof[i]) for c in rec.candidates.values()) for i in range(20))
    out = rec.to_json()["cv_nested"]
    assert out == {"spearman": pytest.approx(nested.spearman), "r2": pytest.approx(nested.r2), "folds": 5}
    fixed, _ = fit_swarm(_swarm(X, y), FitSettings(model="linear", bootstrap=0))
    assert fixed.selection_cv is None and fixed.to_json()["cv_nested"] is None


def test_selection_never_prefers_a_family_worse_than_the_mean():
    """Rank and error together: the best ranker at CV R^2 <= 0 loses to a fitting one."""
    from mixopt.fit.regress import CrossValidation

    def cv(rho, r2):
        return CrossValidation(rho, r2, 5, np.zeros(3), np.full(5, rho))
    assert select_model({"law": cv(0.9, -61896.0), "linear": cv(0.6, 0.3)}) == "linear"
    assert select_model({"law": cv(0.2, -1.6e10), "linear": cv(-0.1, -0.2)}) == "linear"  # none fits: least error


def test_a_recommendation_predicted_worse_than_a_run_is_flagged():
    """A strong KL penalty pulls the optimum to the prior, worse (by the model) than run r27."""
    X, y, _ = _logweight_table()
    good, _ = fit_swarm(_swarm(X, y), FitSettings(bootstrap=0))
    assert good.model == "logweight" and good.warnings == ()
    pulled, _ = fit_swarm(_swarm(X, y), FitSettings(bootstrap=0, kl_weight=0.5))
    assert pulled.predicted == pytest.approx(2.309, abs=0.001) and y.min() == pytest.approx(2.293, abs=0.001)
    assert any(w.startswith("the model predicts run r27 (2.3) better than its own recommendation (2.309)")
               for w in pulled.warnings)
    assert any(w.startswith("the best measured run (r27, 2.293) beats the recommendation's predicted objective")
               for w in pulled.warnings)


def test_a_corner_no_run_is_near_is_flagged():
    """Runs clustered at the centre, a linear law: without a trust region the optimum is pure d0."""
    rng = np.random.default_rng(1)
    X = rng.dirichlet(np.full(4, 30.0), 30)
    y = X @ np.array([1.0, 2.0, 3.0, 4.0]) + rng.normal(0, 0.002, 30)
    far, _ = fit_swarm(_swarm(X, y), FitSettings(bootstrap=0, trust_region="none"))
    assert far.weights[0] == pytest.approx(1.0)
    assert any(w.startswith("the recommendation sits at a corner no run is near: L1 1.274 to the nearest run, "
                            "farther than any run is from its own nearest (0.115)") for w in far.warnings)
    near, _ = fit_swarm(_swarm(X, y), FitSettings(bootstrap=0))  # the trust region keeps it among the runs
    assert not any("corner" in w for w in near.warnings)


def test_a_scaling_law_worse_than_the_smaller_size_is_flagged():
    """A bump in d0 the law's shape cannot follow: the 4e6 runs rank the 1.6e7 ones better than it."""
    from mixopt.fit.scaling import fit_scaled

    def table(bump):
        rng = np.random.default_rng(2)
        mixes = rng.dirichlet(np.ones(3), 30)
        sizes = np.repeat([1e6, 4e6, 1.6e7], 30)
        W = np.tile(mixes, (3, 1))
        y = 3.0 - 0.1 * np.log(sizes / 1e6) + bump(W) + rng.normal(0, 0.002, 90)
        return fit_scaled(_swarm(W, y, {"params": sizes}), FitSettings(bootstrap=0), scale="params", at_scale=1e8)[0]

    bumpy = table(lambda W: 0.2 * np.sin(9 * W[:, 0]))
    assert bumpy.candidates["scaling, params=1.6e+07 held out"].spearman == pytest.approx(0.471, abs=0.002)
    assert any(w.startswith("the scaling law fit without params=1.6e+07 ranks those runs worse (Spearman 0.471 "
                            "over 30 mixtures) than the params=4e+06 runs' own measurements") for w in bumpy.warnings)
    smooth = table(lambda W: 0.3 * W[:, 0])  # a shape the law holds: it ranks as well as the measurements
    assert not any("scaling law fit without" in w for w in smooth.warnings)


def test_scores_print_sanely_and_predict_writes_full_precision(tmp_path):
    """A runaway law's CV R^2 is "< -1000", not 47 digits; `predict` CSV keeps 9 digits (6 made ties)."""
    import csv
    import json

    from typer.testing import CliRunner

    from mixopt.cli import app
    from mixopt.fit.regress import score_text

    assert score_text(-1.6e46) == "< -1000" and score_text(-61896.0) == "< -1000" and score_text(0.4567) == "0.457"
    X, y, _ = _logweight_table()
    runs = write_csv(tmp_path / "runs.csv", ["id", *[f"d{i}" for i in range(D)], "loss"],
                     [[i, *x, v] for i, (x, v) in enumerate(zip(X, y))])
    r = CliRunner().invoke(app, ["fit", "--runs", str(runs), "--key", "id", "--target", "loss", "--model", "logweight",
                                 "--bootstrap", "0", "--no-plots", "--save", str(tmp_path / "fit")])
    assert r.exit_code == 0, r.output
    cands = np.random.default_rng(3).dirichlet(np.ones(D), 30)
    cands[1] = cands[0] + np.r_[1e-6, -1e-6, 0, 0, 0]  # 1e-6 apart: predictions equal to 6 digits
    write_csv(tmp_path / "cands.csv", ["id", *[f"d{i}" for i in range(D)]], [[f"c{i}", *w] for i, w in enumerate(cands)])
    as_csv = CliRunner().invoke(app, ["predict", str(tmp_path / "fit"), str(tmp_path / "cands.csv")])
    as_json = CliRunner().invoke(app, ["predict", str(tmp_path / "fit"), str(tmp_path / "cands.csv"), "--format", "json"])
    rows = list(csv.DictReader(as_csv.output.splitlines()))
    exact = [r["predicted"] for r in json.loads(as_json.output)]
    assert [float(r["predicted"]) for r in rows] == pytest.approx(exact, rel=1e-8)
    assert f"{exact[0]:.6g}" == f"{exact[1]:.6g}" and rows[0]["predicted"] != rows[1]["predicted"]
