"""Multi-target: one model shared across many eval metrics (`multitask`) beside the per-metric
families, on a synthetic table of correlated evals with fewer runs than quadratic features."""

import json

import numpy as np
from conftest import write_csv
from typer.testing import CliRunner

from mixopt.cli import app
from mixopt.fit.regress import spearman

D, EVALS, RUNS = 6, 8, 20  # a quadratic in 6 domains has 21 coefficients: more than the runs


def _truth(W):
    """What every eval measures, at its own scale: two pairs of domains that only help together."""
    return -0.05 * W[:, 0] + 0.02 * W[:, 3] - 2.2 * W[:, 0] * W[:, 1] - 1.6 * W[:, 2] * W[:, 4] + 0.4 * W[:, 1] * W[:, 5]



def _evals(seed, noise):
    """RUNS runs, EVALS noisy evals of the same truth (each with its own offset and scale); `noise`
    in units of the truth's spread across mixtures."""
    rng = np.random.default_rng(seed)
    X = rng.dirichlet(np.full(D, 0.8), RUNS)
    fixed = np.random.default_rng(123)
    scale, offset = fixed.uniform(0.5, 1.5, EVALS), fixed.uniform(0.3, 0.8, EVALS)
    sd = _truth(fixed.dirichlet(np.full(D, 0.8), 5000)).std()
    return X, offset + scale * _truth(X)[:, None] + noise * sd * rng.normal(0, 1, (RUNS, EVALS))


TERMS = {"e0": 1.0, "e1": 0.5, **{f"e{k}": 0.0 for k in range(2, EVALS)}}  # two evals counted, six only fit


def test_sharing_helps_on_average_over_swarms():
    """Over eight swarms the shared fit cross-validates better on the objective and ranks unseen
    mixtures closer to the truth than one quadratic per metric (single swarms of 20 runs are noisy)."""
    from mixopt.fit.regress import cross_validate, fit_model

    test = np.random.default_rng(99).dirichlet(np.full(D, 0.8), 300)
    cv, truth = {"quadratic": [], "multitask": []}, {"quadratic": [], "multitask": []}
    for seed in range(1, 9):
        X, E = _evals(seed, noise=0.5)
        metrics = {f"e{k}": E[:, k] for k in range(EVALS)}
        for kind in cv:
            cv[kind].append(cross_validate(kind, X, metrics, TERMS, 5, 0).spearman)
            truth[kind].append(spearman(fit_model(kind, X, metrics, TERMS).predict(test), _truth(test)))
    cv, truth = ({k: np.array(v) for k, v in t.items()} for t in (cv, truth))
    assert cv["multitask"].mean() > cv["quadratic"].mean() + 0.08, cv
    assert truth["multitask"].mean() > truth["quadratic"].mean() + 0.08, truth
    assert (truth["multitask"] > truth["quadratic"]).sum() >= 5, truth


def _table(tmp_path, seed):
    X, E = _evals(seed, noise=0.3)
    return write_csv(tmp_path / "runs.csv", ["run", *[f"d{i}" for i in range(D)], *[f"e{k}" for k in range(EVALS)]],
                     [[f"r{i}", *map(float, x), *map(float, e)] for i, (x, e) in enumerate(zip(X, E))])


def _fit(runs, out, *extra):
    # The objective is two of the evals; the other six are fit (weight 0) but not counted.
    targets = [a for m, w in TERMS.items() for a in ("--target", f"{m}={w:g}")]
    r = CliRunner().invoke(app, ["fit", "--runs", str(runs), "--key", "run", *targets, "--bootstrap", "0",
                                 "--no-plots", "--save", str(out), "--format", "json", *extra])
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def test_a_model_shared_across_evals_beats_per_metric_fits(tmp_path):
    runs = _table(tmp_path, seed=5)
    cands = np.random.default_rng(99).dirichlet(np.full(D, 0.8), 300)
    write_csv(tmp_path / "cands.csv", ["id", *[f"d{i}" for i in range(D)]],
              [[f"c{i}", *map(float, x)] for i, x in enumerate(cands)])
    auto = _fit(runs, tmp_path / "auto")
    cv = {k: v["spearman"] for k, v in auto["candidates"].items()}
    assert auto["objective"] == "e0 + 0.5*e1"
    for k in ("linear", "quadratic", "gp"):
        assert cv["multitask"] > cv[k] + 0.05, cv
    assert auto["model"] == "multitask", cv
    saved = json.loads((tmp_path / "auto" / "fit.json").read_text())
    assert saved["metrics"] == [f"e{k}" for k in range(EVALS)]  # `predict` refits the shared model on all eight
    per_metric = _fit(runs, tmp_path / "quadratic", "--model", "quadratic")
    # Ranking unseen mixtures by the truth: the shared fit borrows the six other evals' runs.
    ranks = {}
    for kind in ("auto", "quadratic"):
        r = CliRunner().invoke(app, ["predict", str(tmp_path / kind), str(tmp_path / "cands.csv"), "--format", "json"])
        assert r.exit_code == 0, r.output
        ranks[kind] = spearman(np.array([row["predicted"] for row in json.loads(r.output)]), _truth(cands))
    assert ranks["auto"] > 0.8 and ranks["auto"] > ranks["quadratic"], ranks
    # The recommended mixture is truly better than every run's (best run: -0.397).
    X, _ = _evals(5, noise=0.3)
    truth = float(_truth(np.array([list(auto["weights"].values())]))[0])
    assert truth < _truth(X).min() - 0.1, (truth, _truth(X).min())
    assert per_metric["model"] == "quadratic" and "multitask" in per_metric["candidates"]
