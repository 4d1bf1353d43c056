"""Shared fixtures: small corpora of real text found on every machine that runs the tests
(CPython's own sources, pydoc's prose topics, license texts of installed packages)."""

from __future__ import annotations

import csv
import json
import os
import sysconfig
from pathlib import Path

import pytest
import yaml


@pytest.fixture(autouse=True, scope="session")
def _quiet_env(tmp_path_factory):
    os.environ["HF_HOME"] = str(tmp_path_factory.mktemp("hf_home"))
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    # `--batch-proxies auto` chooses by timing both paths: fixed here so no test depends on machine speed.
    os.environ.setdefault("MIXOPT_AUTO_BATCH", "1")
    os.environ.setdefault("MIXOPT_AUTO_COMPILE", "off")  # likewise `--compile auto`


def _code_docs(limit_bytes: int) -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    out, n = [], 0
    for pkg in ("json", "email", "asyncio", "logging", "http", "importlib", "concurrent", "xml"):
        for f in sorted((root / pkg).rglob("*.py")):
            if "test" in f.parts:
                continue
            text = f.read_text(errors="replace")
            if text.strip():
                out.append(text)
                n += len(text)
            if n > limit_bytes:
                return out
    return out


def _prose_docs() -> list[str]:
    import pydoc_data.topics

    return [f"{k}\n\n{v}" for k, v in sorted(pydoc_data.topics.topics.items())]


# The `docs` extra's packages (mkdocs and what it pulls in): installing it must not change the tests'
# corpora (their licenses sort among the first 300 KB and moved a data-dependent fit's verdict).
DOCS_EXTRA = ("babel-", "backrefs-", "ghp_import-", "markdown-", "mergedeep-", "mkdocs", "paginate-", "pathspec-",
              "pymdown_extensions-", "pyyaml_env_tag-", "watchdog-")


def _license_docs(limit_bytes: int) -> list[str]:
    site = Path(sysconfig.get_paths()["purelib"])
    out, n, seen = [], 0, set()
    for f in sorted(site.glob("*.dist-info/**/*")):
        if f.relative_to(site).parts[0].lower().startswith(DOCS_EXTRA):
            continue
        if f.is_file() and f.name.upper().startswith(("LICENSE", "COPYING", "NOTICE")):
            text = f.read_text(errors="replace")
            if len(text) > 300 and text not in seen:
                seen.add(text)
                out.append(text)
                n += len(text)
        if n > limit_bytes:
            break
    return out


@pytest.fixture(scope="session")
def corpora(tmp_path_factory) -> Path:
    """Three domains, each in a different format mixopt reads: Parquet, JSONL.gz, a .txt folder."""
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("corpora")
    code = _code_docs(400_000)
    pq.write_table(pa.table({"text": code}), root / "code.parquet")
    with gzip.open(root / "prose.jsonl.gz", "wt") as f:
        for d in _prose_docs():
            f.write(json.dumps({"text": d}) + "\n")
    (root / "legal").mkdir()
    licenses = _license_docs(300_000)
    assert len(licenses) >= 10, "need license texts of installed packages for the 'legal' domain"
    for i, d in enumerate(licenses):
        (root / "legal" / f"{i:03d}.txt").write_text(d)
    return root


def small_config(corpora: Path, workspace: Path, **overrides) -> dict:
    """A config that trains in seconds: 3 domains, tiny proxies on 24k tokens each."""
    cfg = {
        "name": "small",
        "seed": 0,
        "workspace": str(workspace),
        "domains": [
            {"name": "code", "sources": [{"path": str(corpora / "code.parquet")}]},
            {"name": "prose", "sources": [{"path": str(corpora / "prose.jsonl.gz")}]},
            {"name": "legal", "sources": [{"path": str(corpora / "legal")}]},
        ],
        "sample": {"train_tokens": 20000, "val_tokens": 3000, "tokenizer": {"vocab_size": 512}},
        "proxy": {"size": "tiny", "tokens": 24000, "seq_len": 64, "batch_size": 8},
        # No seed replicates by default here: tests count the design's runs; tests/test_noise.py trains them.
        "design": {"runs": 8, "min_weight": 0.01, "replicates": None},
        # RegMix-style target: one domain's held-out BPB (the mean of three is too flat to rank
        # reliably with 12 runs of 46 steps).
        "fit": {"model": "loglinear", "cv_folds": 4, "objective": {"domains": {"prose": 1.0}}},
    }
    for key, value in overrides.items():
        section, _, field = key.partition("__")
        if field:
            cfg.setdefault(section, {})[field] = value
        else:
            cfg[section] = value
    return cfg


