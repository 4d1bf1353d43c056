"""The GPU check's mini sweep: 16 proxies (3 domains of this interpreter's own files: code, pydoc
prose, license texts) with --batch-proxies auto, on whatever device this machine has, then a
re-evaluation of every run on one evaluation the suite gains afterwards (no retraining). Prints and
writes JSON (after the sweep and again after the re-evaluation): seconds, proxies/hour, the batch
choice with both measured rates, the device and precision each run recorded, and on a GPU the peak
memory against mixopt's estimate. `--small` runs the same steps at a CPU's scale (the rehearsal)."""

from __future__ import annotations

import argparse
import gzip
import json
import sysconfig
import time
from pathlib import Path

import yaml


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--work", type=Path, required=True, help="a fresh folder for the corpora and the workspace")
    ap.add_argument("--out", type=Path, default=Path("bench/results/gpu_sweep.json"))
    ap.add_argument("--size", default="5m")
    ap.add_argument("--tokens", type=int, default=2_000_000, help="per proxy")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--small", action="store_true", help="tiny proxies, small corpora, 8 runs: a CPU rehearsal")
    args = ap.parse_args()
    if args.small:
        args.size, args.tokens = "tiny", 8_192

    from mixopt.config.load import load_experiment
    from mixopt.config.runtime import Runtime
    from mixopt.data.sample import sample_corpus
    from mixopt.sweep.reeval import run_eval
    from mixopt.sweep.run import run_sweep

    cfg = _write_config(args.work, args.size, args.tokens, args.small)
    exp = load_experiment(cfg)
    sample_corpus(exp)
    lines = []
    t0 = time.perf_counter()
    # The rehearsal leaves compile off: measuring it costs ~30 CPU-s on 2 cores, more than its sweep.
    runtime = Runtime(device=args.device, batch_proxies="auto", compile="off" if args.small else "auto", say=lambda m: (lines.append(m), print(m, flush=True)))
    cuda = _cuda_device(args.device)
    report = run_sweep(exp, runtime)
    seconds = time.perf_counter() - t0
    ws = exp.workspace_dir
    choices = [json.loads(p.read_text()) for p in sorted((ws / "sweeps").glob("*.json"))]
    results = [json.loads(p.read_text()) for p in sorted((ws / "checkpoints").glob("*.json"))]
    out = {"runs": report.planned, "trained": report.trained, "failed": len(report.failed), "size": args.size,
           "tokens_per_proxy": args.tokens, "seconds": round(seconds, 1),
           "proxies_per_hour": round(3600 * report.trained / seconds, 1) if seconds else None,
           "batch_choice": choices[-1] if choices else None,
           "devices": sorted({r.get("device", "") for r in results}),
           "precisions": sorted({r.get("precision", "") for r in results}),
           "batched": sorted({r.get("batched", 1) for r in results})}
    out["batch_proxies"] = (out["batch_choice"] or {}).get("batch_proxies")
    if out["failed"]:
        out["failures"] = [list(f) for f in report.failed][:5]
    if cuda:
        out["memory"] = _memory_vs_estimate(exp, out["batch_proxies"] or 1)
    _write(args.out, out)
    # The suite gains one evaluation after the sweep: every finished run is evaluated, none retrained.
    _add_text_evaluation(cfg, args.work)
    t1 = time.perf_counter()
    ev = run_eval(load_experiment(cfg), Runtime(device=args.device))
    out["reeval"] = {"evaluated": ev.runs, "evaluations": ev.evaluations, "failed": [list(f) for f in ev.failed][:5],
                     "seconds": round(time.perf_counter() - t1, 1), "workers": ev.workers}
    _write(args.out, out)
    print(json.dumps(out, indent=2))


def _cuda_device(device: str) -> bool:
    import torch

    return torch.cuda.is_available() and device in ("auto", "cuda") or device.startswith("cuda")


