"""Tables users bring (swarms, candidate mixtures): CSV or Parquet, read with polars."""

from __future__ import annotations

from pathlib import Path

from mixopt.errors import MixoptError


def read_table(path: Path):
    import polars as pl

    if not path.is_file():
        raise MixoptError(f"table not found: {path}", "pass a .csv or .parquet file")
    name = path.name.lower()
    try:
        if name.endswith(".csv"):
            return pl.read_csv(path, infer_schema_length=10_000)
        if name.endswith(".parquet"):
            return pl.read_parquet(path)
    except Exception as e:  # polars raises several types for unreadable files
        raise MixoptError(f"{path}: cannot read the table ({str(e).splitlines()[0]})",
                          "check that it is a valid CSV/Parquet file") from None
    raise MixoptError(f"{path}: unknown table format", "use a .csv or .parquet file")


def weight_matrix(table, cols: list[str]):
    """The columns as floats (a cell that is not a number becomes NaN, which validation names)."""
    import numpy as np
    import polars as pl

    return np.column_stack([table[c].cast(pl.Float64, strict=False).fill_null(float("nan")).to_numpy()
                            for c in cols])
