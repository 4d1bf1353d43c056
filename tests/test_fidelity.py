"""Several proxy sizes in one experiment (design.fidelities), user model configs, and the joint fit
across sizes (fit/fidelity.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import mixopt, small_config, write_config
from mixopt.config.load import load_experiment
from mixopt.fit.fidelity import NEITHER
from mixopt.proxy.model import SIZES, param_count, proxy_spec
from mixopt.sweep.plan import load_plan
from mixopt.sweep.store import Store

SMALL = {"hidden_size": 96, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 256,
         "vocab_size": 32000, "model_type": "llama"}  # a slightly larger custom proxy; vocab: the tokenizer's


def two_fidelity_config(corpora: Path, root: Path, **overrides) -> Path:
    (root / "small.json").write_text(json.dumps(SMALL))
    cfg = small_config(corpora, root / "ws", design={"min_weight": 0.01, "replicates": None, "fidelities": [
        {"size": "tiny", "runs": 6}, {"model_config": "small.json", "runs": 4}]}, **overrides)
    return write_config(root / "multi.yaml", cfg)


@pytest.fixture(scope="module")
def multi(corpora, tmp_path_factory) -> Path:
    """tiny x (6 random + prior + 3 vertices) and a custom 'small' x 4, sampled and swept."""
    root = tmp_path_factory.mktemp("multi")
    cfg = two_fidelity_config(corpora, root)
    mixopt("sample", cfg)
    mixopt("sweep", cfg, "--workers", "2", "--no-progress")
    return cfg


def test_fidelity_runs_are_keyed_by_size_and_the_swarm_keeps_its_keys(multi):
    exp = load_experiment(multi)
    assert exp.proxy.size == "tiny" and exp.design.runs == 6
    one_size = load_experiment(write_config(multi.parent / "plain.yaml", {
        **{k: v for k, v in __import__("yaml").safe_load(multi.read_text()).items() if k != "design"},
        "design": {"runs": 6, "min_weight": 0.01, "replicates": None}}))
    base = load_plan(exp)
    assert base.keys == load_plan(one_size).keys  # the same runs as the one-size config's: nothing invalidated
    from mixopt.sweep.fidelity import fidelities

    big = load_plan(fidelities(exp)[1].exp, design=False)
    assert big.spec.size == "config:small" and big.spec.hidden == 96 and big.spec.intermediate == 256
    assert big.context != base.context
    with Store(base.workspace.db_path) as store:
        small_runs = big.runs(store, "done")
        tiny_runs = base.runs(store, "done")
    assert len(small_runs) == 4 and len(tiny_runs) == 10
    tiny_w = {tuple(round(x, 9) for x in r.weights) for r in tiny_runs}
    # nested: every larger proxy trains a mixture the tiny swarm measured (never a single domain); the prior first
    assert all(tuple(round(x, 9) for x in r.weights) in tiny_w for r in small_runs)
    assert all(sum(x > 0 for x in r.weights) > 1 for r in small_runs)
    assert any(r.origin.startswith("fidelity:small:prior") for r in small_runs)
    n = param_count(big.spec)
    for r in small_runs:  # each run records its compute
        assert r.params == n and r.flops == pytest.approx(6 * n * r.tokens) and r.device_seconds > 0
    again = mixopt("sweep", multi, "--no-progress", "--format", "json")
    assert json.loads(again.stdout)["trained"] == 0  # resumed: nothing trained twice, no new picks


def test_status_and_export_group_runs_by_size(multi):
    st = json.loads(mixopt("status", multi, "--format", "json").stdout)
    sizes = {z["size"]: z for z in st["sizes"]}
    assert list(sizes) == ["tiny", "small"]
    assert sizes["tiny"]["done"] == 10 and sizes["small"]["done"] == 4 and sizes["small"]["asked"] == 4
    assert sizes["small"]["params"] > sizes["tiny"]["params"]
    assert st["compute"]["flops"] == pytest.approx(sizes["tiny"]["flops"] + sizes["small"]["flops"])
    text = mixopt("status", multi).stdout
    assert "size small (" in text and "compute spent (all runs in store):" in text
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(mixopt("export", multi).stdout)))
    assert sorted({r["size"] for r in rows}) == ["small", "tiny"]
    assert sum(r["size"] == "small" for r in rows) == 4
    assert all(float(r["flops"]) > 0 for r in rows)


def test_fit_with_fidelities_is_one_law_across_sizes(multi):
    """End to end: tiny x 10 and a custom 'small' x 4 fit one law; the recommendation is for the
    largest fidelity's parameters (optimum.target_size unset), with the cross-scale rank
    correlation and how far the larger proxies moved the answer."""
    out = json.loads(mixopt("fit", multi, "--format", "json").stdout)
    f = out["fidelity"]
    exp = load_experiment(multi)
    from mixopt.sweep.fidelity import fidelities

    small = param_count(load_plan(fidelities(exp)[1].exp, design=False).spec)
    assert f["target_size"] == small
    if f["used"] == "the law across sizes":
        assert out["objective"].endswith(f"at params={small:g}")
        assert out["reliable"] or not f["single_fidelity"]["reliable"]  # never an unsupported law over a good fit
    else:  # a law that does not cross-validate never replaces the swarm's own fit: said, not hidden
        assert f["used"] in ("the tiny swarm's own fit", NEITHER) and "at params" not in out["objective"]
        assert any("the law across sizes does not cross-validate" in w or w.startswith("neither the law across sizes")
                   for w in out["warnings"])
    assert [z["size"] for z in f["sizes"]] == ["tiny", "small"] and [z["runs"] for z in f["sizes"]] == [10, 4]
    law_used = f["used"] == "the law across sizes"  # else the swarm's own recommendation, the law's numbers reported
    assert f["law"] in ("additive", "pooled") and out.get("law") == (f["law"] if law_used else None)
    assert set(out["candidates"] if law_used else f["law_cv"]) >= {"scaling", "scaling: pooled"}
    cs = f["cross_scale"][0]
    assert cs["size"] == "small" and cs["mixtures"] == 4 and cs["shared"] == 4
    assert cs["spearman_predicted"] is not None and -1 <= cs["spearman_predicted"] <= 1
    single = np.array(list(f["single_fidelity"]["weights"].values()))
    law_w = out["weights"] if law_used else f["law_recommendation"]
    assert f["moved_l1"] == pytest.approx(np.abs(single - np.array(list(law_w.values()))).sum())
    assert np.isfinite(f["predicted_difference"])
    doc = __import__("yaml").safe_load(exp.optimal_path.read_text())
    assert doc["across_sizes"]["target_size"] == small and set(doc["across_sizes"]["sizes"]) == {"tiny", "small"}
    text = mixopt("fit", multi).stdout
    assert "across sizes: tiny (" in text and "cross-scale rank correlation, tiny fit's predictions vs small" in text
    assert f"the larger proxies {'moved' if law_used else 'would move'} the answer by L1" in text


def test_model_config_errors_are_one_line(corpora, tmp_path):
    bad = {"hidden_size": 96, "num_hidden_layers": 2, "num_attention_heads": 5, "intermediate_size": 256}
    cases = [({**SMALL, "hidden_size": "96"}, "'hidden_size' is '96', not a positive integer"),
             ({k: v for k, v in SMALL.items() if k != "intermediate_size"}, "'intermediate_size' is missing"),
             (bad, "hidden_size 96 is not num_attention_heads 5 x an even head size"),
             ({**SMALL, "num_key_value_heads": 1}, "grouped-query attention is not implemented")]
    for i, (body, said) in enumerate(cases):
        root = tmp_path / str(i)
        root.mkdir()
        cfg = two_fidelity_config(corpora, root)
        (root / "small.json").write_text(json.dumps(body))
        r = mixopt("status", cfg, check=False)
        assert r.returncode == 2 and said in r.stderr and "design.fidelities.1.model_config" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    (root / "small.json").write_text("{not json")
    r = mixopt("status", cfg, check=False)
    assert r.returncode == 2 and "not valid JSON" in r.stderr
    cfg = write_config(tmp_path / "clash.yaml", small_config(corpora, tmp_path / "w2", design={
        "fidelities": [{"size": "1m", "runs": 4}, {"size": "5m", "runs": 2}]}))
    r = mixopt("status", cfg, check=False)
    assert r.returncode == 2 and "design.fidelities[0].size is '1m' but proxy.size is 'tiny'" in r.stderr


def test_built_in_sizes_reach_150m():
    from mixopt.config.schema import PROXY_SIZES, Proxy

    assert tuple(SIZES) == PROXY_SIZES
    for size, low, high in (("60m", 50e6, 70e6), ("150m", 130e6, 170e6)):
        spec = proxy_spec(Proxy(size=size), 0)
        assert low < param_count(spec) < high  # non-embedding parameters (vocab 0)
    own = proxy_spec(Proxy(model_config="x/own.json"), 8192, {"hidden": 768, "layers": 12, "heads": 12,
                                                              "intermediate": 3072})
    assert own.size == "config:own" and own.lr == SIZES["150m"][5]  # the nearest built-in size's lr
    assert "intermediate" not in proxy_spec(Proxy(size="tiny"), 512).to_dict()  # built-in keys unchanged


def _law_tables(law, sizes, n_mix=30, noise=0.002, seed=0):
    """Per-size tables (size_swarms' shape) of mixtures measured under `law(W, N)`."""
    from mixopt.core.mixtures import Bounds
    from mixopt.fit.swarm import Swarm

    rng = np.random.default_rng(seed)
    W = rng.dirichlet(np.ones(3), n_mix)
    out = []
    for k, N in enumerate(sizes):
        rows = W if k == 0 else W[:max(4, n_mix // (3 * k))]  # fewer mixtures at the larger sizes, nested
        y = law(rows, N) + rng.normal(0, noise, len(rows))
        s = Swarm(["d0", "d1", "d2"], rows, {"loss": y}, {"loss": 1.0}, [f"m{i}@{N:g}" for i in range(len(rows))],
                  np.ones(3) / 3, Bounds(np.zeros(3), np.ones(3), ("none",) * 3), "loss")
        out.append({"size": f"{N:g}", "params": N, "tokens": 1e6, "swarm": s, "runs": len(rows),
                    "mixtures": len(rows), "noise_sd": None})
    return out


def _moving(W, N):
    """The best mixture moves with size: d1 is best for small models, d0 for large ones."""
    e, a = np.array([2.0, 2.4, 2.8]), np.array([1.2, -0.6, 0.0])
    return W @ e + np.exp(W @ a - 0.6 * np.log(N / 1e5))


def _fixed(W, N):
    """A mixture effect the same at every size, plus a size offset."""
    return W @ np.array([2.5, 2.2, 2.9]) + np.exp(0.5 - 0.5 * np.log(N / 1e5))


def test_joint_law_finds_the_known_optimum_at_the_target_size():
    """Fit layer, no training: three sizes from a law whose best mixture moves with size; the joint
    fit recommends the target size's optimum (pure d0), not the small swarm's (d1)."""
    from mixopt.fit.fidelity import cross_scale, joint_swarm
    from mixopt.fit.regress import fit_model
    from mixopt.fit.scaling import fit_scaled
    from mixopt.fit.swarm import FitSettings

    sizes = _law_tables(_moving, [1e5, 4e5, 1.6e6])
    settings = FitSettings("loglinear", 4, 0, 0.0, 5, trust_region="none")
    rec, model = fit_scaled(joint_swarm(sizes), settings, "params", 1e8)
    grid = np.random.default_rng(1).dirichlet(np.ones(3) * 0.3, 50_000)
    assert rec.law == "additive" and rec.candidates["scaling"].r2 > rec.candidates["scaling: pooled"].r2
    assert _moving(rec.weights[None, :], 1e8)[0] < _moving(grid, 1e8).min() + 0.01 and rec.weights[0] > 0.8
    assert rec.predicted_ci is not None and rec.predicted_ci[0] <= rec.predicted <= rec.predicted_ci[1]
    small = sizes[0]["swarm"]
    single = fit_model("quadratic", small.X, small.metrics, small.terms)
    cs = cross_scale(sizes, single)
    assert [c["size"] for c in cs] == ["400000", "1.6e+06"] and all(c["shared"] == c["mixtures"] for c in cs)
    assert cs[0]["spearman_measured"] > cs[1]["spearman_measured"]  # the order drifts as the size grows
    # the pooled law, where the mixture effect does not move: CV prefers it (fewer parameters), same optimum
    sizes = _law_tables(_fixed, [1e5, 4e5, 1.6e6], seed=3)
    rec, _ = fit_scaled(joint_swarm(sizes), settings, "params", 1e8)
    assert rec.law == "pooled" and rec.weights[1] > 0.9


def test_verify_size_runs_are_data_for_the_joint_fit(make_config):
    """A one-size config with optimum.target_size: `fit` says only one size has runs; `verify --size 1m`
    trains at 1m; the next `fit` fits one law over tiny and 1m with those runs in it."""
    cfg = make_config(design__runs=6, optimum={"target_size": 5e6})
    mixopt("sample", cfg)
    mixopt("sweep", cfg, "--workers", "2", "--no-progress")
    first = mixopt("fit", cfg, "--format", "json")
    assert "fidelity" not in json.loads(first.stdout) and "only proxies of tiny have finished runs" in first.stderr
    said = mixopt("verify", cfg, "--size", "1m", "--top", "2", "--no-progress").stdout
    assert "these 1m runs are data for the fit across sizes" in said
    out = json.loads(mixopt("fit", cfg, "--format", "json").stdout)
    f = out["fidelity"]
    assert [z["size"] for z in f["sizes"]] == ["tiny", "1m"] and f["sizes"][1]["runs"] == 4
    assert f["target_size"] == 5e6
    assert out["objective"].endswith("at params=5e+06") or f["used"] in ("the tiny swarm's own fit", NEITHER)
    assert f["cross_scale"][0]["shared"] >= 3  # the prior and the best runs were measured at both sizes
    st = json.loads(mixopt("status", cfg, "--format", "json").stdout)
    assert [z["size"] for z in st["sizes"]] == ["tiny", "1m"] and st["sizes"][1]["done"] == 4
    assert st["cost"]["superseded"] == 0  # the 1m runs are in use, not superseded


def _loglinear_effect(W, N):
    """The shape the swarm's own loglinear fit finds on real corpora: a mixture effect with curvature
    (w . e + exp(w . m)), the same at every size, plus a size offset."""
    return W @ np.array([2.0, 2.2, 2.1]) + np.exp(W @ np.array([1.8, -0.4, 0.9])) + np.exp(0.3 - 0.5 * np.log(N / 1e5))


@pytest.mark.parametrize("seed", [0, 1])
def test_pooled_law_follows_a_curved_mixture_effect_and_largest_size_runs_are_held_out_one_at_a_time(seed):
    """Fit layer, no training: 14 tiny mixtures + the 3 vertices and 4 mixtures at a larger size, as
    design.fidelities gives. The pooled form's mixture effect has the swarm's curvature (a linear
    w . e alone cross-validated at R^2 0.60-0.88 here, and at -1.5 on the demo's corpora, so the law
    was never used), and the held-out check leaves each larger run out in turn: leaving out the whole
    larger size leaves the law's rate undetermined with two sizes (R^2 -5877 at seed 0)."""
    from dataclasses import replace

    from mixopt.fit.fidelity import joint_swarm
    from mixopt.fit.scaling import fit_scaled
    from mixopt.fit.swarm import FitSettings

    sizes = _law_tables(_loglinear_effect, [1e5, 4e5], n_mix=14, noise=0.01, seed=seed)
    s0, V = sizes[0]["swarm"], np.eye(3)
    sizes[0]["swarm"] = replace(s0, X=np.vstack([s0.X, V]), keys=[*s0.keys, "v0", "v1", "v2"],
                                metrics={"loss": np.r_[s0.metrics["loss"], _loglinear_effect(V, 1e5)]})
    rec, _ = fit_scaled(joint_swarm(sizes), FitSettings("loglinear", 5, 0, 0.0, 5, trust_region="none"), "params", 1e6)
    assert rec.candidates["scaling: pooled"].r2 > 0.95 and rec.reliable
    held = rec.candidates["scaling, params=400000 runs held out one at a time"]
    assert len(held.oof) == 4 and held.r2 > 0.9 and held.spearman > 0.7
    grid = np.random.default_rng(1).dirichlet(np.ones(3), 20_000)
    assert _loglinear_effect(rec.weights[None, :], 1e6)[0] < _loglinear_effect(grid, 1e6).min() + 0.1


def test_when_neither_the_law_nor_the_swarm_cross_validates_neither_decides(monkeypatch):
    """Fit layer, no training: sizes measured as pure seed noise. The law across sizes used to replace a
    swarm fit that did not cross-validate even when it did not either, and then left the verdict to the
    verification alone; now neither is trusted, it is said, and the verdict stays "cannot tell"."""
    from types import SimpleNamespace

    import mixopt.fit.fidelity as fid
    from mixopt.config.runtime import Runtime
    from mixopt.fit.recommend import fit_swarm
    from mixopt.fit.swarm import FitSettings

    # seed 1: both fail (at seed 0 the additive law cross-validated on the noise by chance, R^2 0.145)
    sizes = _law_tables(lambda W, N: np.full(len(W), 3.0), [1e5, 4e5], n_mix=14, noise=0.05, seed=1)
    settings = FitSettings("loglinear", 5, 0, 0.0, 0, trust_region="none")
    single, model = fit_swarm(sizes[0]["swarm"], settings)
    assert not single.reliable and single.decision.verdict == "cannot tell"
    monkeypatch.setattr(fid, "size_swarms", lambda *a: sizes)
    exp = SimpleNamespace(optimum=SimpleNamespace(target_size=None, target_tokens=None))
    rec, _, table = fid.fit_across_sizes(exp, None, sizes[0]["swarm"], settings, single, model, "k", Runtime(), False)
    f = rec.fidelity
    assert f["law_cv"][{"additive": "scaling", "pooled": "scaling: pooled"}[f["law"]]]["r2"] <= 0  # the law failed too
    assert f["used"] == fid.NEITHER and table is None and rec.decision.verdict == "cannot tell"
    assert np.allclose(rec.weights, single.weights) and "law_recommendation" in f
    assert any(w.startswith("neither the law across sizes (CV R^2 ") and 'the verdict stays "cannot tell"' in w
               for w in rec.warnings)
