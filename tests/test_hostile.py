"""The hostile-input catalogue: bad configs, flags, tables and broken workspaces through the real CLI.

Every case asserts exit code 2, exactly one stderr line starting `error: `, no traceback, nothing on
stdout, the expected words in that line, and a byte-identical case folder (config, tables, workspace,
current directory) before and after. Nothing here trains a proxy: a shared sampled workspace and a
shared saved fit of a synthetic swarm are copied into each case's folder. Corpus reader errors
(corrupt shards, FIFOs, encodings) are tested with the readers, in tests/test_readers.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import small_config

INF, NAN = float("inf"), float("nan")
DOMAINS = ["code", "prose", "legal"]


def cli(args, cwd, env=None, preexec=None, timeout=120, read_only: Path | None = None):
    """The real CLI in a subprocess; with `read_only`, that folder is a read-only mount for it (a user
    and mount namespace: `unshare -rm`, then a read-only bind mount of the folder on itself)."""
    e = {**os.environ, **(env or {})}
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parents[1]), e.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "mixopt.cli", *map(str, args)]
    if read_only is not None:
        mount = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
        cmd = ["unshare", "-rm", "sh", "-c", mount, str(read_only), *cmd]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=e, preexec_fn=preexec, timeout=timeout)


def can_mount_read_only() -> bool:
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0
    except OSError:
        return False


def snapshot(root: Path) -> dict:
    """Every entry under `root`: files by content and mode, folders, links by target."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir",)
            elif p.is_file():
                out[rel] = ("file", hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mode)
            else:
                out[rel] = ("other", p.stat().st_mode)
    return out


@pytest.fixture(scope="session")
def sampled(corpora, tmp_path_factory) -> Path:
    """A workspace holding a sample of the test corpora (no runs): copied into the cases that need one."""
    root = tmp_path_factory.mktemp("hostile-sampled")
    cfg = root / "c.yaml"
    cfg.write_text(yaml.safe_dump(small_config(corpora, root / "ws"), sort_keys=False))
    r = cli(["sample", cfg], root)
    assert r.returncode == 0, r.stderr
    return root / "ws"


def swarm_table(n: int = 24, seed: int = 0):
    import polars as pl

    rng = np.random.default_rng(seed)
    W = rng.dirichlet(np.ones(3), n)
    loss = 3 - W @ np.array([0.4, 0.8, 0.1]) + 0.5 * (W[:, 1] - 0.5) ** 2 + rng.normal(0, 0.01, n)
    return pl.DataFrame({"run": [f"r{i}" for i in range(n)], **{d: W[:, i] for i, d in enumerate(DOMAINS)},
                         "loss": loss})


@pytest.fixture(scope="session")
def saved_fit(tmp_path_factory) -> Path:
    """`fit --runs swarm.csv --save fit`: a saved fit for `predict` cases."""
    root = tmp_path_factory.mktemp("hostile-fit")
    swarm_table().write_csv(root / "swarm.csv")
    r = cli(["fit", "--runs", root / "swarm.csv", "--target", "loss", "--key", "run", "--model", "linear",
             "--bootstrap", "0", "--no-plots", "--save", root / "fit"], root)
    assert r.returncode == 0, r.stderr
    return root / "fit"


@dataclass
class Case:
    """What one case gets: its own folder, and helpers that put files there."""

    dir: Path
    corpora: Path
    _sampled: Path
    _fit: Path
    env: dict | None = None
    preexec: object = None
    read_only: Path | None = None  # mounted read-only for the command

    def config(self, changes: dict | None = None, name: str = "c.yaml", ws: str = "ws", drop=()) -> Path:
        """The small test config with dotted-key changes (`proxy.lr`, `domains.0.max`)."""
        cfg = small_config(self.corpora, self.dir / ws)
        for dotted in drop:
            *head, last = dotted.split(".")
            _at(cfg, head).pop(_key(last))
        for dotted, value in (changes or {}).items():
            *head, last = dotted.split(".")
            parent = _at(cfg, head, create=True)
            parent[_key(last)] = value
        path = self.dir / name
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    def text(self, name: str, text: str | bytes) -> Path:
        path = self.dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return path

    def sampled(self, ws: str = "ws") -> Path:
        shutil.copytree(self._sampled, self.dir / ws, symlinks=True)
        return self.dir / ws

    def fit(self, name: str = "fit") -> Path:
        shutil.copytree(self._fit, self.dir / name)
        return self.dir / name

    def table(self, name: str, df=None, **columns) -> Path:
        import polars as pl

        df = df if df is not None else pl.DataFrame(columns)
        path = self.dir / name
        if name.endswith(".parquet"):
            df.write_parquet(path)
        else:
            df.write_csv(path)
        return path

    def swarm(self, name: str = "swarm.csv", n: int = 24) -> Path:
        return self.table(name, swarm_table(n))


def _key(part: str):
    return int(part) if part.isdigit() else part


def _at(cfg, path, create=False):
    for part in path:
        k = _key(part)
        if create and isinstance(cfg, dict) and k not in cfg:
            cfg[k] = {}
        cfg = cfg[k]
    return cfg


CASES: dict[str, tuple] = {}