def write_csv(path: Path, header: list, rows) -> Path:
    """A CSV table (a swarm's runs or scores, as a user would hand one to `fit --runs`)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture
def make_config(corpora, tmp_path):
    def make(name: str = "small.yaml", ws: str = "ws", **overrides) -> Path:
        return write_config(tmp_path / name, small_config(corpora, tmp_path / ws, **overrides))

    return make


def store_at_version(root: Path, version: int):
    """A store as mixopt at store version `version` left it (root/mixopt.db, the first `version`
    migrations applied), open with rows by name: for the tests of the later migrations."""
    import sqlite3

    from mixopt.sweep.store import MIGRATIONS, SCHEMA

    db = sqlite3.connect(root / "mixopt.db")
    db.row_factory = sqlite3.Row
    db.executescript(SCHEMA)
    for step in MIGRATIONS[:version]:
        step(db, root)
    db.execute(f"PRAGMA user_version = {version}")
    return db


def sample_as_version_1(cfg: Path) -> None:
    """Sample `cfg`'s workspace with sampler version 1, as a workspace made before version 2 is (the CLI
    keeps a workspace's version). For the tests that read how well a fit ranks a dozen tiny proxies: on
    version 2's draw of these small corpora the code domain's train slice is one 21k-token file, and a
    12-run fit no longer cross-validates (Spearman -0.03 against 0.85): a fact of that draw, not of
    the fit under test."""
    from mixopt.config.load import load_experiment
    from mixopt.data import resample
    from mixopt.data.sample import sample_corpus

    with pytest.MonkeyPatch.context() as m:
        m.setattr(resample, "SAMPLER_VERSION", 1)
        sample_corpus(load_experiment(cfg))


@pytest.fixture(scope="session")
def swept(corpora, tmp_path_factory) -> Path:
    """A config whose sample and sweep are done (10 runs of tiny proxies), shared by the tests that only
    read a finished workspace or add runs to it (export, CLI conventions)."""
    import subprocess
    import sys

    from mixopt.config.load import load_experiment
    from mixopt.data import resample
    from mixopt.data.sample import sample_corpus

    root = tmp_path_factory.mktemp("swept")
    cfg = write_config(root / "c.yaml", small_config(corpora, root / "ws", design__runs=6))
    # Sampled with sampler version 1, as a workspace made before version 2 is (the CLI then keeps it):
    # tests read how fits rank on these 10 runs (e.g. test_new_user's linear model out-ranked), which
    # holds on version 1's draw of these corpora and not on version 2's.
    with pytest.MonkeyPatch.context() as m:
        m.setattr(resample, "SAMPLER_VERSION", 1)
        sample_corpus(load_experiment(cfg))
    for args in (["sweep", "--workers", "2", "--no-progress"],):
        r = subprocess.run([sys.executable, "-m", "mixopt.cli", args[0], str(cfg), *args[1:]], capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 0, r.stderr
    return cfg


def mixopt(*args, check=True, env=None, timeout=900, **kw):
    """The CLI in a subprocess, as a user runs it (one-line errors and exit codes included). With `check`, a
    non-zero exit fails the test with the end of its stderr."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "mixopt.cli", *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, env=env, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"mixopt {args} exited {r.returncode}: {r.stderr[-3000:]}")
    return r


def interrupt_sweep(p, finished: str, sig=None) -> tuple[str, str]:
    """Ctrl-C (or `sig`) a `sweep` started with piped stderr once a run's "finished (...)" line contains
    `finished` (observed, not timed); asserts exit 130 and one `interrupted:` line without a traceback,
    and returns that line and the rest of stderr."""
    import signal

    for line in p.stderr:
        if line.startswith("sweep: run ") and finished in line:
            break
    p.send_signal(sig or signal.SIGINT)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 130, err
    said = [x for x in err.splitlines() if x.startswith("interrupted: ")]
    assert len(said) == 1 and "Traceback" not in err, err
    return said[0], err


def invoke_ok(*args) -> str:
    """One verb through the CLI in this process; asserts exit 0 and returns stdout alone (notices go to
    stderr, so `--format json` output parses)."""
    from typer.testing import CliRunner

    from mixopt.cli import app

    r = CliRunner().invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, (r.output, r.exception)
    return r.stdout
