"""Find and stream a source's documents: local files, folders, globs, lists, any fsspec URL (s3://,
gs://, hf://, https://, memory://, file://) and Hugging Face Hub datasets.

A source expands to shards (one file each, or one shard of a Hub dataset), in a stable order. Each
shard is read in Arrow string chunks, so a 10 GB domain never sits in memory and the sampler hashes
bytes without building a Python string per document. Only regular files are read. A shard that
cannot be read (truncated, corrupt, unreadable, not UTF-8) is one MixoptError naming it, or, with
`on_error: skip` on the source, a ShardError the sampler counts and skips.
"""

from __future__ import annotations

import glob as globlib
import gzip
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mixopt.config.schema import Source
from mixopt.errors import MixoptError

TEXT_EXTENSIONS = (".txt", ".md", ".rst", ".py", ".c", ".h", ".cc", ".cpp", ".hpp", ".java", ".js",
                   ".ts", ".go", ".rs", ".rb", ".sh", ".pl", ".pm", ".pod", ".tex", ".html", ".json",
                   ".yaml", ".yml", ".toml", ".sql", ".scala", ".kt", ".swift", ".lua", ".r", ".jl")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".json.zst",
                  ".ndjson.gz", ".ndjson.zst")
ARROW_SUFFIXES = (".arrow", ".feather", ".ipc")
# In a folder read with format auto, these mark data shards (a plain .json stays a text document).
DATA_SUFFIXES = (".parquet", *ARROW_SUFFIXES, ".jsonl", ".ndjson", ".jsonl.gz", ".jsonl.zst", ".ndjson.gz",
                 ".ndjson.zst")
BATCH_ROWS = 1024  # Parquet/Arrow rows read at a time
JSONL_BLOCK = 8 << 20  # JSONL bytes parsed at a time
SKIP_FIX = "replace or remove the file, or set `on_error: skip` on the source to skip bad shards"


class ShardError(Exception):
    """One shard could not be read; `str()` names it and says why."""


@dataclass(frozen=True)
class Shard:
    """One unit of reading: a file (local path or URL) or one shard of a Hub dataset."""

    uri: str  # local absolute path, URL, or hub name
    fmt: str  # parquet | jsonl | arrow | text | hf | hub
    local: bool = True
    index: int = 0  # hub: this shard's index among `count`
    count: int = 1
    size: int | None = field(default=None, compare=False)  # bytes on disk / in the store, when known
    opts: dict = field(default_factory=dict, compare=False, hash=False)  # storage_options


def _is_url(p: str) -> bool:
    return "://" in p and not p.startswith("file://")


def _has_magic(p: str) -> bool:
    return any(c in p for c in "*?[")


def detect_format(path: Path | str) -> str:
    name = str(path).lower().rstrip("/")
    if isinstance(path, Path) and path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists() \
                or (path / "state.json").exists():
            return "hf"
        return "text"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(ARROW_SUFFIXES):
        return "arrow"
    return "text"


def source_paths(source: Source) -> list[str]:
    return [] if source.path is None else [source.path] if isinstance(source.path, str) else list(source.path)


def describe(source: Source) -> str:
    return source.hub if source.hub else ", ".join(source_paths(source))


def resolve_path(p: str, base_dir: str | Path) -> str:
    """A config path as a local absolute path (relative ones against the config's folder), or the URL."""
    if p.startswith("file://"):
        p = p[len("file://"):]
    if _is_url(p):
        return p
    q = Path(p).expanduser()
    return str(q if q.is_absolute() else (Path(base_dir) / q).absolute())