def case(expect: str):
    """Register a case: the function sets up its folder and returns the CLI arguments."""
    def register(fn):
        CASES[fn.__name__] = (fn, expect)
        return fn
    return register


# --- numbers in the config: finite and in range, checked before anything is written ------------------

def _number(key, value, expect, verb="sample"):
    def fn(t: Case):
        return [verb, t.config({key: value})]
    fn.__name__ = f"config {key}={value!r} ({verb})"
    CASES[fn.__name__] = (fn, expect)


for _key_, _value, _expect in [
    ("proxy.lr", INF, "'proxy.lr': Input should be a finite number"),
    ("proxy.lr", NAN, "'proxy.lr': Input should be a finite number"),
    ("proxy.lr", -0.001, "'proxy.lr': Input should be greater than 0"),
    ("proxy.lr", 0, "'proxy.lr': Input should be greater than 0"),
    ("proxy.lr", "fast", "'proxy.lr': Input should be a valid number"),
    ("proxy.tokens", 1e30, "'proxy.tokens'"),
    ("proxy.tokens", 0, "'proxy.tokens': Input should be greater than 0"),
    ("proxy.tokens", 2.5, "'proxy.tokens'"),
    ("proxy.seq_len", 1, "'proxy.seq_len': Input should be greater than 1"),
    ("proxy.batch_size", 0, "'proxy.batch_size'"),
    ("proxy.warmup", 1.0, "'proxy.warmup'"),
    ("proxy.weight_decay", INF, "'proxy.weight_decay': Input should be a finite number"),
    ("proxy.size", "huge", "'proxy.size'"),
    ("optimum.kl_weight", INF, "'optimum.kl_weight': Input should be a finite number"),
    ("optimum.kl_weight", -1, "'optimum.kl_weight': Input should be greater than or equal to 0"),
    ("optimum.max_epochs", 0, "'optimum.max_epochs'"),
    ("optimum.target_tokens", INF, "'optimum.target_tokens': Input should be a finite number"),
    ("design.concentration", [0.1, INF], "'design.concentration.1': Input should be a finite number"),
    ("design.concentration", [0, 1], "design.concentration must be 0 < low <= high"),
    ("design.concentration", [5, 1], "design.concentration must be 0 < low <= high"),
    ("design.concentration", [1], "'design.concentration"),
    ("design.temperature", 0, "'design.temperature': Input should be greater than 0"),
    ("design.temperature", INF, "'design.temperature': Input should be a finite number"),
    ("design.temperature", -1, "'design.temperature'"),
    ("design.runs", -1, "'design.runs'"),
    ("design.min_weight", 1, "'design.min_weight'"),
    ("design.min_distance", INF, "'design.min_distance': Input should be a finite number"),
    ("design.max_prior_multiple", 0, "'design.max_prior_multiple'"),
    ("seed", -1, "'seed': Input should be greater than or equal to 0"),
    ("seed", 2**64, "'seed'"),
    ("seed", 1.5, "'seed'"),
    ("seed", "abc", "'seed'"),
    ("seed", True, "'seed'"),
    ("sample.val_tokens", 0, "'sample.val_tokens'"),
    ("sample.train_tokens", -5, "'sample.train_tokens'"),
    ("sample.tokenizer.vocab_size", 10, "'sample.tokenizer.vocab_size'"),
    ("fit.cv_folds", 1, "'fit.cv_folds'"),
    ("fit.ci", 1, "'fit.ci'"),
    ("fit.bootstrap", -1, "'fit.bootstrap'"),
    ("fit.model", "xgboost", "'fit.model'"),
    ("fit.objective.domains", {"prose": INF}, "'fit.objective.domains.prose': Input should be a finite number"),
    ("fit.objective.domains", {"poetry": 1.0}, "fit.objective.domains names unknown domain 'poetry'"),
    ("fit.objective.domains", {"prose": 0.0}, "fit.objective.domains weights must be finite, >= 0, not all 0"),
    ("resources.gpus", -1, "'resources.gpus'"),
    ("resources.cpus", INF, "'resources.cpus': Input should be a finite number"),
    ("slurm.time_min", 0, "'slurm.time_min'"),
    ("domains.0.max", 1.5, "'domains.0.max'"),
    ("domains.0.min", NAN, "'domains.0.min': Input should be a finite number"),
    ("design.mixtures", [{"code": 0.5, "prose": "half"}], "design.mixtures.0.prose"),
    ("design.mixtures", [{"code": INF, "prose": 0}], "'design.mixtures.0.code': Input should be a finite number"),
    ("design.mixtures", [{"code": 0.5, "poetry": 0.5}], "design.mixtures[0]: unknown domain 'poetry'"),
    ("design.mixtures", [{"code": 0.3, "prose": 0.3}], "design.mixtures[0]: weights sum to 0.6, not 1"),
]:
    _number(_key_, _value, _expect)

_number("optimum.kl_weight", INF, "'optimum.kl_weight': Input should be a finite number", verb="status")
_number("proxy.lr", NAN, "'proxy.lr': Input should be a finite number", verb="fit")
_number("seed", -1, "'seed': Input should be greater than or equal to 0", verb="sweep")


