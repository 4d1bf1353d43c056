"""`mixopt optimize CONFIG --budget B` (fit/rounds.py, sweep/budget.py): budget parsing, accounting
counted from the store, resume after kill -9, and the stop on a decided verdict."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import small_config, write_config
from mixopt.errors import MixoptError
from mixopt.sweep.budget import parse_budget
from mixopt.sweep.store import Store


def mixopt(*args, check=True):
    r = subprocess.run([sys.executable, "-m", "mixopt.cli", *map(str, args)], capture_output=True, text=True,
                       timeout=900)
    if check and r.returncode != 0:
        raise AssertionError(f"mixopt {args} exited {r.returncode}: {r.stderr[-3000:]}")
    return r


def test_budget_parses_proxies_flops_and_device_hours():
    assert (parse_budget("40").unit, parse_budget("40").amount) == ("proxies", 40)
    assert (parse_budget("3e12flops").unit, parse_budget("3e12flops").amount) == ("flops", 3e12)
    assert (parse_budget("0.5h").unit, parse_budget("0.5h").amount) == ("seconds", 1800)
    for bad, why in (("abc", "not a number"), ("0", "above 0"), ("40.5", "whole number"), ("1e999flops", "finite"),
                     ("-2", "not a number"), ("5m", "not a number")):
        with pytest.raises(MixoptError, match=why):
            parse_budget(bad)


def test_bad_budget_is_one_line_exit_2_and_writes_nothing(corpora, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", small_config(corpora, tmp_path / "ws"))
    r = mixopt("optimize", cfg, "--budget", "lots", check=False)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: --budget 'lots'")
    assert "e.g. --budget 40" in r.stderr and not (tmp_path / "ws").exists()


def test_optimize_refuses_a_users_optimal_or_proposed_yaml_before_training(corpora, tmp_path):
    """The rounds write <name>.optimal.yaml and <name>.proposed.yaml beside the config: a file there that
    mixopt did not write is refused before a round trains or records anything (--force replaces it)."""
    cfg = write_config(tmp_path / "c.yaml", small_config(corpora, tmp_path / "ws", design__runs=2))
    mixopt("sample", cfg)
    for name in ("small.optimal.yaml", "small.proposed.yaml"):
        mine = tmp_path / name
        mine.write_text("my notes\n")
        r = mixopt("optimize", cfg, "--budget", "4", "--no-progress", check=False)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert r.stderr.startswith(f"error: {mine} exists and mixopt did not write it; pass --force to replace it")
        assert mine.read_text() == "my notes\n"
        st = json.loads(mixopt("status", cfg, "--format", "json").stdout)
        assert st["runs"]["done"] == 0 and not st.get("budget")
        mine.unlink()


def test_a_flops_budget_is_planned_before_training_and_never_exceeded(corpora, tmp_path):
    """A budget of 6.5 runs' FLOPs: round 1 trains the design's 6 runs; nothing after it fits, so
    the proposal stays planned, untrained, and optimize says why it stopped."""
    from mixopt.config.load import load_experiment
    from mixopt.proxy.model import param_count
    from mixopt.sweep.plan import load_plan

    cfg = write_config(tmp_path / "c.yaml", small_config(corpora, tmp_path / "ws", design__runs=2, proxy__tokens=6000,
                                                         fit__bootstrap=10))
    mixopt("sample", cfg)
    spec = load_plan(load_experiment(cfg), design=False).spec
    per_run = 6.0 * param_count(spec) * (6000 // (64 * 8)) * 64 * 8  # whole steps of seq_len x batch_size
    assert per_run == 6.0 * param_count(spec) * spec.steps * spec.seq_len * spec.batch_size
    r = mixopt("optimize", cfg, "--budget", f"{6.5 * per_run:.6g}flops", "--no-progress")
    assert "round 1: trained 6 proxies (the design at tiny)" in r.stdout
    assert "round 2" not in r.stdout and "stopped: the budget is spent" in r.stdout
    assert f"the next round's cheapest run ({per_run:.3g} FLOPs) does not fit in what is left" in r.stdout
    st = json.loads(mixopt("status", cfg, "--format", "json").stdout)
    assert st["budget"]["unit"] == "flops" and st["budget"]["spent"] == pytest.approx(6 * per_run)
    assert st["budget"]["spent"] <= st["budget"]["amount"] and st["runs"]["done"] == 6
    assert st["runs"]["planned"] >= 1  # the proposal that did not fit: planned, never trained
    # the same budget again: the recorded outcome, nothing trained, planned or recorded
    again = mixopt("optimize", cfg, "--budget", f"{6.5 * per_run:.6g}flops", "--no-progress")
    assert again.stdout.startswith("already finished in round 1 (--budget ") and "round 2" not in again.stdout
    assert "a larger --budget continues where it stopped" in again.stdout
    assert "stopped: the budget is spent" in again.stdout
    st2 = json.loads(mixopt("status", cfg, "--format", "json").stdout)
    assert st2["runs"] == st["runs"] and st2["budget"]["rounds"] == 1
    # a larger budget: continues with the proposal left planned, within the new budget
    more = mixopt("optimize", cfg, "--budget", f"{10.5 * per_run:.6g}flops", "--no-progress", "--format", "json")
    got = json.loads(more.stdout)
    assert not got["already_finished"] and [r["n"] for r in got["rounds"]] == [2]
    assert got["rounds"][0]["what"].startswith("what the last round proposed (propose)")
    st3 = json.loads(mixopt("status", cfg, "--format", "json").stdout)
    assert st3["budget"]["rounds"] == 2 and st3["budget"]["spent"] <= 10.5 * per_run
    assert st3["runs"]["done"] == 6 + got["rounds"][0]["trained"] >= 10


def _done(db) -> int:
    import sqlite3

    if not db.is_file():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as c:
            return c.execute("SELECT COUNT(*) FROM runs WHERE status='done'").fetchone()[0]
    except sqlite3.OperationalError:  # created but not yet migrated
        return 0


def test_kill_9_then_rerun_trains_nothing_twice_and_finishes(corpora, tmp_path):
    import os
    import signal
    import sqlite3
    import time

    cfg = write_config(tmp_path / "c.yaml", small_config(corpora, tmp_path / "ws", design__runs=2, proxy__tokens=6000,
                                                         fit__bootstrap=10))
    mixopt("sample", cfg)
    db = tmp_path / "ws" / "mixopt.db"
    p = subprocess.Popen([sys.executable, "-m", "mixopt.cli", "optimize", str(cfg), "--budget", "8", "--no-progress"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while _done(db) < 1 and p.poll() is None and time.time() < deadline:  # by observed progress, not a fixed sleep
        time.sleep(0.2)
    assert p.poll() is None, f"optimize ended before it could be killed: {p.stderr.read()[-2000:]}"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    killed_at = _done(db)
    assert 1 <= killed_at < 8
    r = mixopt("optimize", cfg, "--budget", "8", "--no-progress")
    with sqlite3.connect(db) as c:
        trainings = dict(c.execute("SELECT key, trainings FROM runs WHERE status='done'").fetchall())
        rounds = c.execute("SELECT round, stopped FROM budget_rounds ORDER BY round").fetchall()
    assert trainings and max(trainings.values()) == 1  # no run key trained twice
    assert len(trainings) <= 8 and "stopped: " in r.stdout  # the budget holds across the kill
    assert rounds[-1][1] and [n for n, _ in rounds] == list(range(1, len(rounds) + 1))
    st = json.loads(mixopt("status", cfg, "--format", "json").stdout)
    b = st["budget"]
    assert (b["given"], b["unit"], b["amount"]) == ("8", "proxies", 8) and b["spent"] == len(trainings) <= 8
    assert b["stopped"] == rounds[-1][1] and st["experiment_compute"]["flops"] > 0
    text = mixopt("status", cfg).stdout
    assert f"budget (mixopt optimize --budget 8): spent {len(trainings)} proxies of 8 proxies" in text
    again = mixopt("optimize", cfg, "--budget", "8", "--no-progress")  # finished: a rerun does nothing
    assert again.stdout.startswith(f"already finished in round {len(rounds)} (") and "round " + str(len(rounds) + 1) \
        not in again.stdout and "nothing trained, planned or recorded" in again.stdout
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT COUNT(*) FROM budget_rounds").fetchone()[0] == len(rounds)
        assert dict(c.execute("SELECT key, trainings FROM runs WHERE status='done'").fetchall()) == trainings


def test_dry_run_with_fidelities_covers_every_size(corpora, tmp_path):
    """`sweep --dry-run` before any training: each fidelity's runs, FLOPs, and the time still unknown."""
    cfg = small_config(corpora, tmp_path / "ws", design={"min_weight": 0.01, "replicates": None, "fidelities": [
        {"size": "tiny", "runs": 6}, {"size": "1m", "runs": 2, "tokens": 4096}]})
    cfg = write_config(tmp_path / "multi.yaml", cfg)
    mixopt("sample", cfg)
    st = json.loads(mixopt("sweep", cfg, "--dry-run", "--format", "json").stdout)
    tiny, big = st["fidelity_costs"]
    assert (tiny["size"], tiny["to_train"], big["size"], big["to_train"]) == ("tiny", 10, "1m", 2)
    assert tiny["flops"] == pytest.approx(6 * tiny["params"] * 46 * 64 * 8 * 10)  # 24,000 tokens: 46 whole steps
    assert big["flops"] == pytest.approx(6 * big["params"] * 4096 * 2) and big["params"] > tiny["params"]
    assert tiny["seconds"] is None and not (tmp_path / "ws" / "checkpoints").exists()
    text = mixopt("sweep", cfg, "--dry-run").stdout
    assert f"size 1m ({big['params']:,} params, 4,096 tokens): 2 runs to train, {big['flops']:.3g} FLOPs, time " \
           "unknown until a run of some size has trained" in text


