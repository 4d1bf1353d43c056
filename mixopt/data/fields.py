"""Read a shard's documents with one more field beside them (a pool's `group_by` or `tiers` field, a.b.c
for nested JSON objects and Parquet structs): aligned Arrow arrays, streamed as readers.py streams text.
A row without the field is a one-line error naming the field and the row."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator

from mixopt.config.source import Source
from mixopt.data.readers import (BATCH_ROWS, JSONL_BLOCK, _decompressed, _open_binary, _text_column, arrow_batches,
                                  read_limit)
from mixopt.data.sources import Shard, ShardError
from mixopt.errors import MixoptError

FIELD_FORMATS = ("parquet", "jsonl", "arrow")


def _missing(where: str, field: str) -> MixoptError:
    return MixoptError(f"{where}: no field '{field}'", "fix the pool's field (a.b.c for a nested one), or give "
                       "every document that field")


def iter_fields(source: Source, shard: Shard, cap: int | None, field: str, as_: str) -> Iterator[tuple]:
    """(text, value) Arrow arrays of equal length; values cast to string (`as_="string"`) or float64.
    `field` None: values are None (the text alone, for clustering)."""
    if shard.fmt not in FIELD_FORMATS:
        raise MixoptError(f"{shard.uri}: a {shard.fmt} shard has no fields",
                          "a pool split by a field reads Parquet, JSONL or Arrow files")
    try:
        if shard.local:
            st = os.stat(shard.uri)
            if not stat.S_ISREG(st.st_mode):
                raise ShardError(f"{shard.uri}: not a regular file")
        reader = {"parquet": _parquet, "jsonl": _jsonl, "arrow": _arrow}[shard.fmt]
        yield from reader(source, shard, cap, field, as_)
    except (ShardError, MixoptError):
        raise
    except PermissionError:
        raise ShardError(f"{shard.uri}: no read permission") from None
    except Exception as e:  # corrupt or truncated files
        msg = str(e).splitlines()[0] if str(e) else ""
        raise ShardError(f"{shard.uri}: cannot be read, corrupt or truncated? ({type(e).__name__}: {msg})") from None


def _cast(values, as_: str):
    import pyarrow as pa

    return values.cast(pa.string() if as_ == "string" else pa.float64())


def _nested(col, field: str, where: str):
    """The a.b.c child of a top-level column `a` (struct columns); None when a level is missing."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for name in field.split(".")[1:]:
        if not pa.types.is_struct(col.type) or col.type.get_field_index(name) < 0:
            return None
        col = pc.struct_field(col, [name])
    if pa.types.is_nested(col.type):
        raise MixoptError(f"{where}: field '{field}' holds {col.type}, not a single value",
                          "name a field holding a string or a number (a.b.c for a nested one)")
    return col


def _values(batch, field: str, as_: str, where: str, first_row: int, row_word: str = "row"):
    import pyarrow as pa

    def at(n: int) -> str:  # JSONL: file:LINE as the readers name lines; Parquet, Arrow: the row from 0
        return f"{where}:{n}" if row_word == "line" else f"{where} (row {n})"

    top = field.split(".")[0]
    if top not in batch.schema.names:
        raise _missing(at(first_row), field)
    col = batch.column(top)
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    col = _nested(col, field, where)
    if col is None or col.null_count == len(col) and len(col):
        raise _missing(at(first_row), field)
    if col.null_count:
        i = col.is_null().to_numpy(zero_copy_only=False).argmax()
        raise _missing(at(first_row + int(i)), field)
    try:
        return _cast(col, as_)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise MixoptError(f"{where}: field '{field}' holds {col.type}, not {'a number' if as_ != 'string' else 'text'}",
                          "tiers cut a numeric field; group_by splits by a string or number") from None


