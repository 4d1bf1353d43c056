"""Benchmark: `mixopt sample` read throughput and memory vs polars' raw scan of the same files.

Builds corpora of real text (this Python's standard library sources, each document made distinct by a
header line) as Parquet shards and as JSONL.zst shards, then, each in a fresh process:
  - polars' raw scan: the total UTF-8 length of the text column (the reference: read + decompress);
  - `mixopt sample` of a config whose first domain is that corpus (a tiny second domain beside it),
    into a new workspace (so: the sampler version new workspaces get, and the corpus files hashed),
    with 1 and `--workers` processes; wall time, MB/s of corpus text, CPU seconds, and the max RSS of
    the process (this includes the fixed cost of training the tokenizer and tokenizing the slices);
    at the first size also with that run's tokenizer given (sample.tokenizer.path: no training), and
    `--repeats` alternating pairs of polars' scan and `sample` (1 worker), with the median ratio;
  - the reading pipeline alone (`scan_*`: list, read, hash, bottom-k of the big domain, no tokenizer),
    and its scaling per core: 1 worker x 1 thread vs 1 x N threads vs N workers x 1 thread
    (`scan_lanes_s`: from the executor's start, the second worker's spawn included).
The RSS is measured at two corpus sizes (`--sizes`, GB of text) to show that memory does not grow
with the corpus. Prints JSON and writes it to --out. On a shared machine the ratios measured within
one run are what to read.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import yaml


def _stdlib_texts() -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for f in sorted(root.rglob("*.py")):
        try:
            t = f.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if t.strip():
            out.append(t)
    return out


def build(folder: Path, gb: float, fmt: str, shards: int) -> int:
    """`gb` GB of text in `shards` files; returns the text bytes. Reuses a folder built before."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    done = folder / "DONE"
    if done.is_file():
        return int(done.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    texts = _stdlib_texts()
    target, total, i = int(gb * 1e9), 0, 0
    per_shard = target // shards
    for s in range(shards):
        docs, size = [], 0
        while size < per_shard:
            t = f"# document {i}\n" + texts[i % len(texts)]
            docs.append(t)
            size += len(t.encode())
            i += 1
        total += size
        if fmt == "parquet":
            pq.write_table(pa.table({"text": docs}), folder / f"part-{s:04d}.parquet", row_group_size=2048)
        else:
            cctx = zstandard.ZstdCompressor(level=3)
            with open(folder / f"part-{s:04d}.jsonl.zst", "wb") as raw, cctx.stream_writer(raw) as w:
                for d in docs:
                    w.write((json.dumps({"text": d}) + "\n").encode())
    done.write_text(str(total))
    return total


CPU_S: dict[str, float] = {}  # CPU seconds (user + system, every thread) of each timed command, by its last word


def _timed(cmd: list[str], env=None) -> tuple[float, int, str]:
    """Wall seconds and max RSS (MB) of one command in a fresh process; its CPU seconds go to CPU_S
    (on a shared machine the CPU time is what other jobs do not inflate)."""
    code = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
            "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
            "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
            "print(time.perf_counter() - t, u.ru_maxrss, r.returncode, u.ru_utime + u.ru_stime); "
            "sys.stderr.write(r.stderr[-2000:])")
    r = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True, env=env)
    wall, rss, rc, cpu = r.stdout.split()
    if int(rc) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{r.stderr}")
    CPU_S["last"] = float(cpu)
    return float(wall), int(rss) // 1024, r.stderr


def polars_scan(folder: Path, fmt: str) -> tuple[float, int]:
    if fmt == "parquet":
        body = f"pl.scan_parquet('{folder}/*.parquet')"
    else:  # polars reads NDJSON; the shards are decompressed on the fly by zstandard
        body = (f"pl.concat([pl.read_ndjson(zstandard.ZstdDecompressor().stream_reader(open(f, 'rb')).read()).lazy() "
                f"for f in sorted(glob.glob('{folder}/*.jsonl.zst'))])")
    code = (f"import glob, polars as pl, zstandard; print({body}.select(pl.col('text').str.len_bytes().sum())"
            ".collect().item())")
    wall, rss, _ = _timed([sys.executable, "-c", code])
    return wall, rss


