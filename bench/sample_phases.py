"""Where `mixopt sample`'s CPU goes on a Parquet corpus: CPU seconds (user + system, every thread) per
phase, all measured in one process so that their ratios hold on a shared machine.

Builds (or reuses) bench/sample.py's corpus, then times: start-up (a fresh interpreter importing what
`sample` imports), sha256 of the corpus files (the sample key), reading alone (Arrow: decompress,
decode, UTF-8 check; the first pass and a second one), reading + priorities + bottom-k pool for each
sampler version (version 2 also with 2 reading threads: CPU and wall), training the tokenizer, and
tokenizing the candidates (version 1: all of them; version 2: those the slices take). The reading
is timed as Arrow's reader gives it (`read`) and as the sampler reads local Parquet (`read_as_views`:
polars' decode as Arrow string views; the priorities and pool phases read so). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import sample as bench_sample  # noqa: E402  (the corpus builder)
import numpy as np  # noqa: E402
import yaml  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("bench/cache/sample"))
    ap.add_argument("--gb", type=float, default=1.0, help="GB of Parquet text")
    args = ap.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    folder = work / f"parquet-{args.gb:g}GB"
    text = bench_sample.build(folder, args.gb, "parquet", 16)

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", "import mixopt.cli, mixopt.data.sample, pyarrow.parquet, xxhash"], check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = {"text_MB": round(text / 1e6), "startup_cpu_s": round(after.ru_utime + after.ru_stime
                                                                 - before.ru_utime - before.ru_stime, 2)}

    from mixopt.config.load import load_experiment
    from mixopt.core.keys import FileHashes
    from mixopt.data import parquet_views, readers, scan
    from mixopt.data.sample import MAX_BYTES_PER_TOKEN, _encode, _tokenizer_texts
    from mixopt.data.sources import list_shards
    from mixopt.data.tokenizer import eos_id, train_tokenizer

    cfg = {"name": "phases", "workspace": str(work / "ws-phases"),
           "domains": [{"name": "big", "sources": [{"path": str(folder / "*.parquet")}]},
                       {"name": "small", "sources": [{"path": str(folder / "part-0000.parquet")}]}],
           "sample": {"train_tokens": 200_000, "val_tokens": 20_000, "tokenizer": {"vocab_size": 2048}}}
    path = work / "phases.yaml"
    path.write_text(yaml.safe_dump(cfg))
    exp = load_experiment(path)
    domain = exp.domains[0]
    units = [(s, sh) for s in domain.sources for sh in list_shards(s, exp.base_dir)]
    cap = exp.sample.max_document_bytes
    budget = (exp.train_tokens + exp.sample.val_tokens) * MAX_BYTES_PER_TOKEN
    key = scan.seed_key(exp.seed, domain.name)

    def phase(name: str, fn):
        cpu, wall = time.process_time(), time.perf_counter()
        result = fn()
        out[f"{name}_cpu_s"] = round(time.process_time() - cpu, 2)
        out[f"{name}_wall_s"] = round(time.perf_counter() - wall, 2)
        return result

    def read_all(views: bool = False) -> None:
        for s, sh in units:
            for _ in readers.iter_chunks(s, sh, cap, views=views):
                pass

    phase("sha256_files_1thread", lambda: [FileHashes(None).sha256(Path(sh.uri)) for _, sh in units])
    phase("sha256_files_prefetch", lambda: FileHashes(None).prefetch([sh.uri for _, sh in units], 2))
    phase("read_first", read_all)
    phase("read", read_all)
    phase("read_polars_import", parquet_views.polars_views)  # once per process, on the first Parquet file read
    phase("read_as_views", lambda: read_all(views=True))  # polars, as the sampler reads local Parquet
    candidates = {}
    for version, threads in ((1, 1), (2, 1), (2, 2)):
        pool = phase(f"read_priorities_pool_v{version}_threads{threads}",
                     lambda: scan.scan_units(units, key, budget + cap, cap, version=version, threads=threads)[0])
        candidates[version] = scan.finish_candidates(pool, [], budget, domain, exp.base_dir)
    tok_cfg = exp.sample.tokenizer
    val_region = exp.sample.val_tokens * MAX_BYTES_PER_TOKEN
    tok = phase("train_tokenizer", lambda: train_tokenizer(_tokenizer_texts({"big": candidates[2]}, val_region,
                                                                              tok_cfg.train_bytes_per_domain),
                                                           tok_cfg.vocab_size))
    for version, c in candidates.items():
        ids = phase(f"tokenize_v{version}", lambda: _encode(tok, c, exp.sample.val_tokens, exp.train_tokens,
                                                            version < 2, eos_id(tok), np.uint16))
        out[f"tokenized_MB_v{version}"] = round(sum(c.sizes[:len(ids.lengths)]) / 1e6, 2)
    out["candidates_MB"] = round(sum(candidates[2].sizes) / 1e6, 2)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
