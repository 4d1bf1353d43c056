"""propose -> sweep --mixtures -> fit -> verify, through the CLI on real text."""

import json

import numpy as np
import pytest
import yaml
from conftest import invoke_ok, sample_as_version_1


@pytest.mark.slow
def test_propose_train_refit_verify(make_config, tmp_path):
    cfg = make_config()
    run = invoke_ok

    sample_as_version_1(cfg)  # the fit ranks these 12 runs on version 1's draw (conftest)
    run("sample", cfg)
    run("sweep", cfg, "--workers", "2", "--no-progress")
    first = json.loads(run("fit", cfg, "--format", "json", "--no-progress", "--no-plots"))
    assert first["runs"] == 12 and first["interval"]["replicates"] == 50
    lo, hi = np.array(list(first["interval"]["weights"].values())).T
    assert np.all(lo >= 0) and np.all(hi <= 1) and np.any(hi - lo > 1e-3)  # the replicates really differ

    from typer.testing import CliRunner

    from mixopt.cli import app

    r = CliRunner().invoke(app, ["propose", str(cfg), "--n", "2"])
    assert r.exit_code == 0, r.output
    out = r.stdout
    # proposals from a fit that cannot tell the recommendation from the prior say so where they are made
    if first["decision"]["verdict"] != "better":
        assert "note: no mixture is measurably better than the prior at this budget" in r.output
    for w in first["warnings"]:
        assert f"warning: {w}" in r.output
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
    fit_json = json.loads((tmp_path / "ws" / "fits" / second["fit_key"][:16] / "fit.json").read_text())
    assert np.isfinite(v["measured"]) and v["runs"] == 14
    assert v["rank"] == 1 + sum(m < v["measured"] for m in fit_json["measured"])  # rank among the fit's runs
    # Fit error on a fresh mixture, in the objective's units (BPB), stays modest.
    assert abs(v["measured"] - v["predicted"]) < 0.3
    again = json.loads(run("verify", cfg, "--format", "json", "--no-progress"))
    assert again["trained"] == 0 and again["measured"] == v["measured"]


def _corner_swarm(n=30, d=4, seed=0):
    """A law whose optimum sits near a corner: domain 0 helps, domain 3 hurts steeply."""
    from mixopt.core.mixtures import Bounds
    from mixopt.fit.swarm import Swarm

    rng = np.random.default_rng(seed)
    X = rng.dirichlet(np.full(d, 0.8), n)
    y = 2.0 + np.exp(X @ np.array([-2.0, 0.3, 0.5, 1.5])) + rng.normal(0, 0.01, n)
    prior = np.full(d, 1 / d)
    return Swarm([f"d{i}" for i in range(d)], X, {"y": y}, {"y": 1.0}, [str(i) for i in range(n)], prior,
                 Bounds(np.zeros(d), np.ones(d), ("none",) * d), "y")


def test_proposals_honour_min_weight_and_spread_out():
    from mixopt.fit.propose import pick_mixtures
    from mixopt.fit.recommend import fit_swarm
    from mixopt.fit.swarm import FitSettings

    swarm = _corner_swarm()
    settings = FitSettings(model="law", bootstrap=16, kl_weight=0.0)
    rec, model = fit_swarm(swarm, settings)
    picks = pick_mixtures(swarm, settings, model, rec.weights, 6, min_weight=0.01, min_distance=0.02, seed=0)
    assert len(picks) == 6
    W = np.array(picks)
    assert np.all((W == 0) | (W >= 0.01)), W  # no 5e-05 weights a proxy cannot even see
    assert np.allclose(W.sum(axis=1), 1)
    runs = swarm.X
    gaps = np.median([np.sort(np.abs(runs - r).sum(axis=1))[1] for r in runs])
    pairwise = [np.abs(a - b).sum() for i, a in enumerate(W) for b in W[i + 1:]]
    assert min(pairwise) >= 0.5 * gaps  # not near-copies of one corner
    assert min(np.abs(runs - w).sum(axis=1).min() for w in W) >= 0.02


