"""Seed noise, the two intervals and the verdict: the noise model on synthetic swarms with known
noise, the verdict's both branches through the real CLI, and `verify --seeds` on trained proxies."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from conftest import invoke_ok, sample_as_version_1, write_csv

from mixopt.core.mixtures import Bounds
from mixopt.fit.noise import collapse_replicates
from mixopt.fit.swarm import Swarm


def _swarm(X, y, d):
    return Swarm([f"d{i}" for i in range(d)], X, {"m": y}, {"m": 1.0}, [str(i) for i in range(len(y))],
                 np.ones(d) / d, Bounds(np.zeros(d), np.ones(d), ("none",) * d), "m")


def _replicated(rng, sd_within, shifts, n=40, groups=6, d=4):
    """n mixtures at seed 0, the first `groups` of them again at every other seed (shift per seed)."""
    X = rng.dirichlet(np.ones(d), n)
    mean = 3 + 0.4 * (X ** 2).sum(1)
    rows, y, seed = [], [], []
    for s, c in enumerate(shifts):
        for i in range(n if s == 0 else groups):
            rows.append(X[i])
            y.append(mean[i] + c + rng.normal(0, sd_within))
            seed.append(s)
    return _swarm(np.array(rows), np.array(y), d), np.array(seed), mean


def test_noise_model_recovers_known_noise_and_shift():
    rng = np.random.default_rng(0)
    est_within, est_seed, offsets = [], [], []
    for _ in range(20):
        shifts = rng.normal(0, 0.05, 4)  # a seed moves every mixture together (common random numbers)
        sw, seed, mean = _replicated(rng, 0.01, shifts)
        col = collapse_replicates(sw, seed)
        n = col.noise
        assert (n.mixtures, n.proxies, n.seeds, n.dof) == (6, 24, 4, 24 - 6 - 3)
        est_within.append(n.sd_within)
        est_seed.append(n.sd_seed)
        # one row per mixture, brought to the mean over the seeds measured
        assert len(col.swarm.keys) == 40 and col.swarm.replicate is None
        offsets.append(np.mean(col.swarm.y - mean) - np.mean(shifts))
    assert 0.008 < np.mean(est_within) < 0.012  # truth 0.01
    assert 0.03 < np.mean(est_seed) < 0.065  # truth 0.05 (4 seeds each: a noisy estimate, unbiased on average)
    assert abs(np.mean(offsets)) < 0.004 and np.std(offsets) < 0.01  # the shift is taken out, not the noise's 0.05


def test_noise_model_without_labels_and_without_replicates():
    rng = np.random.default_rng(1)
    X = rng.dirichlet(np.ones(3), 20)
    X = np.vstack([X, X[:5], X[:5]])
    y = 2 + X[:, 0] + rng.normal(0, 0.02, len(X))
    col = collapse_replicates(_swarm(X, y, 3), None)  # an external table with repeated mixtures
    assert col.noise.seeds == 0 and col.noise.sd_seed is None and col.noise.dof == 10
    assert 0.01 < col.noise.sd_total < 0.035 and col.noise.paired_sd == col.noise.sd_total
    assert col.counts.tolist().count(3) == 5 and len(col.swarm.keys) == 20
    plain = collapse_replicates(_swarm(X[:20], y[:20], 3), None)
    assert plain.noise is None and len(plain.swarm.keys) == 20


def test_mixture_dependent_noise_is_detected():
    rng = np.random.default_rng(2)
    X = rng.dirichlet(np.ones(3), 4)
    rows, y = [], []
    for i, sd in enumerate([0.002, 0.002, 0.002, 0.05]):  # the last mixture 25x noisier (Marin: code-only)
        for _ in range(8):
            rows.append(X[i])
            y.append(3 + X[i, 0] + rng.normal(0, sd))
    col = collapse_replicates(_swarm(np.array(rows), np.array(y), 3), None)
    assert col.noise.mixture_dependent and col.noise.bartlett_p < 0.01
    assert col.noise.sd_at(X[3]) > 1.9 * col.noise.sd_at(X[0]) and col.noise.sd_at(X[0]) == col.noise.sd_total
    assert col.noise.sd_at(X[3]) >= col.noise.sd_total


def _table(tmp_path, effect: float, seed: int):
    """A 4-domain swarm whose objective falls with domain a by `effect` (0: the mixture does nothing),
    seed noise 0.01; three mixtures (the prior first) repeated twice more."""
    rng = np.random.default_rng(seed)
    X = np.vstack([np.full(4, 0.25), rng.dirichlet(np.ones(4), 33)])
    f = lambda W: 3 - effect * W[:, 0] + 0.5 * effect * W[:, 0] ** 2  # noqa: E731
    rows = [[f"r{i}", *X[i], f(X[i:i + 1])[0] + rng.normal(0, 0.01)] for i in range(len(X))]
    rows += [[f"r{i}s{s}", *X[i], f(X[i:i + 1])[0] + rng.normal(0, 0.01)] for i in range(3) for s in (1, 2)]
    return write_csv(tmp_path / f"swarm{effect}.csv", ["id", "a", "b", "c", "e", "loss"], rows)


def test_verdict_better_through_the_cli(tmp_path):
    out = invoke_ok("fit", "--runs", _table(tmp_path, 0.3, 0), "--target", "loss", "--domains", "a,b,c,e",
                    "--bootstrap", "20", "--format", "json")
    d = json.loads(out)["decision"]
    assert d["verdict"] == "better" and d["gains"][0]["against"] == "prior"
    g = d["gains"][0]
    assert g["interval"][0] > 0 and g["p_better"] > 0.95 and d["next_step"] is None
    assert 0.004 < d["noise"]["sd_one_proxy"] < 0.025  # truth 0.01, from 3 mixtures x 3 runs
    lo, hi = d["mean_interval"]
    plo, phi = d["new_proxy_interval"]
    assert plo < lo < hi < phi  # one new proxy adds its seed noise to the mean's uncertainty
    text = invoke_ok("fit", "--runs", _table(tmp_path, 0.3, 0), "--target", "loss", "--domains", "a,b,c,e",
                     "--bootstrap", "20")
    assert "verdict: the recommendation is better than the prior: expected gain" in text
    assert "noise floor: one proxy's objective moves by sd" in text and "for one new proxy" in text


def test_verdict_cannot_tell_through_the_cli(tmp_path):
    against = tmp_path / "human.yaml"
    against.write_text(yaml.safe_dump({"weights": {"a": 0.4, "b": 0.2, "c": 0.2, "e": 0.2}}))
    out = invoke_ok("fit", "--runs", _table(tmp_path, 0.0, 1), "--target", "loss", "--domains", "a,b,c,e",
                    "--bootstrap", "20", "--against", against)
    assert "verdict: no mixture is measurably better than the prior at this budget" in out
    assert "next step:" in out and "against human.yaml: gain" in out
    line = [ln for ln in out.splitlines() if ln.startswith("verdict:")][0]
    assert len(line) < 300  # one plain line


def test_predict_gives_both_intervals(tmp_path):
    save = tmp_path / "fit"
    invoke_ok("fit", "--runs", _table(tmp_path, 0.3, 0), "--target", "loss", "--domains", "a,b,c,e",
              "--bootstrap", "10", "--save", save)
    cands = write_csv(tmp_path / "cands.csv", ["id", "a", "b", "c", "e"], [["x", 0.7, 0.1, 0.1, 0.1],
                                                                           ["y", 0.1, 0.3, 0.3, 0.3]])
    rows = json.loads(invoke_ok("predict", save, cands, "--format", "json"))
    for r in rows:
        assert r["proxy_low"] < r["mean_low"] < r["predicted"] < r["mean_high"] < r["proxy_high"]
    csv = invoke_ok("predict", save, cands).splitlines()
    assert csv[0] == "id,predicted,rank,mean_low,mean_high,proxy_low,proxy_high"


@pytest.mark.slow
def test_verify_seeds_on_trained_proxies(make_config):
    """A sweep with replicates, fit, then `verify --seeds 2` twice: the same prediction (the saved
    fit's, not a refit with the verification runs), paired seeds, the verdict checked."""
    cfg = make_config(design={"runs": 10, "min_weight": 0.01, "replicates": {"seeds": 3, "mixtures": 2}})
    env = {"MIXOPT_AUTO_BATCH": "1", "MIXOPT_AUTO_COMPILE": "off"}

    def cli(*args):
        import os

        r = subprocess.run([sys.executable, "-m", "mixopt.cli", *map(str, args)], capture_output=True, text=True,
                           timeout=900, env={**os.environ, **env})
        assert r.returncode == 0, r.stderr
        return r.stdout

    sample_as_version_1(cfg)  # the fit cross-validates on version 1's draw (conftest)
    cli("sample", cfg)
    cli("sweep", cfg, "--workers", "2", "--no-progress")
    st = json.loads(cli("status", cfg, "--format", "json"))
    assert len(st["replicates"]) == 2 and all(g["seeds"] == 3 and g["done"] == 3 for g in st["replicates"])
    fit = json.loads(cli("fit", cfg, "--format", "json"))
    assert fit["decision"]["noise"]["replicated_mixtures"] == 2 and fit["decision"]["noise"]["seeds"] == 3
    first = json.loads(cli("verify", cfg, "--seeds", "2", "--workers", "2", "--no-progress", "--format", "json"))
    assert first["seeds"] == 2 and [len(m["measured"]) for m in first["mixtures"]] == [2, 2]
    assert first["predicted"] == pytest.approx(fit["predicted"], rel=1e-6)  # the saved fit's, refit from its table
    assert first["trained"] == 2  # the recommendation at seeds 0 and 1; the prior's were design replicates
    if fit["reliable"]:  # an unreliable fit gives no interval (and verify says so by giving none)
        assert first["interval"] == pytest.approx(fit["interval"]["predicted"])
        assert first["inside_interval"] == (first["interval"][0] <= first["measured"] <= first["interval"][1])
    else:
        assert first["interval"] is None and fit["decision"]["verdict"] == "cannot tell"
    diffs = np.array(first["mixtures"][1]["measured"]) - np.array(first["mixtures"][0]["measured"])
    assert first["gain"] == pytest.approx(diffs.mean())
    lo, hi = first["gain_interval"]
    assert lo < first["gain"] < hi and first["verdict"] in ("better", "worse", "cannot tell")
    assert first["agrees_with_fit"] == (fit["decision"]["verdict"] != "better" or first["gain"] > 0)
    again = json.loads(cli("verify", cfg, "--seeds", "2", "--workers", "2", "--no-progress", "--format", "json"))
    assert again["trained"] == 0 and again["predicted"] == first["predicted"]
    text = cli("verify", cfg, "--seeds", "2", "--no-progress")
    assert "paired gain over the prior (same seeds):" in text and "interval for the seed-mean" in text