def test_verify_after_a_fit_across_sizes_trains_at_the_largest_fidelity(corpora, tmp_path):
    from mixopt.config.load import load_experiment
    from mixopt.fit.verify import verify_size

    cfg = small_config(corpora, tmp_path / "ws", design={"min_weight": 0.01, "replicates": None, "fidelities": [
        {"size": "tiny", "runs": 6}, {"size": "1m", "runs": 2, "tokens": 4096}]})
    exp = load_experiment(write_config(tmp_path / "multi.yaml", cfg))
    where, why = verify_size(exp, {"fidelity": {"used": "the law across sizes", "target_size": 1.2e8}})
    assert where.proxy.size == "1m" and where.proxy.tokens == 4096
    assert why.startswith("verifying at 1m, the trained size nearest the target (1.2e+08 parameters)")
    # the swarm's own fit stood (the law did not cross-validate), or a one-size fit: the swarm's size
    for meta in ({"fidelity": {"used": "the tiny swarm's own fit", "target_size": 1.2e8}}, {}):
        assert verify_size(exp, meta) == (exp, None)


def test_judge_decides_from_paired_seeds_or_a_verified_fit():
    from mixopt.fit.rounds import judge

    # (recommendation, prior) per seed at the verify size: the prior worse by ~0.1 every time
    assert judge(None, [(3.0, 3.1), (3.02, 3.11), (2.99, 3.1)], 0.9, "1m")[0] == "better"
    assert judge(None, [(3.1, 3.0), (3.11, 3.02), (3.1, 2.99)], 0.9, "1m")[0] == "worse"
    v, line = judge(None, [(3.0, 3.1), (3.1, 3.0)], 0.9, "1m")
    assert v == "cannot tell" and "2 paired seeds" in line
    assert judge(None, [(3.0, 3.1)], 0.9, "1m")[0] == "cannot tell"  # one seed never decides a joint fit
    # a one-size fit: its own verdict, "better" only once one verification agrees
    assert judge("better", [], 0.9, "tiny")[0] == "cannot tell"
    v, line = judge("better", [(3.0, 3.1)], 0.9, "tiny")
    assert v == "better" and "verified at tiny" in line
    v, line = judge("better", [(3.2, 3.1)], 0.9, "tiny")
    assert v == "cannot tell" and "not borne out" in line
    assert judge("worse", [], 0.9, "tiny")[0] == "worse"


