"""A table of runs at several model sizes: one joint law, solved at a target size larger than any
run, on a synthetic law whose best mixture moves with the size."""

import csv
import json
import subprocess
import sys

import numpy as np

E = np.array([2.0, 2.3, 2.4])  # the loss each pure domain tends to at infinite size: d0 is best
A = np.array([1.5, -0.5, -0.3])  # what a finite model adds: large for d0, so small runs prefer d1
ALPHA = 0.5
SIZES = [1e6, 4e6, 1.6e7]


def truth(W, N):
    return W @ E + np.exp(W @ A - ALPHA * np.log(N / SIZES[0]))


def test_scaling_law_recommends_for_the_target_size_not_the_proxies(tmp_path):
    rng = np.random.default_rng(0)
    mixes = rng.dirichlet(np.ones(3), 40)
    rows = []
    for N in SIZES:
        for i, w in enumerate(mixes):
            rows.append([f"m{i}@{N:g}", *map(float, w), N, float(truth(w[None, :], N)[0] + rng.normal(0, 0.003))])
    path = tmp_path / "runs.csv"
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["run", "d0", "d1", "d2", "params", "loss"])
        out.writerows(rows)

    def fit(at, *extra):
        r = subprocess.run([sys.executable, "-m", "mixopt.cli", "fit", "--runs", str(path), "--key", "run", "--target",
                            "loss", "--scale-column", "params", "--at-scale", str(at), "--trust-region", "none",
                            "--bootstrap", "5", "--format", "json", *extra], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    big = fit(1e9, "--save", tmp_path / "at1e9")
    assert big["model"] == "scaling" and big["objective"] == "loss at params=1e+09"
    assert big["cv"]["spearman"] > 0.97 and big["reliable"]
    assert big["candidates"]["scaling, params=1.6e+07 held out"]["spearman"] > 0.95  # extrapolates a size up
    # The true optimum at 1e9 is (all but) pure d0; the fit must find it, and predict its loss.
    w = np.array([big["weights"][d] for d in ("d0", "d1", "d2")])
    grid = np.random.default_rng(1).dirichlet(np.ones(3) * 0.3, 100_000)
    best = truth(grid, 1e9).min()
    assert truth(w[None, :], 1e9)[0] < best + 0.01 and w[0] > 0.9
    assert abs(big["predicted"] - truth(w[None, :], 1e9)[0]) < 0.03
    assert not any("extrapolation" in x for x in big["warnings"])  # 62x the largest run: below the 100x note
    # At the proxies' own size the same law prefers d1: the small runs alone point the wrong way.
    small = fit(1e6)
    assert small["weights"]["d0"] < 0.2 and small["weights"]["d1"] > 0.5
    # The saved fit is the law at 1e9: `predict` ranks new mixtures by their loss at that size.
    cands = np.random.default_rng(2).dirichlet(np.ones(3), 50)
    with open(tmp_path / "cands.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["id", "d0", "d1", "d2"])
        out.writerows([[f"c{i}", *map(float, w)] for i, w in enumerate(cands)])
    r = subprocess.run([sys.executable, "-m", "mixopt.cli", "predict", str(tmp_path / "at1e9"), str(tmp_path / "cands.csv"),
                        "--format", "json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    pred = np.array([row["predicted"] for row in json.loads(r.stdout)])
    assert np.abs(pred - truth(cands, 1e9)).max() < 0.03
    from mixopt.fit.regress import spearman

    assert spearman(pred, truth(cands, 1e9)) > 0.95 and spearman(pred, truth(cands, 1e6)) < 0.5
    assert json.loads((tmp_path / "at1e9" / "fit.json").read_text())["model"] == "scaling"
