"""Degenerate swarms through the real CLI (`mixopt fit --runs`): where no fit can mean anything,
one line and exit 2; where it can, a loud warning, a `warnings` list in JSON, and no tight interval
around garbage; and never weight on a domain that no run varied."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import write_csv


def _fit(tmp_path, X, y, *extra, names=None):
    names = names or [f"d{i}" for i in range(X.shape[1])]
    runs = write_csv(tmp_path / "runs.csv", ["run", *names, "loss"],
                     [[f"r{i}", *(repr(float(a)) for a in x), v if isinstance(v, str) else repr(float(v))] for i, (x, v) in enumerate(zip(X, y))])
    args = ["fit", "--runs", runs, "--key", "run", "--target", "loss", "--bootstrap", "8", "--no-plots", *extra]
    return subprocess.run([sys.executable, "-m", "mixopt.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def _one_line_error(r, message):
    assert r.returncode == 2 and r.stdout == "", (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr


@pytest.mark.parametrize("case,message", [
    ("constant target", "is constant (3.25) across the 30 runs"),
    ("two-valued target", "only 2 distinct values"),
    ("near-constant target", "below what a score can resolve"),
    ("one mixture repeated", "only 1 distinct mixtures among the 40 runs"),
    ("non-finite score", "has no finite score"),
])
def test_a_fit_that_cannot_mean_anything_is_refused(case, message, tmp_path):
    rng = np.random.default_rng(0)
    n = 40 if case == "one mixture repeated" else 30
    X = rng.dirichlet(np.ones(4), n)
    y = list(3.0 + X @ np.array([0.1, 0.2, 0.3, 0.4]) + rng.normal(0, 0.01, n))
    if case == "constant target":
        y = [3.25] * n
    if case == "two-valued target":
        y = [3.0 if i % 3 else 3.1 for i in range(n)]
    if case == "near-constant target":
        y = list(3.25 + 1e-9 * rng.normal(size=n))
    if case == "one mixture repeated":
        X = np.tile(X[:1], (n, 1))
    if case == "non-finite score":
        y[7] = "inf"
    _one_line_error(_fit(tmp_path, X, y), message)


def test_a_domain_no_run_varied_gets_no_weight(tmp_path):
    """'web' is 0 in every run: its effect is unknown, so even a linear fit (whose coefficient for it
    is arbitrary) must not put weight there, and the output says why."""
    rng = np.random.default_rng(1)
    X = np.column_stack([rng.dirichlet(np.ones(3), 30), np.zeros(30)])
    y = X[:, :3] @ np.array([3.0, 2.8, 3.1]) + rng.normal(0, 0.005, 30)
    names = ["code", "books", "wiki", "web"]
    r = _fit(tmp_path, X, list(y), "--model", "linear", "--format", "json", names=names)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["weights"]["web"] == 0.0 and out["binding"]["web"] == "held"
    assert any("web (always 0)" in w for w in out["warnings"]), out["warnings"]
    text = _fit(tmp_path, X, list(y), "--model", "linear", names=names)
    assert text.returncode == 0 and "WARNING: 1 domain(s) did not vary across the runs: web" in text.stdout


def test_noise_fit_warns_and_gives_no_interval(tmp_path):
    """A new user's 32 domains that are random splits of one corpus, 49 runs: the objective is
    noise. Every model's CV R^2 is <= 0, so the fit says so loudly and withholds its interval."""
    rng = np.random.default_rng(2)
    X = rng.dirichlet(np.ones(32), 49)
    y = 3.0 + rng.normal(0, 0.01, 49)
    r = _fit(tmp_path, X, list(y), "--format", "json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["reliable"] is False and out["interval"] is None
    assert any("no better than their mean" in w for w in out["warnings"]), out["warnings"]
    assert any("the swarm is small" in w for w in out["warnings"]), out["warnings"]
    assert out["cv"]["r2"] <= 0
    text = _fit(tmp_path, X, list(y))
    assert text.returncode == 0 and "WARNING:" in text.stdout and "interval" not in text.stdout.split("domain")[1]