def _memory_vs_estimate(exp, proxies: int) -> dict:
    """Peak GPU memory of `proxies` proxies of the sweep's spec trained together for 2 steps here
    (the sweep itself trains in a worker process), against mixopt's estimate for that batch
    (memory_per_proxy: fixed + N x per proxy, from its own dry runs at N = 1 and 2)."""
    from dataclasses import replace

    import numpy as np
    import torch

    from mixopt.proxy.model import proxy_spec
    from mixopt.proxy.train import memory_per_proxy, train_proxies

    spec = proxy_spec(exp.config.proxy, vocab_size=exp.config.sample.tokenizer.vocab_size)
    fixed, per = memory_per_proxy(spec, "cuda:0")
    two = replace(spec, tokens=spec.seq_len * spec.batch_size * 2)
    streams = [np.arange(200_000, dtype=np.int64) % spec.vocab_size]
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    W, _, _ = train_proxies(two, [(1.0,)] * proxies, streams, 0, "cuda:0")
    del W
    peak = torch.cuda.max_memory_allocated() - base
    torch.cuda.empty_cache()
    estimate = fixed + proxies * per
    return {"peak_gib": round(peak / 2**30, 3), "estimate_gib": round(estimate / 2**30, 3),
            "ratio": round(peak / max(estimate, 1), 2), "proxies": proxies}


def _add_text_evaluation(cfg: Path, work: Path) -> None:
    text = work / "data" / "extra-eval.txt"
    text.write_text("\n\n".join(f"Paragraph {i}: the quick brown fox jumps over the lazy dog {i} times." for i in range(400)))
    doc = yaml.safe_load(cfg.read_text())
    doc["evals"]["evaluations"].append({"name": "text/extra", "kind": "text", "sources": [{"path": str(text)}],
                                        "weight": 0})
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))


def _write(path: Path, out: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(out, indent=2) + "\n")
    tmp.replace(path)


def _write_config(work: Path, size: str, tokens: int, small: bool = False) -> Path:
    import pydoc_data.topics

    data = work / "data"
    for d in ("code", "prose", "legal"):
        (data / d).mkdir(parents=True, exist_ok=True)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    n = 0
    for f in sorted(stdlib.glob("*.py")):
        (data / "code" / f.name).write_text(f.read_text(errors="replace"))
        n += f.stat().st_size
        if n > (300_000 if small else 3_000_000):
            break
    with gzip.open(data / "prose.jsonl.gz", "wt") as fh:
        for k, v in sorted(pydoc_data.topics.topics.items()):
            fh.write(json.dumps({"text": f"{k}\n\n{v}"}) + "\n")
    n = 0
    for i, f in enumerate(sorted(Path(sysconfig.get_paths()["purelib"]).glob("*.dist-info/**/*"))):
        if f.is_file() and f.name.upper().startswith(("LICENSE", "COPYING")) and f.stat().st_size > 300:
            (data / "legal" / f"{i:04d}.txt").write_text(f.read_text(errors="replace"))
            n += f.stat().st_size
            if small and n > 300_000:
                break
    cfg = {"name": "gpu-check", "seed": 0, "workspace": str(work / "ws"),
           "domains": [{"name": "code", "sources": [{"path": str(data / "code"), "extensions": [".py"]}]},
                       {"name": "prose", "sources": [{"path": str(data / "prose.jsonl.gz")}]},
                       {"name": "legal", "sources": [{"path": str(data / "legal")}]}],
           "sample": {"train_tokens": 20_000 if small else 60_000, "val_tokens": 4_000 if small else 8_000,
                      "tokenizer": {"vocab_size": 1024 if small else 8192}},
           "proxy": {"size": size, "tokens": tokens},
           # + the prior + 3 single-domain mixtures = 16 (8 in the rehearsal)
           "design": {"runs": 4 if small else 12, "min_weight": 0.01} | ({"replicates": None} if small else {}),
           "evals": {"evaluations": [{"name": f"heldout/{d}", "kind": "heldout", "domain": d}
                                     for d in ("code", "prose", "legal")]},
           "fit": {"model": "loglinear"}}
    path = work / "gpu-check.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


if __name__ == "__main__":
    main()
