"""When the data changes: add, update, remove or rename a domain, or retokenize, on a finished sweep."""

import json
import shutil
import sqlite3
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import mixopt, small_config, write_config

from mixopt.config.load import load_experiment
from mixopt.config.runtime import Runtime
from mixopt.core.keys import run_key
from mixopt.proxy.model import proxy_spec
from mixopt.proxy.train import mixture_sequences
from mixopt.sweep import run as sweep_module
from mixopt.sweep.plan import load_plan
from mixopt.sweep.store import Store


def cli(*args) -> str:
    """The CLI in this process (no interpreter and torch start per call): its stdout."""
    from typer.testing import CliRunner

    from mixopt.cli import app

    r = CliRunner().invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, (args, r.output, r.exception)
    return r.stdout


def test_zero_weight_domain_changes_neither_key_nor_training():
    """The claim run keys rest on: a domain at weight 0, inserted anywhere, trains the same sequences."""
    spec = proxy_spec(load_experiment_proxy(), 512)
    lengths = [5000, 7000, 6000]
    w = [0.5, 0.2, 0.3]
    a, ea = mixture_sequences(w, lengths, spec, np.random.default_rng([0, 2]))
    b, eb = mixture_sequences([0.5, 0.0, 0.2, 0.3], [5000, 9999, 7000, 6000], spec, np.random.default_rng([0, 2]))
    b[:, 0] = np.array([0, -1, 1, 2])[b[:, 0]]  # back to the three-domain indices
    assert np.array_equal(a, b) and eb == [ea[0], 0.0, *ea[1:]]
    s3, s4 = ["A", "B", "C"], ["A", "N", "B", "C"]
    assert run_key("ctx", s3, w) == run_key("ctx", s4, [0.5, 0.0, 0.2, 0.3])
    assert run_key("ctx", s3, w) != run_key("ctx", ["A", "B2", "C"], w)  # an updated slice is another run
    assert run_key("ctx", s3, [0.5, 0.5, 0.0]) == run_key("ctx", ["A", "B", "C-updated"], [0.5, 0.5, 0.0])


def load_experiment_proxy():
    from mixopt.config.schema import Proxy

    return Proxy(size="tiny", tokens=24000, seq_len=64, batch_size=8)


def _more_docs(root: Path, name: str = "more",
               packages=("unittest", "tkinter", "sqlite3", "urllib", "multiprocessing"), least: int = 250_000) -> Path:
    """Another real-text domain: CPython's sources of `packages`, one file each."""
    out = root / name
    out.mkdir()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    n = 0
    for pkg in packages:
        for f in sorted((stdlib / pkg).glob("*.py")):
            text = f.read_text(errors="replace")
            if len(text) > 500:
                (out / f"{pkg}-{f.stem}.txt").write_text(text)
                n += len(text)
    assert n > least
    return out


def _cfg(corpora: Path, ws: Path, **over) -> dict:
    cfg = small_config(corpora, ws, design={"runs": 2, "min_weight": 0.01, "after_change_runs": 1, "replicates": None},
                       fit={"model": "loglinear", "cv_folds": 3, "bootstrap": 0,
                            "objective": {"domains": {"prose": 1.0}}})
    cfg.update(over)
    return cfg


BASE_RUNS = 6


@pytest.fixture(scope="module")
def base(corpora, tmp_path_factory):
    """A finished experiment: 3 domains, 6 runs (prior, 3 vertices, 2 random), fitted."""
    from mixopt.data.sample import sample_corpus
    from mixopt.fit.from_store import recommend_mixture

    from mixopt.data import resample

    root = tmp_path_factory.mktemp("base")
    exp = load_experiment(write_config(root / "exp.yaml", _cfg(corpora, root / "ws")))
    # A workspace sampled before sampler version 2, as most existing ones are: the domains the tests
    # add are drawn with its version 1 (the `sample` commands below run unpatched). Version 1's draw
    # also keeps the 3-run reuse fit's CV R2 above 0, which its intervals need (version 2's is not).
    with pytest.MonkeyPatch.context() as m:
        m.setattr(resample, "SAMPLER_VERSION", 1)
        sample_corpus(exp)
    assert sweep_module.run_sweep(exp, Runtime(progress=False)).trained == BASE_RUNS
    recommend_mixture(exp, Runtime(progress=False), plots=False)
    return root


