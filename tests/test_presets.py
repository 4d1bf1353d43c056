"""Choice tasks from the field's datasets: each preset's schema in a different storage format
(save_to_disk, JSONL, JSON, Parquet), field mappings, seeded few-shot exemplars, and the answer's
bits per byte; then a real sweep through the CLI scoring an ARC-schema task saved with `datasets`."""

import json
import math
import sqlite3

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import small_config, write_config
from typer.testing import CliRunner

from mixopt.cli import app
from mixopt.config.evals import ChoiceEvaluation, EvalSuite
from mixopt.errors import MixoptError
from mixopt.evals.choice import read_choice_task

ARC = [{"id": f"q{i}", "question": q, "choices": {"text": t, "label": lab}, "answerKey": a} for i, (q, t, lab, a) in
       enumerate([("Which is a liquid at room temperature?", ["iron", "water", "salt", "sand"], list("ABCD"), "B"),
                  ("What do plants need for photosynthesis?", ["sunlight", "darkness", "plastic"], list("ABC"), "A"),
                  ("Which planet is closest to the sun?", ["Mars", "Venus", "Mercury", "Earth"], list("1234"), "3"),
                  ("What gas do animals breathe out?", ["oxygen", "carbon dioxide", "helium", "neon"],
                   list("ABCD"), "B"),
                  ("How many legs does a spider have?", ["six", "eight", "ten", "four"], list("ABCD"), "B")])]


def _suite(tmp_path, **e):
    return EvalSuite(evaluations=[ChoiceEvaluation(name="t", kind="choice", **e)], base_dir=str(tmp_path))


def _read(tmp_path, seed=0, **e):
    s = _suite(tmp_path, **e)
    return read_choice_task(s.evaluations[0], s.resolve, seed)


def _save_arc(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_list(ARC[3:]), "test": Dataset.from_list(ARC[:3])}).save_to_disk(
        str(tmp_path / "arc"))


def test_arc_from_save_to_disk(tmp_path):
    _save_arc(tmp_path)
    items = _read(tmp_path, path="arc", split="test", preset="arc")
    assert [it["answer"] for it in items] == [1, 0, 2]  # letters and digit labels, through the labels list
    assert items[0]["context"] == "Question: Which is a liquid at room temperature?\nAnswer:"
    assert items[0]["choices"] == [" iron", " water", " salt", " sand"]
    with pytest.raises(MixoptError, match=r"arc: a dataset with splits \(it has train, test\)"):
        _read(tmp_path, path="arc", preset="arc")


def test_presets_of_the_common_benchmarks(tmp_path):
    (tmp_path / "hs.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"activity_label": "Baking", "ctx": "She puts the cake in the oven. Then she",
         "endings": ["waits.", "swims.", "flies.", "sings."], "label": "0"},
        {"activity_label": "", "ctx": "He ties his shoes and", "endings": ["runs.", "melts."], "label": "0"}]) + "\n")
    items = _read(tmp_path, path="hs.jsonl", preset="hellaswag")
    assert items[0]["context"] == "Baking: She puts the cake in the oven. Then she" and items[0]["answer"] == 0
    assert items[1]["context"] == "He ties his shoes and" and items[1]["choices"] == [" runs.", " melts."]

    pq.write_table(pa.table({"goal": ["Open a jar", "Dry wet hands"], "sol1": ["twist the lid", "use a towel"],
                             "sol2": ["hit it with a fish", "use a bucket"], "label": [0, 0]}), tmp_path / "piqa.parquet")
    items = _read(tmp_path, path="piqa.parquet", preset="piqa")
    assert items[1] == {"context": "Question: Dry wet hands\nAnswer:", "choices": [" use a towel", " use a bucket"],
                        "answer": 0}

    (tmp_path / "wino.json").write_text(json.dumps([
        {"sentence": "The trophy did not fit in the case because the _ was too big.", "option1": "trophy",
         "option2": "case", "answer": "1"}]))
    (w,) = _read(tmp_path, path="wino.json", preset="winogrande")
    # Partial scoring: each option fills the blank; the rest of the sentence is what is scored.
    assert w["context"] == ["The trophy did not fit in the case because the trophy",
                            "The trophy did not fit in the case because the case"]
    assert w["choices"] == [" was too big."] * 2 and w["answer"] == 0

    pq.write_table(pa.table({"question": ["2 + 3 ="], "subject": ["math"], "choices": [["4", "5", "6", "7"]],
                             "answer": [1]}), tmp_path / "mmlu.parquet")
    (m,) = _read(tmp_path, path="mmlu.parquet", preset="mmlu")
    assert m["choices"] == [" 4", " 5", " 6", " 7"] and m["answer"] == 1

    (tmp_path / "boolq.jsonl").write_text(
        json.dumps({"question": "is water wet", "passage": "Water is a liquid.", "answer": True}) + "\n"
        + json.dumps({"question": "is fire cold?", "passage": "Fire is hot.", "label": 0}) + "\n")
    b = _read(tmp_path, path="boolq.jsonl", preset="boolq")
    assert b[0]["context"] == "Water is a liquid.\nQuestion: is water wet?\nAnswer:" and b[0]["answer"] == 1
    assert b[1]["answer"] == 0 and b[1]["choices"] == [" no", " yes"]


