"""Benchmark: domains from a pool (`pools:`), issue 25.

Pools five corpora of real text from this machine (not the demo's: man pages of commands, C headers,
Debian changelogs, Debian copyright files, Perl modules; readers from bench/calibration.py), each cut
into 150 documents (+ 20 held out) of ~3,000 characters, into one shuffled Parquet dataset (4 shards) with a hidden
`label` column, then reports:
  - group_by on the label: the domains' document counts against the true ones (exact, or not);
  - clustering (`cluster:` with the default embedder) at K = the number of corpora and K = 2x, and K
    chosen by silhouette over 2..10: the adjusted Rand index of every document's cluster against its
    label (target >= 0.8 at K = #corpora), purity (the share of documents in their cluster's majority
    label: splitting a corpus in two lowers the ARI, not the purity), the clusters' names and sizes;
  - the recommendation fitted over the clusters (K = 5) vs over the true labels (group_by): for each,
    sample, sweep (tiny proxies, 16 random mixtures + the prior + the vertices), fit, and
    `verify --seeds 3`, against one objective for both: the BPB of held-out documents of the five
    corpora (a `text` evaluation; BPB does not depend on the arm's own tokenizer). Skipped with --quick;
  - the assignment pass (`sample`'s one pass over the pool: read, embed, nearest centroid, bottom-k)
    on a pool scaled to --mb MB of text (documents repeated with a distinct header line): MB/s with 1
    and 2 workers, and the peak RSS (VmHWM) of the process doing it at --mb and 3x --mb (1 worker).
Prints JSON and writes it to --out. One run each: on a shared machine, read the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from calibration import _files, _gz, _man, _plain  # noqa: E402  (the same real-text readers)

CORPUS_BYTES = 1_500_000  # characters read per corpus
KINDS = ("commands", "c", "changelogs", "copyright", "perl")
PIECE = 3000  # characters: files are cut at line ends into documents of about this size
PER_KIND = 170  # documents per corpus, 20 held out (balanced: a corpus of few huge files is not a handful of rows)


def pieces(texts: list[str], seed: int) -> list[str]:
    """The texts cut at line ends into ~PIECE-character documents; a seeded PER_KIND of them."""
    out = []
    for t in texts:
        cur = ""
        for line in t.splitlines(keepends=True):
            cur += line
            if len(cur) >= PIECE:
                out.append(cur)
                cur = ""
        if len(cur) > 200:
            out.append(cur)
    return [out[i] for i in sorted(np.random.default_rng(seed).permutation(len(out))[:PER_KIND])]


def corpora() -> dict[str, list[str]]:
    man, doc = Path("/usr/share/man"), Path("/usr/share/doc")
    return {
        "commands": _files(man.glob("man1/*.gz"), CORPUS_BYTES, _man),
        "c": _files(Path("/usr/include").rglob("*.h"), CORPUS_BYTES, _plain),
        "changelogs": _files(doc.glob("*/changelog*.gz"), CORPUS_BYTES, _gz),
        "copyright": _files(doc.glob("*/copyright"), CORPUS_BYTES, _plain),
        "perl": _files(Path("/usr/share/perl").rglob("*.pm"), CORPUS_BYTES, _plain),
    }


def write_pool(folder: Path, rows: list[tuple[str, str]], shards: int = 4, repeat: int = 1) -> int:
    """Shuffled rows (text, label) as Parquet shards; `repeat` copies, each document made distinct by a
    header line. Returns the text bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    texts = [f"# copy {r}\n{t}" if r else t for r in range(repeat) for t, _ in rows]
    labels = [lab for _ in range(repeat) for _, lab in rows]
    order = np.random.default_rng(0).permutation(len(texts))
    for s in range(shards):
        idx = order[s::shards]
        pq.write_table(pa.table({"text": [texts[i] for i in idx], "label": [labels[i] for i in idx]}),
                       folder / f"part{s}.parquet", row_group_size=256)
    return sum(len(t.encode()) for t in texts)


def config(root: Path, pool: dict, name: str) -> Path:
    cfg = {"name": name, "seed": 0, "workspace": str(root / f"ws-{name}"), "pools": [pool],
           "sample": {"train_tokens": 20_000, "val_tokens": 3_000, "tokenizer": {"vocab_size": 512}}}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def load(path: Path, build: bool = False):
    from mixopt.config.load import load_experiment
    from mixopt.data.pools import expand_pools

    return expand_pools(load_experiment(path), build=build)