def list_shards(source: Source, base_dir: str | Path = ".") -> list[Shard]:
    """The shards a source reads, in a stable order; every path must match something."""
    if source.hub:
        return _hub_shards(source, base_dir)
    shards: list[Shard] = []
    for p in source_paths(source):
        where = resolve_path(p, base_dir)
        found = _remote_shards(source, where) if _is_url(where) else _local_shards(source, where)
        if found is None or not found and _has_magic(where):
            if _has_magic(where):
                raise MixoptError(f"no file matches {where}", "fix the glob in the domain's source path")
            raise MixoptError(f"corpus not found: {where}", "check the domain's source path in the config")
        shards += found
    seen, out = set(), []
    for s in shards:  # a file named twice (overlapping globs) is read once
        if s.uri not in seen:
            seen.add(s.uri)
            out.append(s)
    return out


def _folder_format(source: Source, files: list[str]) -> str:
    if source.format != "auto":
        return source.format
    return "data" if any(f.lower().endswith(DATA_SUFFIXES) for f in files) else "text"


def _local_shards(source: Source, where: str) -> list[Shard] | None:
    if _has_magic(where):
        out = []
        for m in sorted(globlib.glob(where, recursive=True)):
            if os.path.isdir(m):
                files = _walk(m)
                kind = _folder_format(source, files)
                out += [_local_shard(source, f) for f in files if _wanted(source, f, kind)]
            else:
                out.append(_local_shard(source, m))
        return out
    if not os.path.lexists(where):
        return None
    if os.path.isdir(where):
        if detect_format(Path(where)) == "hf" and source.format in ("auto", "hf"):
            return [Shard(where, "hf")]
        files = _walk(where)
        kind = _folder_format(source, files)
        return [_local_shard(source, f) for f in files if _wanted(source, f, kind)]
    return [_local_shard(source, where)]


def _walk(root: str) -> list[str]:
    out = []
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if not x.startswith("."))
        out += [os.path.join(d, f) for f in files if not f.startswith(".")]
    return sorted(out)


def _wanted(source: Source, f: str, kind: str) -> bool:
    """Whether a file found in a folder is one of the source's shards."""
    name = f.lower()
    if kind == "data" and source.format == "auto":
        return name.endswith(DATA_SUFFIXES)
    if source.format == "parquet":
        return name.endswith(".parquet")
    if source.format == "jsonl":
        return name.endswith(JSONL_SUFFIXES)
    if source.format == "arrow":
        return name.endswith(ARROW_SUFFIXES)
    exts = tuple(e.lower() for e in (source.extensions or TEXT_EXTENSIONS))
    return name.endswith(exts)


def _local_shard(source: Source, f: str) -> Shard:
    fmt = source.format if source.format not in ("auto", "hf") else detect_format(f)
    try:
        size = os.stat(f).st_size
    except OSError:
        size = None
    return Shard(f, fmt, size=size)


def _fs(url: str, opts: dict):
    import fsspec

    try:
        return fsspec.core.url_to_fs(url, **opts)
    except (ImportError, ValueError) as e:
        raise MixoptError(f"{url}: {str(e).splitlines()[0]}",
                          "install the filesystem's package (e.g. s3fs, gcsfs) or fix the URL") from None


# Credential failures by exception type (botocore's, google-auth's, huggingface_hub's), not by message.
_CREDENTIAL_ERRORS = {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError",
                      "DefaultCredentialsError", "RefreshError", "GatedRepoError"}


def _remote_error(url: str, e: BaseException) -> MixoptError:
    text = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
    names = {c.__name__ for c in type(e).__mro__}
    if isinstance(e, PermissionError) or names & _CREDENTIAL_ERRORS:
        return MixoptError(f"{url}: access denied ({text})",
                           "give credentials in the environment (e.g. AWS_ACCESS_KEY_ID) or the source's "
                           "storage_options")
    return MixoptError(f"{url}: cannot be reached ({text})",
                       "check the URL, the network and the source's storage_options")


