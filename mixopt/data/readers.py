"""Stream documents from local corpora: Parquet, JSONL (.gz/.zst), text folders, saved HF datasets.

Every reader yields one document (a str) at a time, so a 10 GB domain never sits in memory.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

from mixopt.config.schema import Source
from mixopt.errors import MixoptError

TEXT_EXTENSIONS = (".txt", ".md", ".rst", ".py", ".c", ".h", ".cc", ".cpp", ".hpp", ".java", ".js",
                   ".ts", ".go", ".rs", ".rb", ".sh", ".pl", ".pm", ".pod", ".tex", ".html", ".json",
                   ".yaml", ".yml", ".toml", ".sql", ".scala", ".kt", ".swift", ".lua", ".r", ".jl")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".json.zst",
                  ".ndjson.gz", ".ndjson.zst")
BATCH_ROWS = 1024  # Parquet/Arrow rows read at a time


def detect_format(path: Path) -> str:
    name = path.name.lower()
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists() \
                or (path / "state.json").exists():
            return "hf"
        return "text"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    return "text"


def iter_documents(source: Source, path: Path) -> Iterator[str]:
    """Yield the documents of one source; empty and whitespace-only documents are skipped."""
    if not path.exists():
        raise MixoptError(f"corpus not found: {path}", "check the domain's source path in the config")
    fmt = source.format if source.format != "auto" else detect_format(path)
    reader = {"parquet": _iter_parquet, "jsonl": _iter_jsonl, "text": _iter_text, "hf": _iter_hf}[fmt]
    for doc in reader(source, path):
        if doc and not doc.isspace():
            yield doc


def source_files(source: Source, path: Path) -> list[Path]:
    """The files a source reads, in a stable order (used for fingerprints)."""
    if path.is_file():
        return [path]
    if not path.exists():
        return []
    fmt = source.format if source.format != "auto" else detect_format(path)
    if fmt == "hf":
        return sorted(p for p in path.rglob("*") if p.is_file())
    if fmt == "parquet":
        return sorted(path.rglob("*.parquet"))
    if fmt == "jsonl":
        return sorted(p for p in path.rglob("*") if p.name.lower().endswith(JSONL_SUFFIXES))
    exts = tuple(e.lower() for e in (source.extensions or TEXT_EXTENSIONS))
    return sorted(p for p in path.rglob("*") if p.is_file() and p.name.lower().endswith(exts))


def source_fingerprint(source: Source, path: Path, hashes) -> list:
    """A source's identity by content: how it is read (format as detected, field, split) and the sorted
    sha256 of the files it reads. Not the path: a moved or re-spelled corpus is the same corpus, and
    the sample does not depend on file names or order (bottom-k by content hash)."""
    fmt = source.format if source.format != "auto" else (detect_format(path) if path.exists() else "missing")
    how = {"format": fmt, "text_field": source.text_field, "split": source.split}
    if fmt == "text":
        how["extensions"] = sorted(e.lower() for e in source.extensions or TEXT_EXTENSIONS)
    return [how, sorted(hashes.sha256(f) for f in source_files(source, path))]


def _iter_parquet(source: Source, path: Path) -> Iterator[str]:
    import pyarrow.parquet as pq

    for f in source_files(source, path):
        pf = pq.ParquetFile(f)
        if source.text_field not in pf.schema_arrow.names:
            raise MixoptError(f"{f}: no column '{source.text_field}' (columns: {', '.join(pf.schema_arrow.names)})",
                              "set the source's text_field")
        for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=[source.text_field]):
            yield from (t for t in batch.column(0).to_pylist() if isinstance(t, str))


def _open_text(f: Path) -> io.TextIOBase:
    name = f.name.lower()
    if name.endswith(".gz"):
        return gzip.open(f, "rt", encoding="utf-8")
    if name.endswith(".zst"):
        import zstandard

        raw = open(f, "rb")
        return io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True), encoding="utf-8")
    return open(f, encoding="utf-8")


def _iter_jsonl(source: Source, path: Path) -> Iterator[str]:
    for f in source_files(source, path):
        with _open_text(f) as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    raise MixoptError(f"{f}:{lineno}: not valid JSON", "write one JSON object per line") from None
                if not isinstance(row, dict) or source.text_field not in row:
                    raise MixoptError(f"{f}:{lineno}: no '{source.text_field}' field",
                                      "set the source's text_field") from None
                text = row[source.text_field]
                if isinstance(text, str):
                    yield text


def _iter_text(source: Source, path: Path) -> Iterator[str]:
    for f in source_files(source, path):
        try:
            yield f.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            yield f.read_bytes().decode("utf-8", errors="replace")


def _iter_hf(source: Source, path: Path) -> Iterator[str]:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import datasets

    ds = datasets.load_from_disk(str(path))  # memory-mapped Arrow, read lazily
    if isinstance(ds, datasets.DatasetDict):
        if source.split is None:
            raise MixoptError(f"{path}: a DatasetDict with splits {', '.join(ds)}",
                              "set the source's split")
        if source.split not in ds:
            raise MixoptError(f"{path}: no split '{source.split}' (splits: {', '.join(ds)})", "fix the split")
        ds = ds[source.split]
    if source.text_field not in ds.column_names:
        raise MixoptError(f"{path}: no column '{source.text_field}' (columns: {', '.join(ds.column_names)})",
                          "set the source's text_field")
    for batch in ds.select_columns([source.text_field]).iter(batch_size=BATCH_ROWS):
        yield from (t for t in batch[source.text_field] if isinstance(t, str))