def mixopt_sample(folder: Path, fmt: str, work: Path, workers: int, small: Path,
                  tokenizer: Path | None = None) -> tuple[float, int, dict]:
    """`sample` into a new workspace (the sampler version a new one gets; the corpus files hashed), with
    a tokenizer trained on the sample, or the `tokenizer` file given (sample.tokenizer.path)."""
    import shutil

    tag = f"{workers}" + ("-given" if tokenizer else "")
    ws = work / f"ws-{folder.name}-{tag}"
    shutil.rmtree(ws, ignore_errors=True)  # the bench's own folder
    cfg = {"name": "bench", "workspace": str(ws),
           "domains": [{"name": "big", "sources": [{"path": str(folder / f"*.{'parquet' if fmt == 'parquet' else 'jsonl.zst'}")}]},
                       {"name": "small", "sources": [{"path": str(small)}]}],
           "sample": {"train_tokens": 200_000, "val_tokens": 20_000,
                      "tokenizer": {"path": str(tokenizer)} if tokenizer else {"vocab_size": 2048}}}
    path = work / f"{folder.name}-{tag}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if k != "TOKENIZERS_PARALLELISM"}
    wall, rss, _ = _timed([sys.executable, "-m", "mixopt.cli", "sample", str(path), "--force",
                           "--workers", str(workers)], env=env)
    manifest = json.loads((ws / "sample" / "manifest.json").read_text())
    return wall, rss, {**manifest["domains"]["big"], "version": manifest["version"]}


def mixopt_scan(config: Path, workers: int, threads: int = 0) -> tuple[float, int]:
    """The reading pipeline alone (list, read, hash, bottom-k of the big domain), no tokenizer; with
    `threads`, each worker reads with that many threads, polars' pool included (else what `sample`
    gives it: cores // workers)."""
    code = ("import sys, time; from mixopt.config.load import load_experiment; "
            "from mixopt.backends.local_executor import LocalExecutor; "
            "from mixopt.data.scan import draw_candidates; "
            "exp = load_experiment(sys.argv[1]); t = time.perf_counter(); ex = LocalExecutor(int(sys.argv[2])); "
            "ex.threads = int(sys.argv[3]) or ex.threads; "
            "c = draw_candidates(exp, exp.domains[0], (exp.train_tokens + exp.sample.val_tokens) * 6, ex); "
            "ex.shutdown(); sys.stderr.write(f'reading_seconds {time.perf_counter() - t}\\n')")
    env = {**os.environ, "POLARS_MAX_THREADS": str(threads)} if threads else None
    wall, rss, err = _timed([sys.executable, "-c", code, str(config), str(workers), str(threads)], env=env)
    READ_S["last"] = float(err.split("reading_seconds ")[-1].split()[0])
    return wall, rss