@case("domain maximums sum to 0.99999999 < 1")
def config_maximums_rounding(t):
    return ["sample", t.config({"domains.0.max": 0.33333333, "domains.1.max": 0.33333333,
                                "domains.2.max": 0.33333333})]


@case("min (0.6) is above max (0.5)")
def config_min_above_max(t):
    return ["sample", t.config({"domains.0.min": 0.6, "domains.0.max": 0.5})]


@case("domain minimums sum to 1.2 > 1")
def config_minimums_over_one(t):
    return ["sample", t.config({"domains.0.min": 0.4, "domains.1.min": 0.4, "domains.2.min": 0.4})]


@case("design.runs is 100000 but at most")
def config_more_runs_than_fit(t):
    """Bounds that leave room for only a few distinct mixtures: fail fast, saying how many fit."""
    t.sampled()
    return ["sweep", t.config({"design.runs": 100000, "design.min_distance": 0.5})]


@case("proxy.seq_len 100000 is longer than")
def config_seq_len_longer_than_slices(t):
    t.sampled()
    return ["sweep", t.config({"proxy.seq_len": 100000})]


# --- the config file itself -------------------------------------------------------------------------

@case("line 3: key 'seed' is given twice")
def yaml_duplicate_key_top(t):
    t.text("c.yaml", "name: a\nseed: 1\nseed: 2\ndomains: []\n")
    return ["sample", t.dir / "c.yaml"]


@case("key 'lr' is given twice")
def yaml_duplicate_key_nested(t):
    path = t.config()
    text = path.read_text().replace("proxy:\n", "proxy:\n  lr: 0.001\n  lr: 0.002\n")
    path.write_text(text)
    return ["sample", path]


@case("not UTF-8 text")
def yaml_not_utf8(t):
    t.text("c.yaml", b"name: caf\xe9\n")
    return ["sample", t.dir / "c.yaml"]


@case("not UTF-8 text")
def yaml_binary(t):
    t.text("c.yaml", bytes(range(256)))
    return ["status", t.dir / "c.yaml"]


@case("not valid YAML at line")
def yaml_syntax(t):
    t.text("c.yaml", "name: a\nseed: [1\n")
    return ["sample", t.dir / "c.yaml"]


@case("not valid YAML")
def yaml_tab_indent(t):
    t.text("c.yaml", "name: a\nproxy:\n\tlr: 1\n")
    return ["sample", t.dir / "c.yaml"]


@case("expected a mapping at the top")
def yaml_list(t):
    t.text("c.yaml", "- a\n- b\n")
    return ["sample", t.dir / "c.yaml"]


@case("expected a mapping at the top")
def yaml_empty(t):
    t.text("c.yaml", "")
    return ["sample", t.dir / "c.yaml"]


@case("expected a mapping at the top")
def yaml_scalar(t):
    t.text("c.yaml", "42\n")
    return ["sample", t.dir / "c.yaml"]


@case("config file not found")
def config_missing(t):
    return ["sample", t.dir / "nope.yaml"]


@case("c.yaml is a folder, not a config file; pass the path of an experiment YAML in it")
def config_is_a_folder(t):
    (t.dir / "c.yaml").mkdir()
    return ["sample", t.dir / "c.yaml"]


@case("a mixture needs at least 2 domains (give `domains`, or `pools` that make them)")
def config_no_domains(t):
    return ["sample", t.config(drop=["domains"])]


@case("a mixture needs at least 2 domains")
def config_one_domain(t):
    path = t.config()
    cfg = yaml.safe_load(path.read_text())
    cfg["domains"] = cfg["domains"][:1]
    path.write_text(yaml.safe_dump(cfg))
    return ["sample", path]


@case("domain 'code' is listed twice")
def config_duplicate_domain(t):
    return ["sample", t.config({"domains.1.name": "code"})]


@case("'domains.0.name': use ASCII letters (a-z, A-Z), digits")
def config_domain_name_with_slash(t):
    return ["sample", t.config({"domains.0.name": "a/b"})]


@case("'name'")
def config_name_dotdot(t):
    return ["sample", t.config({"name": ".."}, drop=["workspace"])]


@case("'name'")
def config_name_dot(t):
    return ["sample", t.config({"name": "."}, drop=["workspace"])]


@case("unknown key 'desing'; did you mean 'design'?")
def config_misspelt_section(t):
    return ["sample", t.config({"desing": {"runs": 3}})]


@case("unknown key 'proxy.layers'")
def config_unknown_nested(t):
    return ["sample", t.config({"proxy.layers": 4})]


@case("'base_dir' is set by mixopt")
def config_reserved_key(t):
    return ["sample", t.config({"base_dir": "/"})]


@case("'domains.0.sources'")
def config_no_sources(t):
    return ["sample", t.config({"domains.0.sources": []})]


@case("corpus not found")
def config_source_missing(t):
    return ["sample", t.config({"domains.0.sources": [str(t.dir / "nowhere.parquet")]})]


@case("3 problems")
def config_many_problems_at_once(t):
    """Every problem is reported, in one line, each with its line number."""
    return ["sample", t.config({"proxy.lr": INF, "seed": -1, "design.temperature": 0})]


# --- eval suites ------------------------------------------------------------------------------------