@pytest.fixture
def copy(base, tmp_path):
    """The finished experiment, copied (checkpoint paths are relative: a copy keeps its runs)."""
    shutil.copytree(base / "ws", tmp_path / "ws")
    shutil.copy(base / "small.optimal.yaml", tmp_path / "small.optimal.yaml")
    return tmp_path


def _rows(ws: Path) -> dict:
    with sqlite3.connect(ws / "mixopt.db") as db:
        return {k: (sha, n) for k, sha, n in db.execute("SELECT key, sha256, trainings FROM runs WHERE status='done'")}


def _status(cfg) -> dict:
    return json.loads(cli("status", cfg, "--format", "json"))


@pytest.mark.slow
def test_added_domain_trains_only_new_runs_and_reuses_every_old_one(corpora, copy, monkeypatch):
    old = _rows(copy / "ws")
    assert len(old) == BASE_RUNS
    cfg = _cfg(corpora, copy / "ws")
    cfg["domains"].append({"name": "more", "sources": [{"path": str(_more_docs(copy))}]})
    path = write_config(copy / "exp.yaml", cfg)
    before = json.loads((copy / "ws" / "sample" / "manifest.json").read_text())
    out = cli("sample", path)
    assert "domains sampled: more; kept: code, legal, prose" in out and "tokenizer kept" in out
    after = json.loads((copy / "ws" / "sample" / "manifest.json").read_text())
    assert before["version"] == after["version"] == 1  # the workspace's sampler, for the added domain too
    assert after["tokenizer_sha256"] == before["tokenizer_sha256"]
    assert all(after["domains"][d]["train_sha256"] == before["domains"][d]["train_sha256"]
               for d in ("code", "prose", "legal"))

    st = _status(path)
    cost = st["cost"]
    assert cost["valid"] == BASE_RUNS and cost["superseded"] == 0 and cost["change"]["changed"] == ["more"]
    assert cost["change"]["virtual_from"].startswith("the last recommendation")
    assert 0 < cost["to_train"] <= 3 + 1 * 2  # the reuse swarm: O(changed domains), not a new design
    dry = cli("sweep", path, "--dry-run")
    assert f"still valid: {BASE_RUNS} finished runs" in dry and f"to train: {cost['to_train']} runs" in dry

    trained = []
    real = sweep_module.train_task
    monkeypatch.setattr(sweep_module, "train_task",
                        lambda task, progress=None: trained.extend(r.key for r in task.runs) or real(task, progress))
    report = sweep_module.run_sweep(load_experiment(path), Runtime(progress=False))
    assert report.already_done == BASE_RUNS and report.trained == cost["to_train"] == len(trained)
    assert not set(trained) & set(old)  # 0 retrained
    rows = _rows(copy / "ws")
    assert all(rows[k] == old[k] for k in old)  # same checkpoint, trained once
    plan = load_plan(load_experiment(path))
    held_new = next(m.key for m in plan.suite.measures if m.domain == "more")
    with Store(plan.workspace.db_path) as store:
        have = store.measurements()
    assert all(held_new in have[k] for k in old)  # the new domain, evaluated on old checkpoints
    cfg["fit"]["bootstrap"] = 5  # intervals: the unchanged domains' are labelled held fixed, not certain
    write_config(path, cfg)
    human = copy / "human.yaml"  # a full mixture to judge against (optimize's candidate is one too)
    human.write_text(yaml.safe_dump({"weights": {"code": 0.3, "prose": 0.3, "legal": 0.2, "more": 0.2}}))
    fit = json.loads(cli("fit", path, "--format", "json", "--no-plots", "--no-progress", "--against", human))
    assert list(fit["weights"]) == ["code", "prose", "legal", "more"] and abs(sum(fit["weights"].values()) - 1) < 1e-6
    assert [g["against"] for g in fit["decision"]["gains"]] == ["prior", "human.yaml"]  # judged in the reduced space
    held = fit["interval"]["held_fixed_by_reuse"]
    assert held["domains"] == ["code", "prose", "legal"] and fit["interval"]["weights"]["code"] is None
    assert len(fit["interval"]["weights"]["more"]) == 2
    lo, hi = held["share_interval"]
    assert lo - 1e-9 <= sum(fit["weights"][d] for d in held["domains"]) <= hi + 1e-9
    doc = yaml.safe_load((copy / "small.optimal.yaml").read_text())
    assert doc["interval"]["weights"]["prose"] is None and doc["interval"]["held_fixed_by_reuse"]["domains"] == held["domains"]
    text = cli("fit", path, "--no-plots", "--no-progress")
    assert f"{fit['weights']['code']:.4f} (held fixed by reuse)" in text
    assert "held fixed by reuse: code, prose, legal keep their proportions; together" in text
    assert _status(path)["cost"]["to_train"] == 0  # the design stays put after the fit rewrote the recommendation

    # propose and verify predict with the fit's own (reduced) model: proposals on its plane, the
    # verification ranked among the runs it was fitted on (the reuse swarm, not the old runs).
    virtual = cost["change"]["virtual"]
    picks = yaml.safe_load((copy / "small.proposed.yaml").read_text()) if cli("propose", path, "--n", "2") else None
    assert len(picks["mixtures"]) == 2
    for m in picks["mixtures"]:
        u = np.array([m[d] for d in virtual])
        assert abs(m["more"] + u.sum() - 1) < 1e-4 and np.abs(u / u.sum() - np.array(list(virtual.values()))).sum() < 1e-3
    v = json.loads(cli("verify", path, "--format", "json", "--no-progress"))
    assert v["space"] == "mixture reuse: virtual(code+prose+legal), more"
    assert cost["to_train"] <= v["runs"] < BASE_RUNS + cost["to_train"]  # not the full fit over every run

    # A second change chains: 'more' is known from the first round, the virtual domain is every
    # other domain at the combined recommendation the fit wrote.
    combined = yaml.safe_load((copy / "small.optimal.yaml").read_text())["weights"]
    cfg["domains"].append({"name": "more2", "sources": [{"path": str(_more_docs(
        copy, "more2", ("email", "xml", "asyncio", "concurrent", "importlib")))}]})
    path = write_config(copy / "exp.yaml", cfg)
    assert "domains sampled: more2; kept: code, legal, more, prose" in cli("sample", path)
    second = _status(path)["cost"]
    assert second["change"]["changed"] == ["more2"] and second["change"]["earlier_rounds"] == 1
    assert second["change"]["virtual"] == pytest.approx(combined, abs=1e-5)
    assert 0 < second["to_train"] <= 3 + 1 * 2


