"""Eval suites: content keys, the three kinds of evaluation, and re-evaluation with zero retraining."""

import json
import queue
import sqlite3
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import small_config, write_config
from typer.testing import CliRunner

from mixopt.cli import app
from mixopt.config.load import load_experiment
from mixopt.core.workspace import Workspace
from mixopt.evals import measure as evals_module
from mixopt.evals.suites import resolve_suite
from mixopt.sweep import run as sweep_module
from mixopt.sweep import work as work_module


def _text_files(root: Path) -> Path:
    """A target text set outside the training mix: the sources of CPython's unittest package."""
    out = root / "target"
    out.mkdir(exist_ok=True)
    for f in sorted((Path(sysconfig.get_paths()["stdlib"]) / "unittest").glob("*.py"))[:6]:
        (out / (f.stem + ".txt")).write_text(f.read_text())
    return out


def _choice_task(root: Path, n: int = 24) -> Path:
    """Which continuation follows this passage? The true next 80 characters vs three others'."""
    import pydoc_data.topics

    docs = [v for _, v in sorted(pydoc_data.topics.topics.items()) if len(v) > 600][:n + 3]
    rng = np.random.default_rng(0)
    path = root / "continuation.jsonl"
    with open(path, "w") as f:
        for i in range(n):
            others = [j for j in rng.permutation(len(docs)) if j != i][:3]
            choices = [docs[j][300:380] for j in [i, *others]]
            order = rng.permutation(4)
            f.write(json.dumps({"question": docs[i][:300], "choices": [choices[k] for k in order],
                                "answer": int(np.argmax(order == 0))}) + "\n")
    return path


def _manifest_stub():
    return {"domains": {d: {"val_sha256": d * 8} for d in ("code", "prose", "legal")}, "tokenizer_sha256": "t"}


def test_suite_key_is_meaning_not_bytes(corpora, tmp_path):
    task = _choice_task(tmp_path)
    cfg = small_config(corpora, tmp_path / "ws")
    del cfg["fit"]["objective"]
    cfg["evals"] = "suite.yaml"
    write_config(tmp_path / "c.yaml", cfg)
    ws = Workspace(tmp_path / "ws")

    def key_of(text):
        (tmp_path / "suite.yaml").write_text(text)
        return resolve_suite(load_experiment(tmp_path / "c.yaml"), _manifest_stub(), ws)

    a = key_of(f"evaluations:\n  - {{name: h, kind: heldout, domain: prose}}\n"
               f"  - {{name: c, kind: choice, path: {task.name}, weight: 0.5}}\n")
    b = key_of(f"# same meaning, other bytes\nevaluations:\n  - {{domain: prose, kind: heldout, name: h}}\n"
               f"  - {{weight: 0.50, path: ./{task.name}, name: c, kind: choice}}\naverage: tasks\n")
    assert a.key == b.key
    c = key_of(f"evaluations:\n  - {{name: h, kind: heldout, domain: prose}}\n"
               f"  - {{name: c, kind: choice, path: {task.name}, weight: 0.25}}\n")
    assert c.key != a.key and [m.key for m in c.measures] == [m.key for m in a.measures]  # nothing to recompute
    task.write_text(task.read_text().replace('"answer": 0', '"answer": 1', 1))
    d = key_of(f"evaluations:\n  - {{name: h, kind: heldout, domain: prose}}\n"
               f"  - {{name: c, kind: choice, path: {task.name}, weight: 0.5}}\n")
    assert d.measures[0].key == a.measures[0].key and d.measures[1].key != a.measures[1].key  # data changed