SUITE_OK = {"name": "h", "kind": "heldout", "domain": "prose"}


def _suite(t: Case, evaluations, name="suite.yaml", raw: str | None = None):
    if raw is None:
        raw = yaml.safe_dump({"evaluations": evaluations})
    t.text(name, raw)
    return t.config({"evals": name}, drop=["fit.objective"])


@case("suite.yaml: line 5: 'evaluations.0.weight': Input should be a finite number")
def suite_weight_inf(t):
    return ["sample", _suite(t, [{**SUITE_OK, "weight": INF}])]


@case("'evaluations.0.weight': Input should be greater than or equal to 0")
def suite_weight_negative(t):
    return ["sample", _suite(t, [{**SUITE_OK, "weight": -1}])]


@case("every evaluation has weight 0")
def suite_weights_zero(t):
    return ["sample", _suite(t, [{**SUITE_OK, "weight": 0}])]


@case("evaluation 'h' is listed twice")
def suite_duplicate_name(t):
    return ["sample", _suite(t, [SUITE_OK, SUITE_OK])]


@case("key 'weight' is given twice")
def suite_duplicate_key(t):
    return ["sample", _suite(t, None, raw="evaluations:\n  - name: h\n    kind: heldout\n    domain: prose\n"
                                          "    weight: 1\n    weight: 2\n")]


@case("suite.yaml: not UTF-8 text")
def suite_not_utf8(t):
    path = _suite(t, [SUITE_OK])
    (t.dir / "suite.yaml").write_bytes(b"evaluations:\n  - name: h\xff\n")
    return ["sample", path]


@case("eval suite file not found")
def suite_missing(t):
    path = _suite(t, [SUITE_OK])
    (t.dir / "suite.yaml").unlink()
    return ["sample", path]


@case("eval suite file not found")
def suite_is_a_folder(t):
    path = _suite(t, [SUITE_OK])
    (t.dir / "suite.yaml").unlink()
    (t.dir / "suite.yaml").mkdir()
    return ["sample", path]


@case("evaluation 'p' names unknown domain 'poetry'")
def suite_unknown_domain(t):
    return ["sample", _suite(t, [SUITE_OK, {"name": "p", "kind": "heldout", "domain": "poetry"}])]


@case("max_tokens")
def suite_max_tokens_zero(t):
    t.text("t.txt", "some text\n")
    return ["sample", _suite(t, [SUITE_OK, {"name": "t", "kind": "text", "sources": ["t.txt"], "max_tokens": 0}])]


@case("a text source is one local file or folder")
def suite_text_source_from_the_hub(t):
    """Globs, lists, URLs and Hub datasets are domain sources; an evaluation's text is one local path."""
    return ["sample", _suite(t, [SUITE_OK, {"name": "t", "kind": "text", "sources": [{"hub": "org/name"}]}])]


@case("a text source is one local file or folder")
def suite_text_source_a_glob(t):
    t.text("t.txt", "some text\n")
    return ["sample", _suite(t, [SUITE_OK, {"name": "t", "kind": "text", "sources": ["*.txt"]}])]


@case("is inside the workspace")
def config_glob_source_inside_workspace(t):
    """A glob whose folder lies inside the workspace is caught like a plain path."""
    t.sampled()
    return ["status", t.config({"domains.0.sources": [str(t.dir / "ws" / "sample" / "*.npy")]})]


@case("expected a mapping with 'evaluations'")
def suite_is_a_list(t):
    return ["sample", _suite(t, None, raw="- a\n")]


@case("choice task file not found")
def suite_choice_missing(t):
    return ["sample", _suite(t, [SUITE_OK, {"name": "c", "kind": "choice", "path": "none.jsonl"}])]


@case("is inside the workspace")
def suite_inside_workspace(t):
    """A task file inside the workspace: mixopt may replace that folder, so inputs must live elsewhere."""
    t.sampled()
    t.text("ws/task.jsonl", json.dumps({"question": "1+1", "choices": ["2", "3"], "answer": 0}) + "\n")
    return ["status", _suite(t, [SUITE_OK, {"name": "c", "kind": "choice", "path": "ws/task.jsonl"}])]


# --- runtime flags ----------------------------------------------------------------------------------

@case("--workers")
def flag_workers_zero(t):
    return ["sweep", t.config(), "--workers", "0"]


@case("--backend")
def flag_unknown_backend(t):
    return ["sweep", t.config(), "--backend", "mpi"]


@case("--batch-proxies 0: expected auto or a positive integer")
def flag_batch_proxies_zero(t):
    t.sampled()
    return ["sweep", t.config(), "--batch-proxies", "0"]


@case("--interval")
def flag_interval_nan(t):
    return ["eval", t.config(), "--interval", "nan"]


@case("--n")
def flag_propose_zero(t):
    return ["propose", t.config(), "--n", "0"]


@case("No such option: --frobnicate")
def flag_unknown(t):
    return ["sample", t.config(), "--frobnicate"]


@case("No such command 'smaple'")
def flag_unknown_verb(t):
    return ["smaple", t.config()]


@case("--device cuda:7")
def flag_missing_gpu(t):
    t.sampled()
    return ["sweep", t.config(), "--device", "cuda:7"]