def _remote_shards(source: Source, url: str) -> list[Shard] | None:
    fs, root = _fs(url, dict(source.storage_options))
    proto = url.split("://", 1)[0]
    try:
        fs.invalidate_cache()  # fsspec keeps listings per filesystem instance: list the store as it is now
        if _has_magic(root):
            infos = fs.glob(root, detail=True)
        elif fs.isdir(root):
            infos = fs.find(root, detail=True)
        elif fs.exists(root):
            infos = {root: fs.info(root)}
        else:
            return None
    except FileNotFoundError:
        return None
    except Exception as e:  # network, credentials: the library's own error types vary by backend
        raise _remote_error(url, e) from None
    out = []
    kind = _folder_format(source, list(infos))
    for name, info in sorted(infos.items()):
        if info.get("type") == "directory":
            continue
        if not (_has_magic(root) or name == root) and not _wanted(source, name, kind):
            continue
        if info.get("type") not in ("file", None):
            if source.on_error == "skip":
                continue
            raise MixoptError(f"{name}: not a regular file", SKIP_FIX)
        uri = name if "://" in name else f"{proto}://{name}"
        fmt = source.format if source.format not in ("auto", "hf") else detect_format(name)
        out.append(Shard(uri, fmt, local=False, size=info.get("size"), opts=dict(source.storage_options)))
    return out


def _hub_target(source: Source, base_dir) -> str:
    local = Path(source.hub).expanduser()
    local = local if local.is_absolute() else Path(base_dir) / local
    return str(local.absolute()) if local.is_dir() else source.hub


def _load_hub(source: Source, target: str):
    import datasets
    import huggingface_hub

    datasets.logging.set_verbosity_error()  # e.g. "Repo card metadata block was not found", once per shard
    huggingface_hub.utils.logging.set_verbosity_error()
    try:
        ds = datasets.load_dataset(target, source.config, split=source.split or "train", streaming=True,
                                   **({"storage_options": dict(source.storage_options)}
                                      if source.storage_options else {}))
    except Exception as e:  # not found, offline, no such config or split
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MixoptError(f"hub dataset {source.hub}: {msg}",
                          "check `hub`, `config` and `split`, the network, and HF_TOKEN for private datasets") from None
    return ds


def _hub_shards(source: Source, base_dir) -> list[Shard]:
    target = _hub_target(source, base_dir)
    ds = _load_hub(source, target)
    n = max(1, int(getattr(ds, "num_shards", None) or getattr(ds, "n_shards", 1)))
    return [Shard(target, "hub", local=False, index=i, count=n) for i in range(n)]


# ---- fingerprints: a source's identity by content ------------------------------------------------

def source_fingerprint(source: Source, base_dir, hashes) -> list:
    """How a source is read and the sorted identities of what it reads (sha256 for local files, the
    store's ETag/checksum and size for remote ones, the Hub's commit for Hub datasets). Not the path:
    a moved or re-spelled corpus is the same corpus, and the sample does not depend on file names."""
    how: dict = {"format": source.format, "text_field": source.text_field, "split": source.split}
    try:
        shards = list_shards(source, base_dir)
    except MixoptError:
        shards = None
    if shards and source.format == "auto" and len({s.fmt for s in shards}) == 1 and not source.hub:
        how["format"] = shards[0].fmt
    if how["format"] == "text":
        how["extensions"] = sorted(e.lower() for e in source.extensions or TEXT_EXTENSIONS)
    if source.hub:
        how |= {"hub": True, "config": source.config}
    if source.on_error != "fail":
        how["on_error"] = source.on_error
    if shards is None:
        return [how, "missing"]
    ids = []
    for s in shards:
        if s.fmt == "hf":
            ids += [hashes.sha256(Path(f)) for f in _walk(s.uri)]
        elif s.fmt == "hub":
            if s.index == 0:
                ids.append(_hub_identity(source, s.uri, hashes))
        elif s.local:
            ids.append(_local_identity(s.uri, hashes, source))
        else:
            ids.append(_remote_identity(s))
    return [how, sorted(ids)]


def _local_identity(f: str, hashes, source: Source) -> str:
    try:
        st = os.stat(f)
        if not stat.S_ISREG(st.st_mode):
            return f"not-a-file:{f}"
        return hashes.sha256(Path(f))
    except OSError as e:
        if source.on_error == "skip":
            return f"unreadable:{f}"
        raise MixoptError(f"{f}: cannot be read ({e.strerror})", SKIP_FIX) from None


