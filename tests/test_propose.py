"""propose -> sweep --mixtures -> fit -> verify, through the CLI on real text."""

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from mixopt.cli import app


@pytest.mark.slow
def test_propose_train_refit_verify(make_config, tmp_path):
    cfg = make_config()
    cli = CliRunner()

    def run(*args):
        r = cli.invoke(app, [str(a) for a in args])
        assert r.exit_code == 0, (r.output, r.exception)
        return r.output

    run("sample", cfg)
    run("sweep", cfg, "--workers", "2", "--no-progress")
    first = json.loads(run("fit", cfg, "--format", "json", "--no-progress", "--no-plots"))
    assert first["runs"] == 12 and first["interval"]["replicates"] == 50
    lo, hi = np.array(list(first["interval"]["weights"].values())).T
    assert np.all(lo <= hi)

    out = run("propose", cfg, "--n", "2")
    proposed = tmp_path / "small.proposed.yaml"
    assert str(proposed) in out
    mixtures = yaml.safe_load(proposed.read_text())["mixtures"]
    assert len(mixtures) == 2
    for m in mixtures:
        assert list(m) == ["code", "prose", "legal"] and abs(sum(m.values()) - 1) < 1e-5
    assert sum(abs(mixtures[0][d] - mixtures[1][d]) for d in mixtures[0]) >= 0.02  # design.min_distance

    assert "2 trained" in run("sweep", cfg, "--mixtures", proposed, "--no-progress")
    assert "0 trained" in run("sweep", cfg, "--mixtures", proposed, "--no-progress")  # already done
    second = json.loads(run("fit", cfg, "--format", "json", "--no-progress"))
    assert second["runs"] == 14
    assert (tmp_path / "ws" / "fits" / second["fit_key"][:16] / "weight_effects.png").stat().st_size > 1000

    v = json.loads(run("verify", cfg, "--format", "json", "--no-progress"))
    assert v["trained"] == 1  # the prior is already in the design; only the recommendation is new
    assert np.isfinite(v["measured"]) and 1 <= v["rank"] <= 15 and v["runs"] == 14
    # Fit error on a fresh mixture, in the objective's units (BPB), stays modest.
    assert abs(v["measured"] - v["predicted"]) < 0.3
    again = json.loads(run("verify", cfg, "--format", "json", "--no-progress"))
    assert again["trained"] == 0 and again["measured"] == v["measured"]