def group_by_check(root: Path, rows) -> dict:
    from mixopt.data.pools import draw_pool

    exp = load(config(root, {"sources": [str(root / "pool")], "group_by": "label"}, "groupby"))
    t = time.perf_counter()
    cands = draw_pool(exp, 0, exp.domain_names, 1 << 20)
    truth = {k: sum(1 for _, lab in rows if lab == k) for k in KINDS}
    got = {n: c.documents for n, c in cands.items()}
    return {"documents": got, "true": truth, "exact": got == truth, "seconds": round(time.perf_counter() - t, 2)}


def cluster_check(root: Path, rows, k: int | None, name: str) -> dict:
    from sklearn.metrics import adjusted_rand_score

    from mixopt.config.load import load_experiment
    from mixopt.data.clusters import load_cluster_model
    from mixopt.data.pools import cluster_pools

    cluster = {"k": k} if k else {"k_range": [2, 10]}
    path = config(root, {"name": name, "sources": [str(root / "pool")], "cluster": cluster}, name)
    t = time.perf_counter()
    fitted = cluster_pools(load_experiment(path))[0]
    fit_s = time.perf_counter() - t
    model = load_cluster_model(load_experiment(path), fitted["model"])
    t = time.perf_counter()
    assigned = model.assign([text for text, _ in rows])
    assign_s = time.perf_counter() - t
    labels = [lab for _, lab in rows]
    sizes = np.bincount(assigned, minlength=model.k)
    clusters = []
    for j, c in enumerate(fitted["clusters"]):
        mine = [lab for lab, a in zip(labels, assigned) if a == j]
        top = max(set(mine), key=mine.count) if mine else "-"
        clusters.append({"domain": c["domain"], "name": c["name"], "documents": int(sizes[j]),
                         "majority": top, "majority_share": round(mine.count(top) / len(mine), 3) if mine else 0})
    purity = sum(c["majority_share"] * c["documents"] for c in clusters) / len(rows)
    return {"k": model.k, "criterion": model.criterion, "ari": round(float(adjusted_rand_score(labels, assigned)), 4),
            "purity": round(purity, 4),
            "fit_s": round(fit_s, 2), "assign_s": round(assign_s, 2), "clusters": clusters}


def assign_pass(path: str, workers: int) -> None:
    """In its own process: the pool's one pass (sample's), timed; prints seconds and max RSS (MB). With
    workers 0: fit the model only (so the timed process's peak memory is the pass's, not the fit's)."""
    from mixopt.data.pools import draw_pool
    from mixopt.backends.local_executor import LocalExecutor

    exp = load(Path(path), build=workers == 0)
    if workers == 0:
        return
    ex = LocalExecutor(workers)
    t = time.perf_counter()
    try:
        draw_pool(exp, 0, exp.domain_names, 1 << 20, ex)
    finally:
        ex.shutdown()
    secs = time.perf_counter() - t
    # VmHWM, not ru_maxrss: a process forked from this big bench and exec'd keeps the parent's ru_maxrss
    hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print(json.dumps({"seconds": secs, "max_rss_mb": hwm / 1024}))