def _remote_identity(s: Shard) -> str:
    fs, path = _fs(s.uri, s.opts)
    try:
        info = fs.info(path)
    except Exception as e:
        raise _remote_error(s.uri, e) from None
    for k in ("ETag", "etag", "checksum", "sha256", "md5", "crc32c", "md5Hash"):
        if info.get(k):
            return f"{k}:{str(info[k]).strip(chr(34))}:{info.get('size')}"
    import hashlib

    h = hashlib.sha256()  # no checksum from the store (memory://, some HTTP servers): hash the bytes
    with fs.open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _hub_identity(source: Source, target: str, hashes) -> str:
    if os.path.isdir(target):
        from mixopt.core.keys import content_hash

        return content_hash(sorted(hashes.sha256(Path(f)) for f in _walk(target)))
    try:
        from huggingface_hub import HfApi

        return "hub:" + HfApi().dataset_info(source.hub).sha
    except Exception:  # offline: the name stands for the dataset
        return f"hub-name:{source.hub}"


# ---- reading --------------------------------------------------------------------------------------

def iter_chunks(source: Source, shard: Shard, max_document_bytes: int | None = None) -> Iterator:
    """Arrow string arrays with the shard's documents (nulls and non-strings dropped). Any failure
    to read the shard raises ShardError naming it. A text file is read up to max_document_bytes (+4)."""
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
        reader = {"parquet": _chunks_parquet, "jsonl": _chunks_jsonl, "text": _chunks_text,
                  "hf": _chunks_hf, "arrow": _chunks_arrow}[shard.fmt]
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
    fs, path = _fs(shard.uri, shard.opts)
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
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        return None
    try:
        col.validate(full=True)  # UTF-8: Parquet and Arrow files need not hold valid text
    except pa.ArrowInvalid as e:
        raise ShardError(f"{where}: not valid UTF-8 text in column '{source.text_field}' ({e})") from None
    return col


def _chunks_parquet(source: Source, shard: Shard, _cap) -> Iterator:
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
        for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=[source.text_field], row_groups=groups):
            col = _text_column(batch, source, shard.uri)
            if col is not None:
                yield col


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


def _chunks_arrow(source: Source, shard: Shard, _cap) -> Iterator:
    import pyarrow as pa

    with _open_binary(shard) as fh:
        try:
            reader = pa.ipc.open_file(fh if shard.local else pa.PythonFile(fh))
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        except pa.ArrowInvalid:
            fh.seek(0)
            batches = pa.ipc.open_stream(fh)
        for batch in batches:
            col = _text_column(batch, source, shard.uri)
            if col is not None:
                yield col


def _chunks_jsonl(source: Source, shard: Shard, _cap) -> Iterator:
    """Blocks of whole lines parsed by Arrow's JSON reader; a block Arrow rejects (bad JSON, a missing
    or non-string field, bad UTF-8) is parsed line by line to name the line or keep the valid rows."""
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
                rest = data  # one long line: keep reading (the sampler caps the document)
                continue
            yield from _parse_jsonl_block(source, shard, data[:cut + 1], first_line)
            first_line += data.count(b"\n", 0, cut + 1)
            rest = data[cut + 1:]


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

    ds = _load_hub(source, shard.uri)
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

def iter_documents(source: Source, path: Path | str | None = None, base_dir: str | Path = ".") -> Iterator[str]:
    """Yield the documents of one source; empty and whitespace-only documents are skipped. `path`, when
    given, stands for the source's own path (already resolved)."""
    if path is not None:
        source = source.model_copy(update={"path": str(path), "hub": None})
    for shard in list_shards(source, base_dir):
        try:
            for col in iter_chunks(source, shard):
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
        out += [Path(f) for f in _walk(s.uri)] if s.fmt == "hf" else [Path(s.uri)]
    return out

