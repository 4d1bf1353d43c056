"""Stream a shard's documents as Arrow string chunks: Parquet, JSONL (.gz/.zst), Arrow IPC, text files,
folders saved by `datasets`, and Hub dataset shards. A 10 GB domain never sits in memory, and the
sampler hashes bytes without building a Python string per document. Any failure to read a shard
(truncated, corrupt, unreadable, not UTF-8, not a regular file) is a ShardError naming it.
"""

from __future__ import annotations

import gzip
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from mixopt.config.schema import Sample
from mixopt.config.source import Source
from mixopt.core.keys import file_stamp
from mixopt.data import parquet_views
from mixopt.data.sources import SKIP_FIX, Shard, ShardError, fs_for, list_shards, load_hub, walk_files
from mixopt.errors import MixoptError

BATCH_ROWS = 1024  # Arrow and dataset rows read at a time
# Parquet text read at a time (rows from the footer's bytes per row): ~2 MB batches reuse the memory
# Arrow has already touched, where 1024 rows of 14 kB documents cost ~0.2 CPU-s more per GB.
PARQUET_BATCH_BYTES = 2 << 20
JSONL_BLOCK = 8 << 20  # JSONL bytes parsed at a time
# A document is read whole up to READ_FACTOR x max_document_bytes (room for JSON escapes and other
# fields), then cut to max_document_bytes by the sampler; a longer JSON line or Parquet row is refused
# while reading, before it is built: a 1 MB gzip can hold a 1 GB line.
READ_FACTOR = 8


def read_limit(cap: int | None) -> int:
    """Bytes a JSON line or a Parquet row may hold (`cap`: max_document_bytes; None: its default)."""
    return READ_FACTOR * (cap or Sample().max_document_bytes)


def _too_long(where: str, size: str, cap: int | None) -> ShardError:
    return ShardError(f"{where}: {size}, over {read_limit(cap):,} bytes ({READ_FACTOR} x sample.max_document_bytes "
                      f"= {cap or Sample().max_document_bytes:,}); it was not read whole: raise "
                      "sample.max_document_bytes to read it (it is then cut to that size)")


