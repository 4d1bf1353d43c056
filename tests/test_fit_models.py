"""The families `auto` cross-validates, its selection rule, and the trust region, on synthetic
swarms whose truth is known."""

import numpy as np

from mixopt.core.mixtures import Bounds
from mixopt.fit.recommend import fit_swarm
from mixopt.fit.regress import CrossValidation, select_model
from mixopt.fit.swarm import FitSettings, Swarm

D = 6


def _swarm(X, y, bounds=None):
    d = X.shape[1]
    b = bounds or Bounds(np.zeros(d), np.ones(d), ("none",) * d)
    return Swarm([f"d{i}" for i in range(d)], X, {"score": y}, {"score": 1.0}, [str(i) for i in range(len(X))],
                 X.mean(axis=0) / X.mean(axis=0).sum(), b, "score")


def _downstream(W):
    """A downstream eval's error: mostly set by two pairs of domains that only help together
    (code x math, books x wiki), with a mild linear trend: interactions a linear shape cannot see."""
    return (0.60 - 0.05 * W[:, 0] + 0.02 * W[:, 3] - 2.2 * W[:, 0] * W[:, 1] - 1.6 * W[:, 2] * W[:, 4]
            + 0.4 * W[:, 1] * W[:, 5])


def test_auto_picks_a_model_that_captures_interactions():
    rng = np.random.default_rng(0)
    X = rng.dirichlet(np.full(D, 0.8), 70)
    y = _downstream(X) + rng.normal(0, 0.004, len(X))
    rec, model = fit_swarm(_swarm(X, y), FitSettings(model="auto", bootstrap=0, trust_region="none"))
    cv = rec.candidates
    assert rec.model in ("quadratic", "gp", "ensemble"), {k: round(v.spearman, 3) for k, v in cv.items()}
    for additive in ("linear", "loglinear", "law"):
        assert rec.cv.spearman > cv[additive].spearman + 0.05, (additive, cv[additive].spearman, rec.cv.spearman)
    # On unseen mixtures the chosen model ranks by the truth, and its optimum is near the true one.
    test = rng.dirichlet(np.full(D, 0.8), 400)
    from mixopt.fit.regress import spearman

    assert spearman(model.predict(test), _downstream(test)) > 0.95
    grid = rng.dirichlet(np.full(D, 0.3), 200_000)
    best_true = _downstream(grid).min()
    assert _downstream(rec.weights[None, :])[0] < best_true + 0.02
    linear_rec, _ = fit_swarm(_swarm(X, y), FitSettings(model="linear", bootstrap=0, trust_region="none"))
    assert _downstream(rec.weights[None, :])[0] < _downstream(linear_rec.weights[None, :])[0] - 0.05


def _cv(folds, pooled):
    return CrossValidation(pooled, 0.5, len(folds), np.zeros(3), np.array(folds, float))


def test_near_ties_go_to_the_model_that_ranks_best_not_the_simplest():
    # linear trails by 0.001 pooled but loses on four folds of five: the better ranker wins.
    cvs = {"linear": _cv([0.80, 0.81, 0.85, 0.80, 0.90], 0.850), "gp": _cv([0.84, 0.86, 0.84, 0.86, 0.85], 0.851)}
    assert select_model(cvs) == "gp"
    # A model clearly behind (more than one paired standard error) is never picked.
    cvs = {"linear": _cv([0.60, 0.61, 0.62, 0.60, 0.61], 0.61), "quadratic": _cv([0.90, 0.91, 0.92, 0.90, 0.91], 0.91)}
    assert select_model(cvs) == "quadratic"


def test_trust_region_keeps_the_recommendation_where_the_runs_are():
    """A linear truth whose best vertex (d0) no run came near (every run has 5-40% of each domain):
    the recommendation stays within the runs' range, and says how far it was pulled in."""
    rng = np.random.default_rng(3)
    d = 4
    X = 0.05 + 0.8 * rng.dirichlet(np.full(d, 4.0), 40)
    X /= X.sum(axis=1, keepdims=True)
    y = X @ np.array([2.0, 3.0, 3.1, 3.2]) + rng.normal(0, 0.002, len(X))
    rec, _ = fit_swarm(_swarm(X, y), FitSettings(model="linear", bootstrap=10))
    lo, hi = X.min(axis=0), X.max(axis=0)
    assert np.all(rec.weights >= lo - 1e-9) and np.all(rec.weights <= hi + 1e-9)
    assert abs(rec.weights[0] - hi[0]) < 1e-6  # pushed to the edge of evidence
    assert rec.unconstrained is not None and rec.unconstrained[0] > 0.99  # the model alone: all on d0
    assert rec.pulled_in > 0.5 and rec.binding[0] == "evidence"
    assert np.all(rec.weights_ci[:, 1] <= hi + 1e-9)  # the intervals stay inside too
    free, _ = fit_swarm(_swarm(X, y), FitSettings(model="linear", bootstrap=0, trust_region="none"))
    assert free.weights[0] > 0.99 and free.unconstrained is None


