"""Bad input: one line naming the problem and the fix, exit code 2, no traceback, nothing written."""

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import interrupt_sweep, small_config, write_config


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
    # typer checks option values through pydantic: its "Value error, " wording is not shown
    "unknown backend": (["sweep", "{cfg}", "--backend", "mpi"],
                        "error: Invalid value for '--backend': 'mpi' is not one of 'local', 'ray', 'slurm'; "
                        "see `mixopt sweep --help`"),
    "zero workers": (["sweep", "{cfg}", "--workers", "0"], "Invalid value for '--workers'"),
    "unknown compile mode": (["sweep", "{cfg}", "--compile", "maybe"],
                             "error: Invalid value for '--compile': 'maybe' is not one of 'auto', 'on', 'off'; "
                             "see `mixopt sweep --help`"),
    "unknown precision": (["sweep", "{cfg}", "--precision", "fp16"],
                          "error: Invalid value for '--precision': 'fp16' is not one of 'auto', 'fp32', 'bf16'; "
                          "see `mixopt sweep --help`"),
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
    assert "Traceback" not in r.stderr and "Value error" not in r.stderr
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


# One consistent CLI: --version, completion, --format json on every verb, one mixture format, a real
# CSV writer, progress lines off a terminal, the fit folder in fit's output, Ctrl-C.

def test_version_completion_and_exit_codes_in_help():
    from mixopt import __version__

    r = run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"mixopt {__version__}"
    # --show-completion detects the shell it was called from (typer asks the process tree), so call it
    # from bash whatever runs the tests.
    script = subprocess.run(["bash", "-c", f"'{sys.executable}' -m mixopt.cli --show-completion; exit $?"],
                            capture_output=True, text=True)
    assert script.returncode == 0 and "=complete_bash" in script.stdout and "complete -o default -F" in script.stdout
    # The completion answers: verbs, and the choices of an option.
    env = {**os.environ, "_MIXOPT_COMPLETE": "complete_bash", "COMP_WORDS": "mixopt exp", "COMP_CWORD": "1"}
    exe = str(Path(sys.executable).with_name("mixopt"))
    if not Path(exe).is_file():
        pytest.skip("the mixopt console script is not installed in this environment")
    assert sorted(subprocess.run([exe], env=env, capture_output=True, text=True).stdout.split()) == ["export", "export-model"]
    env.update(COMP_WORDS="mixopt export c.yaml --format ", COMP_CWORD="4")
    assert subprocess.run([exe], env=env, capture_output=True, text=True).stdout.split() == ["csv", "parquet", "json"]
    assert "Exit codes: 0 done; 1 done, but some runs failed" in " ".join(run("--help").stdout.split())


