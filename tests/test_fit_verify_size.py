"""`verify --size`: the recommendation, the prior and the best swarm runs trained again at a larger
proxy size, through the CLI on real text (tiny proxies, then 1m)."""

import json

import numpy as np
import pytest
from conftest import invoke_ok
from typer.testing import CliRunner

from mixopt.cli import app
from mixopt.errors import MixoptError


@pytest.mark.slow
def test_verify_at_a_larger_size(make_config):
    cfg = make_config()
    cli = CliRunner()
    run = invoke_ok

    run("sample", cfg)
    run("sweep", cfg, "--workers", "2", "--no-progress")
    fit = json.loads(run("fit", cfg, "--format", "json", "--no-progress", "--no-plots"))
    c = json.loads(run("verify", cfg, "--size", "1m", "--top", "3", "--format", "json", "--no-progress"))
    assert (c["size"], c["at_size"]) == ("tiny", "1m")
    names = [m["name"] for m in c["mixtures"]]
    assert names[:2] == ["recommended", "prior"] and len(names) == 5
    distinct = {tuple(np.round(list(m["weights"].values()), 6)) for m in c["mixtures"]}
    assert c["trained"] == len(distinct)  # nothing existed at 1m: each distinct mixture trained once
    assert c["mixtures"][0]["weights"] == pytest.approx(fit["weights"], abs=1e-5)  # optimal.yaml rounds to 1e-6
    best = sorted(m for m in json.loads((cfg.parent / "ws" / "fits" / fit["fit_key"][:16] / "fit.json")
                                        .read_text())["measured"])[:3]
    assert [m["measured"] for m in c["mixtures"][2:]] == pytest.approx(best)  # the swarm's 3 best, as measured
    for m in c["mixtures"]:
        assert np.isfinite(m["measured_at_size"]) and np.isfinite(m["predicted"])
        if m["measured"] is not None:
            assert m["measured_at_size"] != m["measured"]  # a different (larger) model measured it
    assert -1 <= c["spearman_scales"] <= 1 and -1 <= c["spearman_predicted"] <= 1
    assert 1 <= c["recommended_rank"] <= 5
    # Again: every 1m run exists, nothing trains; the text output says the same.
    out = run("verify", cfg, "--size", "1m", "--top", "3", "--no-progress")
    assert "0 proxies trained" in out and "rank correlation across scales (measured tiny vs 1m)" in out
    # export and `mixopt runs` list the 1m runs too, with their size; export-model takes their keys.
    rows = json.loads(run("export", cfg, "--format", "json"))
    big = [r for r in rows if r["size"] == "1m"]
    assert len(big) == c["trained"] and all(r["objective"] is not None for r in big)
    assert {r["size"] for r in rows} == {"tiny", "1m"}
    listed = json.loads(run("runs", cfg, "--format", "json"))
    assert sorted((r["key"], r["size"]) for r in listed) == sorted((r["key"], r["size"]) for r in rows)
    assert "exported" not in run("export-model", cfg, big[0]["key"][:8], "--output", cfg.parent / "big")
    assert (cfg.parent / "big" / "model.safetensors").stat().st_size > 0
    r = cli.invoke(app, ["verify", str(cfg), "--size", "2m"])  # `mixopt` prints it as one `error:` line, exit 2
    assert isinstance(r.exception, MixoptError) and "--size 2m: not a proxy size" in str(r.exception)
