"""Property tests: any config value, any external table either works or is one `error:` line with exit
code 2, and an input refused with exit 2 leaves the folder as it was. The CLI runs in-process here (the
catalogue in test_hostile.py runs it as a subprocess) so that many generated inputs stay fast."""

from __future__ import annotations

import contextlib
import io
import math
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from conftest import small_config
from test_hostile import snapshot

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mixopt.cli import main  # noqa: E402


def run_cli(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["mixopt", *map(str, args)]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = argv
    return code, out.getvalue(), err.getvalue()


def assert_works_or_one_line(code: int, err: str) -> None:
    assert code in (0, 2), f"exit {code}: {err[-2000:]}"
    assert "Traceback" not in err
    if code == 2:
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), err


# Values a hostile or careless user might type, for any key.
ANY_VALUE = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "abc", "1e3", "inf", "-0", "ünïcode", "a/b", "..", "."]),
    st.none(), st.booleans(),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=3),
    st.dictionaries(st.sampled_from(["code", "prose", "legal", "poetry"]),
                    st.floats(allow_nan=True, allow_infinity=True), max_size=3),
)
KEYS = ["seed", "name", "workspace", "proxy.lr", "proxy.tokens", "proxy.seq_len", "proxy.batch_size", "proxy.warmup",
        "proxy.size", "design.runs", "design.temperature", "design.concentration", "design.min_weight",
        "design.min_distance", "design.max_prior_multiple", "design.mixtures", "optimum.kl_weight",
        "optimum.max_epochs", "optimum.target_tokens", "fit.cv_folds", "fit.ci", "fit.bootstrap",
        "fit.objective.domains", "sample.val_tokens", "sample.train_tokens", "sample.tokenizer.vocab_size",
        "domains.0.min", "domains.1.max", "resources.gpus", "slurm.time_min"]


def _set(cfg: dict, dotted: str, value) -> None:
    *head, last = dotted.split(".")
    for part in head:
        cfg = cfg[int(part)] if part.isdigit() else cfg.setdefault(part, {})
    cfg[int(last) if last.isdigit() else last] = value


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(changes=st.dictionaries(st.sampled_from(KEYS), ANY_VALUE, min_size=1, max_size=4))
def test_any_config_value_works_or_is_one_line(corpora, changes):
    """`status` reads the config and the (absent) workspace: any value passes or is one line, nothing written."""
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        cfg = small_config(corpora, root / "ws")
        for key, value in changes.items():
            _set(cfg, key, value)
        path = root / "c.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
        before = snapshot(root)
        code, _, err = run_cli("status", path)
        assert_works_or_one_line(code, err)
        assert snapshot(root) == before  # status writes nothing; a refused config certainly not


CELL = st.one_of(st.floats(min_value=0, max_value=1), st.floats(allow_nan=True, allow_infinity=True),
                 st.sampled_from(["", "x", "0.5", "NA"]), st.none())


@st.composite
def tables(draw):
    rows = draw(st.integers(min_value=0, max_value=12))
    clean = draw(st.booleans())  # half the tables are plausible swarms, half anything
    cols = {}
    for name in ("code", "prose", "legal"):
        cols[name] = [draw(st.floats(min_value=0, max_value=1)) if clean else draw(CELL) for _ in range(rows)]
    if clean:  # normalize rows so that some tables pass
        for i in range(rows):
            total = sum(cols[c][i] for c in ("code", "prose", "legal")) or 1.0
            for c in ("code", "prose", "legal"):
                cols[c][i] = cols[c][i] / total if total else 1 / 3
    cols["loss"] = [draw(st.floats(min_value=1, max_value=5)) if clean else draw(CELL) for _ in range(rows)]
    return cols, draw(st.sampled_from([",", ";", "parquet"]))


def _write(cols: dict, fmt: str, path_stem: Path) -> Path:
    if fmt == "parquet":
        import polars as pl

        def column(values):
            if all(v is None or isinstance(v, float) for v in values):
                return pl.Series(values, dtype=pl.Float64)
            return pl.Series([None if v is None else str(v) for v in values], dtype=pl.String)

        path = path_stem.with_suffix(".parquet")
        pl.DataFrame({k: column(v) for k, v in cols.items()}).write_parquet(path)
        return path
    path = path_stem.with_suffix(".csv")
    lines = [fmt.join(cols)]
    n = len(next(iter(cols.values())))
    for i in range(n):
        lines.append(fmt.join("" if cols[c][i] is None else (repr(cols[c][i]) if isinstance(cols[c][i], float)
                                                               else cols[c][i]) for c in cols))
    path.write_text("\n".join(lines) + "\n")
    return path


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(table=tables(), kl=st.sampled_from(["0", "0", "0.1", "0.1", "inf", "nan", "-1"]))
def test_any_external_table_fits_or_is_one_line(table, kl):
    cols, fmt = table
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        runs = _write(cols, fmt, root / "runs")
        before = snapshot(root)
        code, out, err = run_cli("fit", "--runs", runs, "--target", "loss", "--model", "linear", "--bootstrap", "0",
                                 "--cv-folds", "2", "--no-plots", "--kl-weight", kl, "--save", root / "fit")
        assert_works_or_one_line(code, err)
        if code == 2:
            assert snapshot(root) == before  # nothing half-written: no fit folder
        else:
            assert (root / "fit" / "fit.json").is_file() and "loss" in out
            assert math.isfinite(float(kl)) and float(kl) >= 0