@case("device 'tpu' is not auto, cpu, cuda or cuda:N")
def flag_bad_device(t):
    t.sampled()
    return ["sweep", t.config(), "--device", "tpu"]


@case("mixtures file not found")
def flag_mixtures_missing(t):
    return ["sweep", t.config(), "--mixtures", t.dir / "none.yaml"]


@case("mixtures[0]: unknown domain 'poetry'")
def flag_mixtures_unknown_domain(t):
    t.text("m.yaml", "mixtures: [{poetry: 1.0}]\n")
    return ["sweep", t.config(), "--mixtures", t.dir / "m.yaml"]


@case("not UTF-8 text")
def flag_mixtures_not_utf8(t):
    t.text("m.yaml", b"mixtures: [{code\xff: 1.0}]\n")
    return ["sweep", t.config(), "--mixtures", t.dir / "m.yaml"]


@case("--target applies to --runs fits only")
def flag_fit_target_with_config(t):
    return ["fit", t.config(), "--target", "x"]


@case("fit needs an experiment CONFIG or an external swarm")
def flag_fit_nothing(t):
    return ["fit"]


@case("give either CONFIG or --runs, not both")
def flag_fit_both(t):
    return ["fit", t.config(), "--runs", t.swarm()]


# --- external tables: fit --runs, predict ----------------------------------------------------------

def _fit(t, runs, *more):
    return ["fit", "--runs", runs, "--model", "linear", "--bootstrap", "0", "--no-plots", *more]


@case("Invalid value for '--kl-weight': inf is not a finite number")
def flag_kl_weight_inf(t):
    return _fit(t, t.swarm(), "--target", "loss", "--kl-weight", "inf")


@case("Invalid value for '--kl-weight': nan is not a finite number")
def flag_kl_weight_nan(t):
    return _fit(t, t.swarm(), "--target", "loss", "--kl-weight", "nan")


@case("Invalid value for '--tolerance': inf is not a finite number")
def flag_tolerance_inf(t):
    return _fit(t, t.swarm(), "--target", "loss", "--tolerance", "inf")


@case("Invalid value for '--tolerance': nan is not a finite number")
def flag_tolerance_nan(t):
    return _fit(t, t.swarm(), "--target", "loss", "--tolerance", "nan")


@case("--seed")
def flag_seed_negative(t):
    return _fit(t, t.swarm(), "--target", "loss", "--seed", "-1")


@case("--cv-folds")
def flag_cv_folds_one(t):
    return _fit(t, t.swarm(), "--target", "loss", "--cv-folds", "1")


@case("--target loss=inf: weight must be a finite number")
def flag_target_weight_inf(t):
    return _fit(t, t.swarm(), "--target", "loss=inf")


@case("no --target given")
def flag_no_target(t):
    return _fit(t, t.swarm())


@case("target column 'val' not found")
def table_target_missing(t):
    return _fit(t, t.swarm(), "--target", "val")


@case("--bound code=0.5:0.2: need 0 <= low <= high <= 1")
def flag_bound_reversed(t):
    return _fit(t, t.swarm(), "--target", "loss", "--bound", "code=0.5:0.2")


@case("--bound poetry=0:0.5: expected DOMAIN=LOW:HIGH with a known domain")
def flag_bound_unknown(t):
    return _fit(t, t.swarm(), "--target", "loss", "--bound", "poetry=0:0.5")


@case("--bound code=a:b: bounds must be numbers")
def flag_bound_words(t):
    return _fit(t, t.swarm(), "--target", "loss", "--bound", "code=a:b")


@case("--bound code=nan:0.5")
def flag_bound_nan(t):
    return _fit(t, t.swarm(), "--target", "loss", "--bound", "code=nan:0.5")


@case("no column starts with 'w_'")
def flag_domains_prefix_none(t):
    return _fit(t, t.swarm(), "--target", "loss", "--domains", "w_")


@case("table not found")
def table_missing(t):
    return _fit(t, t.dir / "none.csv", "--target", "loss")


@case("is not a regular file")
def table_is_a_folder(t):
    (t.dir / "runs.csv").mkdir()
    return _fit(t, t.dir / "runs.csv", "--target", "loss")


@case("unknown table format")
def table_unknown_extension(t):
    t.text("runs.xlsx", "a,b\n")
    return _fit(t, t.dir / "runs.xlsx", "--target", "loss")


@case("runs.parquet: not a Parquet file (it looks like CSV text)")
def table_csv_named_parquet(t):
    t.text("runs.parquet", (t.dir / t.swarm().name).read_text())
    return _fit(t, t.dir / "runs.parquet", "--target", "loss")


@case("separated by ';'")
def table_semicolon_csv(t):
    text = swarm_table().write_csv(separator=";")
    t.text("runs.csv", text)
    return _fit(t, t.dir / "runs.csv", "--target", "loss")


@case("runs.csv: empty file")
def table_empty_file(t):
    t.text("runs.csv", "")
    return _fit(t, t.dir / "runs.csv", "--target", "loss")


@case("runs.csv: no rows (only a header)")
def table_header_only(t):
    t.text("runs.csv", "run,code,prose,legal,loss\n")
    return _fit(t, t.dir / "runs.csv", "--target", "loss")