def _parquet(source: Source, shard: Shard, cap, field, as_) -> Iterator[tuple]:
    import contextlib

    import pyarrow.parquet as pq

    from mixopt.data.readers import _check_row_sizes

    with contextlib.nullcontext(shard.uri) if shard.local else _open_binary(shard) as fh:
        pf = pq.ParquetFile(fh, buffer_size=8 << 20)
        names = pf.schema_arrow.names
        if source.text_field not in names:
            raise MixoptError(f"{shard.uri}: no column '{source.text_field}' (columns: {', '.join(names)})",
                              "set the source's text_field")
        if field is not None and field.split(".")[0] not in names:
            raise _missing(f"{shard.uri} (columns: {', '.join(names)})", field)
        groups = None
        if shard.count > 1:
            groups = list(range(shard.index, pf.metadata.num_row_groups, shard.count))
            if not groups:
                return
        _check_row_sizes(pf, source.text_field, groups, shard.uri, cap)
        cols = [source.text_field] + ([field.split(".")[0]] if field is not None else [])
        row = 0
        for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=list(dict.fromkeys(cols)), row_groups=groups):
            text = _text_column(batch, source, shard.uri)
            if text is not None:
                yield text, (_values(batch, field, as_, shard.uri, row) if field is not None else None)
            row += batch.num_rows


def _arrow(source: Source, shard: Shard, cap, field, as_) -> Iterator[tuple]:
    with _open_binary(shard) as fh:
        row = 0
        for batch in arrow_batches(shard, fh):
            text = _text_column(batch, source, shard.uri)
            if text is not None:
                yield text, (_values(batch, field, as_, shard.uri, row) if field is not None else None)
            row += batch.num_rows


def _jsonl(source: Source, shard: Shard, cap, field, as_) -> Iterator[tuple]:
    """Blocks of whole lines; a line longer than read_limit(cap) is refused (its field may lie past it)."""
    with _open_binary(shard) as raw, _decompressed(shard, raw) as fh:
        rest, first_line = b"", 1
        while True:
            block = fh.read(JSONL_BLOCK)
            data = rest + block
            if not block:
                if data.strip():
                    yield from _jsonl_block(source, shard, data + b"\n", first_line, field, as_)
                return
            cut = data.rfind(b"\n")
            if cut < 0:
                if len(data) > read_limit(cap):
                    raise ShardError(f"{shard.uri}:{first_line}: a line of over {read_limit(cap):,} bytes; raise "
                                     "sample.max_document_bytes to read it")
                rest = data
                continue
            yield from _jsonl_block(source, shard, data[:cut + 1], first_line, field, as_)
            first_line += data.count(b"\n", 0, cut + 1)
            rest = data[cut + 1:]


def _jsonl_block(source: Source, shard: Shard, data: bytes, first_line: int, field, as_) -> Iterator[tuple]:
    import pyarrow as pa
    import pyarrow.json as pj

    if b"\n\n" not in data and not data.startswith(b"\n"):  # Arrow's rows are the lines: line numbers hold
        try:
            table = pj.read_json(pa.py_buffer(data), read_options=pj.ReadOptions(block_size=len(data) + 1),
                                 parse_options=pj.ParseOptions(
                                     explicit_schema=pa.schema([(source.text_field, pa.large_string())]),
                                     unexpected_field_behavior="infer" if field else "ignore",
                                     newlines_in_values=False))
            text = table.column(source.text_field).combine_chunks()
            if text.null_count == 0:
                text.validate(full=True)
                yield text, (_values(table, field, as_, shard.uri, first_line, "line") if field else None)
                return
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            pass
    texts, values = [], []
    for i, line in enumerate(data.split(b"\n")):
        if not line.strip():
            continue
        where = f"{shard.uri}:{first_line + i}"
        try:
            row = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ShardError(f"{where}: not valid JSON or not UTF-8") from None
        if not isinstance(row, dict) or source.text_field not in row:
            raise MixoptError(f"{where}: no '{source.text_field}' field", "set the source's text_field")
        if not isinstance(row[source.text_field], str):
            continue
        texts.append(row[source.text_field])
        if field is not None:
            v = row
            for name in field.split("."):
                if not isinstance(v, dict) or name not in v or v[name] is None:
                    raise _missing(where, field)
                v = v[name]
            if isinstance(v, (dict, list)):
                raise MixoptError(f"{where}: field '{field}' holds a JSON {type(v).__name__}, not a single value",
                                  "name a field holding a string or a number (a.b.c for a nested one)")
            if as_ == "string":
                values.append(v if isinstance(v, str) else json.dumps(v))
            else:
                if not isinstance(v, (int, float)) or isinstance(v, bool):
                    raise MixoptError(f"{where}: field '{field}' is {v!r}, not a number", "tiers cut a numeric field")
                values.append(float(v))
    if texts:
        vals = None if field is None else pa.array(values, type=pa.string() if as_ == "string" else pa.float64())
        yield pa.array(texts, type=pa.large_string()), vals
