"""lm-evaluation-harness in the suite (a custom task YAML over local JSON data, offline), and proxies
exported as Hugging Face model folders that transformers and `lm_eval --model hf` load."""

import json
import sqlite3
import subprocess
import sys

import pytest
import torch
from conftest import small_config, write_config
from typer.testing import CliRunner

from mixopt.cli import app
from mixopt.core.workspace import Workspace
from mixopt.proxy.checkpoint import load_checkpoints
from mixopt.proxy.model import forward_logits

pytest.importorskip("lm_eval", reason="the lm_eval extra (make test installs it)")

QA = [("Which is a liquid at room temperature?", ["iron", "water", "salt"], 1),
      ("What do bees make?", ["honey", "steel", "glass"], 0),
      ("Which animal barks?", ["cat", "fish", "dog"], 2),
      ("What falls from clouds?", ["rain", "sand"], 0),
      ("Which is used to write?", ["spoon", "pen", "shoe"], 1),
      ("What is the opposite of hot?", ["warm", "cold"], 1),
      ("Which keyword defines a function in Python?", ["def", "var", "fn"], 0),
      ("What does a license grant?", ["permission", "weather", "colour"], 0)]


def _task_folder(root):
    folder = root / "tasks"
    folder.mkdir()
    (folder / "qa.jsonl").write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n"
                                             for q, c, a in QA))
    (folder / "mini_qa.yaml").write_text(f"""task: mini_qa
dataset_path: json
dataset_kwargs:
  data_files:
    test: {folder / 'qa.jsonl'}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
""")
    return folder


def _run(*args):
    r = CliRunner().invoke(app, [*map(str, args)])
    assert r.exit_code == 0, (r.output, r.exception)
    return r.stdout  # stderr (notices) apart: --format json output parses


@pytest.mark.slow
def test_lm_eval_task_scores_each_checkpoint_and_exports_load_in_hf_tools(corpora, tmp_path):
    tasks = _task_folder(tmp_path)
    cfg = small_config(corpora, tmp_path / "ws", design__runs=1, design__include_vertices=False)  # 2 runs
    del cfg["fit"]["objective"]
    cfg["evals"] = {"evaluations": [{"name": "qa", "kind": "lm_eval", "task": "mini_qa", "path": str(tasks),
                                     "metric": "acc_norm"}]}
    config = write_config(tmp_path / "c.yaml", cfg)
    _run("sample", config)
    _run("sweep", config, "--no-progress")
    with sqlite3.connect(tmp_path / "ws" / "mixopt.db") as db:
        got = dict(db.execute("SELECT run_key, value FROM measurements WHERE metric='acc_norm'"))
        scores = dict(db.execute("SELECT run_key, objective FROM scores"))
    assert len(got) == 2 and all(v * len(QA) == round(v * len(QA)) for v in got.values())  # k of 8 items right
    assert scores == {k: -v for k, v in got.items()}  # higher is better: the objective is its negative
    status = json.loads(_run("status", config, "--format", "json"))
    assert status["current_suite"]["objective"] == "-qa/acc_norm"

    # The best run as an HF folder: transformers gives mixopt's logits, the tokenizer its ids.
    out = tmp_path / "best-hf"
    said = _run("export-model", config, "best", "--output", out)
    best = min(scores, key=scores.get)
    assert f"run {best[:12]} written to {out}" in said
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    text = "Question: Which animal barks?\nAnswer: dog"
    ids = AutoTokenizer.from_pretrained(out)(text)["input_ids"]
    assert ids == Tokenizer.from_file(str(Workspace(tmp_path / "ws").tokenizer_path)).encode(text).ids
    with sqlite3.connect(tmp_path / "ws" / "mixopt.db") as db:
        (ckpt,), = db.execute("SELECT checkpoint FROM runs WHERE key=?", (best,))
    W = load_checkpoints([tmp_path / "ws" / ckpt])
    x = torch.tensor([ids])
    with torch.no_grad():
        assert torch.allclose(model(x).logits, forward_logits(W, x[None], _spec(config))[0], atol=1e-4)

    # The harness's own CLI on the exported folder measures what the sweep stored for that run.
    res = subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
                          f"pretrained={out},dtype=float32", "--tasks", "mini_qa", "--include_path", str(tasks),
                          "--device", "cpu", "--batch_size", "16", "--output_path", str(tmp_path / "lm_out")],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    (result_file,) = (tmp_path / "lm_out").rglob("results_*.json")
    assert json.loads(result_file.read_text())["results"]["mini_qa"]["acc_norm,none"] == pytest.approx(got[best])

    # Never over what is there; a run key that matches nothing: one line, exit 2.
    for args, line in (([out.parent / "c.yaml", "best", "--output", out], "already exists and is not an empty folder"),
                       ([config, "zzzz"], "run 'zzzz' matches no finished run")):
        r = subprocess.run([sys.executable, "-m", "mixopt.cli", "export-model", *map(str, args)],
                           capture_output=True, text=True)
        assert r.returncode == 2 and r.stderr.startswith("error: ") and line in r.stderr, r.stderr