@case("row 4: weight of 'w_prose' is 'abc', not a number")
def table_weight_not_numeric(t):
    import polars as pl

    df = swarm_table().rename({d: f"w_{d}" for d in DOMAINS}).with_columns(pl.col("w_prose").cast(str))
    df = df.with_columns(pl.when(pl.int_range(df.height) == 3).then(pl.lit("abc")).otherwise(pl.col("w_prose"))
                         .alias("w_prose"))
    return _fit(t, t.table("runs.csv", df), "--target", "loss", "--key", "run", "--domains", "w_")


@case("weight of 'prose' is 'abc', not a number")
def table_weight_not_numeric_autodetect(t):
    """Without --domains, a weight column with one word in it must not silently drop out."""
    import polars as pl

    df = swarm_table().with_columns(pl.col("prose").cast(str))
    df = df.with_columns(pl.when(pl.int_range(df.height) == 3).then(pl.lit("abc")).otherwise(pl.col("prose"))
                         .alias("prose"))
    return _fit(t, t.table("runs.csv", df), "--target", "loss", "--key", "run")


@case("weight of 'code' is nan, not a finite number")
def table_weight_nan(t):
    import polars as pl

    df = swarm_table().with_columns(pl.when(pl.int_range(24) == 0).then(NAN).otherwise(pl.col("code")).alias("code"))
    return _fit(t, t.table("runs.parquet", df), "--target", "loss", "--key", "run")


@case("weight of 'code' is negative")
def table_weight_negative(t):
    import polars as pl

    df = swarm_table().with_columns(pl.when(pl.int_range(24) == 0).then(-0.5).otherwise(pl.col("code")).alias("code"))
    return _fit(t, t.table("runs.csv", df), "--target", "loss", "--key", "run")


@case("weights sum to")
def table_weights_off(t):
    import polars as pl

    df = swarm_table().with_columns(pl.col("code") * 2)
    return _fit(t, t.table("runs.csv", df), "--target", "loss", "--key", "run")


@case("loss: row 2 has no finite score")
def table_target_inf(t):
    import polars as pl

    df = swarm_table().with_columns(pl.when(pl.int_range(24) == 1).then(INF).otherwise(pl.col("loss")).alias("loss"))
    return _fit(t, t.table("runs.csv", df), "--target", "loss", "--key", "run")


@case("no column 'id'")
def table_key_missing(t):
    return _fit(t, t.swarm(), "--target", "loss", "--key", "id")


@case("key 'run' repeats")
def table_key_repeats(t):
    import polars as pl

    df = swarm_table().with_columns(pl.lit("same").alias("run"))
    return _fit(t, t.table("runs.csv", df), "--target", "loss", "--key", "run")


@case("--scores needs --key")
def table_scores_without_key(t):
    return _fit(t, t.swarm(), "--target", "loss", "--scores", t.swarm("s.csv"))


@case("join key 'run' is a number in")
def table_join_int_vs_string(t):
    import polars as pl

    df = swarm_table()
    runs = df.select(pl.int_range(24).alias("run"), *DOMAINS)
    scores = df.select(pl.int_range(24).cast(str).map_elements(lambda s: f"#{s}", return_dtype=pl.String)
                       .alias("run"), "loss")
    return _fit(t, t.table("runs.csv", runs), "--target", "loss", "--key", "run",
                "--scores", t.table("scores.parquet", scores))


@case("have no row in")
def table_join_missing_rows(t):
    df = swarm_table()
    return _fit(t, t.table("runs.csv", df.drop("loss")), "--target", "loss", "--key", "run",
                "--scores", t.table("scores.csv", df.select("run", "loss").head(10)))


@case("found 1 weight columns")
def table_one_domain(t):
    return _fit(t, t.table("runs.csv", code=[1.0, 1.0], loss=[1.0, 2.0]), "--target", "loss")


@case("runs.csv: not UTF-8 text (byte 27)")
def table_not_utf8(t):
    t.text("runs.csv", b"run,code,prose,legal,loss\nr\xff,0.5,0.5,0,1\n")
    return _fit(t, t.dir / "runs.csv", "--target", "loss")


@case("runs.parquet: not a Parquet file")
def table_truncated_parquet(t):
    path = t.table("runs.parquet", swarm_table())
    path.write_bytes(path.read_bytes()[:200])
    return _fit(t, path, "--target", "loss")


@case("holds files mixopt did not write")
def table_save_over_own_input(t):
    """`fit --runs DIR/runs.parquet --save DIR` must not overwrite its own input."""
    (t.dir / "d").mkdir()
    path = t.table("d/runs.parquet", swarm_table())
    return _fit(t, path, "--target", "loss", "--key", "run", "--save", t.dir / "d")


@case("holds files mixopt did not write")
def table_save_into_foreign_folder(t):
    t.text("notes/todo.txt", "mine\n")
    return _fit(t, t.swarm(), "--target", "loss", "--key", "run", "--save", t.dir / "notes")


@case("is a file")
def table_save_is_a_file(t):
    t.text("out", "mine\n")
    return _fit(t, t.swarm(), "--target", "loss", "--key", "run", "--save", t.dir / "out")