def iter_chunks(source: Source, shard: Shard, max_document_bytes: int | None = None, views: bool = False) -> Iterator:
    """Arrow string arrays with the shard's documents (nulls, and JSON values that are not strings,
    dropped; a Parquet or Arrow column that is not text is an error). Any failure
    to read the shard raises ShardError naming it. A text file is read up to max_document_bytes (+4).
    `views`: the caller also reads Arrow string_view arrays (a local Parquet file's may come so)."""
    try:
        if shard.fmt == "hub":
            yield from _chunks_hub(source, shard)
            return
        if shard.local and shard.fmt != "hf":
            st = os.stat(shard.uri)
            if not stat.S_ISREG(st.st_mode):
                raise ShardError(f"{shard.uri}: not a regular file")
            if not os.access(shard.uri, os.R_OK):
                raise ShardError(f"{shard.uri}: no read permission")
        if shard.fmt == "parquet":
            yield from _chunks_parquet(source, shard, max_document_bytes, views and shard.local)
            return
        reader = {"jsonl": _chunks_jsonl, "text": _chunks_text, "hf": _chunks_hf, "arrow": _chunks_arrow}[shard.fmt]
        yield from reader(source, shard, max_document_bytes)
    except (ShardError, MixoptError):
        raise
    except PermissionError:
        raise ShardError(f"{shard.uri}: no read permission") from None
    except UnicodeDecodeError as e:
        raise ShardError(f"{shard.uri}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except Exception as e:  # truncated/corrupt gzip, zstd, Parquet, Arrow; a dropped connection
        msg = str(e).splitlines()[0] if str(e) else ""
        raise ShardError(f"{shard.uri}: cannot be read, corrupt or truncated? ({type(e).__name__}: {msg})") from None


def _open_binary(shard: Shard):
    if shard.local:
        return open(shard.uri, "rb")
    fs, path = fs_for(shard.uri, shard.opts)
    return fs.open(path, "rb", block_size=8 << 20)


def _decompressed(shard: Shard, raw):
    name = shard.uri.lower()
    if name.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if name.endswith(".zst"):
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
    return raw


def _text_column(table_or_batch, source: Source, where: str):
    import pyarrow as pa

    names = table_or_batch.schema.names
    if source.text_field not in names:
        raise MixoptError(f"{where}: no column '{source.text_field}' (columns: {', '.join(names)})",
                          "set the source's text_field")
    col = table_or_batch.column(source.text_field)
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    kind = col.type
    col = _as_text(col)
    if col is None:
        raise MixoptError(f"{where}: column '{source.text_field}' holds {kind} values, not text",
                          "set the source's text_field to a column of text")
    try:
        col.validate(full=True)  # UTF-8: Parquet and Arrow files need not hold valid text
    except pa.ArrowInvalid as e:
        raise ShardError(f"{where}: not valid UTF-8 text in column '{source.text_field}' ({e})") from None
    return col


def _chunks_parquet(source: Source, shard: Shard, cap, views: bool = False) -> Iterator:
    import contextlib

    import pyarrow.parquet as pq

    # A local file by path: Arrow reads it without the GIL. buffer_size streams a column chunk in 8 MB
    # reads instead of loading it whole (a file written as one row group is otherwise all in memory).
    with contextlib.nullcontext(shard.uri) if shard.local else _open_binary(shard) as fh:
        pf = pq.ParquetFile(fh, buffer_size=8 << 20)
        if source.text_field not in pf.schema_arrow.names:
            raise MixoptError(f"{shard.uri}: no column '{source.text_field}' (columns: "
                              f"{', '.join(pf.schema_arrow.names)})", "set the source's text_field")
        groups = None
        if shard.count > 1:  # one of `count` parts of the file: every count-th row group
            groups = list(range(shard.index, pf.metadata.num_row_groups, shard.count))
            if not groups:
                return
        rows = _check_row_sizes(pf, source.text_field, groups, shard.uri, cap)
        field = source.text_field
        runs = parquet_views.runs_to_read(pf, field, groups) if views and _is_text(pf.schema_arrow.field(field).type) else []
        if not runs:  # Arrow's reader: no views asked, or polars would not pay here
            yield from _arrow_batches(pf, source, shard, rows, groups)
            return
        was = file_stamp(shard.uri)  # polars opens the file by its path again for each run
        for first, count, run in runs:
            col = parquet_views.read_run(shard.uri, field, first, count) if count else None
            if col is None:  # a row group too big for one run, or a run polars could not read: Arrow says why
                yield from _arrow_batches(pf, source, shard, rows, run)
                continue
            if file_stamp(shard.uri) != was:  # rows of another file at this one's row offsets
                raise ShardError(f"{shard.uri}: replaced or changed while being read; run the command again")
            yield from col.chunks


def _arrow_batches(pf, source: Source, shard: Shard, rows: int, groups: list[int] | None) -> Iterator:
    """The text column of a Parquet file's row groups (all when None), streamed by Arrow's reader."""
    for batch in pf.iter_batches(batch_size=rows, columns=[source.text_field], row_groups=groups):
        col = _text_column(batch, source, shard.uri)
        if col is not None:
            yield col


def _is_text(t) -> bool:
    import pyarrow as pa

    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_a(t, kind: str) -> bool:
    """pa.types.is_<kind>(t), False where this pyarrow has no such type (views: pyarrow >= 16)."""
    import pyarrow as pa

    return getattr(pa.types, f"is_{kind}", lambda _: False)(t)


def _as_text(col):
    """A column of text as an Arrow string, large_string or string_view array (its UTF-8 not yet
    checked): categoricals decoded, an extension type's (Arrow's json) storage, bytes (Parquet written
    without the UTF8 annotation: Hive, Spark) read as text; None for any other type."""
    import pyarrow as pa

    if isinstance(col.type, pa.BaseExtensionType):
        col = col.storage
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    t = col.type
    if _is_text(t) or _is_a(t, "string_view"):
        return col
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or _is_a(t, "binary_view"):
        return col.view({pa.binary(): pa.string(), pa.large_binary(): pa.large_string()}.get(t, pa.string_view()))
    return None


def _check_row_sizes(pf, field: str, groups: list[int] | None, where: str, cap: int | None) -> int:
    """From the footer, before any row is read: a row group whose text column holds more bytes per
    row than read_limit is refused (a 26 kB file can hold one 500 MB string). A single huge value
    among many small ones in one row group is not seen here: it is read with its batch. Returns the
    rows to read at a time for about PARQUET_BATCH_BYTES of text."""
    meta = pf.metadata
    total = rows = 0
    for g in groups if groups is not None else range(meta.num_row_groups):
        rg = meta.row_group(g)
        size = sum(rg.column(i).total_uncompressed_size for i in range(rg.num_columns)
                   if rg.column(i).path_in_schema == field)
        if rg.num_rows and size / rg.num_rows > read_limit(cap):
            raise _too_long(where, f"row group {g} holds {size:,} bytes of '{field}' in {rg.num_rows} row(s)", cap)
        total, rows = total + size, rows + rg.num_rows
    return int(min(64 * BATCH_ROWS, max(64, PARQUET_BATCH_BYTES * rows // max(total, 1))))


def row_group_parts(shard: Shard, parts: int) -> list[Shard]:
    """A local Parquet file as up to `parts` shards of interleaved row groups (for parallel reading)."""
    import dataclasses

    import pyarrow.parquet as pq

    if not (shard.local and shard.fmt == "parquet" and shard.count == 1 and parts > 1):
        return [shard]
    try:
        groups = pq.ParquetFile(shard.uri).metadata.num_row_groups
    except Exception:  # a bad file: read (and reported) as one shard
        return [shard]
    n = min(parts, groups)
    if n <= 1:
        return [shard]
    return [dataclasses.replace(shard, index=i, count=n, size=(shard.size or 0) // n) for i in range(n)]


def arrow_batches(shard: Shard, fh) -> Iterator:
    """The record batches of an open Arrow shard: the IPC file format, else the stream format."""
    import pyarrow as pa

    try:
        reader = pa.ipc.open_file(fh if shard.local else pa.PythonFile(fh))
        return (reader.get_batch(i) for i in range(reader.num_record_batches))
    except pa.ArrowInvalid:
        fh.seek(0)
        return pa.ipc.open_stream(fh)


def _chunks_arrow(source: Source, shard: Shard, _cap) -> Iterator:
    with _open_binary(shard) as fh:
        for batch in arrow_batches(shard, fh):
            col = _text_column(batch, source, shard.uri)
            if col is not None:
                yield col


def _chunks_jsonl(source: Source, shard: Shard, cap) -> Iterator:
    """Blocks of whole lines parsed by Arrow's JSON reader; a block Arrow rejects (bad JSON, a missing
    or non-string field, bad UTF-8) is parsed line by line to name the line or keep the valid rows. A
    line that grows past read_limit(cap) is cut while it is read: its text field's start is the document
    (the rest of the line is read and dropped); without the field in that head it is refused."""
    import pyarrow as pa

    with _open_binary(shard) as raw, _decompressed(shard, raw) as fh:
        rest, first_line = b"", 1
        while True:
            block = fh.read(JSONL_BLOCK)
            data = rest + block
            if not block:
                if data.strip():
                    yield from _parse_jsonl_block(source, shard, data + b"\n", first_line)
                return
            cut = data.rfind(b"\n")
            if cut < 0:
                if len(data) > read_limit(cap):  # decompressed so far: one line, still not ended
                    text = _text_prefix(data[:read_limit(cap)], source.text_field)
                    if text is None:
                        raise _too_long(f"{shard.uri}:{first_line}", f"line {first_line} runs past {len(data):,} "
                                        f"bytes before its '{source.text_field}' text", cap)
                    rest = _skip_line(fh)  # the rest of the line is read and dropped, never held
                    first_line += 1
                    if text:
                        yield pa.array([text], type=pa.large_string())  # the sampler cuts it to its cap
                    continue
                rest = data  # one long line: keep reading
                continue
            yield from _parse_jsonl_block(source, shard, data[:cut + 1], first_line)
            first_line += data.count(b"\n", 0, cut + 1)
            rest = data[cut + 1:]


def _skip_line(fh) -> bytes:
    """Read past the end of the current line; what follows it in the last block read."""
    while True:
        block = fh.read(JSONL_BLOCK)
        if not block:
            return b""
        cut = block.find(b"\n")
        if cut >= 0:
            return block[cut + 1:]


def _text_prefix(head: bytes, field: str) -> str | None:
    """The start of `field`'s string value in the first bytes of an overlong JSON line (None when the
    field does not begin there): the document cut without the line ever being held whole."""
    import re

    m = re.search(rb'"%s"\s*:\s*"' % re.escape(field.encode()), head)
    if m is None:
        return None
    body = head[m.end():]
    end = re.search(rb'(?:^|[^\\])(?:\\\\)*"', body)  # the closing quote, if it is in the head
    if end is not None:
        body = body[:end.end() - 1]
    for drop in range(7):  # a cut inside an escape (\u00e9) or a UTF-8 character: drop its start
        try:
            return json.loads(b'"' + body[:len(body) - drop] + b'"')
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
    return None


def _parse_jsonl_block(source: Source, shard: Shard, data: bytes, first_line: int) -> Iterator:
    import pyarrow as pa
    import pyarrow.json as pj

    try:
        table = pj.read_json(pa.py_buffer(data), read_options=pj.ReadOptions(block_size=len(data) + 1),
                             parse_options=pj.ParseOptions(
                                 explicit_schema=pa.schema([(source.text_field, pa.large_string())]),
                                 unexpected_field_behavior="ignore", newlines_in_values=False))
        col = table.column(source.text_field).combine_chunks()
        if col.null_count == 0:
            col.validate(full=True)  # Arrow's JSON reader passes invalid UTF-8 through
            yield col
            return
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    texts = []
    for i, line in enumerate(data.split(b"\n")):
        if not line.strip():
            continue
        lineno = first_line + i
        try:
            row = json.loads(line)
        except UnicodeDecodeError as e:
            raise ShardError(f"{shard.uri}:{lineno}: not UTF-8 ({e.reason})") from None
        except json.JSONDecodeError:
            raise ShardError(f"{shard.uri}:{lineno}: not valid JSON") from None
        if not isinstance(row, dict) or source.text_field not in row:
            raise MixoptError(f"{shard.uri}:{lineno}: no '{source.text_field}' field", "set the source's text_field")
        if isinstance(row[source.text_field], str):
            texts.append(row[source.text_field])
    if texts:
        yield pa.array(texts, type=pa.large_string())


def _chunks_text(source: Source, shard: Shard, cap) -> Iterator:
    import pyarrow as pa

    with _open_binary(shard) as fh:
        data = fh.read(cap + 4) if cap else fh.read()  # a giant file: only the capped head is read
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        if cap and len(data) > cap:  # the cut may split a character; don't count that as a bad byte
            text = data[:cap].decode("utf-8", errors="ignore")
    yield pa.array([text], type=pa.large_string())


def _chunks_hf(source: Source, shard: Shard, _cap) -> Iterator:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import datasets

    path = shard.uri
    ds = datasets.load_from_disk(path)  # memory-mapped Arrow, read lazily
    if isinstance(ds, datasets.DatasetDict):
        if source.split is None:
            raise MixoptError(f"{path}: a DatasetDict with splits {', '.join(ds)}", "set the source's split")
        if source.split not in ds:
            raise MixoptError(f"{path}: no split '{source.split}' (splits: {', '.join(ds)})", "fix the split")
        ds = ds[source.split]
    if source.text_field not in ds.column_names:
        raise MixoptError(f"{path}: no column '{source.text_field}' (columns: {', '.join(ds.column_names)})",
                          "set the source's text_field")
    table = ds.select_columns([source.text_field]).with_format("arrow")
    for batch in table.iter(batch_size=BATCH_ROWS):
        col = _text_column(batch, source, path)
        if col is not None:
            yield col


def _chunks_hub(source: Source, shard: Shard) -> Iterator:
    import pyarrow as pa

    ds = load_hub(source, shard.uri)
    if shard.count > 1:
        ds = ds.shard(num_shards=shard.count, index=shard.index)
    names = ds.column_names
    if names is not None and source.text_field not in names:
        raise MixoptError(f"hub dataset {source.hub}: no column '{source.text_field}' (columns: "
                          f"{', '.join(names)})", "set the source's text_field")
    for batch in ds.select_columns([source.text_field]).iter(batch_size=BATCH_ROWS):
        texts = [t for t in batch[source.text_field] if isinstance(t, str)]
        if texts:
            yield pa.array(texts, type=pa.large_string())


# ---- documents as Python strings (evaluation text sources, tests) --------------------------------

def iter_documents(source: Source, path: Path | str | None = None, base_dir: str | Path = ".",
                   max_document_bytes: int | None = None) -> Iterator[str]:
    """Yield the documents of one source; empty and whitespace-only documents are skipped. `path`, when
    given, stands for the source's own path (already resolved). Reading is capped as the sampler's is
    (a text file's head, read_limit per line or row), at sample.max_document_bytes' default unless given."""
    if path is not None:
        source = source.model_copy(update={"path": str(path), "hub": None})
    cap = max_document_bytes or Sample().max_document_bytes
    for shard in list_shards(source, base_dir):
        try:
            for col in iter_chunks(source, shard, cap):
                for doc in col.to_pylist():
                    if isinstance(doc, str) and doc and not doc.isspace():
                        yield doc
        except ShardError as e:
            if source.on_error == "skip":
                continue
            raise MixoptError(str(e), SKIP_FIX) from None


def source_files(source: Source, path: Path) -> list[Path]:
    """The local files a source reads, in a stable order (evaluation fingerprints)."""
    try:
        shards = list_shards(source.model_copy(update={"path": str(path), "hub": None}))
    except MixoptError:
        return []
    out = []
    for s in shards:
        out += [Path(f) for f in walk_files(s.uri)] if s.fmt == "hf" else [Path(s.uri)]
    return out

