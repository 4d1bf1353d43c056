"""Tables users bring (swarms, candidate mixtures): CSV or Parquet, read with polars. Every way a
table can be wrong (missing, a folder, mislabelled, truncated, not UTF-8, `;`-separated, empty,
a word among the weights) is one MixoptError naming the file."""

from __future__ import annotations

from pathlib import Path

from mixopt.errors import MixoptError, shown

PARQUET_MAGIC = b"PAR1"


def read_table(path: Path):
    """A CSV or Parquet table with at least one row."""
    import polars as pl

    if not path.exists():
        raise MixoptError(f"table not found: {path}", "pass a .csv or .parquet file")
    if not path.is_file():
        raise MixoptError(f"table {path} is not a regular file", "pass a .csv or .parquet file")
    name = path.name.lower()
    if not name.endswith((".csv", ".parquet")):
        raise MixoptError(f"{path}: unknown table format", "use a .csv or .parquet file")
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
            f.seek(max(0, path.stat().st_size - 4))
            tail = f.read(4)
    except OSError as e:
        raise MixoptError(f"{path}: cannot read it ({e.strerror})", "check its permissions") from None
    if not head:
        raise MixoptError(f"{path}: empty file", "pass a table with a header and rows")
    if name.endswith(".parquet"):
        if head[:4] != PARQUET_MAGIC:
            looks = "it looks like CSV text" if _is_text(head) and b"," in head else "it does not start with PAR1"
            raise MixoptError(f"{path}: not a Parquet file ({looks})", "rename it to .csv if it is CSV, or rewrite it")
        if tail != PARQUET_MAGIC or path.stat().st_size < 12:
            raise MixoptError(f"{path}: not a Parquet file (truncated: it does not end with PAR1)",
                              "write the table again")
    else:
        try:
            path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise MixoptError(f"{path}: not UTF-8 text (byte {e.start})", "save the table as UTF-8 CSV") from None
    try:
        if name.endswith(".csv"):
            table = pl.read_csv(path, infer_schema_length=10_000)
        else:
            table = pl.read_parquet(path)
    except Exception as e:  # polars raises several types for unreadable files
        raise MixoptError(f"{path}: cannot read the table ({str(e).splitlines()[0]})",
                          "check that it is a valid CSV/Parquet file") from None
    if name.endswith(".csv") and table.width == 1:
        header = table.columns[0]
        for sep, word in ((";", "';'"), ("\t", "tabs"), ("|", "'|'")):
            if sep in header:
                raise MixoptError(f"{path}: one column named '{header[:40]}': the values are separated by {word}, "
                                  "not commas", "save it as comma-separated CSV")
    if table.height == 0:
        raise MixoptError(f"{path}: no rows (only a header)", "add rows")
    return table


def _is_text(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\x00" not in data


def numeric_text_columns(table, exclude: set[str]) -> list[str]:
    """Text columns whose cells are mostly numbers: weight columns with a word among them."""
    import polars as pl

    out = []
    for c in table.columns:
        if c in exclude or table[c].dtype != pl.String:
            continue
        values = table[c].drop_nulls()
        parsed = values.cast(pl.Float64, strict=False).drop_nulls().len()
        if values.len() and parsed * 2 >= values.len():
            out.append(c)
    return out


def weight_matrix(table, cols: list[str], where: str = ""):
    """The columns as floats; a cell that is text, not a number, is one MixoptError (an empty cell
    becomes NaN, which the weight checks name)."""
    import numpy as np
    import polars as pl

    out = []
    for c in cols:
        col = table[c]
        as_float = col.cast(pl.Float64, strict=False)
        bad = (as_float.is_null() & col.is_not_null()).arg_true()
        if bad.len():
            r = int(bad[0])
            prefix = f"{where}: " if where else ""
            raise MixoptError(f"{prefix}row {r + 1}: weight of {shown(c)} is {shown(col[r])}, not a number",
                              "give a number in [0, 1] in every weight cell")
        out.append(as_float.fill_null(float("nan")).to_numpy())
    return np.column_stack(out)