@case("is inside the workspace")
def table_inside_a_workspace(t):
    ws = t.sampled()
    shutil.copy(t.swarm(), ws / "swarm.csv")
    (t.dir / "swarm.csv").unlink()
    return ["sweep", t.config(), "--mixtures", ws / "swarm.csv"]


@case("cand.csv: no rows")
def predict_no_rows(t):
    fit = t.fit()
    t.text("cand.csv", "code,prose,legal\n")
    return ["predict", fit, t.dir / "cand.csv"]


@case("no column for domain 'legal'")
def predict_missing_domain(t):
    fit = t.fit()
    return ["predict", fit, t.table("cand.csv", code=[0.5], prose=[0.5])]


@case("weight of 'prose' is 'x', not a number")
def predict_non_numeric(t):
    fit = t.fit()
    t.text("cand.csv", "code,prose,legal\n0.5,0.5,0\n0.5,x,0.5\n")
    return ["predict", fit, t.dir / "cand.csv"]


@case("weights sum to 1.5, not 1")
def predict_weights_off(t):
    fit = t.fit()
    return ["predict", fit, t.table("cand.csv", code=[0.5], prose=[0.5], legal=[0.5])]


@case("Invalid value for '--tolerance': nan is not a finite number")
def predict_tolerance_nan(t):
    fit = t.fit()
    return ["predict", fit, t.table("cand.csv", code=[0.5], prose=[0.5], legal=[0.0]), "--tolerance", "nan"]


@case("not a saved fit")
def predict_not_a_fit(t):
    return ["predict", t.dir, t.table("cand.csv", code=[0.5], prose=[0.5], legal=[0.0])]


@case("fit.json: truncated or not JSON")
def predict_truncated_fit_json(t):
    fit = t.fit()
    (fit / "fit.json").write_text((fit / "fit.json").read_text()[:100])
    return ["predict", fit, t.table("cand.csv", code=[0.5], prose=[0.5], legal=[0.0])]


@case("fit.json: truncated or not JSON")
def predict_empty_fit_json(t):
    fit = t.fit()
    (fit / "fit.json").write_text("")
    return ["predict", fit, t.table("cand.csv", code=[0.5], prose=[0.5], legal=[0.0])]


@case("runs.parquet: not a Parquet file")
def predict_truncated_runs(t):
    fit = t.fit()
    (fit / "runs.parquet").write_bytes(b"PAR1")
    return ["predict", fit, t.table("cand.csv", code=[0.5], prose=[0.5], legal=[0.0])]


@case("fit.json: not a fit written by this mixopt")
def predict_foreign_fit_json(t):
    fit = t.fit()
    (fit / "fit.json").write_text('{"hello": 1}\n')
    return ["predict", fit, t.table("cand.csv", code=[0.5], prose=[0.5], legal=[0.0])]


# --- the workspace and its environment -------------------------------------------------------------

@case("workspace")
def workspace_is_a_file(t):
    t.text("ws", "not a folder\n")
    return ["sample", t.config()]


@case("workspace")
def workspace_is_a_file_status(t):
    t.text("ws", "not a folder\n")
    return ["status", t.config()]


@case("holds files mixopt did not write")
def workspace_dot_with_foreign_sample(t):
    """`workspace: .` next to the user's own sample/ folder: mixopt must not replace it."""
    t.text("sample/mine.txt", "my notes\n")
    return ["sample", t.config({"workspace": "."})]


@case("holds files mixopt did not write")
def workspace_foreign_folder(t):
    t.text("ws/thesis.tex", "\\documentclass{article}\n")
    return ["sample", t.config()]


@case("manifest.json: truncated or not JSON")
def workspace_truncated_manifest_fit(t):
    ws = t.sampled()
    (ws / "sample" / "manifest.json").write_text((ws / "sample" / "manifest.json").read_text()[:50])
    return ["fit", t.config()]


@case("manifest.json: truncated or not JSON")
def workspace_truncated_manifest_sweep(t):
    ws = t.sampled()
    (ws / "sample" / "manifest.json").write_text("{")
    return ["sweep", t.config()]


@case("manifest.json: truncated or not JSON")
def workspace_truncated_manifest_sample(t):
    ws = t.sampled()
    (ws / "sample" / "manifest.json").write_text("")
    return ["sample", t.config()]


@case("mixopt.db is not an SQLite database")
def workspace_db_not_a_database_status(t):
    ws = t.sampled()
    (ws / "mixopt.db").write_text("hello, I am not a database\n" * 100)
    return ["status", t.config()]


@case("mixopt.db is not an SQLite database")
def workspace_db_not_a_database_sweep(t):
    ws = t.sampled()
    (ws / "mixopt.db").write_text("hello, I am not a database\n" * 100)
    return ["sweep", t.config()]


@case("mixopt.db is not an SQLite database")
def workspace_db_not_a_database_check(t):
    ws = t.sampled()
    (ws / "mixopt.db").write_text("hello, I am not a database\n" * 100)
    return ["check", t.config()]


@case("run `mixopt sample CONFIG` first")
def workspace_no_sample_sweep(t):
    return ["sweep", t.config()]


@case("run `mixopt sample CONFIG` first")
def workspace_no_sample_propose(t):
    return ["propose", t.config()]