def test_field_mapping_and_bad_rows(tmp_path):
    rows = [{"prompt": {"text": "Capital of France?"}, "options": ["Rome", "Paris"], "gold": "B"},
            {"prompt": {"text": "Red plus blue?"}, "options": ["purple", "green"], "gold": 0}]
    (tmp_path / "t.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
    fields = {"question": "prompt.text", "choices": "options", "answer": "gold"}
    items = _read(tmp_path, path="t.jsonl", fields=fields)
    assert [it["answer"] for it in items] == [1, 0] and items[0]["context"] == "Capital of France?\n"
    (tmp_path / "t.jsonl").write_text(json.dumps(rows[0] | {"gold": "E"}) + "\n")
    with pytest.raises(MixoptError, match=r"t.jsonl:1: answer 'E' names none of the choices"):
        _read(tmp_path, path="t.jsonl", fields=fields)
    with pytest.raises(MixoptError, match=r"t.jsonl:1: no field 'prompt.txt'"):
        _read(tmp_path, path="t.jsonl", fields=fields | {"question": "prompt.txt"})
    with pytest.raises(ValueError, match="one of 'path'"):
        ChoiceEvaluation(name="t", kind="choice", path="a.jsonl", dataset="allenai/ai2_arc")


def test_few_shot_exemplars_are_seeded_and_never_the_item(tmp_path):
    _save_arc(tmp_path)
    (tmp_path / "arc.jsonl").write_text("\n".join(map(json.dumps, ARC)) + "\n")
    a = _read(tmp_path, path="arc.jsonl", preset="arc", k=2)
    assert a == _read(tmp_path, path="arc.jsonl", preset="arc", k=2)  # same seed, same prompts
    assert a != _read(tmp_path, seed=1, path="arc.jsonl", preset="arc", k=2)
    plain = _read(tmp_path, path="arc.jsonl", preset="arc")
    for it, p in zip(a, plain):
        shots = it["context"].removesuffix(p["context"]).split("\n\n")
        assert len(shots) == 3 and shots[-1] == ""  # two answered exemplars, then the question
        assert all(s.startswith("Question: ") and p["context"] not in s for s in shots[:2])
    # The answered exemplar carries the right choice: "Answer: water" for the first ARC item.
    assert any("Which is a liquid at room temperature?\nAnswer: water\n\n" in it["context"] for it in a[1:])
    fs = _read(tmp_path, path="arc", split="test", fewshot_split="train", preset="arc", k=2)
    assert all("spider" in it["context"] and "carbon dioxide" in it["context"] for it in fs)  # the 2 train rows
    with pytest.raises(MixoptError, match="k=3 exemplars asked, 2 available"):
        _read(tmp_path, path="arc", split="test", fewshot_split="train", preset="arc", k=3)


def test_answer_bits_per_byte_is_the_answers_own(tmp_path):
    """bpb = -log2 p(answer | context) / bytes of the answer, checked against a transformers forward."""
    import torch

    from mixopt.evals.measure import choice_scores
    from mixopt.proxy.model import ProxySpec, build_model, stack_weights

    spec = ProxySpec("tiny", 32, 1, 2, 16, 2, 1e-3, 0.0, 0.0, 64, 50)
    torch.manual_seed(0)
    model = build_model(spec).eval()
    W = stack_weights(model, 1)
    items = [{"context": [3, 4, 5], "choices": [[6, 7], [8]], "bytes": [5, 2], "answer": 0},
             {"context": [[9, 1], [2, 3, 4]], "choices": [[5], [5]], "bytes": [3, 3], "answer": 1}]
    (got,) = choice_scores(W, spec, items)
    with torch.no_grad():
        def ll(ctx, cont):
            logp = torch.log_softmax(model(torch.tensor([ctx + cont])).logits[0].float(), -1)
            return sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont))

        want = (-ll([3, 4, 5], [6, 7]) / math.log(2) / 5 - ll([2, 3, 4], [5]) / math.log(2) / 3) / 2
    assert got["bpb"] == pytest.approx(want, rel=1e-4)


@pytest.mark.slow
def test_sweep_scores_a_saved_arc_task_few_shot(corpora, tmp_path):
    """Through the CLI: sample, sweep; every run has acc, prob and bpb of the ARC task, and bpb is the objective."""
    _save_arc(tmp_path)
    cfg = small_config(corpora, tmp_path / "ws", design__runs=0)
    del cfg["fit"]["objective"]
    cfg["evals"] = {"evaluations": [{"name": "arc", "kind": "choice", "path": str(tmp_path / "arc"), "split": "test",
                                     "preset": "arc", "k": 1, "fewshot_split": "train", "metric": "bpb"}]}
    config = write_config(tmp_path / "c.yaml", cfg)
    cli = CliRunner()
    for args in (["sample", config], ["sweep", config, "--no-progress"]):
        r = cli.invoke(app, [*map(str, args)])
        assert r.exit_code == 0, (r.output, r.exception)
    with sqlite3.connect(tmp_path / "ws" / "mixopt.db") as db:
        rows: dict = {}
        for run, metric, value in db.execute("SELECT run_key, metric, value FROM measurements"):
            rows.setdefault(run, {})[metric] = value
        rows = list(rows.values())
        scores = [s for (s,) in db.execute("SELECT objective FROM scores")]
    assert len(rows) == 4 and all(set(r) == {"acc", "acc_norm", "prob", "bpb"} for r in rows)
    assert all(0 < r["bpb"] < 20 and np.isfinite(r["bpb"]) for r in rows)
    assert sorted(scores) == sorted(r["bpb"] for r in rows)  # lower is better: the objective is bpb itself
    status = json.loads(cli.invoke(app, ["status", str(config), "--format", "json"]).output)
    assert status["current_suite"]["objective"] == "arc/bpb"


def test_hub_dataset_offline_is_one_clear_error(tmp_path):
    """The tests run offline (HF_DATASETS_OFFLINE=1): a Hub dataset says what failed and how to do without the Hub."""
    with pytest.raises(MixoptError, match=r"cannot load 'allenai/ai2_arc' .*save it with save_to_disk"):
        _read(tmp_path, dataset="allenai/ai2_arc", subset="ARC-Easy", preset="arc")
