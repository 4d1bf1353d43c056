"""What a new user hit going verb by verb through the README (issue 28, part B): flags that must act
or be refused, paths that follow the config, export-model and the runs listing, one voice for the
report and fit, what the counts mean, progress, and the remaining hostile cases. Through the real CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.test_hostile import SUITE_OK, Case, cli, sampled, saved_fit, snapshot  # noqa: F401 (fixtures)


def _own_copy(swept: Path, tmp_path: Path) -> Path:
    """The finished session workspace copied, with a config that points at the copy (tests here write)."""
    shutil.copytree(swept.parent / "ws", tmp_path / "ws")
    cfg = yaml.safe_load(swept.read_text())
    cfg["workspace"] = str(tmp_path / "ws")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_fit_flags_override_the_config(swept, tmp_path):
    cfg = _own_copy(swept, tmp_path)
    r = cli(["fit", cfg, "--no-plots", "--cv-folds", "3", "--kl-weight", "5", "--bootstrap", "5", "--seed", "3",
             "--model", "linear", "--trust-region", "none", "--bound", "code=0.1:0.6", "--format", "json"], tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["cv"]["folds"] == 3 and out["model"] == "linear" and out["trust_region"]["mode"] == "none"
    assert 0.1 - 1e-6 <= out["weights"]["code"] <= 0.6 + 1e-6
    assert out["overrides"] == {"model": "linear", "cv-folds": "3", "bootstrap": "5", "seed": "3", "kl-weight": "5.0",
                                "trust-region": "none", "bound": "code=0.1:0.6"}
    optimal = yaml.safe_load((tmp_path / "small.optimal.yaml").read_text())
    assert optimal["overrides"]["cv-folds"] == "3" and optimal["cv"]["folds"] == 3 and optimal["model"] == "linear"
    fit = json.loads((tmp_path / "ws" / "fits" / out["fit_key"][:16] / "fit.json").read_text())
    assert fit["settings"]["seed"] == 3 and fit["settings"]["kl_weight"] == 5.0 and fit["settings"]["bootstrap"] == 5
    # The text output says which settings came from the command line; without flags, the config's.
    r = cli(["fit", cfg, "--no-plots", "--cv-folds", "3"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "command-line overrides of the config: cv-folds 3" in r.stdout and "3-fold CV" in r.stdout
    r = cli(["fit", cfg, "--no-plots"], tmp_path)
    assert r.returncode == 0 and "overrides" not in r.stdout and "4-fold CV" in r.stdout
    assert "overrides" not in yaml.safe_load((tmp_path / "small.optimal.yaml").read_text())


def test_fit_flags_that_cannot_act_are_refused(swept, tmp_path):
    cfg = _own_copy(swept, tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    for args, says in ((["--tolerance", "0.1"], "error: --tolerance applies to --runs fits only"),
                       (["--at-scale", "1e9"], "error: --at-scale applies to --runs fits only"),
                       (["--bound", "nope=0:1"], "error: --bound nope=0:1: expected DOMAIN=LOW:HIGH"),
                       (["--bound", "code=0.9:1", "--bound", "prose=0.9:1"], "error: --bound")):
        r = cli(["fit", cfg, *args], tmp_path)
        assert r.returncode == 2 and r.stderr.startswith(says) and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no optimal.yaml
    table = tmp_path / "runs.csv"
    table.write_text("a,b,loss\n0.5,0.5,1\n")
    for flag in (["--no-reeval"], ["--workers", "2"], ["--device", "cpu"]):
        r = cli(["fit", "--runs", table, "--target", "loss", *flag], tmp_path)
        assert r.returncode == 2 and "applies to a CONFIG's fit only" in r.stderr, r.stderr


def test_every_verb_refuses_flags_that_would_be_ignored(make_config, tmp_path):
    cfg = make_config()
    for args, says in ((["sample", cfg, "--ray-address", "auto"], "--ray-address applies with --backend ray only"),
                       (["sweep", cfg, "--slurm-partition", "gpu"], "--slurm-partition applies with --backend slurm"),
                       (["sweep", cfg, "--ray-address", "auto"], "--ray-address applies with --backend ray only"),
                       (["sweep", cfg, "--dry-run", "--mixtures", cfg], "--mixtures does not apply with --dry-run"),
                       (["eval", cfg, "--interval", "5"], "--interval applies with --watch only"),
                       (["verify", cfg, "--top", "5"], "--top applies with --size only")):
        r = cli(args, tmp_path)
        assert r.returncode == 2 and says in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
    assert not (tmp_path / "ws").exists()


def test_default_workspace_follows_the_config_folder(corpora, tmp_path):
    from tests.conftest import small_config, write_config

    (tmp_path / "mixtures").mkdir()
    cfg = small_config(corpora, tmp_path)
    del cfg["workspace"]
    cfg["design"]["runs"] = 0
    write_config(tmp_path / "mixtures" / "small.yaml", cfg)
    r = cli(["sample", "mixtures/small.yaml"], tmp_path)  # from the parent folder
    assert r.returncode == 0, r.stderr
    ws = tmp_path / "mixtures" / "workspaces" / "small"
    assert (ws / "sample" / "manifest.json").is_file() and not (tmp_path / "workspaces").exists()
    r = cli(["status", "small.yaml"], tmp_path / "mixtures")  # from the config's own folder: the same workspace
    assert r.returncode == 0 and f"workspace: {ws}" in r.stdout and "sample: up to date" in r.stdout, r.stdout
    # A workspace from before (./workspaces/<name> where mixopt ran, beside mixtures/) is still found.
    ws.rename(tmp_path / "old")
    (tmp_path / "workspaces").mkdir()
    (tmp_path / "old").rename(tmp_path / "workspaces" / "small")
    for cwd in (tmp_path, tmp_path / "mixtures"):
        r = cli(["status", cfg_path := tmp_path / "mixtures" / "small.yaml"], cwd)
        assert f"workspace: {tmp_path / 'workspaces' / 'small'}" in r.stdout and "sample: up to date" in r.stdout
    # A relative `workspace:` resolves against the config file too.
    cfg["workspace"] = "../elsewhere"
    write_config(cfg_path, cfg)
    r = cli(["status", cfg_path], tmp_path / "mixtures")
    assert f"workspace: {tmp_path / 'elsewhere'}" in r.stdout


def test_extensionless_files_say_the_extensions_filter_skipped_them(corpora, tmp_path):
    from tests.conftest import small_config, write_config

    (tmp_path / "notes").mkdir()
    licenses = sorted((corpora / "legal").glob("*.txt"))
    for i, f in enumerate(licenses):
        (tmp_path / "notes" / f"NOTE{i}").write_text(f.read_text())
    cfg = small_config(corpora, tmp_path / "ws")
    cfg["domains"][2]["sources"] = [{"path": str(tmp_path / "notes")}]
    r = cli(["sample", write_config(tmp_path / "c.yaml", cfg)], tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "domain 'legal' has no documents" in r.stderr
    assert f"the default `extensions` filter (.txt, .md, .py and other text suffixes) skipped {len(licenses)} files there " \
           "(e.g. NOTE0): to read them, give the source `extensions: ['']`" in r.stderr
    assert not (tmp_path / "ws").exists()
    cfg["domains"][2]["sources"][0]["extensions"] = [""]
    r = cli(["sample", write_config(tmp_path / "c.yaml", cfg)], tmp_path)
    assert r.returncode == 0, r.stderr
    # An evaluation's text source says the same.
    cfg["evals"] = {"evaluations": [{"name": "notes", "kind": "text", "sources": [{"path": str(tmp_path / "notes"),
                                                                                     "extensions": [".txt"]}]}]}
    del cfg["fit"]["objective"]
    r = cli(["status", write_config(tmp_path / "c.yaml", cfg)], tmp_path)
    assert r.returncode == 2 and "text source not found or empty" in r.stderr
    assert f"its `extensions` filter (.txt) skipped {len(licenses)} files there" in r.stderr, r.stderr


def test_runs_lists_keys_and_export_model_follows_the_umask(swept, tmp_path):
    import os
    import stat

    cfg = _own_copy(swept, tmp_path)
    listed = json.loads(cli(["runs", cfg, "--format", "json"], tmp_path).stdout)
    exported = json.loads(cli(["export", cfg, "--format", "json"], tmp_path).stdout)
    import sqlite3

    with sqlite3.connect(tmp_path / "ws" / "mixopt.db") as db:  # the fixture's 10 runs, and any other test's
        held = db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    assert [r["key"] for r in listed] == [r["key"] for r in exported] and len(listed) == held >= 10
    assert all(r["size"] == "tiny" and r["status"] == "done" for r in listed)
    assert all(r["objective"] is not None and set(r["weights"]) == {"code", "prose", "legal"} for r in listed)
    text = cli(["runs", cfg], tmp_path).stdout.splitlines()
    assert text[0].split() == ["key", "size", "status", "objective", "mixture"] and len(text) == len(listed) + 2
    first = listed[0]
    assert text[1].startswith(first["key"][:12]) and first["mixture"] in text[1]
    assert f"{first['objective']:.4f}" in text[1]
    r = cli(["export-model", cfg, "zzzz"], tmp_path)
    assert r.returncode == 2 and "run 'zzzz' matches no finished run" in r.stderr
    assert "`mixopt runs CONFIG` lists them" in r.stderr
    for umask, folder, file in ((0o022, 0o755, 0o644), (0o077, 0o700, 0o600)):
        out = tmp_path / f"hf{umask:o}"
        r = cli(["export-model", cfg, first["key"][:8], "--output", out], tmp_path, preexec=lambda u=umask: os.umask(u))
        assert r.returncode == 0, r.stderr
        assert stat.S_IMODE(out.stat().st_mode) == folder
        assert {stat.S_IMODE(f.stat().st_mode) for f in out.iterdir()} == {file}


def test_report_and_fit_share_warnings_and_one_error_sign(swept, tmp_path):
    import re

    cfg = _own_copy(swept, tmp_path)
    # A fixed model that others out-rank on these runs: fit itself says so (it was the report's alone).
    r = cli(["fit", cfg, "--no-plots", "--model", "linear"], tmp_path)
    assert "WARNING: fit.model is linear (Spearman" in r.stdout and "consider fit.model: auto" in r.stdout
    # The report shows the warnings fit prints (same config, same words).
    fit = json.loads(cli(["fit", cfg, "--no-plots", "--format", "json"], tmp_path).stdout)
    r = cli(["report", cfg, "--output", tmp_path / "r.html"], tmp_path)
    assert r.returncode == 0, r.stderr
    page = (tmp_path / "r.html").read_text()
    for w in fit["warnings"]:
        assert w.replace("&", "&amp;").replace("'", "&#x27;").replace("<", "&lt;").replace(">", "&gt;")[:60] in page \
            or w[:60] in page
    if fit["predicted"] > fit["best_run"]:
        assert any("is worse than the best measured run" in w for w in fit["warnings"])
    # One sign: measured - predicted, stated in both tables' headers.
    assert page.count("error (measured − predicted)") >= 1
    rows = re.findall(r"<tr><td>([0-9a-f]{12})</td>.*?<td>([0-9.]+)</td><td>([0-9.]+)</td><td>([+-][0-9.]+)</td>", page)
    assert rows
    for _, measured, predicted, error in rows:
        assert abs(float(measured) - float(predicted) - float(error)) < 2e-4


# --- 7: the remaining hostile cases: exit 2, one line, the workspace as found (caches and marker too) --



def test_batch_proxies_that_isdigit_accepts_but_int_does_not(make_config, tmp_path):
    r = cli(["sweep", make_config(), "--batch-proxies", "²"], tmp_path)
    assert r.returncode == 2 and r.stderr == "error: --batch-proxies ²: expected auto or a positive integer; " \
                                             "e.g. --batch-proxies 8\n", r.stderr
    assert not (tmp_path / "ws").exists()


def _legacy(t: Case) -> Path:
    """The sampled workspace as an older mixopt left it: no marker, and no corpus-hash cache yet."""
    ws = t.sampled()
    (ws / ".mixopt").unlink()
    (ws / "file-hashes.json").unlink()
    return ws


def _locked(t: Case):
    from mixopt.sweep.store import Store

    ws = _legacy(t)
    Store(ws / "mixopt.db").close()
    (ws / ".mixopt").unlink()
    t.env = {"MIXOPT_DB_TIMEOUT": "1"}
    t.lock = ws / "mixopt.db"  # held by the test while the command runs, taken after the snapshot: closing
    # a file this process read would drop its POSIX locks on it (SQLite's documented trap)
    return ["sweep", t.config()], "the workspace's database stayed locked by another process"


def _not_sqlite(verb):
    def setup(t: Case):
        (_legacy(t) / "mixopt.db").write_text("hello, I am not a database\n" * 100)
        return [verb, t.config()], "mixopt.db is not an SQLite database"
    return setup


def _swept_legacy(t: Case, **changes) -> Path:
    """The finished session workspace (runs to evaluate and fit) as an older mixopt left it."""
    shutil.copytree(t.swept.parent / "ws", t.dir / "ws")
    (t.dir / "ws" / ".mixopt").unlink()
    (t.dir / "ws" / "file-hashes.json").unlink()
    cfg = yaml.safe_load(t.swept.read_text())
    cfg = {**cfg, "workspace": str(t.dir / "ws"), **changes}
    if "evals" in changes:
        cfg["fit"].pop("objective")  # the suite's weights are the objective
    return t.text("c.yaml", yaml.safe_dump(cfg, sort_keys=False))


def _other_domains(t: Case):
    cfg = _swept_legacy(t)
    t.text("small.optimal.yaml", yaml.safe_dump({"weights": {"a": 0.5, "b": 0.5}}))
    return ["verify", cfg], "is for other domains than the config"


def _file_size_limit(t: Case):
    import resource

    _legacy(t)

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # the tokenizer does not fit
    t.preexec = small_files
    return ["sample", t.config(), "--force"], "disk full, file size limit or I/O error"


def _text_eval_not_utf8(t: Case):
    t.text("t.jsonl", b'{"text": "caf\xe9 au lait"}\n' * 50)  # Latin-1 in JSON Lines (a .txt reads with U+FFFD)
    t.text("suite.yaml", yaml.safe_dump({"evaluations": [SUITE_OK, {"name": "t", "kind": "text", "sources": ["t.jsonl"]}]}))
    cfg = _swept_legacy(t, evals="suite.yaml")
    return ["eval", cfg], "not UTF-8"


FAILING = {"locked store": _locked, "store not SQLite (status)": _not_sqlite("status"),
           "store not SQLite (sweep)": _not_sqlite("sweep"), "recommendation for other domains": _other_domains,
           "file size limit writing the sample": _file_size_limit, "text evaluation not UTF-8": _text_eval_not_utf8}


@pytest.mark.parametrize("name", list(FAILING))
def test_a_failing_command_leaves_the_workspace_as_found(name, corpora, sampled, saved_fit, swept, tmp_path):
    """An older workspace (no marker, no hash cache): the command fails in one line and writes neither."""
    t = Case(tmp_path / "case", corpora, sampled, saved_fit)
    t.swept = swept
    t.dir.mkdir()
    args, says = FAILING[name](t)
    sqlite_own = ("mixopt.db-wal", "mixopt.db-shm")  # SQLite's own files beside a store another process holds
    before = {k: v for k, v in snapshot(tmp_path).items() if not k.endswith(sqlite_own)}
    holder = None
    if getattr(t, "lock", None):
        import sqlite3

        holder = sqlite3.connect(t.lock, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock for the whole command
    try:
        r = cli(args, t.dir, t.env, t.preexec)
    finally:
        if holder is not None:
            holder.close()
    lines = r.stderr.splitlines()
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert lines[-1].startswith("error: ") and says in lines[-1], r.stderr
    assert all(line.startswith("waiting: ") for line in lines[:-1]), r.stderr  # the lock wait's notice only
    after = {k: v for k, v in snapshot(tmp_path).items() if not k.endswith(sqlite_own)}
    assert after == before, sorted(set(after.items()) ^ set(before.items()))


def test_an_unreadable_hf_dataset_file_is_one_line(corpora, tmp_path):
    import os

    if os.geteuid() == 0:
        pytest.skip("runs as root, where chmod does not stop reads")
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": ["one document", "another one"] * 20}).save_to_disk(tmp_path / "hf")
    arrow = next((tmp_path / "hf").glob("*.arrow"))
    arrow.chmod(0)
    from tests.conftest import small_config, write_config

    cfg = small_config(corpora, tmp_path / "ws")
    cfg["domains"][2]["sources"] = [{"path": str(tmp_path / "hf")}]
    r = cli(["sample", write_config(tmp_path / "c.yaml", cfg)], tmp_path)
    assert r.returncode == 2 and r.stderr.startswith(f"error: {arrow}: cannot be read (Permission denied)"), r.stderr
    assert len(r.stderr.splitlines()) == 1 and not (tmp_path / "ws").exists()


# --- 5: what the counts mean --------------------------------------------------------------------------

def test_sample_says_what_docs_and_duplicates_count(corpora, tmp_path):
    """A Parquet domain whose every text appears twice, sampled in part: docs + duplicates_dropped is the
    rows read, and the table says that only repeats of sampled documents are dropped."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.conftest import small_config, write_config

    texts = pq.read_table(corpora / "code.parquet").column("text").to_pylist()
    pq.write_table(pa.table({"text": texts + texts}), tmp_path / "twice.parquet")
    cfg = small_config(corpora, tmp_path / "ws")
    cfg["domains"][0]["sources"] = [{"path": str(tmp_path / "twice.parquet")}]
    r = cli(["sample", write_config(tmp_path / "c.yaml", cfg)], tmp_path)
    assert r.returncode == 0, r.stderr
    code = json.loads((tmp_path / "ws" / "sample" / "manifest.json").read_text())["domains"]["code"]
    rows, distinct = 2 * len(texts), len(set(texts))
    assert code["documents"] + code["duplicates_dropped"] == rows
    assert 0 < code["duplicates_dropped"] < rows - distinct  # the sample is part of the domain
    assert (f"(docs = documents read (rows, JSON lines or files) less the exact repeats of sampled documents, "
            f"dropped from the sample: code {code['duplicates_dropped']:,}; repeats among documents not sampled "
            "are counted as read)") in r.stdout
    assert f"{code['documents']:,}" in r.stdout