@pytest.mark.slow
def test_renamed_domain_changes_nothing_and_removed_one_keeps_zero_weight_runs(corpora, copy):
    old = _rows(copy / "ws")
    with Store(copy / "ws" / "mixopt.db") as store:
        legal = {r.key: r.weights[2] > 0 for r in store.runs() if r.status == "done"}

    # Rename only: the same slices under a new name change nothing.
    cfg = _cfg(corpora, copy / "ws")
    cfg["domains"][1]["name"] = "text"
    cfg["fit"]["objective"]["domains"] = {"text": 1.0}
    path = write_config(copy / "exp.yaml", cfg)
    out = cli("sample", path)
    assert "domains sampled: none" in out and "text renamed from prose (slices kept)" in out
    cost = _status(path)["cost"]
    assert cost["valid"] == BASE_RUNS and cost["superseded"] == 0 and cost["to_train"] == 0 and cost["change"] is None

    # Remove 'legal': runs with weight 0 on it stay valid, the others are superseded.
    cfg["domains"] = cfg["domains"][:2]
    path = write_config(copy / "exp.yaml", cfg)
    assert "domains sampled: none" in cli("sample", path)
    plan = load_plan(load_experiment(path))
    with Store(plan.workspace.db_path) as store:
        valid = {r.key for r in plan.runs(store, "done")}
        superseded = plan.superseded(store)
    assert valid == {k for k, on in legal.items() if not on} and len(valid) >= 2
    assert {r.key for r, _ in superseded} == {k for k, on in legal.items() if on}
    assert all(why == "domain 'legal' was removed" for _, why in superseded)
    assert _rows(copy / "ws") == old  # superseded runs are kept in the store