def test_objective_direction_and_family_average(corpora, tmp_path):
    task = _choice_task(tmp_path)
    cfg = small_config(corpora, tmp_path / "ws")
    del cfg["fit"]["objective"]
    cfg["evals"] = {"average": "families", "evaluations": [
        {"name": "h/code", "kind": "heldout", "domain": "code", "family": "lm"},
        {"name": "h/prose", "kind": "heldout", "domain": "prose", "family": "lm"},
        {"name": "h/legal", "kind": "heldout", "domain": "legal", "family": "lm", "weight": 2},
        {"name": "cont", "kind": "choice", "path": str(task), "metric": "acc_norm"}]}
    suite = resolve_suite(load_experiment(write_config(tmp_path / "c.yaml", cfg)), _manifest_stub(),
                          Workspace(tmp_path / "ws"))
    terms = suite.objective_terms()
    assert terms == pytest.approx({"h/code/bpb": 0.125, "h/prose/bpb": 0.125, "h/legal/bpb": 0.25,
                                   "cont/acc_norm": -0.5})  # accuracy: higher is better, so it enters negated
    assert suite.describe_objective().endswith("- 0.5*cont/acc_norm")


def test_choice_scores_prefer_the_likelier_choice():
    """A model that always predicts token 7: the choice made of 7s is the likeliest, per token and per byte."""
    import torch

    from mixopt.proxy.model import ProxySpec, build_model, stack_weights

    spec = ProxySpec(size="tiny", hidden=4, layers=1, heads=1, seq_len=8, batch_size=1, lr=1e-3, warmup=0.0,
                     weight_decay=0.0, tokens=8, vocab_size=16)
    W = {k: torch.zeros_like(v) for k, v in stack_weights(build_model(spec), 2).items()}
    for k in W:
        if k.endswith("norm.weight"):
            W[k] += 1
    # Layers add nothing (zero weights); every token embeds along one axis, 7 ten times longer: the
    # tied output layer then always ranks 7 first, by a logit margin of 18.
    W["model.embed_tokens.weight"][:, :, 0] = 1.0
    W["model.embed_tokens.weight"][:, 7, 0] = 10.0
    items = [{"context": [1, 2, 3], "choices": [[7, 7], [5, 5]], "bytes": [2, 2], "answer": 0},
             {"context": [1], "choices": [[5], [7, 7, 7]], "bytes": [1, 3], "answer": 0}]
    scores = evals_module.choice_scores(W, spec, items)
    assert len(scores) == 2  # one per proxy
    for s in scores:
        assert s["acc"] == 0.5 and s["acc_norm"] == 0.5
        assert s["prob"] == pytest.approx(0.5, abs=1e-6)  # ~1 on the first item, ~0 on the second


