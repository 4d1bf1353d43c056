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
