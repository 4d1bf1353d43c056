"""Regressors, model selection, intervals and external swarms: on synthetic laws and on RegMix's
published swarm (../shared/anchors/regmix; those tests skip where it is absent)."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import write_csv
from typer.testing import CliRunner

from mixopt.cli import app
from mixopt.core.mixtures import Bounds
from mixopt.fit.external import check_mixtures, load_swarm, read_table
from mixopt.fit.families.law import Law
from mixopt.fit.optimize import solve_optimum
from mixopt.fit.recommend import fit_swarm
from mixopt.fit.regress import (
    cross_validate,
    fit_model,
    spearman,
    tied_with_best,
)
from mixopt.fit.swarm import FitSettings, Swarm

ANCHOR = Path(__file__).resolve().parents[2] / "shared" / "anchors" / "regmix"
TARGET = "metric/the_pile_pile_cc_val_loss"
needs_anchor = pytest.mark.skipif(not (ANCHOR / "train_mixture_1m.csv").is_file(),
                                  reason="RegMix anchor data not present (../shared/anchors/regmix)")


def _law_swarm(n=120, d=5, seed=0, noise=0.002):
    """Two metrics that follow c + exp(w . t) exactly, plus noise; the objective is their mean."""
    rng = np.random.default_rng(seed)
    X = rng.dirichlet(np.full(d, 0.6), n)
    truth = {"a": np.r_[1.5, rng.uniform(-1.5, 0.5, d)], "b": np.r_[2.0, rng.uniform(-1.0, 0.8, d)]}
    metrics = {m: p[0] + np.exp(X @ p[1:]) + rng.normal(0, noise, n) for m, p in truth.items()}
    true_model = Law({"a": 0.5, "b": 0.5}, truth)
    return X, metrics, true_model


def _bounds(d, lower=None, upper=None):
    lo = np.zeros(d) if lower is None else np.asarray(lower, float)
    hi = np.ones(d) if upper is None else np.asarray(upper, float)
    return Bounds(lo, hi, tuple("max" if h < 1 else "none" for h in hi))


def test_law_recovers_a_known_law_and_its_optimum():
    X, metrics, truth = _law_swarm()
    terms = truth.terms
    model = fit_model("law", X, metrics, terms)
    prior = np.full(X.shape[1], 1 / X.shape[1])
    b = _bounds(X.shape[1], upper=[0.6] * X.shape[1])
    w_true = solve_optimum(truth, prior, b, 0.0)
    w_fit = solve_optimum(model, prior, b, 0.0)
    assert np.abs(w_fit - w_true).max() < 0.03  # stated tolerance: 0.03 per weight at 0.2% noise
    assert model.predict(w_fit)[0] == pytest.approx(truth.predict(w_true)[0], abs=0.01)
    assert cross_validate("law", X, metrics, terms, 5, 0).spearman > 0.98


@pytest.mark.parametrize("kind", ["linear", "loglinear", "law", "quadratic", "gp", "gbm", "ensemble"])
def test_every_optimum_satisfies_its_constraints(kind):
    X, metrics, truth = _law_swarm(n=80, seed=1)
    d = X.shape[1]
    b = _bounds(d, lower=[0.05, 0.0, 0.1, 0.0, 0.0], upper=[0.4, 0.3, 0.5, 0.6, 0.2])
    swarm = Swarm([f"d{i}" for i in range(d)], X, metrics, truth.terms, [str(i) for i in range(len(X))],
                  np.full(d, 1 / d), b, "mean of a, b")
    rec, _ = fit_swarm(swarm, FitSettings(model=kind, bootstrap=5, kl_weight=0.01))
    w = rec.weights
    assert abs(w.sum() - 1) < 1e-9 and np.all(w >= b.lower - 1e-9) and np.all(w <= b.upper + 1e-9)
    lo, hi = rec.weights_ci.T
    assert np.all(lo >= b.lower - 1e-9) and np.all(hi <= b.upper + 1e-9)  # intervals stay in the bounds too


def test_auto_picks_by_cross_validated_spearman():
    X, metrics, truth = _law_swarm(n=60, seed=2)
    swarm = Swarm([f"d{i}" for i in range(5)], X, metrics, truth.terms, [str(i) for i in range(60)],
                  np.full(5, 0.2), _bounds(5), "mean")
    rec, _ = fit_swarm(swarm, FitSettings(model="auto", bootstrap=0))
    # two metrics (a, b): the shared multitask fit is a candidate too
    assert set(rec.candidates) == {"linear", "loglinear", "law", "quadratic", "logweight", "multitask", "gp", "gbm",
                                   "ensemble"}
    assert rec.model in tied_with_best(rec.candidates)  # within one fold-paired standard error of the best
    assert rec.cv.spearman > rec.candidates["linear"].spearman + 0.03  # the truth is curved: linear must lose



@pytest.mark.parametrize("case,message", [
    ("infeasible bounds", "no mixture satisfies the bounds"),
    ("rows not summing to 1", "row 3: weights sum to 0.7"),
    ("missing target", "target column 'nope' not found"),
    ("unmatched scores", "1 runs in"),
    ("negative weight", "is negative"),
    ("no target", "no --target given"),
    ("both config and runs", "give either CONFIG or --runs"),
])
def test_external_fit_bad_input(case, message, tmp_path):
    X, metrics, _ = _law_swarm(n=20, d=3, seed=3)
    rows = [[i, *x] for i, x in enumerate(X)]
    if case == "rows not summing to 1":
        rows[2][1:] = [0.3, 0.2, 0.2]
    if case == "negative weight":
        rows[4][1:] = [1.2, -0.2, 0.0]
    runs = write_csv(tmp_path / "runs.csv", ["id", "a", "b", "c"], rows)
    score_rows = [[i, v] for i, v in enumerate(metrics["a"])]
    if case == "unmatched scores":
        score_rows = score_rows[1:]
    scores = write_csv(tmp_path / "scores.csv", ["id", "loss"], score_rows)
    args = ["fit", "--runs", runs, "--scores", scores, "--key", "id", "--target", "loss", "--save", tmp_path / "out"]
    if case == "infeasible bounds":
        args += ["--bound", "a=0.5:1", "--bound", "b=0.6:1"]
    if case == "missing target":
        args[args.index("loss")] = "nope"
    if case == "no target":
        i = args.index("--target")
        del args[i:i + 2]
    if case == "both config and runs":
        args.insert(1, tmp_path / "c.yaml")
    r = subprocess.run([sys.executable, "-m", "mixopt.cli", *map(str, args)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2 and r.stdout == "", r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr
    assert message in lines[0], lines[0]
    assert not (tmp_path / "out").exists()  # nothing written


@needs_anchor
def test_regmix_linear_and_auto_rank_the_unseen_test_mixtures():
    swarm = load_swarm(ANCHOR / "train_mixture_1m.csv", {TARGET: 1.0}, ANCHOR / "train_pile_loss_1m.csv", "index")
    test = read_table(ANCHOR / "test_mixture_1m.csv").join(read_table(ANCHOR / "test_pile_loss_1m.csv"), on="index")
    Xt, yt = check_mixtures(test, swarm.domains, "test", 0.01), test[TARGET].to_numpy()
    linear = fit_model("linear", swarm.X, swarm.metrics, swarm.terms)
    assert spearman(linear.predict(Xt), yt) >= 0.90  # 0.902 in RegMix's paper and here
    rec, model = fit_swarm(swarm, FitSettings(model="auto", bootstrap=0))
    assert rec.model == "gbm"
    assert spearman(model.predict(Xt), yt) >= 0.985  # 0.989 here; RegMix's LightGBM: 0.990


@needs_anchor
def test_regmix_predict_ranks_the_best_1b_mixture_first_or_second(tmp_path):
    r = CliRunner().invoke(app, ["fit", "--runs", str(ANCHOR / "train_mixture_1m.csv"), "--scores",
                                 str(ANCHOR / "train_pile_loss_1m.csv"), "--key", "index", "--target", TARGET,
                                 "--bootstrap", "0", "--no-plots", "--save", str(tmp_path / "fit"), "--format", "json"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["predict", str(tmp_path / "fit"), str(ANCHOR / "test_mixture_1B.csv"),
                                 "--format", "json"])
    assert r.exit_code == 0, r.output
    predicted = {row["index"]: row["rank"] for row in json.loads(r.output)}
    measured = read_table(ANCHOR / "test_pile_loss_1B.csv")
    best = measured["index"][int(np.argmin(measured[TARGET].to_numpy()))]
    assert len(predicted) == 64 and predicted[best] == 1


def test_external_fit_save_then_predict_csv(tmp_path):
    """A swarm mixopt did not train: fit it from tables, save, and score new mixtures with the fit."""
    X, metrics, truth = _law_swarm(n=60, d=3, seed=5)
    names = ["code", "web", "books"]
    write_csv(tmp_path / "runs.csv", ["run", *names], [[f"r{i}", *x] for i, x in enumerate(X)])
    write_csv(tmp_path / "scores.csv", ["run", "loss_a", "loss_b"],
              [[f"r{i}", a, b] for i, (a, b) in enumerate(zip(metrics["a"], metrics["b"]))])
    fit = subprocess.run([sys.executable, "-m", "mixopt.cli", "fit", "--runs", tmp_path / "runs.csv", "--scores",
                          tmp_path / "scores.csv", "--key", "run", "--target", "loss_a=0.5", "--target", "loss_b=0.5",
                          "--bootstrap", "5", "--save", tmp_path / "fit", "--format", "json"],
                         capture_output=True, text=True, timeout=300)
    assert fit.returncode == 0, fit.stderr
    rec = json.loads(fit.stdout)
    assert rec["objective"] == "0.5*loss_a + 0.5*loss_b" and rec["runs"] == 60
    assert {p.name for p in (tmp_path / "fit").iterdir()} >= {"fit.json", "runs.parquet", "optimal.yaml",
                                                             "predicted_vs_measured.png", "weight_effects.png"}
    cands = np.random.default_rng(9).dirichlet(np.ones(3), 12)
    write_csv(tmp_path / "cands.csv", ["id", *names], [[f"c{i}", *w] for i, w in enumerate(cands)])
    pred = subprocess.run([sys.executable, "-m", "mixopt.cli", "predict", tmp_path / "fit", tmp_path / "cands.csv"],
                          capture_output=True, text=True, timeout=300)
    assert pred.returncode == 0, pred.stderr
    rows = list(csv.DictReader(pred.stdout.splitlines()))
    assert [r["id"] for r in rows] == [f"c{i}" for i in range(12)] and sorted(int(r["rank"]) for r in rows) == list(range(1, 13))
    true = truth.predict(cands)
    assert spearman(np.array([float(r["predicted"]) for r in rows]), true) > 0.9