@pytest.mark.slow
def test_every_verb_speaks_json_and_reads_one_mixture_format(swept, tmp_path):
    ws = swept.parent / "ws"
    for verb, extra in (("sample", []), ("sweep", ["--workers", "2"]), ("eval", []), ("status", []),
                        ("check", []), ("fit", []), ("propose", ["--n", "2"])):
        r = run(verb, swept, *extra, "--format", "json")
        assert r.returncode == 0, (verb, r.stderr)
        out = json.loads(r.stdout)  # stdout is the JSON alone
        assert isinstance(out, dict), verb
    assert json.loads(run("sweep", swept, "--format", "json").stdout)["trained"] == 0
    fit = json.loads(run("fit", swept, "--format", "json").stdout)
    assert Path(fit["fit_dir"], "fit.json").is_file() and Path(fit["fit_dir"]).parent == ws / "fits"
    text = run("fit", swept).stdout
    assert f"fit folder: {fit['fit_dir']} (fit.json, runs.parquet, plots)" in text

    # One mixture, four files: optimal.yaml-like, proposed YAML, CSV, Parquet. sweep trains it once
    # (the others are the same run), and predict scores all four alike.
    import polars as pl
    import yaml

    w = {"code": 0.25, "prose": 0.5, "legal": 0.25}
    files = {"opt.optimal.yaml": yaml.safe_dump({"experiment": "x", "weights": w}),
             "prop.yaml": yaml.safe_dump({"mixtures": [w]})}
    for name, body in files.items():
        (tmp_path / name).write_text(body)
    pl.DataFrame([{"id": "a,b", **w}]).write_csv(tmp_path / "m.csv")
    pl.DataFrame([{"id": "a,b", **w}]).write_parquet(tmp_path / "m.parquet")
    trained = []
    for name in ("opt.optimal.yaml", "prop.yaml", "m.csv", "m.parquet"):
        r = run("sweep", swept, "--mixtures", tmp_path / name, "--format", "json", "--workers", "2")
        assert r.returncode == 0, r.stderr
        trained.append(json.loads(r.stdout)["trained"])
    assert trained == [1, 0, 0, 0]
    fit_dir = json.loads(run("fit", swept, "--format", "json").stdout)["fit_dir"]
    preds = set()
    for name in ("opt.optimal.yaml", "prop.yaml", "m.csv", "m.parquet"):
        r = run("predict", fit_dir, tmp_path / name)
        assert r.returncode == 0, r.stderr
        rows = list(csv.reader(io.StringIO(r.stdout)))
        assert rows[0][1:] == ["predicted", "rank"] and len(rows) == 2
        preds.add(rows[1][1])
        if name.startswith("m."):
            assert rows[1][0] == "a,b"  # an id holding a comma is quoted: the CSV reads back
    assert len(preds) == 1
    # propose reads them too: --candidates picks among a file's mixtures only.
    cands = [{"code": 0.8, "prose": 0.1, "legal": 0.1}, {"code": 0.1, "prose": 0.1, "legal": 0.8}, w]
    pl.DataFrame([{"id": f"c{i}", **c} for i, c in enumerate(cands)]).write_csv(tmp_path / "cands.csv")
    r = run("propose", swept, "--n", "3", "--candidates", tmp_path / "cands.csv", "--format", "json")
    assert r.returncode == 0, r.stderr
    picked = json.loads(r.stdout)["mixtures"]
    assert len(picked) == 2 and w not in picked  # w is trained already (above)
    assert all(any(all(abs(p[d] - c[d]) < 1e-9 for d in w) for c in cands[:2]) for p in picked)


def test_progress_lines_off_a_terminal_and_quiet(corpora, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", small_config(corpora, tmp_path / "ws", design__runs=1,
                                                         proxy__tokens=4000))
    r = run("-v", "sample", cfg)  # off a terminal, sample's stage lines need -v (on one they show anyway)
    assert r.returncode == 0 and "sample: read domain 'code' (1/3)" in r.stderr  # progress for sample
    assert "sample: wrote slices of 'legal' (3/3)" in r.stderr
    assert run("sample", cfg, "--force").stderr == ""
    r = run("sweep", cfg)  # stderr is a pipe here: no bars, one line per finished run
    assert r.returncode == 0, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.startswith("sweep: run ")]
    assert len(lines) == 5 and " finished (5/5) " in lines[-1] and lines[-1].endswith(" elapsed, ETA 0s")
    assert "\r" not in r.stderr
    r = run("-q", "sample", cfg, "--force")
    assert r.returncode == 0 and r.stderr == ""


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_ctrl_c_says_what_was_kept_and_what_is_pending(corpora, tmp_path, sig):
    """Ctrl-C, and SIGTERM as a scheduler's preemption or `timeout` sends it (which ended mixopt on the
    spot, without the line or the shutdown of its workers)."""
    import signal

    cfg = write_config(tmp_path / "c.yaml", small_config(corpora, tmp_path / "ws", design__runs=2))
    assert run("sample", cfg).returncode == 0
    p = subprocess.Popen([sys.executable, "-m", "mixopt.cli", "sweep", str(cfg)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    said, _ = interrupt_sweep(p, "finished (1/", getattr(signal, sig))  # once the first run is finished
    st = json.loads(run("status", cfg, "--format", "json").stdout)["design"]
    assert f"{st['done']} of 6 runs of this design are finished and kept" in said
    assert f"{st['pending'] + st['failed']} pending" in said and st["done"] >= 1 and st["pending"] >= 1
    assert f"`mixopt sweep {cfg}` continues where this stopped" in said