def test_a_decided_verdict_stops_the_rounds_before_proposing(corpora, tmp_path, monkeypatch):
    """The loop's control alone (training and the fit replaced): a fit whose verdict is "worse" ends
    optimize after its first round, with no proposal planned and the round recorded in the store."""
    from types import SimpleNamespace

    import numpy as np

    import mixopt.fit.from_store as recommend
    import mixopt.fit.rounds as rounds
    from mixopt.config.load import load_experiment
    from mixopt.sweep.budget import parse_budget
    from mixopt.sweep.run import SweepReport
    from mixopt.sweep.store import Store

    cfg = write_config(tmp_path / "c.yaml", small_config(corpora, tmp_path / "ws", design__runs=2))
    mixopt("sample", cfg)
    exp = load_experiment(cfg)
    asked = []
    monkeypatch.setattr(rounds, "run_sweep", lambda e, rt, extra, design: asked.extend(extra) or
                        SweepReport(planned=len(extra), trained=len(extra)))
    decision = SimpleNamespace(verdict="worse", line="the recommendation is worse than the prior: keep the prior")
    monkeypatch.setattr(recommend, "recommend_mixture", lambda *a, **k: SimpleNamespace(
        weights=np.array([0.2, 0.3, 0.5]), domains=exp.domain_names, decision=decision, ci=0.9, fidelity=None,
        predicted_ci=None))
    said = []
    out = rounds.optimize_budget(exp, parse_budget("40"), say=said.append)
    assert [m.origin.split(":")[0] for m in asked].count("random") == 2 and len(asked) == 6  # the design, once
    assert len(out.rounds) == 1 and out.verdict == "worse" and out.stopped == "the verdict is decided (worse)"
    assert said[1] == "  verdict: the recommendation is worse than the prior: keep the prior"
    assert not any(s.startswith("  next:") for s in said)
    with Store(tmp_path / "ws" / "mixopt.db") as store:
        assert not [r for r in store.runs() if r.origin.startswith("optimize:")]  # nothing proposed
        assert [(r["round"], r["stopped"]) for r in store.rounds()] == [(1, "the verdict is decided (worse)")]
    said.clear()
    again = rounds.optimize_budget(exp, parse_budget("80"), say=said.append)  # decided: a larger budget changes nothing
    assert again.already and again.verdict == "worse" and len(asked) == 6
    # nothing written by the rerun: it says where the recorded result is (here no YAML: the store's rounds)
    assert again.written is None and again.recorded.startswith("the store's rounds (")
    assert f"{exp.optimal_path.name} is not there now" in again.recorded
    assert said == ["already finished in round 1 (a decided verdict stays decided): nothing trained, planned or recorded",
                    "  verdict: the recommendation is worse than the prior: keep the prior"]
    with Store(tmp_path / "ws" / "mixopt.db") as store:
        assert len(store.rounds()) == 1


def test_a_version_6_store_gains_the_rounds_table_and_keeps_its_runs(tmp_path):
    import sqlite3

    from mixopt.sweep.store import VERSION, Store

    assert VERSION == 11
    with Store(tmp_path / "mixopt.db") as s:
        s.add_planned([{"key": "k", "context": "c", "origin": "prior", "weights": [1.0], "domains": ["a"]}])
    with sqlite3.connect(tmp_path / "mixopt.db") as db:  # as mixopt with store version 6 left it
        db.execute("DROP TABLE budget_rounds")
        db.execute("ALTER TABLE measurements DROP COLUMN measured_as")  # version 9's column
        db.execute("ALTER TABLE runs DROP COLUMN measured_as")  # version 7's column
        db.execute("PRAGMA user_version = 6")
    with Store(tmp_path / "mixopt.db") as s:
        assert [r.key for r in s.runs()] == ["k"] and s.rounds() == []
        s.record_round({"round": 1, "budget": "3e12flops", "unit": "flops", "amount": 3e12, "trained": 4,
                        "what": "the design at tiny", "spent": 1e12, "verdict": "cannot tell", "stopped": None})
        assert [(r["round"], r["budget"], r["spent"]) for r in s.rounds()] == [(1, "3e12flops", 1e12)]
        assert s.db.execute("PRAGMA user_version").fetchone()[0] == 11
        assert s.rounds()[0]["weights"] is None and s.rounds()[0]["candidate_round"] is None
        assert s.last_call() is None  # version 11: no call recorded before it (status: the last round's budget)


def _rec(weights, verdict="cannot tell", gain=None, noise_sd=None, reliable=True, fidelity=None, predicted=3.0):
    """A fit's recommendation as rounds.choose_candidate reads it: weights, verdict, the predicted gain
    over the candidate (its `against` mixture) and one proxy's seed noise."""
    from types import SimpleNamespace

    import numpy as np

    from mixopt.fit.verdict import Gain

    gains = [Gain("prior", 0.1, 0.05, 0.15, 0.99)]
    if gain is not None and fidelity is None:
        gains.append(Gain("candidate", gain, gain - 0.1, gain + 0.1, 0.5))
    noise = None if noise_sd is None else SimpleNamespace(sd_total=noise_sd)
    return SimpleNamespace(weights=np.array(weights), decision=SimpleNamespace(verdict=verdict, gains=gains, noise=noise)
                           if fidelity is None else None, reliable=reliable, fidelity=fidelity, predicted=predicted)


