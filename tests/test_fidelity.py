"""Several proxy sizes in one experiment (design.fidelities), user model configs, and the joint fit
across sizes (fit/fidelity.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import small_config, write_config
from mixopt.config.load import load_experiment
from mixopt.proxy.model import SIZES, param_count, proxy_spec
from mixopt.sweep.plan import load_plan
from mixopt.sweep.store import Store

SMALL = {"hidden_size": 96, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 256,
         "vocab_size": 32000, "model_type": "llama"}  # a slightly larger custom proxy; vocab: the tokenizer's


def mixopt(*args, check=True):
    r = subprocess.run([sys.executable, "-m", "mixopt.cli", *map(str, args)], capture_output=True, text=True,
                       timeout=600)
    if check and r.returncode != 0:
        raise AssertionError(f"mixopt {args} exited {r.returncode}: {r.stderr[-2000:]}")
    return r


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