@pytest.mark.slow
def test_updated_domain_invalidates_exactly_the_runs_that_trained_on_it(corpora, copy):
    old = _rows(copy / "ws")
    with Store(copy / "ws" / "mixopt.db") as store:
        legal = {r.key: r.weights[2] > 0 for r in store.runs() if r.status == "done"}
    # Update 'legal' (a source re-filtered: some files dropped): exactly the runs that trained on it.
    filtered = copy / "legal-filtered"
    shutil.copytree(corpora / "legal", filtered)
    for f in sorted(filtered.iterdir())[::3]:
        f.unlink()
    cfg = _cfg(corpora, copy / "ws")
    cfg["domains"][2]["sources"] = [{"path": str(filtered)}]
    path = write_config(copy / "exp.yaml", cfg)
    out = cli("sample", path)
    assert "domains sampled: legal; kept: code, prose" in out
    st = _status(path)["cost"]
    assert st["superseded"] == sum(legal.values()) and st["superseded_why"] == {"domain 'legal' changed since":
                                                                                 sum(legal.values())}
    assert st["valid"] == BASE_RUNS - sum(legal.values()) and st["change"]["changed"] == ["legal"]
    assert _rows(copy / "ws") == old  # superseded runs are kept in the store


@pytest.mark.slow
def test_new_tokenizer_needs_retokenize_and_says_it_invalidates(corpora, copy):
    cfg = _cfg(corpora, copy / "ws")
    cfg["sample"]["tokenizer"] = {"vocab_size": 640}
    path = write_config(copy / "exp.yaml", cfg)
    before = (copy / "ws" / "sample" / "manifest.json").read_text()
    r = mixopt("sample", path, check=False)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--retokenize" in r.stderr
    assert "makes every run trained so far invalid" in r.stderr
    assert (copy / "ws" / "sample" / "manifest.json").read_text() == before  # nothing written
    out = cli("sample", path, "--retokenize")
    assert f"new tokenizer: the {BASE_RUNS} runs trained so far are superseded" in out
    cost = _status(path)["cost"]
    assert cost["valid"] == 0 and cost["superseded_why"] == {"trained with another tokenizer": BASE_RUNS}
    assert cost["to_train"] == BASE_RUNS and yaml.safe_load(path.read_text())["sample"]["tokenizer"]["vocab_size"] == 640


@pytest.mark.slow
def test_runs_keyed_by_an_older_mixopt_are_adopted_with_their_results(corpora, copy):
    """A store of the old key scheme (every domain's name and slice in the context, no slices column):
    the first plan re-keys its runs, keeping checkpoints and measurements; nothing is to train."""
    from mixopt.core.keys import content_hash
    from mixopt.sweep.plan import legacy_context

    path = write_config(copy / "exp.yaml", _cfg(corpora, copy / "ws"))
    exp = load_experiment(path)
    plan = load_plan(exp, design=False)
    old_ctx = legacy_context(plan, exp)
    measured = {}
    with sqlite3.connect(copy / "ws" / "mixopt.db") as db:  # foreign keys off: rewrite as 0.1 wrote it
        for key, weights in db.execute("SELECT key, weights FROM runs").fetchall():
            legacy = content_hash({"context": old_ctx, "weights": json.loads(weights)})
            db.execute("UPDATE runs SET key=?, context=?, slices=NULL, tokenizer=NULL WHERE key=?", (legacy, old_ctx, key))
            for table in ("measurements", "scores"):
                db.execute(f"UPDATE {table} SET run_key=? WHERE run_key=?", (legacy, key))
            measured[key] = db.execute("SELECT COUNT(*) FROM measurements WHERE run_key=?", (legacy,)).fetchone()[0]
    cost = _status(path)["cost"]
    assert cost["valid"] == BASE_RUNS and cost["to_train"] == 0 and cost["superseded"] == 0
    with sqlite3.connect(copy / "ws" / "mixopt.db") as db:
        for key, n in measured.items():
            assert n > 0 and db.execute("SELECT COUNT(*) FROM measurements WHERE run_key=?", (key,)).fetchone()[0] == n