@case("small.optimal.yaml: its folder")
def env_read_only_config_folder_fit(t):
    """The config in a read-only folder, its workspace writable: `fit` says so before any work (it wrote
    the fit folder in the workspace, then blamed the workspace)."""
    if not can_mount_read_only():
        pytest.skip("needs `unshare -rm` (user and mount namespaces) for a read-only mount")
    t.sampled()
    (t.dir / "cfg").mkdir()
    t.read_only = t.dir / "cfg"
    return ["fit", t.config(name="cfg/c.yaml")]


@case("disk full")
def env_disk_full_during_sample(t):
    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # the tokenizer does not fit
    t.preexec = small_files
    return ["sample", t.config()]


def _read_only(t: Case) -> Path:
    if not can_mount_read_only():
        pytest.skip("needs `unshare -rm` (user and mount namespaces) for a read-only mount")
    t.read_only = t.sampled()
    return t.read_only


@case("read-only filesystem")
def env_read_only_workspace_sample(t):
    _read_only(t)
    return ["sample", t.config(), "--force"]


@case("the workspace is read-only here")
def env_read_only_workspace_sweep(t):
    _read_only(t)
    return ["sweep", t.config()]


@case("read-only filesystem")
def env_read_only_save_folder(t):
    if not can_mount_read_only():
        pytest.skip("needs `unshare -rm` for a read-only mount")
    t.fit("out")
    t.read_only = t.dir / "out"
    return _fit(t, t.swarm(), "--target", "loss", "--key", "run", "--save", t.dir / "out")


@case("cannot reach the Ray cluster at 127.0.0.1:9")
def env_ray_unreachable(t):
    pytest.importorskip("ray")
    t.sampled()
    elsewhere = Path(tempfile.mkdtemp(prefix="ray-"))  # Ray's own files, outside the case folder
    t.env = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "HOME": str(elsewhere),
             "RAY_TMPDIR": str(elsewhere)}
    return ["sweep", t.config(), "--backend", "ray", "--ray-address", "127.0.0.1:9"]


@pytest.mark.parametrize("name", list(CASES))
def test_hostile(name, corpora, sampled, saved_fit, tmp_path):
    fn, expect = CASES[name]
    t = Case(tmp_path / "case", corpora, sampled, saved_fit)
    t.dir.mkdir()
    args = fn(t)
    before = snapshot(tmp_path)
    r = cli(args, t.dir, t.env, t.preexec, read_only=t.read_only)
    assert_refused(r, expect)
    assert snapshot(tmp_path) == before, "the case folder changed"


def assert_refused(r, expect: str) -> None:
    """What every refused input shows: exit 2, one `error:` line naming `expect`, no traceback, nothing on stdout."""
    lines = r.stderr.splitlines()
    assert r.returncode == 2, f"exit {r.returncode}\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert len(lines) == 1, r.stderr[-3000:]
    assert lines[0].startswith("error: "), lines[0]
    assert expect in lines[0], lines[0]
    assert r.stdout == ""


def test_the_catalogue_is_large():
    assert len(CASES) >= 100


def test_read_only_verbs_work_on_a_read_only_mount(corpora, sampled, saved_fit, tmp_path):
    """The other side of the read-only cases: status reads a read-only workspace, predict a read-only fit."""
    if not can_mount_read_only():
        pytest.skip("needs `unshare -rm` (user and mount namespaces) for a read-only mount")
    t = Case(tmp_path, corpora, sampled, saved_fit)
    ws, fit = t.sampled(), t.fit()
    before = snapshot(tmp_path)
    r = cli(["status", t.config()], tmp_path, read_only=ws)
    assert r.returncode == 0 and "sample: up to date" in r.stdout, r.stderr
    r = cli(["predict", fit, t.table("cand.csv", code=[0.5, 0.2], prose=[0.5, 0.3], legal=[0.0, 0.5])], tmp_path,
            read_only=fit)
    assert r.returncode == 0 and r.stdout.splitlines()[0].startswith("row,predicted,rank"), r.stderr
    assert {k: v for k, v in snapshot(tmp_path).items() if k != "cand.csv" and k != "c.yaml"} == before


def test_four_fits_at_once_into_one_folder(tmp_path):
    """Four `fit --save` at once on one folder (plots on): every one finishes, no temp file is left,
    and the folder holds one whole fit (temp names are unique, writes atomic)."""
    swarm_table().write_csv(tmp_path / "swarm.csv")
    args = ["fit", "--runs", tmp_path / "swarm.csv", "--target", "loss", "--key", "run", "--model", "linear",
            "--bootstrap", "0", "--save", tmp_path / "out"]
    e = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1]),
                                                                   os.environ.get("PYTHONPATH")]))}
    procs = [subprocess.Popen([sys.executable, "-m", "mixopt.cli", *map(str, args)], cwd=tmp_path, env=e,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert all(code == 0 for code, _ in results), results
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert not [n for n in names if "tmp" in n], names
    assert {".mixopt", "fit.json", "runs.parquet", "optimal.yaml"} <= set(names)
    assert json.loads((tmp_path / "out" / "fit.json").read_text())["domains"] == DOMAINS