def test_the_candidate_persists_until_a_fit_predicts_better_by_more_than_the_noise():
    from mixopt.fit.candidate import Candidate, choose_candidate

    # the first candidate: the fit's recommendation once it says better (or leaves it to measurement)
    c, note = choose_candidate(_rec([0.2, 0.3, 0.5], "better"), None, [], 1, "tiny")
    assert c == Candidate((0.2, 0.3, 0.5), 1) and "becomes the candidate" in note
    assert choose_candidate(_rec([0.2, 0.3, 0.5], "cannot tell"), None, [], 1, "tiny") == (None, None)
    # a refit moved the recommendation a little: predicted 0.004 better, noise sd 0.01: kept, the rule said
    c2, note = choose_candidate(_rec([0.21, 0.3, 0.49], gain=0.004, noise_sd=0.01), c, [], 2, "tiny")
    assert c2 is c and note.startswith("kept: the fit's new recommendation is predicted +0.0040 against it, within "
                                       "one proxy's seed noise at tiny (sd 0.0100, from the replicates at tiny)")
    assert "the candidate is replaced only when the fit predicts its new recommendation better than the candidate " \
           "by more than one proxy's seed noise at tiny" in note
    # ... by more than the noise: replaced, and the pairs restart
    c3, note = choose_candidate(_rec([0.5, 0.3, 0.2], gain=0.03, noise_sd=0.01), c, [], 3, "tiny")
    assert c3 == Candidate((0.5, 0.3, 0.2), 3) and note.startswith("replaced: the fit predicts its new "
                                                                   "recommendation 0.0300 better than the candidate of round 1")
    assert "the paired seeds restart with the new candidate" in note
    # no replicates: the noise comes from the candidate's own paired seeds (sd of differences / sqrt 2), or is unknown
    kept, note = choose_candidate(_rec([0.5, 0.3, 0.2], gain=0.03), c, [(0, 3.0, 3.1)], 2, "tiny")
    assert kept is c and "not measured yet" in note
    pairs = [(0, 3.0, 3.1), (1, 3.0, 3.2)]  # differences 0.1, 0.2: sd 0.0707, / sqrt 2 = 0.05
    kept, note = choose_candidate(_rec([0.5, 0.3, 0.2], gain=0.03), c, pairs, 3, "tiny")
    assert kept is c and "(sd 0.0500, from the candidate's 2 paired seeds)" in note
    # a fit that does not cross-validate never moves the candidate
    kept, note = choose_candidate(_rec([0.5, 0.3, 0.2], gain=0.5, noise_sd=0.01, reliable=False), c, [], 3, "tiny")
    assert kept is c and "does not cross-validate" in note
    # the law across sizes: its prediction at the candidate, the noise of the verify size's replicates
    law = {"used": "the law across sizes", "against": {"candidate": 3.05},
           "sizes": [{"size": "tiny", "noise_sd": 0.001}, {"size": "1m", "noise_sd": 0.02}]}
    c4, note = choose_candidate(_rec([0.5, 0.3, 0.2], fidelity=law), c, [], 3, "1m")
    assert c4 == Candidate((0.5, 0.3, 0.2), 3) and "0.0500 better" in note and "sd 0.0200" in note
    kept, _ = choose_candidate(_rec([0.5, 0.3, 0.2], fidelity={**law, "against": {"candidate": 3.01}}), c, [], 3, "1m")
    assert kept is c


def test_a_replaced_candidates_planned_seed_is_dropped_before_it_trains(corpora, tmp_path, monkeypatch):
    """The round that made candidate A planned A's next seed with the prior's; A was then replaced by
    B before that seed trained (a budget cut, a kill): A's planned run is dropped, untrained and not
    counted, the prior's stays, and the next round trains only the prior's."""
    import mixopt.fit.rounds as rounds
    from mixopt.config.load import load_experiment
    from mixopt.fit.candidate import Candidate
    from mixopt.sweep.budget import Costs, fidelity_plans, parse_budget
    from mixopt.sweep.run import SweepReport
    from mixopt.sweep.store import Store

    cfg = write_config(tmp_path / "c.yaml", small_config(corpora, tmp_path / "ws", design__runs=2))
    mixopt("sample", cfg)
    exp = load_experiment(cfg)
    sizes = fidelity_plans(exp)
    fexp, plan = sizes[-1]
    db = plan.workspace.db_path
    a, b = Candidate((0.2, 0.3, 0.5), 1), Candidate((0.5, 0.3, 0.2), 2)
    rounds._propose(exp, sizes, a, 1, None, db)  # round 1 plans seed 0 of A and of the prior
    with Store(db) as store:
        planned = {r.origin: r.weights for r in plan.runs(store, "planned") if r.origin.startswith("optimize:")}
    assert set(planned) == {"optimize:2:replicate:recommended", "optimize:2:replicate:prior"}
    assert rounds._drop_replaced(plan, a, db) == 0  # A is still the candidate: nothing dropped
    assert rounds._drop_replaced(plan, None, db) == 0  # no candidate known: nothing dropped
    assert rounds._drop_replaced(plan, b, db) == 1  # B replaced A: A's seed goes
    with Store(db) as store:
        left = [r.origin for r in plan.runs(store) if r.origin.startswith("optimize:")]
        costs = Costs([p for _, p in sizes], store, "cpu")
        assert costs.spent(store, "proxies") == 0
    assert left == ["optimize:2:replicate:prior"]
    asked = []
    monkeypatch.setattr(rounds, "run_sweep", lambda e, rt, extra, design: asked.extend(extra) or
                        SweepReport(planned=len(extra), trained=len(extra)))
    trained, what = rounds._train_round(exp, sizes, parse_budget("40"), costs, None, 2)
    assert [m.origin for m in asked] == ["optimize:2:replicate:prior"] and what.startswith("what the last round proposed")
    # a finished run of a replaced candidate is never dropped: only planned ones are
    with Store(db) as store:
        store.add_planned([{"key": "k-done", "context": plan.context, "origin": "optimize:1:verify:recommended",
                            "weights": list(a.weights), "domains": exp.domain_names, "replicate": 0}])
        with store._tx():
            store.db.execute("UPDATE runs SET status='done' WHERE key='k-done'")
    assert rounds._drop_replaced(plan, b, db) == 0