def test_reuse_rounds_chain(tmp_path):
    """A second change after a reuse round: the first round's domain is known, the new virtual domain
    is every other domain at the last (combined) recommendation; a round whose data is gone stops."""
    from types import SimpleNamespace

    from mixopt.sweep.change import detect_change, record_virtual

    base = [SimpleNamespace(key=f"k{i}", origin=o, slices=("A", "B", "C"), weights=w)
            for i, (o, w) in enumerate([("prior", (0.4, 0.3, 0.3)), ("random:0", (0.2, 0.5, 0.3))])]
    valid = {r.key: r.weights + (0.0,) * 2 for r in base}
    record, optimal = tmp_path / "after-change.json", tmp_path / "x.optimal.yaml"
    optimal.write_text(yaml.safe_dump({"weights": {"a": 0.5, "b": 0.25, "c": 0.25}}))
    prior = np.full(5, 0.2)

    def change(names, slices):
        return detect_change("reuse", names, slices, base, valid, prior, record, optimal, {})

    one = change(["a", "b", "c", "d"], ("A", "B", "C", "D"))
    assert one.changed == (3,) and one.virtual == (0.5, 0.25, 0.25) and not one.rounds
    record_virtual(one, ("A", "B", "C", "D"), record)
    optimal.write_text(yaml.safe_dump({"weights": {"a": 0.2, "b": 0.2, "c": 0.2, "d": 0.4}}))  # round 1's fit
    assert change(["a", "b", "c", "d"], ("A", "B", "C", "D")).virtual == (0.5, 0.25, 0.25)  # the design stays put
    two = change(["a", "b", "c", "d", "e"], ("A", "B", "C", "D", "E"))
    assert two.changed == (4,) and two.unchanged == (0, 1, 2, 3) and two.virtual == (0.2, 0.2, 0.2, 0.4)
    assert len(two.rounds) == 1 and two.virtual_from.startswith("the last recommendation")
    record_virtual(two, ("A", "B", "C", "D", "E"), record)
    assert len(json.loads(record.read_text())["rounds"]) == 2
    again = change(["a", "b", "c", "d", "e"], ("A", "B", "C", "D", "E"))
    assert again.changed == (4,) and again.virtual == (0.2, 0.2, 0.2, 0.4) and len(again.rounds) == 1
    # 'd' updated: round 1 (and so round 2) no longer stand: both d and e are changed against the base
    gone = change(["a", "b", "c", "d", "e"], ("A", "B", "C", "D2", "E"))
    assert gone.changed == (3, 4) and gone.unchanged == (0, 1, 2) and not gone.rounds
    # a record of one round, as written before rounds chained
    record.write_text(json.dumps({"changed": ["D"], "from": "x", "virtual": {"A": 0.5, "B": 0.25, "C": 0.25}}))
    assert change(["a", "b", "c", "d"], ("A", "B", "C", "D")).virtual == (0.5, 0.25, 0.25)


def _add_more(corpora, copy, **over) -> Path:
    """The finished experiment's config with a fourth domain, 'more', added (not sampled yet)."""
    cfg = _cfg(corpora, copy / "ws", **over)
    cfg["domains"].append({"name": "more", "sources": [{"path": str(_more_docs(copy))}]})
    return write_config(copy / "exp.yaml", cfg)


