"""Hostile results, code and sizes (issue 22, part B): diverged proxies and non-finite results through
real tiny sweeps, lm_eval task folders that run code, YAML bombs, endless or huge corpus files and a
million domains. Each through the real CLI where a user would meet it: one `error:` line and exit 2
for bad input, or the documented behaviour."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from test_hostile import Case, cli, sampled  # noqa: F401  (sampled: the session's sampled workspace)
from test_train import SPEC, Crash, _crash_at, _streams

from mixopt.proxy.train import divergence, train_proxies


def _status(cfg: Path, cwd: Path) -> dict:
    r = cli(["status", cfg, "--format", "json"], cwd)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _steps_by_run(log: Path) -> dict[str, int]:
    """Steps trained per run key, from MIXOPT_WORK_LOG ("<run key> <step index>" per trained step)."""
    out: dict[str, int] = {}
    for line in log.read_text().splitlines() if log.is_file() else []:
        key = line.split()[0]
        out[key] = out.get(key, 0) + 1
    return out


# --- 1. non-finite results --------------------------------------------------------------------------------

def test_a_diverged_proxy_in_a_batch_stops_learning_and_the_others_are_untouched(tmp_path):
    """N = 2 trained together, one of them resumed from a state whose weights hold a NaN: it diverges at
    once; the other computes exactly what it computes in a healthy batch. All diverged: the loop stops."""
    import torch

    spec = replace(SPEC, tokens=SPEC.seq_len * SPEC.batch_size * 12)  # 12 steps, a state saved every 2
    mixtures = [(0.7, 0.3), (0.2, 0.8)]
    W, losses, _ = train_proxies(spec, mixtures, _streams(), seed=3)
    assert not divergence(losses[0], spec.steps) and not divergence(losses[1], spec.steps)
    states = [tmp_path / "a.resume.pt", tmp_path / "b.resume.pt"]
    with pytest.raises(Crash):
        train_proxies(spec, mixtures, _streams(), seed=3, on_step=_crash_at(7), states=states)
    bad = torch.load(states[1], weights_only=True)
    name = sorted(bad["weights"])[0]
    bad["weights"][name].view(-1)[0] = float("nan")
    torch.save(bad, states[1])
    W2, losses2, _ = train_proxies(spec, mixtures, _streams(), seed=3, states=states)
    assert losses2[0] == losses[0]  # bitwise: a NaN in one proxy's weights reaches no other proxy
    for k in W:
        assert torch.equal(W2[k][0], W[k][0]), k
    assert divergence(losses2[1], spec.steps) == f"diverged: loss is nan at step 7 of {spec.steps}"

    for p in states:  # both diverge at the first resumed step (7): nothing more is trained
        torch.save(bad, p)
    seen = []
    _, losses3, _ = train_proxies(spec, mixtures, _streams(), seed=3, states=states,
                                  on_step=lambda step, *_: seen.append(step))
    assert seen == [7] and [len(x) for x in losses3] == [7, 7]


def test_a_diverging_sweep_fails_each_run_with_its_reason_and_holds_them_back(corpora, sampled, tmp_path):
    """proxy.lr 1000: every proxy's loss turns NaN within a few steps. The sweep stops each one there,
    records it as failed with why (exit 1, no traceback), `status` shows why in text and JSON, the next
    sweep trains none of them again (the same key computes the same) and `--retry-failed` does."""
    t = Case(tmp_path, corpora, sampled, None)
    t.sampled()
    cfg = t.config({"proxy.lr": 1000.0, "design.runs": 1})
    log = tmp_path / "work.log"
    env = {"MIXOPT_WORK_LOG": str(log)}
    r = cli(["sweep", cfg, "--no-progress"], tmp_path, env=env, timeout=300)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    failed = re.findall(r"failed (\w{12}): diverged: loss is (?:nan|inf|-inf) at step (\d+) of 46", r.stdout)
    st = _status(cfg, tmp_path)
    planned = st["design"]["planned"]
    assert planned >= 5 and len(failed) == planned, r.stdout
    assert f"{planned} runs planned: 0 already done, 0 adopted, 0 trained, {planned} failed" in r.stdout
    steps = _steps_by_run(log)
    assert sorted((k[:12], str(n)) for k, n in steps.items()) == sorted(failed)  # each stopped where it diverged
    assert max(steps.values()) < 10  # ... at its first non-finite loss, not trained on for 46 steps
    assert st["design"] == {"planned": planned, "done": 0, "failed": planned, "suspect": 0, "pending": 0}
    assert len(st["failed_runs"]) == planned
    assert all(f["kind"] == "nonfinite" and not f["retried_by_next_sweep"] and f["error"].startswith("diverged: ")
               for f in st["failed_runs"])
    assert st["cost"]["to_train"] == 0 and st["cost"]["held_back"] == planned
    text = cli(["status", cfg], tmp_path).stdout
    assert text.count("diverged: loss is") == planned and "--retry-failed` retrains it" in text

    r = cli(["sweep", cfg, "--no-progress"], tmp_path, env=env, timeout=300)  # held back: nothing trains
    assert r.returncode == 1 and "0 trained, 0 failed" in r.stdout, r.stdout + r.stderr[-2000:]
    assert f"not retrained: {planned} runs that failed with a non-finite result" in r.stdout
    assert _steps_by_run(log) == steps

    r = cli(["sweep", cfg, "--no-progress", "--retry-failed"], tmp_path, env=env, timeout=300)
    assert r.returncode == 1 and f"0 trained, {planned} failed" in r.stdout, r.stdout + r.stderr[-2000:]
    assert _steps_by_run(log) == {k: 2 * n for k, n in steps.items()}  # trained again, and diverged again

    r = cli(["fit", cfg], tmp_path)
    assert r.returncode == 2 and f"({planned} failed runs left out: `mixopt status CONFIG` says why)" in r.stderr


def test_a_nan_result_file_is_adopted_as_failed_and_the_other_runs_finish(corpora, sampled, tmp_path):
    """A result file holding a NaN measurement (what a diverged proxy left before this fix, or a crashed
    driver after a NaN) used to crash every rerun at its adoption, so no other run ever trained. Now it
    becomes a failed run with its reason, the other runs are adopted or trained, and `fit` leaves it out
    and says so."""
    t = Case(tmp_path, corpora, sampled, None)
    ws = t.sampled()
    cfg = t.config({"proxy.tokens": 6144, "design.runs": 3, "fit.bootstrap": 0})  # 12 steps per proxy
    r = cli(["sweep", cfg, "--no-progress"], tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    sides = sorted((ws / "checkpoints").glob("*.json"))
    assert len(sides) == 7
    for p in ws.glob("mixopt.db*"):  # the driver died before recording anything
        p.unlink()
    nan_side, retrain = sides[0], sides[1]
    row = json.loads(nan_side.read_text())
    ev = sorted(row["measurements"])[0]
    metric = sorted(row["measurements"][ev])[0]
    row["measurements"][ev][metric] = float("nan")
    nan_side.write_text(json.dumps(row))  # Python's json writes NaN, as the worker's did
    retrain.unlink()
    retrain.with_suffix(".safetensors").unlink()

    r = cli(["sweep", cfg, "--no-progress"], tmp_path, timeout=600)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "7 runs planned: 0 already done, 5 adopted, 1 trained, 1 failed" in r.stdout, r.stdout
    line = next(x for x in r.stdout.splitlines() if x.startswith("  failed "))
    assert re.fullmatch(rf"  failed {row['key'][:12]}: non-finite measurement: \S+/{metric} = nan", line), line
    st = _status(cfg, tmp_path)
    assert st["design"] == {"planned": 7, "done": 6, "failed": 1, "suspect": 0, "pending": 0}
    assert st["failed_runs"][0]["error"] == line.split(": ", 1)[1]

    r = cli(["fit", cfg, "--format", "json"], tmp_path, timeout=300)
    assert r.returncode == 1, r.stderr[-3000:]
    fit = json.loads(r.stdout)
    assert fit["runs"] == 6 and [f["key"] for f in fit["failed_runs"]] == [row["key"]]
    assert "note: 1 failed runs left out of the fit" in r.stderr
    assert np.isclose(sum(fit["weights"].values()), 1.0)


# --- 2. an lm_eval task folder is code ---------------------------------------------------------------------

LM_EVAL_TASK = """task: mini_qa
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Q: {{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
"""


@pytest.mark.parametrize("code", ["tag", "py"])
def test_an_lm_eval_task_folder_that_runs_code_needs_trust_task_code(corpora, tmp_path, code):
    """A task folder with `process_docs: !function utils.x` (or any .py file) runs Python inside mixopt:
    refused with one line saying so, until the evaluation says `trust_task_code: true`."""
    pytest.importorskip("lm_eval", reason="the lm_eval extra (make test installs it)")
    t = Case(tmp_path, corpora, None, None)
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "qa.jsonl").write_text(json.dumps({"question": "2+2?", "choices": ["4", "5"], "answer": 0}) + "\n")
    yaml_text = LM_EVAL_TASK.format(data=folder / "qa.jsonl")
    if code == "tag":
        yaml_text += "process_docs: !function utils.process_docs\n"
    else:
        (folder / "helpers.py").write_text("raise SystemExit('task code ran')\n")
    (folder / "mini_qa.yaml").write_text(yaml_text)
    suite = {"evaluations": [{"name": "qa", "kind": "lm_eval", "task": "mini_qa", "path": str(folder),
                              "metric": "acc"}]}
    cfg = t.config({"evals": suite, "fit": {}})
    r = cli(["status", cfg], tmp_path)
    lines = r.stderr.splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    shown = "`!function` in mini_qa.yaml" if code == "tag" else "helpers.py"
    assert lines[0] == (f"error: evaluation 'qa': the task folder {folder} holds code ({shown}) that "
                        "lm-evaluation-harness imports and runs inside mixopt; read it, then set "
                        "`trust_task_code: true` on this evaluation to run it")
    suite["evaluations"][0]["trust_task_code"] = True
    r = cli(["status", t.config({"evals": suite, "fit": {}})], tmp_path)
    assert r.returncode == 0 and "sample: missing" in r.stdout, r.stderr[-2000:]
    # the flag belongs to lm_eval evaluations only
    r = cli(["status", t.config({"evals": {"evaluations": [{"name": "h", "kind": "heldout", "domain": "code",
                                                            "trust_task_code": True}]}})], tmp_path)
    assert r.returncode == 2 and "'trust_task_code' does not apply to a 'heldout' evaluation" in r.stderr


def test_the_schema_says_a_task_folder_is_code(tmp_path):
    r = cli(["schema"], tmp_path)
    field = json.loads(r.stdout)["$defs"]["LmEvalEvaluation"]["properties"]["trust_task_code"]
    assert field["default"] is False and "a task folder (`path`) is code" in field["description"]
    assert "Built-in tasks by name" in field["description"]


# --- 3. YAML bombs and deep nesting -------------------------------------------------------------------------

def _bomb(levels: int = 12) -> str:
    """ "Billion laughs": each level a list of nine aliases of the level below (9**levels strings)."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def _as_limited(gib: int = 2):
    """preexec_fn: the child may map at most `gib` GiB (a walk of the expanded aliases would need far more)."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (gib << 30, gib << 30))
    return limit


@pytest.mark.parametrize("where", ["config", "suite", "mixtures"])
@pytest.mark.parametrize("bad", ["bomb", "deep", "self"])
def test_yaml_bombs_and_deep_nesting_are_one_line(corpora, tmp_path, where, bad):
    """A config, a suite file or a mixtures file holding an alias bomb (9**12 strings once expanded), 100k
    nested `[` or an alias inside itself: exit 2, one `error:` line, nothing written. Under a 2 GiB address
    space and a timeout an unguarded walk of the aliases could not meet (it took > 3 GB and minutes)."""
    from test_hostile import snapshot

    t = Case(tmp_path / "case", corpora, None, None)
    t.dir.mkdir()
    text = {"bomb": _bomb(), "deep": "x: " + "[" * 100_000 + "\n", "self": "x: &a [1, *a]\n"}[bad]
    expect = {"bomb": "its aliases expand to more than 200,000 YAML nodes (an alias bomb?)",
              "deep": "nested too deeply to read", "self": "an alias refers to the node that contains it"}[bad]
    if where == "config":
        bad_file = t.text("c.yaml", text)
        args = ["status", bad_file]
    elif where == "suite":
        bad_file = t.text("suite.yaml", text)
        args = ["status", t.config({"evals": "suite.yaml"})]
    else:
        bad_file = t.text("more.yaml", text)
        args = ["sweep", t.config(), "--mixtures", bad_file]
    before = snapshot(tmp_path)
    r = cli(args, t.dir, preexec=_as_limited(), timeout=120)
    lines = r.stderr.splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert lines[0].startswith(f"error: {bad_file}: ") and expect in lines[0], lines[0]
    assert r.stdout == "" and snapshot(tmp_path) == before


def test_the_alias_bomb_check_is_quick_and_a_few_aliases_still_work(tmp_path):
    import time

    from mixopt.config.yaml_file import read_yaml
    from mixopt.errors import MixoptError

    (tmp_path / "bomb.yaml").write_text(_bomb(30))  # 9**30 strings: no walk of it could ever finish
    t0 = time.process_time()
    with pytest.raises(MixoptError, match="alias bomb"):
        read_yaml(tmp_path / "bomb.yaml")
    assert time.process_time() - t0 < 1.0  # measured: ~5 ms
    (tmp_path / "ok.yaml").write_text("base: &b {lr: 0.001, steps: 10}\nruns: [*b, *b]\n")
    assert read_yaml(tmp_path / "ok.yaml")["runs"] == [{"lr": 0.001, "steps": 10}] * 2


# --- 4. reading limits, enforced while reading -----------------------------------------------------------------

def test_a_text_evaluation_on_dev_zero_is_refused_by_status(corpora, sampled, tmp_path):
    """`status` fingerprints the suite's text sources: /dev/zero used to be hashed forever."""
    from test_hostile import snapshot

    t = Case(tmp_path / "case", corpora, sampled, None)
    t.dir.mkdir()
    t.sampled()
    cfg = t.config({"evals": {"evaluations": [{"name": "z", "kind": "text", "sources": ["/dev/zero"]}]}},
                   drop=["fit.objective"])
    before = snapshot(tmp_path)
    r = cli(["status", cfg], t.dir, timeout=120)
    assert r.returncode == 2 and r.stderr.splitlines() == [
        "error: evaluation 'z': text source /dev/zero is not a regular file (a device, FIFO or socket); point "
        "`sources` at files, or a folder of files"], r.stderr[-2000:]
    assert snapshot(tmp_path) == before


def _big_line_gzip(path: Path, mib: int, field: str = "meta") -> Path:
    """One JSON line of `mib` MiB: the giant value in `field`, then a short "text" (unless it is "text"),
    then a normal line."""
    import gzip

    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(f'{{"{field}": "'.encode())
        for _ in range(mib):
            f.write(b"a" * (1 << 20))
        f.write(b'"' + (b', "text": "short"' if field != "text" else b"") + b'}\n{"text": "next line"}\n')
    return path


def _big_row_parquet(path: Path, mib: int) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a" * (mib << 20)]}), path, compression="zstd")
    return path


READ_PEAK = """
import resource, sys
import pyarrow.json, pyarrow.parquet
from mixopt.config.source import Source
from mixopt.data.readers import iter_chunks
from mixopt.data.sources import ShardError, list_shards
src = Source(path=sys.argv[1])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    docs = [d for shard in list_shards(src) for col in iter_chunks(src, shard, 1024) for d in col.to_pylist()]
    print(f"read {[len(d) for d in docs]}")
except ShardError as e:
    print(e)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


@pytest.mark.parametrize("kind", ["gzip text", "gzip other", "parquet"])
def test_a_huge_document_is_stopped_while_reading_not_after(tmp_path, kind):
    """A 1.4 MB gzip holding one 300 MB line, a 3 kB Parquet holding one 200 MB string, read at
    max_document_bytes 1024: the reader's peak memory grows by a few MB, not by the document (the line
    used to be built whole: 2 GB RSS, 80 s, then "corrupt or truncated?"). A line whose text comes first
    is cut to its head (8 x the cap) and the next line is read; one whose text is behind the giant
    value, and the Parquet row, are refused naming the limit to raise."""
    import subprocess
    import sys

    path = _big_row_parquet(tmp_path / "big.parquet", 200) if kind == "parquet" else \
        _big_line_gzip(tmp_path / "big.jsonl.gz", 300, kind.split()[1])
    assert path.stat().st_size < 2 << 20
    r = subprocess.run([sys.executable, "-c", READ_PEAK, str(path)], capture_output=True, text=True, timeout=300,
                       env={"PYTHONPATH": str(Path(__file__).parents[1]), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr[-2000:]
    said, grew = r.stdout.splitlines()
    assert int(grew) < 64 << 20  # the document is 200-300 MB
    if kind == "gzip text":
        head = 8192 - len('{"text": "')  # the line's first 8 x 1024 bytes, less the key
        assert said == f"read {[head, len('next line')]}", said
        return
    where = f"{path}:1: line 1 runs past 8,388,6" if kind == "gzip other" else \
        f"{path}: row group 0 holds 209,715,"
    assert said.startswith(where), said
    assert said.endswith("over 8,192 bytes (8 x sample.max_document_bytes = 1,024); it was not read whole: "
                         "raise sample.max_document_bytes to read it (it is then cut to that size)"), said


@pytest.mark.parametrize("kind", ["gzip", "parquet"])
def test_sample_refuses_a_huge_document_with_the_limit_to_raise(corpora, tmp_path, kind):
    from test_hostile import snapshot

    t = Case(tmp_path / "case", corpora, None, None)
    t.dir.mkdir()
    # a line is checked as each 8 MB block is read: this one outgrows the first block
    big = _big_line_gzip(tmp_path / "big.jsonl.gz", 20) if kind == "gzip" else \
        _big_row_parquet(tmp_path / "big.parquet", 2)
    cfg = t.config({"domains.1.sources": [{"path": str(big)}], "sample.max_document_bytes": 4096})
    before = snapshot(tmp_path)
    r = cli(["sample", cfg], t.dir, timeout=300)
    lines = r.stderr.splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert lines[0].startswith(f"error: {big}") and "over 32,768 bytes (8 x sample.max_document_bytes = 4,096)" \
        in lines[0] and "raise sample.max_document_bytes to read it" in lines[0], lines[0]
    assert snapshot(tmp_path) == before


def test_a_domain_of_one_document_says_so_not_to_lower_val_tokens(corpora, tmp_path):
    """A domain that is one big document (one JSON line of 200 KB of text) cannot give a validation and a
    train slice whatever val_tokens is: the error says it is one document and to split it, exit 2,
    nothing written."""
    from test_hostile import snapshot

    t = Case(tmp_path / "case", corpora, None, None)
    t.dir.mkdir()
    text = "\n".join(p.read_text(errors="replace") for p in sorted((corpora / "legal").iterdir()))  # real text
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"text": (text * (200_000 // len(text) + 1))[:200_000]}) + "\n")
    cfg = t.config({"domains.1.sources": [{"path": str(one)}], "sample.val_tokens": 10})
    before = snapshot(tmp_path)
    r = cli(["sample", cfg], t.dir, timeout=300)
    lines = r.stderr.splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "is one document (" in lines[0] and "split it into documents" in lines[0], lines[0]
    assert "val_tokens" not in lines[0]
    assert snapshot(tmp_path) == before


# --- 5. a million domains ------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1_000_000, 10_001])
def test_too_many_domains_is_one_line_before_any_per_domain_work(tmp_path, n):
    """`status` on 1,000,000 domains was killed after 150 s. Now a file over 8 MB is refused before it is
    parsed, and a smaller one with more than 10,000 domains once it is read, before any validation."""
    from test_hostile import snapshot

    cfg = tmp_path / "c.yaml"
    cfg.write_text("workspace: ws\ndomains:\n" + "".join(f"- {{name: d{i}, sources: [d{i}.txt]}}\n" for i in range(n)))
    before = snapshot(tmp_path)
    r = cli(["status", cfg], tmp_path, timeout=300)
    lines = r.stderr.splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    expect = f"error: {cfg}: larger than 8 MB; a mixopt file is far smaller (at most 10,000 domains)" if n > 10_001 \
        else f"error: {cfg}: line 2: 10,001 domains; mixopt handles at most 10,000; group sources into fewer domains"
    assert lines[0].startswith(expect), lines[0]
    assert snapshot(tmp_path) == before