READ_S: dict[str, float] = {}  # the last scan's reading alone (from the executor's start, imports excluded)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("bench/cache/sample"))
    ap.add_argument("--sizes", default="1,4", help="GB of Parquet text for the RSS comparison (first: speed too)")
    ap.add_argument("--jsonl-gb", type=float, default=1.0, help="GB of JSONL.zst text (0: none)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3,
                    help="at the first size: polars' scan and `sample` (1 worker) this many times, alternating")
    ap.add_argument("--out", type=Path, default=Path("bench/results/sample.json"))
    args = ap.parse_args()
    args.work = args.work.resolve()  # the configs written there name their corpora by this path
    args.work.mkdir(parents=True, exist_ok=True)
    small = args.work / "small.parquet"
    if not small.exists():
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": _stdlib_texts()[:400]}), small)
    sizes = [float(s) for s in args.sizes.split(",")]
    out = {"machine": platform.processor() or platform.machine(), "cores": os.cpu_count(),
           "load_average_at_start": round(os.getloadavg()[0], 1),
           "note": "one run each on a machine shared with other jobs: read the ratios within this run",
           "corpora": {}}
    cases = [(f"parquet-{g:g}GB", "parquet", g, 16) for g in sizes] + ([(f"jsonl.zst-{args.jsonl_gb:g}GB", "jsonl",
                                                                          args.jsonl_gb, 16)] if args.jsonl_gb else [])
    for name, fmt, gb, shards in cases:
        folder = args.work / name
        text = build(folder, gb, fmt, shards)
        mb = text / 1e6
        p_wall, p_rss = polars_scan(folder, fmt)
        row = {"text_MB": round(mb), "polars_MBps": round(mb / p_wall), "polars_rss_MB": p_rss,
               "polars_cpu_s": round(CPU_S["last"], 1)}
        for w in ([1, args.workers] if gb == sizes[0] or fmt == "jsonl" else [1]):
            wall, rss, dom = mixopt_sample(folder, fmt, args.work, w, small)
            row[f"mixopt_w{w}_MBps"] = round(mb / wall)
            row[f"mixopt_w{w}_rss_MB"] = rss
            row[f"mixopt_w{w}_s"] = round(wall, 1)
            row[f"mixopt_w{w}_cpu_s"] = round(CPU_S["last"], 1)
            row["documents"] = dom["documents"]
            row["sampler_version"] = dom["version"]
            s_wall, _ = mixopt_scan(args.work / f"{folder.name}-{w}.yaml", w)
            row[f"scan_w{w}_MBps"] = round(mb / s_wall)
            row[f"scan_w{w}_cpu_s"] = round(CPU_S["last"], 1)
        if gb == sizes[0] and fmt == "parquet":
            # With the tokenizer of the run above given (sample.tokenizer.path, as when the target model's
            # is used): no training, what is left grows with the corpus.
            tok = args.work / f"ws-{folder.name}-1" / "sample" / "tokenizer.json"
            wall, _, _ = mixopt_sample(folder, fmt, args.work, 1, small, tokenizer=tok)
            row["mixopt_w1_given_tokenizer_MBps"] = round(mb / wall)
            row["mixopt_w1_given_tokenizer_cpu_s"] = round(CPU_S["last"], 1)
            # Polars' scan is under a second here, and moves between runs a minute apart: pairs of runs,
            # alternating, and their median.
            pairs = [(row["polars_MBps"], row["mixopt_w1_MBps"])]
            for _ in range(args.repeats - 1):
                p_wall, _ = polars_scan(folder, fmt)
                m_wall, _, _ = mixopt_sample(folder, fmt, args.work, 1, small)
                pairs.append((round(mb / p_wall), round(mb / m_wall)))
            row["pairs_polars_mixopt_w1_MBps"] = pairs
            row["ratio_w1_vs_polars_median"] = round(float(np.median([m / p for p, m in pairs])), 3)
        if gb == sizes[0] and fmt == "parquet" and args.workers > 1:
            # Scaling per core: reading lanes (worker x threads) of one core each. On a machine whose
            # cores one worker's threads already fill, this, not workers vs one worker, is what a core buys.
            lanes = {}
            for w, t in ((1, 1), (1, args.workers), (args.workers, 1)):
                mixopt_scan(args.work / f"{folder.name}-1.yaml", w, t)
                lanes[f"{w}x{t}"] = READ_S["last"]  # spawning the second worker included, the imports of this one not
            row["scan_lanes_s"] = {k: round(v, 2) for k, v in lanes.items()}
            row[f"scan_speedup_{args.workers}_threads_vs_1"] = round(lanes["1x1"] / lanes[f"1x{args.workers}"], 2)
            row[f"scan_speedup_{args.workers}_workers_1_thread_vs_1"] = round(lanes["1x1"] / lanes[f"{args.workers}x1"], 2)
        row["ratio_w1_vs_polars"] = round(row["mixopt_w1_MBps"] / row["polars_MBps"], 3)
        if "mixopt_w1_given_tokenizer_MBps" in row:
            row["ratio_w1_given_tokenizer_vs_polars"] = round(row["mixopt_w1_given_tokenizer_MBps"] / row["polars_MBps"], 3)
        row["scan_ratio_w1_vs_polars"] = round(row["scan_w1_MBps"] / row["polars_MBps"], 3)
        row["cpu_s_w1_over_polars"] = round(row["mixopt_w1_cpu_s"] / row["polars_cpu_s"], 2)  # load-independent
        if f"mixopt_w{args.workers}_MBps" in row and args.workers > 1:
            row[f"speedup_w{args.workers}_vs_w1"] = round(row[f"mixopt_w{args.workers}_MBps"] / row["mixopt_w1_MBps"], 2)
            row[f"scan_speedup_w{args.workers}_vs_w1"] = round(row[f"scan_w{args.workers}_MBps"] / row["scan_w1_MBps"], 2)
        out["corpora"][name] = row
        print(name, json.dumps(row), flush=True)
    out["load_average_at_end"] = round(os.getloadavg()[0], 1)
    if len(sizes) > 1:
        a, b = out["corpora"][f"parquet-{sizes[0]:g}GB"], out["corpora"][f"parquet-{sizes[-1]:g}GB"]
        out["rss_growth"] = round(b["mixopt_w1_rss_MB"] / a["mixopt_w1_rss_MB"] - 1, 3)
    print(json.dumps(out, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
