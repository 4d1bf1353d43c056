"""The GPU check's mini sweep: 16 proxies (3 domains of this interpreter's own files: code, pydoc
prose, license texts) with --batch-proxies auto, on whatever device this machine has. Prints and
writes JSON: seconds, proxies/hour, the batch choice with both measured rates, and the device and
precision each run recorded. Also runs on a CPU (slowly: use --size tiny --tokens small there)."""

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
    args = ap.parse_args()

    from mixopt.config.load import load_experiment
    from mixopt.config.runtime import Runtime
    from mixopt.data.sample import sample_corpus
    from mixopt.sweep.run import run_sweep

    cfg = _write_config(args.work, args.size, args.tokens)
    exp = load_experiment(cfg)
    sample_corpus(exp)
    lines = []
    t0 = time.perf_counter()
    report = run_sweep(exp, Runtime(device=args.device, batch_proxies="auto", say=lambda m: (lines.append(m), print(m))))
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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


def _write_config(work: Path, size: str, tokens: int) -> Path:
    import pydoc_data.topics

    data = work / "data"
    for d in ("code", "prose", "legal"):
        (data / d).mkdir(parents=True, exist_ok=True)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    n = 0
    for f in sorted(stdlib.glob("*.py")):
        (data / "code" / f.name).write_text(f.read_text(errors="replace"))
        n += f.stat().st_size
        if n > 3_000_000:
            break
    with gzip.open(data / "prose.jsonl.gz", "wt") as fh:
        for k, v in sorted(pydoc_data.topics.topics.items()):
            fh.write(json.dumps({"text": f"{k}\n\n{v}"}) + "\n")
    n = 0
    for i, f in enumerate(sorted(Path(sysconfig.get_paths()["purelib"]).glob("*.dist-info/**/*"))):
        if f.is_file() and f.name.upper().startswith(("LICENSE", "COPYING")) and f.stat().st_size > 300:
            (data / "legal" / f"{i:04d}.txt").write_text(f.read_text(errors="replace"))
            n += f.stat().st_size
    cfg = {"name": "gpu-check", "seed": 0, "workspace": str(work / "ws"),
           "domains": [{"name": "code", "sources": [{"path": str(data / "code"), "extensions": [".py"]}]},
                       {"name": "prose", "sources": [{"path": str(data / "prose.jsonl.gz")}]},
                       {"name": "legal", "sources": [{"path": str(data / "legal")}]}],
           "sample": {"train_tokens": 60_000, "val_tokens": 8_000, "tokenizer": {"vocab_size": 8192}},
           "proxy": {"size": size, "tokens": tokens},
           "design": {"runs": 12, "min_weight": 0.01},  # + the prior + 3 single-domain mixtures = 16
           "fit": {"model": "loglinear"}}
    path = work / "gpu-check.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


if __name__ == "__main__":
    main()