# --- 6: progress: elapsed and ETA; the compile measurement and the stacked evaluation say they began ---

def test_progress_lines_carry_elapsed_and_eta_and_the_stacked_eval_says_it_began(swept, tmp_path):
    import re

    cfg = _own_copy(swept, tmp_path)
    doc = yaml.safe_load(cfg.read_text())
    (tmp_path / "t.txt").write_text("A text evaluation the runs have not seen yet.\n" * 40)
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump({"evaluations": [
        {"name": "h", "kind": "heldout", "domain": "prose"}, {"name": "t", "kind": "text", "sources": ["t.txt"]}]}))
    doc["evals"] = "suite.yaml"
    doc["fit"].pop("objective")
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
    r = cli(["eval", cfg], tmp_path)  # stderr is a pipe: one line per finished run
    assert r.returncode == 0, r.stderr
    start = [x for x in r.stdout.splitlines() if x.startswith("eval: measuring ")]  # a notice, before any result
    assert len(start) == 1 and re.fullmatch(
        r"eval: measuring (\d+) checkpoints in \d+ stacked batch\(es\) of up to \d+, \d+ process\(es\)\.\.\.", start[0]), r.stdout
    n = int(start[0].split()[2])
    done = [x for x in r.stderr.splitlines() if x.startswith("eval: run ")]
    assert len(done) == n >= 2
    for i, line in enumerate(done, 1):
        assert re.fullmatch(rf"eval: run [0-9a-f]{{12}} finished \({i}/{n}\) (\d+m)?\d+s elapsed, ETA (\d+m)?\d+s",
                            line), line
    assert done[-1].endswith("ETA 0s")