def test_every_new_family_saves_and_predicts(tmp_path):
    """`fit --save` then `predict` refits the saved family (the ensemble with its members) from runs.parquet."""
    import csv
    import json

    from typer.testing import CliRunner

    from mixopt.cli import app

    rng = np.random.default_rng(5)
    X = rng.dirichlet(np.full(D, 0.8), 50)
    y = _downstream(X) + rng.normal(0, 0.004, len(X))
    with open(tmp_path / "runs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", *[f"d{i}" for i in range(D)], "err"])
        w.writerows([[f"r{i}", *map(float, x), float(v)] for i, (x, v) in enumerate(zip(X, y))])
    cands = rng.dirichlet(np.ones(D), 30)
    with open(tmp_path / "cands.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", *[f"d{i}" for i in range(D)]])
        w.writerows([[f"c{i}", *map(float, x)] for i, x in enumerate(cands)])
    from mixopt.fit.regress import spearman

    for kind in ("quadratic", "gp", "ensemble"):
        out = tmp_path / kind
        r = CliRunner().invoke(app, ["fit", "--runs", str(tmp_path / "runs.csv"), "--key", "run", "--target", "err",
                                     "--model", kind, "--bootstrap", "0", "--no-plots", "--save", str(out),
                                     "--format", "json"])
        assert r.exit_code == 0, r.output
        fit = json.loads(r.output)
        assert fit["model"] == kind and (kind != "ensemble" or len(fit["ensemble_members"]) == 3)
        r = CliRunner().invoke(app, ["predict", str(out), str(tmp_path / "cands.csv"), "--format", "json"])
        assert r.exit_code == 0, r.output
        pred = np.array([row["predicted"] for row in json.loads(r.output)])
        assert spearman(pred, _downstream(cands)) > (0.95 if kind != "ensemble" else 0.8), kind  # it may hold gbm


def test_intervals_hold_their_point_estimate():
    from mixopt.fit.recommend import widened

    ci = widened(np.array([[0.0005, 0.0066], [0.2, 0.3]]), np.array([0.0, 0.25]))
    assert ci.tolist() == [[0.0, 0.0066], [0.2, 0.3]]
    assert widened(np.array([5.09, 5.12]), 5.13) == (5.09, 5.13)
    rng = np.random.default_rng(4)
    X = rng.dirichlet(np.full(D, 0.8), 60)
    rec, _ = fit_swarm(_swarm(X, _downstream(X) + rng.normal(0, 0.004, 60)), FitSettings(model="gbm", bootstrap=8))
    lo, hi = rec.weights_ci.T
    assert np.all(lo <= rec.weights + 1e-12) and np.all(rec.weights <= hi + 1e-12)
    assert rec.predicted_ci[0] <= rec.predicted <= rec.predicted_ci[1]


def test_the_schema_the_cli_and_the_registry_name_the_same_families():
    import typing

    from mixopt.cli import Model
    from mixopt.config.schema import MODELS, Fit
    from mixopt.fit.families import CLASSES, FAMILIES, NAMES

    assert MODELS == NAMES == tuple(FAMILIES) == tuple(CLASSES)
    assert all(cls.kind == name for name, cls in FAMILIES.items())  # fit.json's "model" is the registry's name
    assert [m.value for m in Model] == [*NAMES, "auto"]
    assert typing.get_args(Fit.model_fields["model"].annotation) == (*NAMES, "auto")


def test_an_unknown_family_is_one_error_listing_the_valid_names():
    import pytest

    from mixopt.errors import MixoptError
    from mixopt.fit.families import NAMES, family
    from mixopt.fit.regress import fit_model

    with pytest.raises(MixoptError) as e:
        fit_model("lasso", np.eye(3), {"y": np.ones(3)}, {"y": 1.0})
    assert e.value.one_line() == ("no model family 'lasso'; use one of: linear, loglinear, law, quadratic, logweight, "
                                  "multitask, gp, gbm, ensemble (or auto)")
    assert family("gp").kind == "gp" and len(NAMES) == 9