@pytest.mark.slow
def test_suite_change_reevaluates_without_retraining(corpora, tmp_path, monkeypatch):
    target, task = _text_files(tmp_path), _choice_task(tmp_path)
    cfg = small_config(corpora, tmp_path / "ws")
    del cfg["fit"]["objective"]
    cfg["evals"] = "suite.yaml"
    config = write_config(tmp_path / "c.yaml", cfg)
    suite_file = tmp_path / "suite.yaml"
    suite = {"evaluations": [{"name": "heldout/prose", "kind": "heldout", "domain": "prose"},
                             {"name": "heldout/code", "kind": "heldout", "domain": "code", "weight": 0.0}]}
    suite_file.write_text(yaml.safe_dump(suite))
    cli = CliRunner()

    def run(*args):
        r = cli.invoke(app, [*map(str, args)])
        assert r.exit_code == 0, (r.output, r.exception)
        return r.stdout  # stderr (notices) apart: --format json output parses

    run("sample", config)
    run("sweep", config, "--workers", "2", "--no-progress")
    first = json.loads(run("fit", config, "--format", "json"))
    status0 = json.loads(run("status", config, "--format", "json"))
    assert status0["trainings"] == 12

    # From here on, any training is a failure: count every call into the trainer.
    trained = []
    monkeypatch.setattr(sweep_module, "train_task", lambda *a, **k: trained.append(a) or pytest.fail("trained"))
    monkeypatch.setattr(work_module, "train_proxies", lambda *a, **k: trained.append(a) or pytest.fail("trained"))
    measured = []
    real = work_module.measure_models
    monkeypatch.setattr(work_module, "measure_models",  # one entry per proxy measured (many per call)
                        lambda W, spec, ms, *a, **k: measured.extend([[m.name for m in ms]] * len(W["model.norm.weight"]))
                        or real(W, spec, ms, *a, **k))

    # Add a text target and a choice task, and move the weight onto the new text target.
    suite["evaluations"][0]["weight"] = 0.2
    suite["evaluations"] += [{"name": "unittest-src", "kind": "text", "sources": [str(target)], "weight": 0.8,
                              "max_tokens": 4000},
                             {"name": "continuation", "kind": "choice", "path": task.name, "weight": 0.0}]
    suite_file.write_text(yaml.safe_dump(suite))
    out = run("fit", config, "--format", "json", "--no-progress")
    second = json.loads(out[out.index("{"):])
    assert trained == []
    assert len(measured) == 12 and all(m == ["unittest-src", "continuation"] for m in measured)  # only what's new
    status = json.loads(run("status", config, "--format", "json"))
    assert status["trainings"] == 12 and status["suite"] != status0["suite"]
    assert status["suites"][status["suite"]]["runs_scored"] == 12
    assert status["suites"][status0["suite"]]["runs_scored"] == 12  # the old rows are kept, not overwritten
    assert second["objective"] == "0.2*heldout/prose/bpb + 0.8*unittest-src/bpb"
    assert second["weights"] != first["weights"]
    # The ratio is recomputed from the new rows: the fit's measured objectives are the stored scores.
    fit_json = json.loads((tmp_path / "ws" / "fits" / second["fit_key"][:16] / "fit.json").read_text())
    with sqlite3.connect(tmp_path / "ws" / "mixopt.db") as db:
        stored = dict(db.execute("SELECT run_key, objective FROM scores WHERE suite=?", (status["suite"],)))
    assert np.allclose([stored[k] for k in fit_json["run_keys"]], fit_json["measured"])

    # A weight-only change: a new suite key, new score rows, and nothing evaluated.
    measured.clear()
    suite["evaluations"][3]["weight"] = 0.5
    suite_file.write_text(yaml.safe_dump(suite))
    third = json.loads(run("fit", config, "--format", "json", "--no-progress"))
    assert measured == [] and trained == []
    assert "continuation/prob" in third["objective"]
    status3 = json.loads(run("status", config, "--format", "json"))
    assert len(status3["suites"]) == 3 and status3["suites"][status3["suite"]]["runs_scored"] == 12

    # `mixopt eval` finds nothing to do; a sweep neither trains nor evaluates.
    assert "evaluated 0 checkpoints" in run("eval", config, "--no-progress")
    assert "12 already done" in run("sweep", config, "--no-progress")
    assert trained == [] and measured == []

    # --watch: each save of the suite file re-evaluates and refits; a bad save is reported, not fatal.
    proc = subprocess.Popen([sys.executable, "-m", "mixopt.cli", "eval", str(config), "--watch", "--interval", "0.2",
                             "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()

    def wait_for(text):
        seen = []
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                seen.append(lines.get(timeout=1))
            except queue.Empty:
                continue
            if text in seen[-1]:
                return seen
        raise AssertionError(f"no '{text}' from --watch: {seen}")

    try:
        assert any("written:" in x for x in wait_for("watching"))
        suite["evaluations"][3]["metric"] = "acc_norm"
        suite_file.write_text(yaml.safe_dump(suite))
        got = wait_for("watching")
        assert any("continuation/acc_norm" in x for x in got) and any("written:" in x for x in got)
        suite_file.write_text("evaluations: [{name: x, kind: heldout, domain: poetry}]\n")
        assert any("unknown domain 'poetry'" in x for x in wait_for("watching"))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_corrupt_checkpoint_is_suspect_and_keeps_its_results(corpora, tmp_path, monkeypatch):
    cfg = small_config(corpora, tmp_path / "ws", design__runs=2)
    config = write_config(tmp_path / "c.yaml", cfg)
    cli = CliRunner()
    assert cli.invoke(app, ["sample", str(config)]).exit_code == 0
    assert cli.invoke(app, ["sweep", str(config), "--no-progress"]).exit_code == 0
    victim = sorted((tmp_path / "ws" / "checkpoints").glob("*.safetensors"))[0]
    data = bytearray(victim.read_bytes())
    data[-10] ^= 0xFF
    victim.write_bytes(bytes(data))
    r = cli.invoke(app, ["eval", str(config), "--no-progress"])
    assert r.exit_code == 0 and "evaluated 0 checkpoints" in r.output  # nothing missing: nothing reloaded
    # Make the damaged run lack a measurement, so `eval` must reload it: its sha256 gives it away.
    db = sqlite3.connect(tmp_path / "ws" / "mixopt.db")
    key = db.execute("SELECT key FROM runs WHERE checkpoint LIKE ?", (f"%{victim.name}",)).fetchone()[0]
    db.execute("DELETE FROM measurements WHERE run_key=? AND eval=(SELECT MIN(eval) FROM measurements "
               "WHERE run_key=?)", (key, key))
    db.commit()
    kept = db.execute("SELECT COUNT(*) FROM measurements WHERE run_key=?", (key,)).fetchone()[0]
    r = cli.invoke(app, ["eval", str(config), "--no-progress"])
    assert r.exit_code == 1 and "marked suspect" in r.output and "1 runs left out as suspect" in r.output
    assert db.execute("SELECT status FROM runs WHERE key=?", (key,)).fetchone() == ("suspect",)
    assert kept > 0 and db.execute("SELECT COUNT(*) FROM measurements WHERE run_key=?", (key,)).fetchone()[0] == kept
    r = cli.invoke(app, ["sweep", str(config), "--no-progress"])
    assert "1 trained" in r.output
    assert db.execute("SELECT status, trainings FROM runs WHERE key=?", (key,)).fetchone() == ("done", 2)
    db.close()


def test_fit_no_reeval_uses_runs_lacking_only_a_weight_0_task(swept, tmp_path):
    """A task added at weight 0: with --no-reeval no run has it, yet every run is complete for the
    objective, so fit uses them all and says the task is left out for them."""
    import shutil

    cfg = yaml.safe_load(swept.read_text())
    shutil.copytree(Path(cfg["workspace"]), tmp_path / "ws")
    cfg["workspace"] = str(tmp_path / "ws")

    def fit(config):
        r = CliRunner().invoke(app, ["fit", str(config), "--format", "json", "--no-plots", "--no-progress",
                                     "--no-reeval"])
        assert r.exit_code == 0, (r.output, r.exception)
        return json.loads(r.stdout), r.stderr

    before, _ = fit(write_config(tmp_path / "c.yaml", cfg))
    del cfg["fit"]["objective"]
    cfg["evals"] = {"evaluations": [
        {"name": "heldout/prose", "kind": "heldout", "domain": "prose"},
        {"name": "unittest-src", "kind": "text", "sources": [str(_text_files(tmp_path))], "weight": 0.0,
         "max_tokens": 2000}]}
    after, said = fit(write_config(tmp_path / "c.yaml", cfg))
    assert after["runs"] == before["runs"] > 0 and after["objective"] == "heldout/prose/bpb"
    assert after["weights"] == pytest.approx(before["weights"], abs=1e-9)  # same runs, same objective
    assert f"note: {after['runs']} finished runs lack only unittest-src (weight 0 in the objective; --no-reeval): " \
           "fitted on the objective, unittest-src left out for them" in said
    assert "left out (" not in said  # no run left out


def test_the_eval_kinds_have_one_registry_and_one_config_model_each(make_config):
    """config/evals.py's discriminated union and evals/kinds' KINDS name the same kinds; each kind's
    behaviour class points at its config model; the choice presets the config accepts are the readers'."""
    from typing import get_args

    from mixopt.config.evals import EVAL_KINDS, ChoiceEvaluation, EvalSuite
    from mixopt.evals.choice import PRESETS
    from mixopt.evals.kinds import KINDS

    union = get_args(get_args(EvalSuite.model_fields["evaluations"].annotation)[0])[0]
    assert {get_args(c.model_fields["kind"].annotation)[0] for c in get_args(union)} == set(KINDS) == set(EVAL_KINDS)
    assert all(k.config is EVAL_KINDS[name] for name, k in KINDS.items())
    literal = get_args(ChoiceEvaluation.model_fields["preset"].annotation)[0]  # Literal[...] | None
    assert set(get_args(literal)) == set(PRESETS)


@pytest.mark.parametrize("entry, message", [
    ({"name": "h", "kind": "heldot", "domain": "prose"},
     "'evals.evaluations.0.kind': unknown kind 'heldot'; use one of: heldout, text, choice, lm_eval"),
    ({"name": "h", "domain": "prose"}, "'evals.evaluations.0.kind' is required; add it (one of: heldout, text, "
                                       "choice, lm_eval)"),
    ({"name": "h", "kind": "heldout", "domain": "prose", "max_tokens": 5},
     "'evals.evaluations.0': 'max_tokens' does not apply to a 'heldout' evaluation (it uses 'domain'; "
     "'max_tokens' is for text)"),
    ({"name": "h", "kind": "heldout", "domian": "prose"}, "unknown key 'evals.evaluations.0.domian'; did you mean "
                                                          "'domain'?"),
    ({"name": "t", "kind": "text", "sources": []}, "'evals.evaluations.0.sources': List should have at least 1 item"),
    ({"name": "c", "kind": "choice", "path": "a.jsonl", "metric": "loss"},
     "'evals.evaluations.0.metric': metric 'loss' is not one of prob, acc, acc_norm, bpb"),
])
def test_an_evaluation_of_the_wrong_shape_is_one_line_naming_the_fix(make_config, entry, message):
    """Each kind is its own model: a key of another kind is pydantic's extra input, said in mixopt's
    words on the line of the file it is on."""
    from mixopt.errors import MixoptError

    cfg = make_config(evals={"evaluations": [entry]}, fit={})
    with pytest.raises(MixoptError) as err:
        load_experiment(cfg)
    text = str(err.value)
    assert message in text and "\n" not in text and "line " in text, text


def test_the_objective_is_one_weighted_sum_of_the_suites_metrics():
    """Suite.objective (the sweep's scores, the export) and objective_of on arrays (the fit) agree:
    signed weights, higher-is-better metrics negated, weight-0 evaluations left out."""
    from mixopt.evals.objective import objective_of
    from mixopt.evals.suites import Measure, Suite

    suite = Suite((Measure("heldout/a", "heldout", "k1", "bpb", 3.0, "a", "a", None),
                   Measure("qa", "choice", "k2", "prob", 1.0, "qa", None, "x.json"),
                   Measure("heldout/b", "heldout", "k3", "bpb", 0.0, "b", "b", None)), "tasks")
    metrics = {"heldout/a/bpb": 2.0, "qa/prob": 0.4, "heldout/b/bpb": 9.0}
    assert suite.objective_terms() == {"heldout/a/bpb": 0.75, "qa/prob": -0.25}
    assert suite.objective(metrics) == pytest.approx(0.75 * 2.0 - 0.25 * 0.4)
    arrays = {"heldout/a/bpb": np.array([2.0, 1.0]), "qa/prob": np.array([0.4, 0.8])}
    assert objective_of(suite.objective_terms(), arrays) == pytest.approx([1.4, 0.55])