@pytest.mark.slow
def test_status_before_sampling_a_change_shows_the_store_and_what_the_change_keeps(corpora, copy):
    path = _add_more(corpora, copy)
    st = _status(path)
    assert st["sample"].startswith("stale") and st["resample"]["sampled"] == ["more"]
    assert st["runs"]["done"] == BASE_RUNS and st["trainings"] == BASE_RUNS  # the store, not 0
    assert st["resample"]["runs"] == {"valid": BASE_RUNS, "superseded": 0, "superseded_why": {},
                                      "after_change": "reuse"}
    text = cli("status", path)
    assert f"runs in store (all designs): {BASE_RUNS} done, 0 failed, 0 suspect, 0 planned; proxies trained: " \
           f"{BASE_RUNS}" in text
    assert f"after it: {BASE_RUNS} finished runs stay valid (checkpoints and measurements reused); 0 superseded" in text
    assert "then `mixopt sweep` trains only what design.after_change: reuse adds for more" in text
    cli("sample", path)
    assert _status(path)["cost"]["valid"] == BASE_RUNS  # the preview said what the sample then kept

    # Updating 'legal' instead: the preview names the runs it supersedes, as the sampled plan then does.
    with Store(copy / "ws" / "mixopt.db") as store:
        on_legal = sum(r.weights[2] > 0 for r in store.runs() if r.status == "done")
    cfg = yaml.safe_load(path.read_text())
    filtered = copy / "legal-filtered"
    shutil.copytree(corpora / "legal", filtered)
    for f in sorted(filtered.iterdir())[::3]:
        f.unlink()
    cfg["domains"][2]["sources"] = [{"path": str(filtered)}]
    path = write_config(path, cfg)
    runs = _status(path)["resample"]["runs"]
    assert runs["superseded_why"] == {"domain 'legal' changed since": on_legal}
    cli("sample", path)
    cost = _status(path)["cost"]
    assert (cost["valid"], cost["superseded"]) == (runs["valid"], runs["superseded"])


@pytest.mark.slow
def test_a_repaired_run_is_retrained_after_an_extend_change(corpora, copy):
    with Store(copy / "ws" / "mixopt.db") as store:
        victim = next(r for r in store.runs() if r.origin.startswith("random:"))
    (copy / "ws" / victim.checkpoint).write_bytes(b"damaged")
    path = _add_more(corpora, copy, design={"runs": 2, "min_weight": 0.01, "after_change_runs": 1,
                                            "replicates": None, "after_change": "extend"})
    assert "repaired" in cli("check", path, "--repair").lower()
    cli("sample", path)
    dry = json.loads(cli("sweep", path, "--dry-run", "--format", "json"))
    why = dry["cost"]["to_train_why"]
    assert why.pop("sent back for retraining (`check --repair` or a damaged checkpoint)") == 1
    assert dry["cost"]["to_train"] == 1 + sum(why.values()) and dry["design"]["pending"] == dry["cost"]["to_train"]
    assert "sent back for retraining" in cli("sweep", path, "--dry-run")
    cli("sweep", path, "--no-progress")
    with Store(copy / "ws" / "mixopt.db") as store:
        again = next(r for r in store.runs() if r.key == victim.key)
    assert again.status == "done" and again.trainings == 2
    assert _status(path)["cost"]["to_train"] == 0


@pytest.mark.slow
def test_extend_varies_a_small_new_domain_in_every_new_run(corpora, copy):
    """A new domain with a small prior (three small CPython packages, the least text a train slice of
    20k tokens allows): each new random run gives it a share drawn over its range, so the fit sees it
    vary and does not say otherwise. tests/test_design.py checks a 0.0115 prior on the planner."""
    cfg = _cfg(corpora, copy / "ws", design={"runs": 2, "min_weight": 0.01, "after_change_runs": 1,
                                              "replicates": None, "after_change": "extend"})
    cfg["domains"].append({"name": "small", "sources": [{"path": str(_more_docs(copy, "small", ("sqlite3", "wsgiref", "tomllib"),
                                                                                   60_000))}]})
    path = write_config(copy / "exp.yaml", cfg)
    cli("sample", path)
    prior = json.loads((copy / "ws" / "sample" / "manifest.json").read_text())["domains"]["small"]["prior"]
    assert prior < 0.08
    cli("sweep", path, "--no-progress")
    with Store(copy / "ws" / "mixopt.db") as store:
        new = [r.weights[3] for r in store.runs() if r.origin.startswith("extend:random")]
    assert len(new) >= 2 and min(new) >= 0.01 and max(new) - min(new) > 0.05, new
    r = mixopt("fit", path, "--no-plots", "--no-progress")
    assert r.returncode == 0 and "did not vary" not in r.stdout + r.stderr