def test_the_compile_measurement_says_it_began(tmp_path, monkeypatch):
    """Through choose_compile itself: a real compile measurement takes tens of seconds and a compiler."""
    from mixopt.config.runtime import Runtime
    from mixopt.config.schema import Proxy
    from mixopt.core.workspace import Workspace
    from mixopt.proxy import speed
    from mixopt.proxy.model import proxy_spec
    from mixopt.sweep.choose import choose_compile

    monkeypatch.delenv("MIXOPT_AUTO_COMPILE", raising=False)
    monkeypatch.setattr(speed, "compile_timings", lambda spec, n, device, **_: {
        "compile_seconds": 20.0, "eager_step": 0.2, "compiled_step": 0.1})
    said: list[str] = []
    spec = proxy_spec(Proxy(size="tiny", tokens=200_000, seq_len=64, batch_size=8), 512)
    ws = Workspace(tmp_path / "ws")
    ws.claim()
    choice = choose_compile(Runtime(device="cpu", say=said.append), spec, ws, 1, 4, rates={1: 0.5})
    assert said[0] == ("--compile auto: compiling the tiny proxy x1 on cpu to time it (often 30 s or more on a CPU; "
                       "once per machine and proxy shape)...")
    assert len(said) == 1 and "measured now" in choice.why  # the choice's own line follows (the sweep prints it)
