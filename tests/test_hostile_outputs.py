"""The hostile catalogue, part two: where mixopt writes (output paths of every verb that writes one),
secrets in source URLs, a workspace inside a source folder, and the messages of odd situations.

The catalogue cases follow tests/test_hostile.py: exit 2, one `error: ` line, no traceback, nothing on
stdout, the case folder byte-identical. The tests after it need trained runs (the shared `swept`
workspace) or check what a verb does when it succeeds.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import interrupt_sweep
from test_hostile import SUITE_OK, Case, _suite, assert_refused, cli, saved_fit, sampled, snapshot  # noqa: F401 (fixtures)

CASES: dict[str, tuple] = {}


def case(expect: str):
    def register(fn):
        CASES[fn.__name__] = (fn, expect)
        return fn
    return register


# --- output paths: never the workspace's records, the config or its inputs, a device, a user's file ---

@case("--output ws/mixopt.db is inside the workspace")
def output_export_over_the_store(t):
    ws = t.sampled()
    (ws / "mixopt.db").write_bytes(b"the store\n")
    return ["export", t.config(), "--output", "ws/mixopt.db"]


@case("--output ws/mixopt.db is inside the workspace")
def output_report_over_the_store(t):
    ws = t.sampled()
    (ws / "mixopt.db").write_bytes(b"the store\n")
    return ["report", t.config(), "--output", "ws/mixopt.db", "--force"]


@case("--output ws/sample/manifest.json is inside the workspace")
def output_report_over_the_manifest(t):
    t.sampled()
    return ["report", t.config(), "--output", "ws/sample/manifest.json"]


@case("--output c.yaml is the config; choose another path")
def output_report_over_the_config(t):
    t.sampled()
    return ["report", t.config(), "--output", "c.yaml", "--force"]


@case("--output c.yaml is the config")
def output_export_over_the_config(t):
    t.sampled()
    return ["export", t.config(), "-o", "c.yaml", "--force"]


@case("--output suite.yaml is the eval suite file")
def output_export_over_the_suite(t):
    t.sampled()
    return ["export", _suite(t, [SUITE_OK]), "-o", "suite.yaml", "--force"]


@case("is inside a source of domain 'legal'")
def output_export_into_a_source_folder(t):
    t.sampled()
    return ["export", t.config(), "-o", t.corpora / "legal" / "runs.csv"]


@case("--out c.yaml exists and mixopt did not write it; pass --force to replace it")
def output_schema_over_the_config(t):
    t.config()
    return ["schema", "--out", "c.yaml"]


@case("--output notes.csv exists and mixopt did not write it; pass --force to replace it")
def output_export_over_a_users_file(t):
    t.sampled()
    t.text("notes.csv", "my notes\n")
    return ["export", t.config(), "-o", "notes.csv"]


@case("--output notes.html exists and mixopt did not write it")
def output_report_over_a_users_file(t):
    t.sampled()
    t.text("notes.html", "<p>mine</p>\n")
    return ["report", t.config(), "--output", "notes.html"]


@case("--output /dev/null is not a regular file")
def output_export_device(t):
    t.sampled()
    return ["export", t.config(), "-o", "/dev/null", "--force"]


@case("--out /dev/null is not a regular file")
def output_schema_device(t):
    return ["schema", "--out", "/dev/null", "--force"]


@case("--output fifo is not a regular file")
def output_export_fifo(t):
    t.sampled()
    os.mkfifo(t.dir / "fifo")
    return ["export", t.config(), "-o", "fifo", "--force"]


@case("--output /proc/version is in /proc")
def output_export_proc(t):
    t.sampled()
    return ["export", t.config(), "--output", "/proc/version", "--force"]


@case("--output out is a folder; name a file in it")
def output_export_folder(t):
    t.sampled()
    (t.dir / "out").mkdir()
    return ["export", t.config(), "-o", "out"]


@case("--output missing/runs.csv: folder missing does not exist")
def output_export_missing_folder(t):
    t.sampled()
    return ["export", t.config(), "-o", "missing/runs.csv"]


@case("--output link is a symbolic link to a folder")
def output_export_model_link_to_folder(t):
    t.sampled()
    (t.dir / "empty").mkdir()
    (t.dir / "link").symlink_to(t.dir / "empty")
    return ["export-model", t.config(), "best", "--output", "link"]


@case("--output link is a symbolic link to nothing")
def output_export_model_dangling_link(t):
    t.sampled()
    (t.dir / "link").symlink_to(t.dir / "nowhere")
    return ["export-model", t.config(), "best", "--output", "link"]


@case("--output notes.txt is not a folder")
def output_export_model_over_a_file(t):
    t.sampled()
    t.text("notes.txt", "mine\n")
    return ["export-model", t.config(), "best", "--output", "notes.txt"]


@case("--output ws/model is inside the workspace")
def output_export_model_into_the_workspace(t):
    t.sampled()
    return ["export-model", t.config(), "best", "--output", "ws/model"]


@case("--output link is a symbolic link to nothing")
def output_export_dangling_link(t):
    t.sampled()
    (t.dir / "link").symlink_to(t.dir / "nowhere.csv")
    return ["export", t.config(), "-o", "link"]


def test_schema_replaces_its_own_file_and_a_users_only_with_force(tmp_path):
    """`schema --out` knows its own earlier file (the schema's title); a user's file needs --force."""
    assert cli(["schema", "--out", "s.json"], tmp_path).returncode == 0
    r = cli(["schema", "--out", "s.json"], tmp_path)
    assert r.returncode == 0 and r.stdout == "written: s.json\n", r.stderr
    (tmp_path / "mine.json").write_text('{"title": "my own"}\n')
    r = cli(["schema", "--out", "mine.json"], tmp_path)
    assert r.returncode == 2 and "pass --force to replace it" in r.stderr
    assert json.loads((tmp_path / "mine.json").read_text()) == {"title": "my own"}
    r = cli(["schema", "--out", "mine.json", "--force"], tmp_path)
    assert r.returncode == 0 and json.loads((tmp_path / "mine.json").read_text())["title"] == "mixopt experiment"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.json", "s.json"]  # no temp file left


def _copy_swept(swept: Path, tmp_path: Path) -> Path:
    """The shared trained workspace, copied with a config pointing at the copy."""
    shutil.copytree(swept.parent / "ws", tmp_path / "ws", symlinks=True)
    cfg = yaml.safe_load(swept.read_text())
    cfg["workspace"] = str(tmp_path / "ws")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return tmp_path / "c.yaml"


def _small_files(limit: int):
    def preexec():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


@pytest.mark.slow
def test_outputs_of_a_trained_workspace(swept, tmp_path):
    """export replaces its own earlier file (recorded in the workspace with its sha256), not one the user
    edited since (without --force); report writes its own file; a full disk is one line, nothing left."""
    cfg = _copy_swept(swept, tmp_path)
    known = tmp_path / "ws" / "outputs.json"  # the shared workspace's record of other tests' outputs
    earlier = set(json.loads(known.read_text())) if known.is_file() else set()
    for _ in range(2):
        r = cli(["export", cfg, "-o", "runs.csv"], tmp_path)
        assert r.returncode == 0 and "runs written to runs.csv" in r.stderr, r.stderr
    record = json.loads(known.read_text())
    assert set(record) - earlier == {str(tmp_path / "runs.csv")}
    (tmp_path / "runs.csv").write_text((tmp_path / "runs.csv").read_text() + "my note\n")
    r = cli(["export", cfg, "-o", "runs.csv"], tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("error: --output runs.csv exists and mixopt did not write it")
    assert (tmp_path / "runs.csv").read_text().endswith("my note\n")
    r = cli(["export", cfg, "-o", "runs.csv", "--force"], tmp_path)
    assert r.returncode == 0 and "my note" not in (tmp_path / "runs.csv").read_text()

    # A link to a file of the user's is written through (the link stays), under the same rules.
    (tmp_path / "link.csv").symlink_to(tmp_path / "runs.csv")
    assert cli(["export", cfg, "-o", "link.csv", "--format", "json"], tmp_path).returncode == 0
    assert (tmp_path / "link.csv").is_symlink() and json.loads((tmp_path / "runs.csv").read_text())

    r = cli(["report", cfg], tmp_path)
    assert r.returncode == 0 and f"written to {tmp_path / 'ws' / 'report.html'}" in r.stdout, r.stderr
    assert cli(["report", cfg], tmp_path).returncode == 0  # its own file in the workspace: replaced

    # A full disk (a file size limit above the store's 32 kB shared-memory file, below the model's size).
    before = snapshot(tmp_path)
    r = cli(["export-model", cfg, "best", "--output", "hf"], tmp_path, preexec=_small_files(40_000))
    lines = r.stderr.splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "cannot write the model folder" in lines[0], r.stderr[-2000:]
    assert "File too large" in lines[0] and "Traceback" not in r.stderr
    assert snapshot(tmp_path) == before  # no partial folder, no temp folder


def test_a_full_disk_while_writing_an_output_leaves_nothing(tmp_path):
    """write_output (every output file goes through it) under a 2 kB file size limit: one MixoptError
    naming the path and the cause, and no file or temp file left."""
    code = ("import sys; from pathlib import Path; from mixopt.core.outputs import write_output\n"
            "from mixopt.errors import MixoptError\n"
            "try:\n    write_output(Path(sys.argv[1]), b'x' * 10_000, '--output')\n"
            "except MixoptError as e:\n    print(e.one_line())\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out.csv")], capture_output=True, text=True,
                       env=env, preexec_fn=_small_files(2048))
    assert r.stdout.startswith(f"cannot write --output {tmp_path / 'out.csv'}: File too large (disk full or file "
                               "size limit); free space"), r.stdout + r.stderr
    assert list(tmp_path.iterdir()) == []


def test_output_guard_refuses_a_nul_byte(tmp_path):
    """A NUL byte cannot come from the shell; the guard refuses it from any caller."""
    from mixopt.core.outputs import check_output
    from mixopt.errors import MixoptError

    with pytest.raises(MixoptError, match="holds a NUL byte"):
        check_output(tmp_path / "a\0b.csv", "--output")
    assert check_output(tmp_path / "new.csv", "--output") == tmp_path / "new.csv"


# --- secrets in source URLs: redacted in every message, the manifest and status ---------------------

@case("http://user:***@127.0.0.1:9/corpus.jsonl")
def secret_in_an_unreachable_source(t):
    return ["sample", t.config({"domains.0.sources": [{"path": "http://user:hunter2@127.0.0.1:9/corpus.jsonl"}]})]


@case("s3://AKIAEXAMPLE:***@")
def secret_in_an_s3_source_not_found(t):
    t.env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "1"}
    return ["sample", t.config({"domains.0.sources": [{"path": "s3://AKIAEXAMPLE:se/cret@bucket/corpus.jsonl"}]})]


def test_secrets_never_reach_the_manifest_or_status(corpora, tmp_path):
    """A source served over HTTP with user:password in its URL, one of its shards corrupt and skipped:
    the password is in no output line, not in the manifest, not in status."""
    import gzip
    import http.server
    import threading
    from functools import partial

    from conftest import small_config

    served = tmp_path / "served"
    served.mkdir()
    with gzip.open(served / "good.jsonl.gz", "wt") as f:
        for i in range(600):
            f.write(json.dumps({"text": f"document {i} " + "words of prose " * 30}) + "\n")
    (served / "bad.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00 not really gzip" * 10)
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://reader:hunter2@127.0.0.1:{server.server_address[1]}"
        cfg = small_config(corpora, tmp_path / "ws")
        cfg["domains"][1]["sources"] = [{"path": [f"{base}/good.jsonl.gz", f"{base}/bad.jsonl.gz"], "on_error": "skip"}]
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        said = [cli(["sample", tmp_path / "c.yaml"], tmp_path), cli(["status", tmp_path / "c.yaml"], tmp_path),
                cli(["status", tmp_path / "c.yaml", "--format", "json"], tmp_path)]
    finally:
        server.shutdown()
    assert said[0].returncode == 0, said[0].stderr
    assert "skipped 1 unreadable shard(s)" in said[0].stdout and "reader:***@" in said[0].stdout, said[0].stdout
    manifest = (tmp_path / "ws" / "sample" / "manifest.json").read_text()
    assert "reader:***@" in manifest
    for text in [manifest] + [r.stdout + r.stderr for r in said]:
        assert "hunter2" not in text


# --- a workspace inside a source folder: refused, for every verb ------------------------------------

def _corpus_copy(t: Case) -> Path:
    """The 'legal' folder of the test corpora, copied into the case (a workspace is put inside it)."""
    shutil.copytree(t.corpora / "legal", t.dir / "legal")
    return t.dir / "legal"


@case("/case/legal/ws is inside the source folder")
def workspace_inside_a_source_folder_sample(t):
    _corpus_copy(t)
    return ["sample", t.config({"workspace": "legal/ws", "domains.2.sources": [{"path": str(t.dir / "legal")}]})]


@case("of domain 'legal', so its own files would be read as documents; put the workspace outside")
def workspace_inside_a_source_folder_status(t):
    _corpus_copy(t)
    return ["status", t.config({"workspace": "legal/ws", "domains.2.sources": [{"path": str(t.dir / "legal")}]})]


@case("is inside the source folder")
def workspace_inside_a_recursive_glob(t):
    _corpus_copy(t)
    return ["sample", t.config({"workspace": "legal/sub/ws", "domains.2.sources": [{"path": "legal/**/*.txt"}]})]


# --- what used to be a traceback --------------------------------------------------------------------

@case("'domains.0.name': a name of 300 characters is too long for a file name; use at most 100")
def name_of_300_characters(t):
    return ["sample", t.config({"domains.0.name": "a" * 300, "fit.objective.domains": {"prose": 1.0}})]


@case("workspace holds a NUL byte; remove it from the path")
def nul_byte_in_the_workspace(t):
    return ["sample", t.config({"workspace": "ws\0x"})]


@case("domains.1.sources.0 holds a NUL byte")
def nul_byte_in_a_source_path(t):
    return ["status", t.config({"domains.1.sources": [{"path": "prose\0.jsonl"}]})]


@case("workspace is '~/ws', but no home folder is known for '~' (HOME is unset); set HOME")
def home_empty_with_a_workspace_under_home(t):
    t.env = {"HOME": ""}
    return ["sample", t.config({"workspace": "~/ws"})]


# --- a user's value echoed in a message is cut to ~200 characters -----------------------------------

@case("row 2: weight of 'prose' is 'xxxxxxxx")
def a_1mb_cell_in_a_swarm_table(t):
    swarm = t.swarm()
    lines = swarm.read_text().splitlines()
    cells = lines[2].split(",")
    cells[2] = "x" * 1_000_000
    lines[2] = ",".join(cells)
    swarm.write_text("\n".join(lines) + "\n")
    return ["fit", "--runs", swarm, "--target", "loss", "--key", "run"]


@case("answer 'yyyyyyyy")
def a_1mb_choice_answer(t):
    t.sampled()
    t.text("task.jsonl", json.dumps({"question": "Which?", "choices": ["a", "b"], "answer": "y" * 1_000_000}) + "\n")
    return ["status", _suite(t, [{"name": "q", "kind": "choice", "path": "task.jsonl"}])]


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_outputs(name, corpora, sampled, saved_fit, tmp_path):  # noqa: F811 (fixtures)
    fn, expect = CASES[name]
    t = Case(tmp_path / "case", corpora, sampled, saved_fit)
    t.dir.mkdir()
    args = fn(t)
    before = snapshot(tmp_path)
    r = cli(args, t.dir, t.env, t.preexec, read_only=t.read_only)
    assert_refused(r, expect)
    assert len(r.stderr.splitlines()[0]) < 1000, r.stderr[:2000]  # a user's value is cut (errors.shown)
    assert snapshot(tmp_path) == before, "the case folder changed"


def test_a_workspace_beside_a_glob_that_cannot_reach_it_is_fine(corpora, tmp_path):
    """Only globs that can reach into the workspace are refused: corpus/*.txt with corpus/ws is read."""
    from conftest import small_config

    shutil.copytree(corpora / "legal", tmp_path / "legal")
    cfg = small_config(corpora, tmp_path / "legal" / "ws")
    cfg["domains"][2]["sources"] = [{"path": str(tmp_path / "legal" / "*.txt")}]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    r = cli(["status", tmp_path / "c.yaml"], tmp_path)
    assert r.returncode == 0 and "sample: " in r.stdout, r.stderr


def test_a_workspace_under_home_with_no_home_is_one_error(corpora, tmp_path, monkeypatch):
    """HOME unset and no password entry for the user: '~' cannot be expanded (pathlib raises); the
    loader says so instead."""
    import pwd

    from conftest import small_config

    from mixopt.config.load import load_experiment
    from mixopt.errors import MixoptError

    cfg = small_config(corpora, tmp_path / "ws")
    cfg["workspace"] = "~/ws"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    monkeypatch.delenv("HOME", raising=False)

    def no_entry(uid):
        raise KeyError(uid)
    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    with pytest.raises(RuntimeError):
        Path("~/ws").expanduser()  # what a verb hit before
    with pytest.raises(MixoptError, match="no home folder is known for '~'"):
        load_experiment(tmp_path / "c.yaml")


@pytest.mark.slow
def test_ctrl_c_during_sweep_mixtures_counts_the_runs_asked(swept, tmp_path):
    """The design is trained; `sweep --mixtures` asks 3 more and is interrupted after the first: the
    line counts 13 runs asked, the 2 untrained among the pending, and says how to continue."""
    cfg = _copy_swept(swept, tmp_path)
    (tmp_path / "m.csv").write_text("id,code,prose,legal\nm0,0.2,0.3,0.5\nm1,0.3,0.5,0.2\nm2,0.5,0.2,0.3\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    p = subprocess.Popen([sys.executable, "-m", "mixopt.cli", "sweep", str(cfg), "--mixtures", "m.csv"], cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    said, err = interrupt_sweep(p, "finished (1/3)")  # once the first asked run is finished
    done = sum(x.startswith("sweep: run ") for x in err.splitlines()) + 1  # and the line it read
    assert f"{10 + done} of 13 runs asked (the design's and the mixtures file's) are finished" in said, said
    assert f"; {3 - done} pending" in said and done < 3, said
    assert f"`mixopt sweep {cfg} --mixtures m.csv` continues where this stopped" in said


def test_sample_force_over_a_linked_sample_folder(corpora, sampled, saved_fit, tmp_path):  # noqa: F811
    """ws/sample a link to a folder elsewhere: `sample --force` writes a new sample/ in the workspace,
    removes only the link (no stray .sample.old-* left) and leaves that folder's files as they were."""
    t = Case(tmp_path, corpora, sampled, saved_fit)
    ws = t.sampled()
    shutil.move(ws / "sample", tmp_path / "elsewhere")
    (ws / "sample").symlink_to(tmp_path / "elsewhere")
    before = snapshot(tmp_path / "elsewhere")
    r = cli(["sample", t.config(), "--force"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in ws.iterdir() if p.name.startswith(".sample")) == []
    assert (ws / "sample").is_dir() and not (ws / "sample").is_symlink() and (ws / "sample" / "manifest.json").is_file()
    assert snapshot(tmp_path / "elsewhere") == before


@pytest.mark.slow
def test_an_adopted_run_trained_once_counts_one_training(swept, tmp_path):
    """A run sent back to pending (`check --repair`: checkpoint missing), its checkpoint then restored: the
    next sweep adopts it from the result beside it, trains nothing, and it still counts 1 training."""
    import sqlite3

    cfg = _copy_swept(swept, tmp_path)
    with sqlite3.connect(tmp_path / "ws" / "mixopt.db") as db:
        key, ckpt = db.execute("SELECT key, checkpoint FROM runs WHERE status='done' ORDER BY key LIMIT 1").fetchone()
        trained = db.execute("SELECT SUM(trainings) FROM runs").fetchone()[0]  # the fixture's, and any test's additions
    shutil.move(tmp_path / "ws" / ckpt, tmp_path / "away")
    r = cli(["check", cfg, "--repair"], tmp_path)
    assert "checkpoint missing" in r.stdout and "repaired" in r.stdout, r.stdout + r.stderr
    shutil.move(tmp_path / "away", tmp_path / "ws" / ckpt)
    r = cli(["sweep", cfg, "--no-progress"], tmp_path)
    assert r.returncode == 0 and "1 adopted, 0 trained" in r.stdout, r.stdout + r.stderr
    with sqlite3.connect(tmp_path / "ws" / "mixopt.db") as db:
        assert db.execute("SELECT status, trainings FROM runs WHERE key=?", (key,)).fetchone() == ("done", 1)
    status = json.loads(cli(["status", cfg, "--format", "json"], tmp_path).stdout)
    assert status["trainings"] == trained >= 10  # each run trained once: the adoption added none
