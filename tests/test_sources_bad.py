"""Bad shards: one line naming the file and the fix, exit 2, nothing written; or, with `on_error: skip`,
the shard is skipped, and the count printed and stored in the manifest."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from conftest import small_config, write_config

ROWS = "".join(json.dumps({"text": f"line {i} of a good shard"}) + "\n" for i in range(400)).encode()


def _bad(folder, case) -> str:
    """Write one bad shard into `folder`; return its file name."""
    if case == "truncated gzip":
        data = gzip.compress(ROWS)
        (folder / "bad.jsonl.gz").write_bytes(data[: len(data) // 2])
        return "bad.jsonl.gz"
    if case == "corrupt zstd":
        data = bytearray(zstandard.ZstdCompressor().compress(ROWS))
        data[len(data) // 2:] = b"\xff" * (len(data) - len(data) // 2)
        (folder / "bad.jsonl.zst").write_bytes(bytes(data))
        return "bad.jsonl.zst"
    if case == "truncated parquet":
        pq.write_table(pa.table({"text": ["some text"] * 100}), folder / "full.parquet")
        data = (folder / "full.parquet").read_bytes()
        (folder / "full.parquet").unlink()
        (folder / "bad.parquet").write_bytes(data[: len(data) - 20])
        return "bad.parquet"
    if case == "corrupt arrow":
        with pa.OSFile(str(folder / "bad.arrow"), "wb") as f, pa.ipc.new_file(f, pa.schema([("text", pa.string())])) as w:
            w.write_table(pa.table({"text": ["some text"] * 100}))
        data = bytearray((folder / "bad.arrow").read_bytes())
        data[8:40] = b"\x00" * 32
        (folder / "bad.arrow").write_bytes(bytes(data[:-30]))
        return "bad.arrow"
    if case == "non-UTF-8 JSONL":
        (folder / "bad.jsonl").write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9 latin-1"}\n')
        return "bad.jsonl"
    if case == "FIFO":
        os.mkfifo(folder / "bad.jsonl")
        return "bad.jsonl"
    if case == "no read permission":
        (folder / "bad.jsonl").write_bytes(ROWS)
        os.chmod(folder / "bad.jsonl", 0)
        return "bad.jsonl"
    raise ValueError(case)


CASES = ["truncated gzip", "corrupt zstd", "truncated parquet", "corrupt arrow", "non-UTF-8 JSONL", "FIFO",
         "no read permission"]


def _config(corpora, tmp_path, case, on_error="fail"):
    folder = tmp_path / "shards"
    folder.mkdir()
    table = pq.read_table(corpora / "code.parquet")
    half = table.num_rows // 2
    pq.write_table(table.slice(0, half), folder / "good-0.parquet")
    pq.write_table(table.slice(half), folder / "good-1.parquet")
    name = _bad(folder, case)
    cfg = small_config(corpora, tmp_path / "ws")
    cfg["domains"][0]["sources"] = [{"path": str(folder), "on_error": on_error}]
    return write_config(tmp_path / "c.yaml", cfg), folder / name


def run(*args):
    return subprocess.run([sys.executable, "-m", "mixopt.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("case", CASES)
def test_a_bad_shard_is_one_line_naming_it(corpora, tmp_path, case):
    if case == "no read permission" and os.geteuid() == 0:
        pytest.skip("root reads any file")
    path, bad = _config(corpora, tmp_path, case)
    r = run("sample", path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(bad) in lines[0], r.stderr
    assert "on_error: skip" in lines[0]
    assert not (tmp_path / "ws" / "sample").exists() and not list((tmp_path / "ws").glob(".sample*"))


def test_skipped_shards_are_counted_printed_and_stored(corpora, tmp_path):
    path, bad = _config(corpora, tmp_path, "truncated gzip", on_error="skip")
    _bad(bad.parent, "non-UTF-8 JSONL")
    os.mkfifo(bad.parent / "pipe.parquet")
    r = run("sample", path)
    assert r.returncode == 0, r.stderr
    assert "code: skipped 3 unreadable shard(s)" in r.stdout
    manifest = json.loads((tmp_path / "ws" / "sample" / "manifest.json").read_text())
    assert manifest["domains"]["code"]["skipped_shards"] == 3
    clean = run("sample", write_config(tmp_path / "clean.yaml", small_config(corpora, tmp_path / "ws2")))
    assert clean.returncode == 0, clean.stderr
    ref = json.loads((tmp_path / "ws2" / "sample" / "manifest.json").read_text())
    assert manifest["domains"]["code"]["documents"] == ref["domains"]["code"]["documents"]  # good shards only


def test_empty_glob_is_one_line(corpora, tmp_path):
    cfg = small_config(corpora, tmp_path / "ws")
    cfg["domains"][0]["sources"] = [{"path": str(tmp_path / "shards" / "*.parquet")}]
    r = run("sample", write_config(tmp_path / "c.yaml", cfg))
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: no file matches {tmp_path}/shards/*.parquet; fix the glob in the domain's " \
                               "source path"
    assert not (tmp_path / "ws").exists()


def test_a_giant_document_is_cut(corpora, tmp_path):
    """A 50 MB single-line document: cut to sample.max_document_bytes, counted, and RSS stays small."""
    folder = tmp_path / "giant"
    folder.mkdir()
    (folder / "big.jsonl").write_text(json.dumps({"text": "x" * 50_000_000}) + "\n"
                                      + "".join(json.dumps({"text": f"small {i} " * 50}) + "\n" for i in range(3000)))
    cfg = small_config(corpora, tmp_path / "ws")
    cfg["domains"][0]["sources"] = [{"path": str(folder)}]
    # The default cap (1 MB): the cut document is one 1 MB word, which BPE training alone would take
    # ~15 min over (quadratic); the tokenizer trains on it in pieces.
    code = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
            "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); print(r.stdout, r.stderr)")
    r = subprocess.run([sys.executable, "-c", code, sys.executable, "-m", "mixopt.cli", "sample",
                        write_config(tmp_path / "c.yaml", cfg)], capture_output=True, text=True, timeout=300)
    rc, rss_kb = map(int, r.stdout.split("\n")[0].split())
    assert rc == 0, r.stdout
    assert "code: 1 document(s) cut to sample.max_document_bytes=1000000" in r.stdout
    manifest = json.loads((tmp_path / "ws" / "sample" / "manifest.json").read_text())
    assert manifest["domains"]["code"]["truncated_documents"] == 1
    assert rss_kb < 1_500_000, rss_kb  # was 9.9 GB with the whole document in the tokenizer


@pytest.mark.parametrize("on_error", ["fail", "skip"])
def test_reading_threads_report_the_first_bad_shard_and_skip_as_one_thread_does(tmp_path, on_error):
    """Shards read by several threads at once: the error names the first bad shard in reading order
    (not the first to fail), and skipped shards leave the same pool as one thread reading them in turn."""
    from mixopt.config.source import Source
    from mixopt.data.scan import scan_units, seed_key
    from mixopt.data.sources import list_shards
    from mixopt.errors import MixoptError

    folder = tmp_path / "shards"
    folder.mkdir()
    for i in range(6):
        pq.write_table(pa.table({"text": [f"document {j} of shard {i}" * (j % 7 + 1) for j in range(300)]}),
                       folder / f"s{i}.parquet")
    data = (folder / "s1.parquet").read_bytes()
    (folder / "s1.parquet").write_bytes(data[:len(data) - 20])  # truncated
    (folder / "s4.parquet").write_bytes(b"not parquet at all" * 50)
    source = Source(path=str(folder), on_error=on_error)
    units = [(source, s) for s in list_shards(source, tmp_path)]
    got = []
    for threads in (1, 3):
        if on_error == "fail":
            with pytest.raises(MixoptError, match="s1.parquet") as e:
                scan_units(units, seed_key(0, "d"), 4000, 1000, threads=threads)
            got.append(str(e.value))
        else:
            pool, skipped, read = scan_units(units, seed_key(0, "d"), 4000, 1000, threads=threads)
            got.append((sorted(pool.docs.items()), pool.read, pool.read_bytes, sorted(skipped), sorted(read)))
    assert got[0] == got[1]
    if on_error == "skip":
        assert len(got[0][3]) == 2 and len(got[0][4]) == 4 and got[0][1] == 4 * 300


def test_a_skipped_file_is_skipped_whole_whatever_the_cores(tmp_path):
    """A domain of few files is read in parts of row groups, as many as the reading lanes. With
    `on_error: skip`, a file with one bad row group is skipped whole: not its bad part alone, which
    kept the rest of it and made the sample depend on the cores and workers."""
    from mixopt.backends.local_executor import LocalExecutor
    from mixopt.config.load import load_experiment
    from mixopt.data.scan import draw_candidates

    good = [f"good document {i} " + "word " * (i % 40) for i in range(300)]
    pq.write_table(pa.table({"text": good}), tmp_path / "good.parquet", row_group_size=50)
    offsets = pa.array([0, 4, 9], type=pa.int32()).buffers()[1]
    latin1 = pa.Array.from_buffers(pa.string(), 2, [None, offsets, pa.py_buffer(b"fine" + b"caf\xe9!")])
    with pq.ParquetWriter(tmp_path / "bad.parquet", pa.schema([("text", pa.string())])) as w:
        for i in range(6):
            w.write_table(pa.table({"text": [f"bad file's document {i}.{j} " * 5 for j in range(50)]}))
        w.write_table(pa.table({"text": latin1}))
    cfg = small_config(tmp_path, tmp_path / "ws")
    cfg["domains"][0]["sources"] = [{"path": str(tmp_path / "bad.parquet"), "on_error": "skip"},
                                    {"path": str(tmp_path / "good.parquet")}]
    exp = load_experiment(write_config(tmp_path / "c.yaml", cfg))
    drawn = []
    for threads in (1, 2, 4):
        ex = LocalExecutor(1)
        ex.threads = threads
        c = draw_candidates(exp, exp.domains[0], 10 ** 9, ex)
        drawn.append((c.documents, sorted(c.docs), len(c.skipped)))
    assert drawn[0] == drawn[1] == drawn[2]
    assert drawn[0][0] == len(good) and drawn[0][2] == 1  # the good file's documents only; one file skipped