def test_proposals_among_given_candidates_only():
    from mixopt.fit.propose import pick_mixtures
    from mixopt.fit.recommend import fit_swarm
    from mixopt.fit.swarm import FitSettings

    swarm = _corner_swarm()
    settings = FitSettings(model="law", bootstrap=16, kl_weight=0.0)
    rec, model = fit_swarm(swarm, settings)
    given = np.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.7, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7], swarm.X[0]])
    picks = pick_mixtures(swarm, settings, model, rec.weights, 2, min_weight=0.01, min_distance=0.02, seed=0,
                          candidates=given)
    assert len(picks) == 2
    for w in picks:  # each pick is one of the candidates, never the one already trained
        assert np.abs(given[:3] - w).sum(axis=1).min() < 1e-12
    # The law says domain 0 helps and domain 3 hurts: the optimistic pick is the domain-0 candidate.
    assert np.allclose(picks[0], given[0])


def test_a_mixture_rounded_past_its_cap_is_snapped_not_refused():
    from mixopt.core.mixtures import Bounds

    b = Bounds(np.zeros(3), np.array([0.35, 1.0, 1.0]), ("repetition", "none", "none"))
    w = np.array([0.350000, 0.324999, 0.325000])
    w = w / w.sum()  # a 6-decimal file renormalized: the capped weight lands ~3e-7 over its cap
    assert not b.contains(w)
    s = b.snap(w)
    assert b.contains(s) and abs(s.sum() - 1) < 1e-9 and np.abs(s - w).max() < 1e-5
    assert b.snap(np.array([0.4, 0.3, 0.3])) is None  # really outside: refused


def test_fit_and_propose_never_replace_a_users_file_beside_the_config(swept, tmp_path):
    """`fit` writes <name>.optimal.yaml and `propose` <name>.proposed.yaml beside the config: a file there
    that mixopt did not write is refused before any work (one line, exit 2, nothing written) unless
    --force; what they write is recorded, so the next run replaces it silently. A second config of the
    same `name:` in that folder, with its own workspace, does not replace the first one's file."""
    import os

    from conftest import mixopt

    cfg = tmp_path / "mine.yaml"
    cfg.write_text(swept.read_text())  # the shared sweep's workspace, from another folder
    ws = yaml.safe_load(cfg.read_text())["workspace"]
    optimal, proposed = tmp_path / "small.optimal.yaml", tmp_path / "small.proposed.yaml"
    fits = lambda: sorted(os.listdir(os.path.join(ws, "fits"))) if os.path.isdir(os.path.join(ws, "fits")) else []

    for path, args, verb in ((optimal, ("fit", cfg, "--no-plots", "--bootstrap", "4"), "mixopt fit"),
                             (proposed, ("propose", cfg, "--n", "2"), "mixopt propose")):
        path.write_text("my hand-written mixture: code 0.5\n")
        before, record = fits(), os.path.join(ws, "outputs.json")
        record_before = open(record).read() if os.path.exists(record) else None
        r = mixopt(*args, check=False)
        assert r.returncode == 2 and r.stderr == (
            f"error: {path} exists and mixopt did not write it; pass --force to replace it, or move it away "
            f"(`{verb}` writes {path.name} beside the config)\n"), r.stderr
        assert path.read_text() == "my hand-written mixture: code 0.5\n" and fits() == before
        assert (open(record).read() if os.path.exists(record) else None) == record_before
        mixopt(*args, "--force")
        assert path.read_text().startswith("# ") and f"# workspace: {os.path.realpath(ws)}\n" in path.read_text()
        first = path.read_text()
        assert str(path) in mixopt(*args).stdout  # its own file, recorded: replaced without --force
        assert path.read_text().splitlines()[0] == first.splitlines()[0]

    # Another config of the same name in this folder, another workspace: refused (the header names the first's)
    other = tmp_path / "other.yaml"
    other.write_text(cfg.read_text().replace(ws, str(tmp_path / "ws2")))
    for args in (("fit", other), ("propose", other)):
        r = mixopt(*args, check=False)
        assert r.returncode == 2 and "exists and mixopt did not write it" in r.stderr, r.stderr
    assert not (tmp_path / "ws2").exists()

    # An older mixopt's file (before the record and the workspace line): mixopt's header, replaced as before
    old = "".join(line for line in optimal.read_text().splitlines(keepends=True) if not line.startswith("# workspace: "))
    os.remove(os.path.join(ws, "outputs.json"))
    optimal.write_text(old)
    mixopt("fit", cfg, "--no-plots", "--bootstrap", "4")
    assert f"# workspace: {os.path.realpath(ws)}\n" in optimal.read_text()
    # A header naming a workspace that no longer lists the file (a copied or moved project) is not that
    # workspace's: the other config may replace it (checked in process: its empty workspace cannot fit)
    from mixopt.config.load import load_experiment
    from mixopt.fit.from_store import check_beside_config

    os.remove(os.path.join(ws, "outputs.json"))
    assert check_beside_config(load_experiment(other), optimal) == optimal
    assert not (tmp_path / "ws2").exists()
    # The config itself is never the output: a config named like the optimal YAML is refused
    clash = tmp_path / "clash"
    clash.mkdir()
    (clash / "small.optimal.yaml").write_text(cfg.read_text())
    r = mixopt("fit", clash / "small.optimal.yaml", check=False)
    assert r.returncode == 2 and r.stderr.startswith(f"error: {clash / 'small.optimal.yaml'} is the config;"), r.stderr