def _spec(config):
    from mixopt.config.load import load_experiment
    from mixopt.sweep.plan import load_plan

    return load_plan(load_experiment(config), design=False).spec


def test_lm_eval_config_errors(corpora, tmp_path, make_config):
    def error(**e):
        suite = {"evaluations": [{"name": "qa", "kind": "lm_eval", "task": "mini_qa", **e}]}
        r = CliRunner().invoke(app, ["sample", str(make_config(evals=suite, fit={}))])
        assert r.exit_code != 0
        return str(r.exception)

    assert "say whether it is better higher with 'higher_is_better'" in error(metric="mystery")
    assert "needs 'metric'" in error()
    assert "task folder not found" in error(metric="acc", path=str(tmp_path / "none"))



def test_the_harness_runs_under_the_precision_the_proxy_trained(tmp_path, monkeypatch):
    """lm_eval's forward passes run under the run's precision, as mixopt's own measures do: bf16 autocast
    for a bf16 run (the float32 weights kept, as in training), none for a float32 one. The harness's entry
    point is replaced by one that reads the autocast state it is called under (its forward passes run in
    that thread) and the dtype of the model it would load."""
    import lm_eval

    from mixopt.evals.lm_eval import lm_eval_scores
    from mixopt.evals.measure import evaluation_precision
    from mixopt.proxy.model import ProxySpec, build_model
    from mixopt.data.tokenizer import train_tokenizer

    tok = train_tokenizer(["def f(x):\n    return x + 1\n" * 50, "The cat sat on the mat. " * 50], 300)
    tok.save(str(tmp_path / "tokenizer.json"))
    spec = ProxySpec(size="tiny", hidden=32, layers=1, heads=2, seq_len=16, batch_size=2, lr=1e-3, warmup=0.1,
                     weight_decay=0.0, tokens=64, vocab_size=tok.get_vocab_size())
    model = build_model(spec)
    W = {k: p.detach()[None] for k, p in model.named_parameters()}
    (tmp_path / "task.json").write_text(json.dumps({"task": "mini_qa", "include": None, "defaults": True, "k": 0,
                                                    "limit": None, "metric": "acc", "tokenizer": str(tmp_path / "tokenizer.json")}))
    seen = []

    def simple_evaluate(model, model_args, tasks, **k):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"), model_args["dtype"]))
        return {"results": {tasks[0]: {"acc,none": 0.5}}}

    monkeypatch.setattr(lm_eval, "simple_evaluate", simple_evaluate)
    monkeypatch.setattr("lm_eval.tasks.TaskManager", lambda **k: None)

    class M:
        data = str(tmp_path / "task.json")

    for precision in ("bf16", "fp32"):
        with evaluation_precision(precision):
            assert lm_eval_scores(W, spec, M()) == [{"acc": 0.5}]
    assert seen[0] == (True, torch.bfloat16, "float32")  # bf16: autocast on, the weights float32
    assert not seen[1][0] and seen[1][2] == "float32"  # float32: no autocast
