"""Bad input: one line naming the problem and the fix, exit code 2, no traceback, nothing written."""

import json
import subprocess
import sys

import pytest
from conftest import small_config, write_config


def run(*args):
    return subprocess.run([sys.executable, "-m", "mixopt.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def _mutate(cfg, case, tmp_path):
    if case == "missing corpus":
        cfg["domains"][0]["sources"] = [{"path": str(tmp_path / "nowhere.parquet")}]
    elif case == "empty corpus":
        (tmp_path / "empty").mkdir()
        cfg["domains"][1]["sources"] = [{"path": str(tmp_path / "empty")}]
    elif case == "too little text":
        cfg["sample"]["train_tokens"] = 50_000_000
    elif case == "misspelt key":
        cfg["desing"] = {"runs": 3}
    elif case == "unknown nested key":
        cfg["proxy"]["layers"] = 4
    elif case == "NaN weight":
        cfg["design"]["mixtures"] = [{"code": float("nan"), "prose": 1.0}]
    elif case == "negative weight":
        cfg["design"]["mixtures"] = [{"code": -0.2, "prose": 1.2}]
    elif case == "weights not summing to 1":
        cfg["design"]["mixtures"] = [{"code": 0.2, "prose": 0.2}]
    elif case == "infeasible bounds":
        for d in cfg["domains"]:
            d["max"] = 0.2
    elif case == "repetition makes it infeasible":
        cfg["optimum"] = {"target_tokens": 1e12, "max_epochs": 1}
    elif case == "duplicate domain":
        cfg["domains"][2]["name"] = "code"
    elif case.startswith("suite"):
        del cfg["fit"]["objective"]
        good = {"name": "h", "kind": "heldout", "domain": "prose"}
        task = tmp_path / "task.jsonl"
        row = {"question": "2 + 2 =", "choices": ["4", "5"], "answer": 0}
        cfg["evals"] = {"evaluations": [good]}
        if case == "suite: unknown domain":
            cfg["evals"]["evaluations"].append({"name": "p", "kind": "heldout", "domain": "poetry"})
        elif case == "suite: missing text file":
            cfg["evals"]["evaluations"].append({"name": "t", "kind": "text", "sources": [str(tmp_path / "no.txt")]})
        elif case in ("suite: choice without answer", "suite: answer out of range"):
            bad = {k: v for k, v in row.items() if k != "answer"} if "without" in case else {**row, "answer": 2}
            task.write_text(json.dumps(row) + "\n" + json.dumps(bad) + "\n")
            cfg["evals"]["evaluations"].append({"name": "c", "kind": "choice", "path": str(task)})
        elif case == "suite: all weights zero":
            cfg["evals"]["evaluations"] = [{**good, "weight": 0}]
        elif case == "suite file missing":
            cfg["evals"] = "nosuch-suite.yaml"
        elif case == "suite: field of another kind":
            cfg["evals"]["evaluations"][0]["path"] = str(task)
        elif case == "suite: weights in two places":
            cfg["fit"]["objective"] = {"domains": {"prose": 1.0}}
    return cfg


CASES = {
    "missing corpus": ("sample", "corpus not found"),
    "empty corpus": ("sample", "domain 'prose' has no documents"),
    "too little text": ("sample", "set sample.train_tokens <="),
    "misspelt key": ("sample", "unknown key 'desing'; did you mean 'design'?"),
    "unknown nested key": ("sample", "unknown key 'proxy.layers'"),
    "NaN weight": ("sample", "'design.mixtures.0.code': Input should be a finite number"),
    "negative weight": ("sample", "weight of 'code' is negative"),
    "weights not summing to 1": ("sample", "weights sum to 0.4, not 1"),
    "infeasible bounds": ("sample", "domain maximums sum to 0.6 < 1"),
    "duplicate domain": ("sample", "domain 'code' is listed twice"),
    "suite: unknown domain": ("sample", "evaluation 'p' names unknown domain 'poetry'"),
    "suite: missing text file": ("sample", "text source not found"),
    "suite: choice without answer": ("sample", "task.jsonl:2: no 'answer'"),
    "suite: answer out of range": ("sample", "task.jsonl:2: answer 2 is not an index into its 2 choices"),
    "suite: all weights zero": ("sample", "every evaluation has weight 0"),
    "suite file missing": ("sample", "eval suite file not found"),
    "suite: field of another kind": ("sample", "'path' does not apply to a 'heldout' evaluation"),
    "suite: weights in two places": ("sample", "fit.objective.domains and an eval suite both set"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(case, corpora, tmp_path):
    cfg = _mutate(small_config(corpora, tmp_path / "ws"), case, tmp_path)
    path = write_config(tmp_path / "bad.yaml", cfg)
    verb, message = CASES[case]
    r = run(verb, path)
    assert r.returncode == 2, r.stderr
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr
    assert message in lines[0], lines[0]
    assert not (tmp_path / "ws").exists() or not any((tmp_path / "ws").iterdir())  # nothing written


def test_stage_order_and_usage_errors(corpora, tmp_path):
    path = write_config(tmp_path / "c.yaml", small_config(corpora, tmp_path / "ws"))
    r = run("sweep", path)
    assert r.returncode == 2 and "run `mixopt sample CONFIG` first" in r.stderr
    r = run("fit", tmp_path / "missing.yaml")
    assert r.returncode == 2 and "config file not found" in r.stderr
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    r = run("sample", tmp_path / "broken.yaml")
    assert r.returncode == 2 and "not valid YAML at line" in r.stderr
    r = run("sweep", path, "--workers", "0")
    assert r.returncode == 2


def test_repetition_limit_infeasible_is_caught_before_training(corpora, tmp_path):
    cfg = _mutate(small_config(corpora, tmp_path / "ws"), "repetition makes it infeasible", tmp_path)
    path = write_config(tmp_path / "rep.yaml", cfg)
    assert run("sample", path).returncode == 0
    r = run("sweep", path)
    assert r.returncode == 2 and "repetition limit" in r.stderr and "lower optimum.target_tokens" in r.stderr
    assert not (tmp_path / "ws" / "checkpoints").exists()


FLAG_CASES = {
    "unknown backend": (["sweep", "{cfg}", "--backend", "mpi"], "Invalid value for '--backend'"),
    "zero workers": (["sweep", "{cfg}", "--workers", "0"], "Invalid value for '--workers'"),
    "missing mixtures file": (["sweep", "{cfg}", "--mixtures", "{tmp}/none.yaml"], "mixtures file not found"),
    "mixtures file with unknown domain": (["sweep", "{cfg}", "--mixtures", "{tmp}/bad-mix.yaml"],
                                          "mixtures[0]: unknown domain 'poetry'"),
    "fit flags with a config": (["fit", "{cfg}", "--target", "x"], "--target applies to --runs fits only"),
    "fit with nothing": (["fit"], "fit needs an experiment CONFIG or an external swarm"),
    "predict from a folder that is not a fit": (["predict", "{tmp}", "{tmp}/none.csv"], "not a saved fit"),
    "propose before any run": (["propose", "{cfg}"], "run `mixopt sample CONFIG` first"),
}


@pytest.mark.parametrize("case", sorted(FLAG_CASES))
def test_bad_flags_and_files(case, corpora, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", small_config(corpora, tmp_path / "ws"))
    (tmp_path / "bad-mix.yaml").write_text("mixtures: [{poetry: 1.0}]\n")
    args, message = FLAG_CASES[case]
    r = run(*[a.format(cfg=cfg, tmp=tmp_path) for a in args])
    assert r.returncode == 2, r.stderr
    assert message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    if r.stderr.startswith("error: "):
        assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "ws").exists()  # nothing written


def test_a_gpu_device_this_machine_lacks_is_one_line_before_any_work(corpora, tmp_path):
    import torch

    if torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    cfg = write_config(tmp_path / "c.yaml", small_config(corpora, tmp_path / "ws"))
    for verb in ("sweep", "eval", "verify"):
        r = run(verb, cfg, "--device", "cuda:7")
        assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr, r.stderr
    r = run("sweep", cfg, "--device", "cuda:7")
    assert r.stderr.strip() == ("error: --device cuda:7: this machine sees "
                                f"{torch.cuda.device_count()} CUDA GPU(s); use --device auto (a GPU where there is "
                                "one) or --device cpu")
    assert not (tmp_path / "ws").exists()  # nothing written
    r = run("sweep", cfg, "--device", "tpu")
    assert r.returncode == 2 and "device 'tpu' is not auto, cpu, cuda or cuda:N" in r.stderr