def junk_config(corpora, root, **overrides):
    """prose, code and a junk domain (random letters, ~3 MB: about 0.9 of the token-proportional prior),
    scored on the held-out text of prose and code: the prior is clearly bad, and the rounds must find it."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz     ", dtype=np.uint8)
    docs = [rng.choice(letters, 2000).tobytes().decode() for _ in range(1500)]
    pq.write_table(pa.table({"text": docs}), root / "junk.parquet")
    cfg = small_config(corpora, root / "ws", **overrides)
    cfg["domains"] = [cfg["domains"][1], cfg["domains"][0], {"name": "junk", "sources": [{"path": str(root / "junk.parquet")}]}]
    cfg["fit"]["objective"] = {"domains": {"prose": 0.5, "code": 0.5}}
    cfg["name"] = "junk"
    return write_config(root / "junk.yaml", cfg)


def _candidates_said(stdout: str) -> list[str]:
    return [line.split(";")[0] for line in stdout.splitlines() if line.startswith("  candidate (round ")]


def test_a_clearly_bad_prior_is_decided_better_with_real_proxies(corpora, tmp_path):
    """No fit replaced: real tiny proxies, a prior that is ~0.9 junk. optimize stops on a decided
    verdict before the budget is spent; every paired seed it shows is of one candidate, the one
    written and judged."""
    import yaml

    cfg = junk_config(corpora, tmp_path, design__runs=2, proxy__tokens=6000, fit__bootstrap=10,
                      sample__val_tokens=1000)
    mixopt("sample", cfg)
    r = mixopt("optimize", cfg, "--budget", "24", "--no-progress")  # decided after 19 (59 s on a loaded 2-core box)
    out = r.stdout
    assert "stopped: the verdict is decided (better)" in out, out
    said = _candidates_said(out)
    assert said and len(set(said)) == 1, out  # one candidate, seed after seed
    st = json.loads(mixopt("status", cfg, "--format", "json").stdout)
    assert st["budget"]["spent"] < 24 and st["budget"]["stopped"] == "the verdict is decided (better)"
    optimal = yaml.safe_load((tmp_path / "junk.optimal.yaml").read_text())
    assert optimal["optimize"]["verdict"] == "better" and optimal["optimize"]["paired_seeds"]
    assert all(p["candidate"] < p["prior"] for p in optimal["optimize"]["paired_seeds"])
    shown = said[0].split(": ", 1)[1]
    assert shown == ", ".join(f"{d} {v:.3f}" for d, v in optimal["weights"].items())  # the mixture judged is written
    assert optimal["weights"]["junk"] < 0.5  # the junk the prior is made of is cut
    again = mixopt("optimize", cfg, "--budget", "24", "--no-progress")
    assert again.stdout.startswith("already finished in round ") and "(a decided verdict stays decided)" in again.stdout
    last = json.loads(mixopt("status", cfg, "--format", "json").stdout)["budget"]["rounds"]
    assert f"(recorded: {tmp_path / 'junk.optimal.yaml'}, written in round {last}; nothing written now)" in again.stdout
    assert "written:" not in again.stdout
    assert json.loads(mixopt("status", cfg, "--format", "json").stdout)["budget"]["rounds"] == st["budget"]["rounds"]
    # A plain fit rewrites the optimal YAML with its own recommendation: the rerun no longer says the
    # file holds round N's mixture
    mixopt("fit", cfg, "--no-plots", "--bootstrap", "4", "--no-progress")
    after_fit = mixopt("optimize", cfg, "--budget", "24", "--no-progress").stdout
    assert (f"(recorded: the store's rounds ({tmp_path / 'ws' / 'mixopt.db'}); {tmp_path / 'junk.optimal.yaml'} was "
            f"rewritten since round {last} (by `mixopt fit` or by hand) and does not hold this mixture; nothing "
            "written now)") in after_fit, after_fit
    assert shown in after_fit  # the verified mixture itself, from the store


@pytest.mark.slow
def test_a_clearly_bad_prior_is_decided_across_sizes_with_real_proxies(corpora, tmp_path):
    """The same junk-heavy prior with design.fidelities (tiny + 1m, a few thousand tokens each), end to
    end through the fit across sizes: the candidate is verified at 1m, replaced once when a refit
    predicts better by more than the 1m seed noise, and its seeds then accumulate until the paired
    difference decides (25 of 30 proxies; 245-342 s on a loaded 2-core box)."""
    cfg = junk_config(corpora, tmp_path, proxy__tokens=6000, fit__bootstrap=10, sample__val_tokens=1000,
                      design={"min_weight": 0.01, "replicates": None, "fidelities": [
                          {"size": "tiny", "runs": 4}, {"size": "1m", "runs": 3, "tokens": 2048}]})
    mixopt("sample", cfg)
    r = mixopt("optimize", cfg, "--budget", "30", "--no-progress", "--format", "json")
    got = json.loads(r.stdout)
    assert got["stopped"] == "the verdict is decided (better)" and got["verify_size"] == "1m", r.stderr
    assert got["budget"]["spent"] < 30 and len(got["paired_seeds"]) >= 2
    assert [p["seed"] for p in got["paired_seeds"]] == list(range(len(got["paired_seeds"])))
    assert all(p["candidate"] < p["prior"] for p in got["paired_seeds"])
    assert "the design at 1m" in r.stderr and "verdict: better than the prior at 1m, measured over " in r.stderr
    # every round since the last candidate was set shows that one candidate, and its seeds accumulate
    final = got["candidate_round"]
    lines = r.stderr.splitlines()
    shown = [x.split(";")[0] for x in lines if x.startswith(f"  candidate (round {final}): ")]
    assert len(shown) == len(got["rounds"]) - final + 1 and len(set(shown)) == 1
    seeds = [x for x in lines if x.startswith("  paired seeds at 1m")][-(len(shown)):]
    assert [x.count("seed ") for x in seeds] == list(range(1, len(shown) + 1))  # one more seed each round
    assert shown[0].endswith(", ".join(f"{d} {v:.3f}" for d, v in got["recommendation"].items()))


def test_a_budget_that_cannot_reach_a_fit_is_refused_before_training(corpora, tmp_path):
    """3 domains: a fit needs 5 finished runs. --budget 2 would train 2 and fail to fit: refused
    before anything trains, one line naming the minimum and the fix, nothing written."""
    import sqlite3

    import mixopt.fit.rounds as rounds
    from mixopt.config.load import load_experiment
    from mixopt.core.mixtures import Mixture
    from mixopt.sweep.budget import Costs, fidelity_plans

    cfg = write_config(tmp_path / "c.yaml", small_config(corpora, tmp_path / "ws", design__runs=2))
    mixopt("sample", cfg)
    db = tmp_path / "ws" / "mixopt.db"
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "ws").rglob("*") if p.suffix not in (".db-wal", ".db-shm"))
    for _ in range(2):  # a rerun: the same
        r = mixopt("optimize", cfg, "--budget", "2", "--workers", "2", "--no-progress", check=False)
        assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1, r.stderr
        assert r.stderr == ("error: --budget 2 proxies cannot reach the 5 finished runs a fit of 3 domains needs "
                            "(0 finished now); raise --budget to at least 5\n")
    after = sorted(p.relative_to(tmp_path) for p in (tmp_path / "ws").rglob("*") if p.suffix not in (".db-wal", ".db-shm"))
    assert after == before and not (tmp_path / "ws" / "checkpoints").exists()
    if db.is_file():
        with sqlite3.connect(db) as c:
            assert c.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0
            assert c.execute("SELECT COUNT(*) FROM budget_rounds").fetchone()[0] == 0
    # runs already finished count: 3 done, 3 spent; 4 proxies leave 1 (4 finished < 5), 5 leave 2
    exp = load_experiment(cfg)
    sizes = fidelity_plans(exp)
    fexp, plan = sizes[0]
    rounds._plan_runs(fexp, plan, [Mixture(f"user:{i}", w) for i, w in
                                   enumerate([(0.2, 0.3, 0.5), (0.5, 0.3, 0.2), (0.3, 0.4, 0.3)])], db)
    with sqlite3.connect(db) as c:
        c.execute("UPDATE runs SET status='done'")
    with Store(db) as store:
        costs = Costs([p for _, p in sizes], store, "cpu")
    with pytest.raises(MixoptError) as e:
        rounds._refuse_unreachable(exp, plan, parse_budget("4"), costs)
    assert e.value.one_line() == ("--budget 4 proxies cannot reach the 5 finished runs a fit of 3 domains needs "
                                  "(3 finished now, 3 proxies of it spent); raise --budget to at least 5")
    rounds._refuse_unreachable(exp, plan, parse_budget("5"), costs)  # 2 more runs: enough
    # FLOPs: the same count in runs of the swarm's size, the fix rounded up so that it suffices
    per_run = costs.run(plan, "flops")
    with pytest.raises(MixoptError) as e:
        rounds._refuse_unreachable(exp, plan, parse_budget(f"{4.5 * per_run:.6g}flops"), costs)
    least = e.value.fix.rsplit(" ", 1)[1]
    assert parse_budget(least).amount >= 5 * per_run and "(3 finished now" in e.value.problem
    rounds._refuse_unreachable(exp, plan, parse_budget(least), costs)


def test_a_budget_flag_rounds_up():
    from mixopt.sweep.budget import Budget

    assert Budget("1", "proxies", 1).flag(5.0) == "5"
    assert Budget("1e12flops", "flops", 1e12).flag(3.2101e12) == "3.22e+12flops"
    assert Budget("0.5h", "seconds", 1800).flag(3600.0) == "1h" and Budget("1h", "seconds", 3600).flag(3601) == "1.01h"


def test_ctrl_c_in_a_round_counts_its_runs_and_status_shows_that_calls_budget(corpora, tmp_path):
    """optimize --budget 6 stops on the budget after round 1 (the design's 6 runs) with round 2's runs
    planned; --budget 30 is Ctrl-C'ed once the first of them finishes: the line counts round 2's runs
    (not the design's), status shows the interrupted call's budget (30), and the resumed call's summary
    counts every round, as later reruns do."""
    import signal
    import sqlite3

    cfg = write_config(tmp_path / "c.yaml", small_config(corpora, tmp_path / "ws", design__runs=2, proxy__tokens=6000,
                                                         fit__bootstrap=10))
    mixopt("sample", cfg)
    first = mixopt("optimize", cfg, "--budget", "6", "--no-progress")
    assert "stopped: the budget is spent" in first.stdout and "round 2" not in first.stdout, first.stdout
    assert "over 1 round(s) in all (1 by this call)" in first.stdout
    db = tmp_path / "ws" / "mixopt.db"
    with sqlite3.connect(db) as c:
        proposed = c.execute("SELECT COUNT(*) FROM runs WHERE origin LIKE 'optimize:2:%' AND status='planned'").fetchone()[0]
    assert proposed >= 2  # round 2's runs, planned by round 1
    p = subprocess.Popen([sys.executable, "-m", "mixopt.cli", "optimize", str(cfg), "--budget", "30"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in p.stderr:  # Ctrl-C once round 2's first run is finished (observed, not timed)
        if line.startswith("sweep: run ") and "finished (1/" in line:
            break
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 130 and "Traceback" not in err, err
    said = [x for x in err.splitlines() if x.startswith("interrupted")]
    with sqlite3.connect(db) as c:
        states = dict(c.execute("SELECT status, COUNT(*) FROM runs WHERE origin LIKE 'optimize:2:%' GROUP BY status"))
        done = c.execute("SELECT COUNT(*) FROM runs WHERE status='done'").fetchone()[0]
    assert states.get("done", 0) >= 1 and states.get("planned", 0) >= 1, states
    asked = states["done"] + states["planned"]
    assert said == [f"interrupted in round 2: {states['done']} of {asked} runs it was training are finished and kept "
                    f"in {tmp_path / 'ws'}; {states['planned']} left planned (the rerun trains them first); spent "
                    f"{done} proxies of 30 proxies; `mixopt optimize {cfg} --budget 30` continues where this stopped"], err
    st = json.loads(mixopt("status", cfg, "--format", "json").stdout)["budget"]
    assert (st["given"], st["amount"], st["spent"], st["state"], st["round"]) == ("30", 30, done, "interrupted", 2)
    assert st["stopped"] is None and (st["rounds"], st["rounds_by_call"]) == (1, 0)
    text = mixopt("status", cfg).stdout
    assert (f"budget (mixopt optimize --budget 30, interrupted in round 2): spent {done} proxies of 30 proxies "
            "(the store's runs); 1 round(s) finished in all (0 by the latest call); verdict ") in text, text
    assert "rerun `mixopt optimize CONFIG --budget 30` to continue" in text and "stopped:" not in text
    # resumed (a budget that ends it soon): the summary counts every round, and says how many were this call's
    more = mixopt("optimize", cfg, "--budget", str(done + 1), "--no-progress")
    st = json.loads(mixopt("status", cfg, "--format", "json").stdout)["budget"]
    assert st["state"] == "finished" and st["stopped"] and st["rounds"] >= 2
    assert f"over {st['rounds']} round(s) in all ({st['rounds_by_call']} by this call)" in more.stdout, more.stdout
    again = mixopt("optimize", cfg, "--budget", str(done + 1), "--no-progress")
    assert f"over {st['rounds']} round(s) in all (none by this call)" in again.stdout, again.stdout


def test_each_round_says_its_verdict_once_and_the_mixed_precision_warning_once_per_call(corpora, tmp_path, monkeypatch):
    """The loop's output alone (training and the fits replaced): the proposal's refit says the fit's
    verdict as a note and repeats the fit's warnings; a round's verdict shows once, and the warning
    about runs of several precisions (its counts grow each round) once per call."""
    from types import SimpleNamespace

    import numpy as np

    import mixopt.fit.from_store as recommend
    import mixopt.fit.propose as propose
    import mixopt.fit.rounds as rounds
    from mixopt.config.load import load_experiment
    from mixopt.config.runtime import Runtime
    from mixopt.sweep.plan import MIXED_WARNING
    from mixopt.sweep.run import SweepReport

    cfg = write_config(tmp_path / "c.yaml", small_config(corpora, tmp_path / "ws", design__runs=2))
    mixopt("sample", cfg)
    exp = load_experiment(cfg)
    monkeypatch.setattr(rounds, "run_sweep", lambda e, rt, extra, design: SweepReport(planned=len(extra),
                                                                                       trained=len(extra)))
    line = "cannot tell: the predicted gain over the prior is within its interval"
    fits = []

    def fit(exp, runtime, **k):
        fits.append(1)
        runtime.say(f"{MIXED_WARNING} ({len(fits)} cpu/fp32, 2 cuda/bf16-autocast), which changes their numbers")
        return SimpleNamespace(weights=np.array([0.2, 0.3, 0.5]), domains=exp.domain_names, ci=0.9, fidelity=None,
                               decision=SimpleNamespace(verdict="cannot tell", line=line), reliable=True, predicted_ci=None)

    def refit(exp, k, runtime, **_):  # as propose_mixtures: the same runs fitted again, its verdict as a note
        runtime.say(f"{MIXED_WARNING} ({len(fits)} cpu/fp32, 2 cuda/bf16-autocast), which changes their numbers")
        runtime.say("warning: the fit is weak")
        runtime.say(f"note: {line}")
        if len(fits) > 1:
            raise MixoptError("every candidate is within design.min_distance of a trained run")
        return [np.array([0.5, 0.3, 0.2])] * k, None

    monkeypatch.setattr(recommend, "recommend_mixture", fit)
    monkeypatch.setattr(propose, "propose_mixtures", refit)
    said = []
    out = rounds.optimize_budget(exp, parse_budget("40"), Runtime(say=said.append), said.append)
    assert len(out.rounds) == 2 and out.stopped.startswith("nothing left to propose"), said
    assert said.count(f"  verdict: {line}") == 2 and f"note: {line}" not in said
    assert [s.startswith(MIXED_WARNING) for s in said].count(True) == 1 and said[0].startswith(MIXED_WARNING)
    assert said.count("warning: the fit is weak") == 1


def test_optimize_at_bf16_keys_its_rounds_as_its_sweeps_train(corpora, tmp_path):
    """`optimize --precision bf16` (as `auto` on a GPU): the rounds plan, count and pair runs under the keys
    their sweeps train (cpu/bf16-autocast here), so the candidate's paired seeds are found and the verdict
    is decided as in float32, and no run is left planned under float32 keys nobody trains."""
    import sqlite3

    cfg = junk_config(corpora, tmp_path, design__runs=2, proxy__tokens=6000, fit__bootstrap=10,
                      sample__val_tokens=1000)
    mixopt("sample", cfg)
    r = mixopt("optimize", cfg, "--budget", "24", "--no-progress", "--precision", "bf16")
    assert "stopped: the verdict is decided (better)" in r.stdout, r.stdout
    with sqlite3.connect(tmp_path / "ws" / "mixopt.db") as c:
        kinds = dict(c.execute("SELECT COALESCE(measured_as, 'cpu/fp32'), COUNT(*) FROM runs GROUP BY 1"))
    assert kinds == {"cpu/bf16-autocast": sum(kinds.values())}, kinds


def test_a_users_file_that_appears_between_rounds_stops_them_plainly_and_a_rerun_goes_on(corpora, tmp_path,
                                                                                          monkeypatch):
    """The loop's control alone (training, fits and proposals replaced): <name>.optimal.yaml created by the
    user while round 1 proposes stops round 2 before its fit, with a stop that says so and how to go on; the
    file is left alone and round 2 is not recorded. A rerun is refused while the file is there; moved away,
    the rerun fits round 2. A .proposed.yaml created during a round's fit: that round is recorded (not its
    stop), nothing is proposed, and the rerun goes on with the next round."""
    from types import SimpleNamespace

    import numpy as np

    import mixopt.fit.from_store as recommend
    import mixopt.fit.propose as propose
    import mixopt.fit.rounds as rounds
    from mixopt.config.load import load_experiment
    from mixopt.config.runtime import Runtime
    from mixopt.sweep.run import SweepReport

    cfg = write_config(tmp_path / "c.yaml", small_config(corpora, tmp_path / "ws", design__runs=2))
    mixopt("sample", cfg)
    exp = load_experiment(cfg)
    optimal, proposed = tmp_path / "small.optimal.yaml", tmp_path / "small.proposed.yaml"
    monkeypatch.setattr(rounds, "run_sweep", lambda e, rt, extra, design: SweepReport(planned=len(extra),
                                                                                       trained=len(extra)))
    fits, user = [], {}

    def fit(exp, runtime, **k):
        fits.append(1)
        if user.get("during_fit"):
            user.pop("during_fit").write_text("mine\n")
        if path := user.pop("refused_during_fit", None):  # the real fit checks again before writing: refused
            path.write_text("mine\n")
            recommend.check_beside_config(exp, path, k.get("force", False))
        return SimpleNamespace(weights=np.array([0.2, 0.3, 0.5]), domains=exp.domain_names, ci=0.9, fidelity=None,
                               decision=SimpleNamespace(verdict=user.get("verdict", "cannot tell"), line="a verdict"),
                               reliable=True, predicted_ci=None)

    def refit(exp, k, runtime, **_):
        if user.get("while_proposing"):
            user.pop("while_proposing").write_text("mine\n")
        if path := user.pop("refused_while_proposing", None):  # the real propose checks again before writing
            path.write_text("mine\n")
            recommend.check_beside_config(exp, path, False)
        return [np.array([0.5, 0.3, 0.2]) + 0.01 * len(fits)] * k, None

    monkeypatch.setattr(recommend, "recommend_mixture", fit)
    monkeypatch.setattr(propose, "propose_mixtures", refit)

    def stopped_by(name):
        return (f"{name} appeared beside the config during this run and was left alone (mixopt did not write it); "
                "to go on, move it away and rerun, or rerun with --force to replace it")

    def recorded():
        with Store(tmp_path / "ws" / "mixopt.db") as store:
            return [(r["round"], r["stopped"]) for r in store.rounds()]

    user["while_proposing"] = optimal
    said = []
    out = rounds.optimize_budget(exp, parse_budget("40"), Runtime(say=said.append), said.append)
    assert out.stopped == stopped_by("small.optimal.yaml") and len(out.rounds) == 1 and len(fits) == 1, said
    assert optimal.read_text() == "mine\n" and recorded() == [(1, None)]  # round 2 stopped before its fit
    with pytest.raises(MixoptError, match="small.optimal.yaml exists and mixopt did not write it"):
        rounds.optimize_budget(exp, parse_budget("40"), Runtime(say=said.append), said.append)
    optimal.unlink()
    user["during_fit"] = proposed
    out = rounds.optimize_budget(exp, parse_budget("40"), Runtime(say=said.append), said.append)
    assert out.stopped == stopped_by("small.proposed.yaml") and [r.n for r in out.rounds] == [2] and len(fits) == 2
    assert proposed.read_text() == "mine\n" and recorded() == [(1, None), (2, None)]  # proposed nothing
    with Store(tmp_path / "ws" / "mixopt.db") as store:
        assert not [r for r in store.runs() if r.origin.startswith("optimize:3:")]
    proposed.unlink()
    # The fit itself refuses to write over an optimal YAML made during it: a plain stop, round 3 not recorded
    user["refused_during_fit"] = optimal
    out = rounds.optimize_budget(exp, parse_budget("40"), Runtime(say=said.append), said.append)
    assert out.stopped == stopped_by("small.optimal.yaml") and out.rounds == [] and len(fits) == 3, said
    assert optimal.read_text() == "mine\n" and recorded() == [(1, None), (2, None)]
    optimal.unlink()
    # propose refuses to write over a proposed YAML made during it: round 3 recorded (not its stop), nothing planned
    user["refused_while_proposing"] = proposed
    out = rounds.optimize_budget(exp, parse_budget("40"), Runtime(say=said.append), said.append)
    assert out.stopped == stopped_by("small.proposed.yaml") and [r.n for r in out.rounds] == [3], said
    assert proposed.read_text() == "mine\n" and recorded() == [(1, None), (2, None), (3, None)]
    with Store(tmp_path / "ws" / "mixopt.db") as store:
        assert not [r for r in store.runs() if r.origin.startswith("optimize:4:")]
    proposed.unlink()
    user["verdict"] = "worse"  # the rerun's round 4 decides: the rounds end there
    out = rounds.optimize_budget(exp, parse_budget("40"), Runtime(say=said.append), said.append)
    assert [r.n for r in out.rounds] == [4] and out.stopped == "the verdict is decided (worse)"