def test_fit_and_propose_leave_alone_a_users_file_made_during_their_fit(swept, tmp_path, monkeypatch, capsys):
    """<name>.optimal.yaml or .proposed.yaml created by the user while `fit` or `propose` fits (absent when
    it began) is checked again right before writing: the same one-line refusal as the check up front,
    exit 2, the user's file and the workspace's record of outputs unchanged (the fit folder may stay)."""
    import os
    from dataclasses import replace

    import mixopt.fit.from_store as from_store
    import mixopt.fit.propose as propose
    from mixopt.cli import main

    def run(*args) -> tuple[int, str]:  # the CLI in this process, as a user runs it (exit code, stderr)
        monkeypatch.setattr("sys.argv", ["mixopt", *map(str, args)])
        with pytest.raises(SystemExit) as e:
            main()
        return e.value.code, capsys.readouterr().err

    cfg = tmp_path / "mine.yaml"
    cfg.write_text(swept.read_text())  # the shared sweep's workspace, from another folder
    record = os.path.join(yaml.safe_load(cfg.read_text())["workspace"], "outputs.json")
    optimal, proposed = tmp_path / "small.optimal.yaml", tmp_path / "small.proposed.yaml"
    real_fit, made = from_store.fit_swarm, []

    def fit_making(path):
        def fit(swarm, settings, *a, **k):  # the real fit (4 replicates: fast), the user's file made during it
            path.write_text("my hand-written mixture: code 0.5\n")
            made.append(path)
            return real_fit(swarm, replace(settings, bootstrap=4), *a, **k)
        return fit

    monkeypatch.setattr(from_store, "fit_swarm", fit_making(optimal))
    monkeypatch.setattr(propose, "fit_swarm", fit_making(proposed))
    monkeypatch.setattr(propose, "pick_mixtures", lambda swarm, *a, **k: [np.asarray(swarm.prior)])  # fast
    for path, args, verb in ((optimal, ("fit", cfg, "--no-plots"), "mixopt fit"),
                             (proposed, ("propose", cfg, "--n", "1"), "mixopt propose")):
        assert not path.exists()
        record_before = open(record).read() if os.path.exists(record) else None
        code, err = run(*args)
        assert made[-1] == path and code == 2 and err.endswith(
            f"error: {path} exists and mixopt did not write it; pass --force to replace it, or move it away "
            f"(`{verb}` writes {path.name} beside the config)\n"), err
        assert path.read_text() == "my hand-written mixture: code 0.5\n"
        assert (open(record).read() if os.path.exists(record) else None) == record_before
        assert "Traceback" not in err and err.count("error:") == 1
    # --force: the file made during the fit is replaced, as one there before it would be
    assert run("fit", cfg, "--no-plots", "--force")[0] in (0, None) and optimal.read_text().startswith("# ")
