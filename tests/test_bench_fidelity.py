"""bench/fidelity.py end to end on the tests' real-text domains, at the smallest budget that still
has both arms, a 1m verification and a joint law: the JSON's structure and the equal-compute
accounting (the arms' FLOPs, as their stores record them, within one tiny proxy)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def bench_module():
    spec = importlib.util.spec_from_file_location("bench_fidelity", REPO / "bench" / "fidelity.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclass looks its module up while it is defined
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_fidelity_bench_arms_have_equal_compute_and_a_complete_record(corpora, tmp_path):
    fb = bench_module()
    s = fb.Sizing(tokens=2_048, tiny_runs=2, big_runs=1, train_tokens=8_000, val_tokens=2_000)
    domains = {"code": {"path": str(corpora / "code.parquet")}, "prose": {"path": str(corpora / "prose.jsonl.gz")},
               "legal": {"path": str(corpora / "legal")}}
    rec = fb.run_set("t", domains, tmp_path, s, workers=2)
    p = fb.param_counts(s)
    assert p["1m"] > 4 * p["tiny"]
    single, multi = rec["arms"]["single"], rec["arms"]["multi"]
    # the planned accounting: one 1m proxy is worth round(params ratio) tiny ones
    assert single["tiny_runs"] == 2 + round(p["1m"] / p["tiny"])
    # measured: every run's FLOPs as recorded; tiny only in the single arm, both sizes in the multi arm
    assert set(single["by_size"]) == {"tiny"} and set(multi["by_size"]) == {"tiny", "1m"}
    assert multi["by_size"]["1m"]["proxies"] == 1
    assert single["by_size"]["tiny"]["proxies"] == multi["by_size"]["tiny"]["proxies"] + single["tiny_runs"] - 2
    tiny_flops = 6.0 * p["tiny"] * s.tokens
    assert single["by_size"]["tiny"]["flops"] == pytest.approx(single["by_size"]["tiny"]["proxies"] * tiny_flops, rel=0.01)
    assert abs(multi["flops"] - single["flops"]) <= tiny_flops  # the stated tolerance: one tiny proxy
    assert abs(rec["flops_ratio_multi_over_single"] - 1) <= rec["flops_tolerance"]
    assert single["device_seconds"] > 0 and multi["device_seconds"] > 0
    # verification: 3 paired seeds per mixture at 1m, and the differences are of those numbers
    for k in ("single", "multi", "prior"):
        v = rec["verified"][k]
        assert len(v["per_seed"]) == 3 and all(np.isfinite(v["per_seed"])) and v["mean"] == pytest.approx(np.mean(v["per_seed"]))
    d = rec["multi_minus_single"]
    assert d["per_seed"] == pytest.approx(np.subtract(rec["verified"]["multi"]["per_seed"],
                                                      rec["verified"]["single"]["per_seed"]).tolist())
    assert d["interval"][0] <= d["mean"] <= d["interval"][1]
    for w in (single["weights"], multi["weights"]):
        assert list(w) == list(domains) and sum(w.values()) == pytest.approx(1, abs=1e-3)
    assert multi["used"] in ("the law across sizes", "the tiny swarm's own fit", "neither: no fit cross-validates") \
        and multi["law"] in ("additive", "pooled")
    assert rec["cross_scale"][0]["size"] == "1m"
    h = rec["held_out_law"]
    assert h["left_out_runs"] == 1 and h["points"] == 4 and set(h["verified"]) == {"single", "multi", "prior"}
    assert h["verified"]["multi"]["measured_mean"] == pytest.approx(rec["verified"]["multi"]["mean"])
    # resumable: the finished set is read back, nothing trained again
    again = fb.run_set("t", domains, tmp_path, s, workers=2)
    assert again == json.loads(json.dumps(rec))
    summary = fb.summarize([rec], 1.0)
    assert summary["sets"] == 1 and summary["max_flops_mismatch"] == pytest.approx(abs(rec["flops_ratio_multi_over_single"] - 1))
