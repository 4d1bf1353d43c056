"""The sampler's own reading of a local Parquet file's text: polars decodes it as Arrow string views
(no copy of the text; ~0.9 CPU-s per GB here, against ~1.4 for Arrow's reader), consecutive row
groups up to POLARS_RUN_BYTES of text at a time. data.readers streams with Arrow whatever this
declines: a larger row group, a file where polars would not pay, a run polars cannot read (Arrow then
says what is wrong). The documents are the same byte for byte either way.
"""

from __future__ import annotations

POLARS_RUN_BYTES = 64 << 20  # text per polars call
# Each run is a polars call that parses the file's footer again, and polars pays more per row group
# than Arrow: past this many runs (a part of a file of many row groups: every n-th of them, none
# consecutive), or below this much text per row group on average, Arrow reads the file.
POLARS_MAX_RUNS = 32
POLARS_MIN_GROUP_BYTES = 256 << 10


def polars_views():
    """polars, where it exports string views to Arrow (polars >= 1.1, pyarrow >= 16); else None."""
    import pyarrow as pa

    try:
        import polars as pl
    except ImportError:
        return None
    return pl if hasattr(pl, "CompatLevel") and hasattr(pa.types, "is_string_view") else None


def runs_to_read(pf, field: str, groups: list[int] | None) -> list[tuple[int, int, list[int]]]:
    """The runs polars reads of an open Parquet file's text column `field` (a column of strings), or
    none where it cannot (no polars with views, a column name polars takes for a pattern) or would not pay."""
    if polars_views() is None or _pattern(field):
        return []
    return runs(pf.metadata, field, groups)


def runs(meta, field: str, groups: list[int] | None) -> list[tuple[int, int, list[int]]]:
    """The row groups (all when None) as runs of consecutive ones holding at most POLARS_RUN_BYTES of
    text together: (first row, rows, groups). A larger row group is a run of 0 rows (Arrow streams it).
    None at all where polars would not pay: over POLARS_MAX_RUNS runs, or small row groups."""
    starts, row = [], 0
    for g in range(meta.num_row_groups):
        starts.append(row)
        row += meta.row_group(g).num_rows
    out: list[tuple[int, int, list[int]]] = []
    size = total = 0
    for g in groups if groups is not None else range(meta.num_row_groups):
        rg = meta.row_group(g)
        n = sum(rg.column(i).total_uncompressed_size for i in range(rg.num_columns)
                if rg.column(i).path_in_schema == field)
        if n > POLARS_RUN_BYTES:
            out.append((starts[g], 0, [g]))
            size = POLARS_RUN_BYTES + 1  # the next group starts a run of its own
        elif out and out[-1][1] and out[-1][2][-1] == g - 1 and size + n <= POLARS_RUN_BYTES:
            first, count, run = out[-1]
            out[-1] = (first, count + rg.num_rows, run + [g])
            size += n
        else:
            out.append((starts[g], rg.num_rows, [g]))
            size = n
        total += n
    read = sum(len(run) for _, _, run in out)
    return out if len(out) <= POLARS_MAX_RUNS and total >= POLARS_MIN_GROUP_BYTES * read else []


def read_run(path: str, field: str, first: int, count: int):
    """Rows first..first+count-1 of the file's column `field` as an Arrow (chunked) string-view column,
    read whole before anything is returned; None where polars fails (a Rust panic included)."""
    pl = polars_views()
    try:
        return (pl.scan_parquet(path, glob=False, hive_partitioning=False).slice(first, count).select(field)
                .collect().to_arrow(compat_level=pl.CompatLevel.newest()).column(0))
    except (Exception, _panic(pl)):
        return None


def _panic(pl) -> type[BaseException]:
    """polars' PanicException (a Rust panic; a BaseException, so `except Exception` misses it)."""
    return getattr(getattr(pl, "exceptions", None), "PanicException", Exception)


def _pattern(name: str) -> bool:
    """Whether polars reads a column name as a pattern (a wildcard or ^regex$), not as the name."""
    return "*" in name or (name.startswith("^") and name.endswith("$"))
