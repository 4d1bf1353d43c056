import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from mixopt.config.schema import Source
from mixopt.data.readers import iter_documents
from mixopt.data.sources import detect_format
from mixopt.errors import MixoptError

DOCS = ["first document", "second one\nwith two lines", "  ", "third"]
EXPECTED = ["first document", "second one\nwith two lines", "third"]  # blank documents are skipped


def test_parquet_jsonl_gz_zst_text_and_hf(tmp_path):
    pq.write_table(pa.table({"text": DOCS, "id": [1, 2, 3, 4]}), tmp_path / "a.parquet")
    rows = "".join(json.dumps({"text": d}) + "\n" for d in DOCS)
    (tmp_path / "b.jsonl").write_text(rows)
    with gzip.open(tmp_path / "c.jsonl.gz", "wt") as f:
        f.write(rows)
    (tmp_path / "d.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(rows.encode()))
    folder = tmp_path / "txt"
    folder.mkdir()
    for i, d in enumerate(DOCS):
        (folder / f"{i}.txt").write_text(d)
    (folder / "skip.bin").write_bytes(b"\x00\x01")
    import datasets

    datasets.Dataset.from_dict({"text": DOCS}).save_to_disk(str(tmp_path / "hf"))
    for name in ["a.parquet", "b.jsonl", "c.jsonl.gz", "d.jsonl.zst", "txt", "hf"]:
        path = tmp_path / name
        assert list(iter_documents(Source(path=str(path)), path)) == EXPECTED, name
    assert detect_format(tmp_path / "hf") == "hf"


def test_other_text_field_and_errors(tmp_path):
    pq.write_table(pa.table({"content": DOCS}), tmp_path / "a.parquet")
    p = tmp_path / "a.parquet"
    assert list(iter_documents(Source(path=str(p), text_field="content"), p)) == EXPECTED
    with pytest.raises(MixoptError, match="no column 'text'"):
        list(iter_documents(Source(path=str(p)), p))
    with pytest.raises(MixoptError, match="corpus not found"):
        list(iter_documents(Source(path="nope"), tmp_path / "nope"))
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(MixoptError, match="bad.jsonl:2: not valid JSON"):
        list(iter_documents(Source(path="x"), tmp_path / "bad.jsonl"))


def _views_and_arrow(source, path, cap=None):
    """The documents of a Parquet file as the sampler reads them (views: polars where it can) and as
    Arrow's reader gives them."""
    from mixopt.data.readers import iter_chunks
    from mixopt.data.sources import list_shards

    out = []
    for views in (True, False):
        docs, types = [], set()
        for shard in list_shards(source):
            for col in iter_chunks(source, shard, cap, views=views):
                types.add(str(col.type))
                docs += col.to_pylist()
        out.append((docs, types))
    return out


def test_parquet_read_as_views_gives_the_same_documents(tmp_path, monkeypatch):
    """A local Parquet file read as string views (polars) yields Arrow's documents, nulls included, in
    runs of row groups up to POLARS_RUN_BYTES; a row group over it is streamed by Arrow; a file polars
    cannot read (not UTF-8) fails with Arrow's one line; a column name polars takes for a pattern is
    read by Arrow."""
    from mixopt.data import parquet_views
    from mixopt.data.sources import ShardError

    docs = [None if i % 11 == 0 else f"doc {i} " + "word " * (300 * (i // 200 % 4)) for i in range(3000)]
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": docs, "n": range(3000)}), path, row_group_size=200)
    meta = pq.ParquetFile(path).metadata
    sizes = [meta.row_group(g).column(0).total_uncompressed_size for g in range(meta.num_row_groups)]
    limit = max(sizes) - 1  # the largest row groups are over it, the smaller ones go two or three together
    monkeypatch.setattr(parquet_views, "POLARS_RUN_BYTES", limit)
    runs = parquet_views.runs(meta, "text", None)
    assert [g for _, _, run in runs for g in run] == list(range(meta.num_row_groups))
    for first, count, run in runs:
        assert first == 200 * run[0] and run == list(range(run[0], run[-1] + 1))
        assert (count == 0 and len(run) == 1 and sizes[run[0]] > limit) or \
            (count == 200 * len(run) and sum(sizes[g] for g in run) <= limit)
    assert {0, 400} <= {count for _, count, _ in runs}  # Arrow streams some, polars reads several at once
    (views, vtypes), (arrow, atypes) = _views_and_arrow(Source(path=str(path)), path)
    assert views == arrow == docs and "string_view" in vtypes and "string_view" not in atypes
    monkeypatch.setattr(parquet_views, "POLARS_RUN_BYTES", 64 << 20)
    assert [(c, len(g)) for _, c, g in parquet_views.runs(meta, "text", [1, 2, 3, 7])] == [(600, 3), (200, 1)]
    (views, _), _ = _views_and_arrow(Source(path=str(path)), path)
    assert views == docs
    # Where polars would not pay, Arrow reads: many runs (every n-th row group), or small row groups.
    monkeypatch.setattr(parquet_views, "POLARS_MAX_RUNS", 4)
    assert parquet_views.runs(meta, "text", list(range(0, 15, 2))) == [] and parquet_views.runs(meta, "text", None)
    monkeypatch.setattr(parquet_views, "POLARS_MIN_GROUP_BYTES", 10 ** 9)
    assert parquet_views.runs(meta, "text", None) == []
    (views, vtypes), _ = _views_and_arrow(Source(path=str(path)), path)
    assert views == docs and "string_view" not in vtypes
    monkeypatch.undo()

    bad = tmp_path / "bad.parquet"  # a UTF-8 column holding Latin-1 bytes
    offsets = pa.array([0, 4, 9], type=pa.int32()).buffers()[1]
    col = pa.Array.from_buffers(pa.string(), 2, [None, offsets, pa.py_buffer(b"fine" + b"caf\xe9!")])
    pq.write_table(pa.table({"text": col}), bad)
    for views in (True, False):
        with pytest.raises(ShardError, match="not valid UTF-8 text in column 'text'"):
            from mixopt.data.readers import iter_chunks
            from mixopt.data.sources import list_shards

            [c for s in list_shards(Source(path=str(bad))) for c in iter_chunks(Source(path=str(bad)), s, views=views)]

    import polars

    def panics(*args, **kw):  # a Rust panic inside polars is a BaseException, not an Exception
        raise polars.exceptions.PanicException("a panic in the decoder")

    with monkeypatch.context() as m:
        m.setattr(polars, "scan_parquet", panics)
        (views, vtypes), _ = _views_and_arrow(Source(path=str(path)), path)
        assert views == docs and "string_view" not in vtypes  # Arrow's reader read it instead

    categorical = tmp_path / "categorical.parquet"  # stored as an Arrow dictionary of strings
    pq.write_table(pa.table({"text": pa.array(["one text", "another", "one text"]).dictionary_encode()}), categorical)
    for docs, _ in _views_and_arrow(Source(path=str(categorical)), categorical):
        assert docs == ["one text", "another", "one text"]

    odd = tmp_path / "odd.parquet"
    pq.write_table(pa.table({"^t.*$": ["a pattern-like name"], "text": ["not this one"]}), odd)
    (views, vtypes), _ = _views_and_arrow(Source(path=str(odd), text_field="^t.*$"), odd)
    assert views == ["a pattern-like name"] and vtypes == {"string"}


def test_text_stored_as_bytes_views_or_json_is_read_and_other_types_are_one_line(tmp_path):
    """Parquet written without the UTF8 annotation (Hive, Spark: bytes), string views and Arrow's json
    type are text; they were dropped without a word (a domain's prior then counted a third of its
    files). A column of numbers is one line naming its type, not 'no documents'."""
    docs = ["first text", "second one", "caf\\u00e9 au lait"]
    tables = {"bytes": pa.table({"text": pa.array([d.encode() for d in docs], type=pa.binary())}),
              "large-bytes": pa.table({"text": pa.array([d.encode() for d in docs], type=pa.large_binary())}),
              "views": pa.table({"text": pa.array(docs, type=pa.string_view())})}
    if hasattr(pa, "json_"):
        tables["json"] = pa.table({"text": pa.array(docs).cast(pa.json_())})
    for name, table in tables.items():
        pq.write_table(table, tmp_path / f"{name}.parquet")
        path = tmp_path / f"{name}.parquet"
        for docs_read, _ in _views_and_arrow(Source(path=str(path)), path):
            assert docs_read == docs, name
    bad = tmp_path / "latin1.parquet"
    pq.write_table(pa.table({"text": pa.array([b"fine", b"caf\xe9"], type=pa.binary())}), bad)
    with pytest.raises(MixoptError, match="not valid UTF-8 text in column 'text'"):
        list(iter_documents(Source(path=str(bad)), bad))
    pq.write_table(pa.table({"text": [1, 2, 3]}), tmp_path / "numbers.parquet")
    with pytest.raises(MixoptError, match="column 'text' holds int64 values, not text"):
        list(iter_documents(Source(path=str(tmp_path / "numbers.parquet")), tmp_path / "numbers.parquet"))


def test_a_parquet_file_replaced_while_polars_reads_it_is_refused(tmp_path, monkeypatch):
    """Polars opens the file by its path for each run of row groups, at row offsets from the footer
    read first: a file replaced meanwhile gave rows of the new file (or a mix) without a word."""
    import polars

    from mixopt.data.readers import iter_chunks
    from mixopt.data.sources import ShardError, list_shards

    path = tmp_path / "a.parquet"
    big = [f"old {i} " + "word " * 400 for i in range(400)]  # two row groups over 256 kB: polars, a run each
    pq.write_table(pa.table({"text": big}), path, row_group_size=200)
    monkeypatch.setattr("mixopt.data.parquet_views.POLARS_RUN_BYTES", 500_000)
    real = polars.scan_parquet

    def replace_then_scan(*args, **kw):  # another writer replaces the file after the footer was read
        if not (tmp_path / "new.parquet").exists():
            pq.write_table(pa.table({"text": [f"new {i} " + "word " * 400 for i in range(400)]}), tmp_path / "new.parquet",
                           row_group_size=200)
            (tmp_path / "new.parquet").replace(path)
            (tmp_path / "new.parquet").touch()
        return real(*args, **kw)

    monkeypatch.setattr(polars, "scan_parquet", replace_then_scan)
    source = Source(path=str(path))
    with pytest.raises(ShardError, match="replaced or changed while being read"):
        [c for s in list_shards(source) for c in iter_chunks(source, s, views=True)]