def timed_pass(root: Path, name: str, pool_dir: Path, workers: int) -> dict:
    path = config(root, {"name": "topic", "sources": [str(pool_dir)], "cluster": {"k": len(KINDS)}}, name)
    ws = root / f"ws-{name}"
    shutil.rmtree(ws, ignore_errors=True)  # no assignment cache: every document is embedded
    for w in (0, workers):  # fit the model in one process, time the pass in another
        r = subprocess.run([sys.executable, __file__, "--assign", str(path), "--workers", str(w)],
                           capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
        if r.returncode:
            raise SystemExit(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def mixopt(*args) -> str:
    r = subprocess.run([sys.executable, "-m", "mixopt.cli", *map(str, args)], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    if r.returncode:
        raise SystemExit(f"mixopt {' '.join(map(str, args))}: {r.stderr[-2000:]}")
    return r.stdout


def recommend_arms(root: Path, heldout: list[tuple[str, str]], workers: int) -> dict:
    """Recommendation over the true labels vs over the clusters, each verified with 3 paired seeds."""
    (root / "heldout").mkdir(exist_ok=True)
    for j, (text, lab) in enumerate(heldout):
        (root / "heldout" / f"{lab}-{j:03d}.txt").write_text(text)
    out = {}
    for arm, pool in (("labels", {"sources": [str(root / "pool")], "group_by": "label"}),
                      ("clusters", {"name": "topic", "sources": [str(root / "pool")], "cluster": {"k": len(KINDS)}})):
        t = time.perf_counter()
        cfg = {"name": f"rec-{arm}", "seed": 0, "workspace": str(root / f"ws-rec-{arm}"), "pools": [pool],
               "sample": {"train_tokens": 20_000, "val_tokens": 3_000, "tokenizer": {"vocab_size": 512}},
               "proxy": {"size": "tiny", "tokens": 24_000, "seq_len": 64, "batch_size": 8},
               "design": {"runs": 16, "min_weight": 0.01, "replicates": None},
               "fit": {"model": "loglinear", "cv_folds": 4, "bootstrap": 20},
               "evals": {"evaluations": [{"name": "heldout-pool", "kind": "text", "sources": [str(root / "heldout")],
                                          "max_tokens": 30_000}]}}
        path = root / f"rec-{arm}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        mixopt("sample", path)
        mixopt("sweep", path, "--workers", workers, "--no-progress")
        fit = json.loads(mixopt("fit", path, "--format", "json"))
        ver = json.loads(mixopt("verify", path, "--seeds", 3, "--workers", workers, "--no-progress", "--format", "json"))
        out[arm] = {"weights": {k: round(v, 3) for k, v in fit["weights"].items()}, "predicted": fit.get("predicted"),
                    "verify": {m["name"]: {"mean": m.get("mean"), "sd": m.get("sd")} for m in ver["mixtures"]},
                    "verdict": ver.get("verdict"), "paired": {k: v for k, v in ver.items() if "gain" in k or "paired" in k},
                    "minutes": round((time.perf_counter() - t) / 60, 1)}
        print(arm, json.dumps(out[arm]), file=sys.stderr, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="bench/cache/domains")
    ap.add_argument("--out", default="bench/results/domains.json")
    ap.add_argument("--mb", type=float, default=60.0, help="MB of text in the pool scaled for the timed passes")
    ap.add_argument("--quick", action="store_true", help="skip the two sweeps of the recommendation check")
    ap.add_argument("--sweep-workers", type=int, default=2)
    ap.add_argument("--assign", help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.assign:
        return assign_pass(a.assign, a.workers)
    root = Path(a.work).absolute()
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    every = {k: pieces(v, i) for i, (k, v) in enumerate(corpora().items())}
    # 150 documents per corpus in the pool, 20 more held out (the recommendation check's objective)
    docs = {k: v[:PER_KIND - 20] for k, v in every.items()}
    heldout = [(t, k) for k, v in every.items() for t in v[PER_KIND - 20:]]
    seen, rows = set(), []
    for kind in KINDS:
        for t in docs[kind]:
            if t not in seen:
                seen.add(t)
                rows.append((t, kind))
    text_bytes = write_pool(root / "pool", rows)
    out = {"corpora": {k: len(docs[k]) for k in KINDS}, "documents": len(rows), "pool_mb": round(text_bytes / 1e6, 2)}
    out["group_by"] = group_by_check(root, rows)
    print(json.dumps(out["group_by"]), file=sys.stderr)
    out["cluster_k"] = cluster_check(root, rows, len(KINDS), "k5")
    out["cluster_2k"] = cluster_check(root, rows, 2 * len(KINDS), "k10")
    out["cluster_auto"] = cluster_check(root, rows, None, "kauto")
    print(json.dumps({k: out[k]["ari"] for k in ("cluster_k", "cluster_2k", "cluster_auto")}), file=sys.stderr)
    if not a.quick:
        out["recommend"] = recommend_arms(root, heldout, a.sweep_workers)
    repeat = max(1, round(a.mb * 1e6 / text_bytes))
    big = write_pool(root / "big", rows, repeat=repeat)
    bigger = write_pool(root / "bigger", rows, repeat=3 * repeat)
    passes = {}
    for label, folder, workers in (("1x_1w", "big", 1), ("1x_2w", "big", 2), ("3x_1w", "bigger", 1)):
        passes[label] = timed_pass(root, f"pass-{label}", root / folder, workers)
        print(label, json.dumps(passes[label]), file=sys.stderr)
    mb = {"big": big / 1e6, "bigger": bigger / 1e6}
    out["assign"] = {
        "pool_mb": round(mb["big"], 1), "mb_s_1_worker": round(mb["big"] / passes["1x_1w"]["seconds"], 2),
        "mb_s_2_workers": round(mb["big"] / passes["1x_2w"]["seconds"], 2),
        "speedup_2_workers": round(passes["1x_1w"]["seconds"] / passes["1x_2w"]["seconds"], 2),
        "max_rss_mb": {f"{mb['big']:.0f} MB": round(passes["1x_1w"]["max_rss_mb"]),
                       f"{mb['bigger']:.0f} MB": round(passes["3x_1w"]["max_rss_mb"])},
        "rss_growth": round(passes["3x_1w"]["max_rss_mb"] / passes["1x_1w"]["max_rss_mb"] - 1, 3),
        "passes": passes}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
