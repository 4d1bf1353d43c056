"""Benchmark: add a fifth real-text domain to the finished demo, then (a) recompute everything from
scratch vs (b) the reuse path (`design.after_change: reuse`): proxies trained, wall time, the two
recommendations' L1 distance, whether (b)'s weights lie in (a)'s bootstrap interval, and both
recommendations' objectives measured by proxies trained on them (in (a)'s workspace: one tokenizer).

The fifth domain, `docs`, is the Python 3.11 library reference (reStructuredText sources from the
python3.11-doc package that `make demo` downloads into demo/cache). The eval suite gains its
held-out set too. Everything runs in workspaces/bench-data-change/ (the demo's own is untouched).
Prints one JSON object and writes it to --out.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from mixopt.config.load import load_experiment
from mixopt.config.runtime import Runtime
from mixopt.core.mixtures import Mixture
from mixopt.data.sample import sample_corpus
from mixopt.fit.recommend import recommend_mixture
from mixopt.sweep.plan import load_plan
from mixopt.sweep.reeval import record_scores
from mixopt.sweep.run import run_sweep
from mixopt.sweep.store import Store

DOCS = "demo/cache/debs-extracted/usr/share/doc/python3.11/html/_sources/library"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _absolute(doc: dict, base: Path) -> dict:
    for d in doc.get("domains", []):
        for s in d["sources"]:
            s["path"] = str((base / s["path"]).resolve())
    return doc


def _write(path: Path, doc: dict) -> Path:
    text = yaml.safe_dump(doc, sort_keys=False)
    if not path.is_file() or path.read_text() != text:  # the two processes write the same files
        path.write_text(text)
    return path


def _stage(cfg: Path, runtime: Runtime, out: Path | None = None) -> dict:
    """sample, sweep, fit: wall seconds and proxies trained (also written to `out`, as JSON)."""
    exp = load_experiment(cfg)
    t0 = time.time()
    sample_corpus(exp)
    t1 = time.time()
    sweep = run_sweep(exp, runtime)
    if sweep.failed:
        raise SystemExit(f"runs failed in {cfg}: {sweep.failed[:2]}")
    t2 = time.time()
    rec = recommend_mixture(exp, runtime, plots=False)
    t3 = time.time()
    log(f"{cfg.name}: trained {sweep.trained}, already done {sweep.already_done}, re-evaluated {sweep.reevaluated}; "
        f"sample {t1 - t0:.0f}s sweep {t2 - t1:.0f}s fit {t3 - t2:.0f}s")
    res = {"planned": sweep.planned, "trained": sweep.trained, "reused": sweep.already_done, "reevaluated_runs": sweep.reevaluated,
           "seconds": round(t3 - t0, 1), "sample_s": round(t1 - t0, 1), "sweep_s": round(t2 - t1, 1),
           "fit_s": round(t3 - t2, 1), "weights": [float(x) for x in rec.weights], "domains": rec.domains,
           "interval": None if rec.weights_ci is None else rec.weights_ci.tolist(), "objective": rec.objective,
           "fit_runs": rec.runs, "cv_spearman": rec.cv.spearman}
    if out:
        out.write_text(json.dumps(res))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=Path("mixtures/demo.yaml"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--root", type=Path, default=Path("workspaces/bench-data-change"))
    ap.add_argument("--out", type=Path, default=Path("bench/results/data_change.json"))
    ap.add_argument("--stage", choices=["all", "full"], default="all",
                    help="all: base then reuse here, while the full recomputation runs in a second process "
                         "(the two are independent); full: that process.")
    ap.add_argument("--fresh", action=argparse.BooleanOptionalAction, default=True,
                    help="Start from empty workspaces (--no-fresh keeps finished runs of an interrupted run).")
    ap.add_argument("--proxy-tokens", type=int, default=None,
                    help="Train each proxy on this many tokens instead of the config's (a quicker run; said in the JSON).")
    args = ap.parse_args()
    docs = Path(DOCS).resolve()
    if not docs.is_dir():
        raise SystemExit(f"{docs} not found: run `make demo` first (it downloads python3.11-doc)")
    runtime = Runtime(workers=args.workers, progress=False, say=log)
    root = args.root.resolve()
    if args.stage == "all" and args.fresh:
        shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    base_dir = args.config.resolve().parent
    raw = _absolute(yaml.safe_load(args.config.read_text()), base_dir)
    if args.proxy_tokens:
        raw["proxy"]["tokens"] = args.proxy_tokens
    suite = yaml.safe_load((base_dir / raw["evals"]).read_text())
    for e in suite["evaluations"]:
        if "path" in e:
            e["path"] = str((base_dir / e["path"]).resolve())
    suite4 = _write(root / "suite4.yaml", suite)
    suite["evaluations"].insert(4, {"name": "heldout/docs", "kind": "heldout", "domain": "docs"})
    suite5 = _write(root / "suite5.yaml", suite)

    def config(name: str, ws: str, five: bool) -> Path:
        doc = json.loads(json.dumps(raw))
        doc.update(workspace=str(root / ws), evals=str(suite5 if five else suite4))
        doc["design"]["after_change"] = "reuse"
        if five:
            doc["domains"].append({"name": "docs", "sources": [{"path": str(docs), "extensions": [".txt"]}]})
        (root / name).mkdir(exist_ok=True)  # each config its own folder: its own <name>.optimal.yaml
        return _write(root / name / f"{'demo5' if five else 'demo4'}.yaml", doc)

    full5 = config("full", "full", True)
    if args.stage == "full":
        log("(a) full recomputation from scratch")
        _stage(full5, runtime, root / "full.json")
        return
    cmd = [sys.executable, __file__, "--stage", "full", "--config", str(args.config), "--workers", str(args.workers),
           "--root", str(root)] + (["--proxy-tokens", str(args.proxy_tokens)] if args.proxy_tokens else [])
    full_proc = subprocess.Popen(cmd)
    reuse4 = config("reuse", "reuse", False)
    log("base: the demo's four domains")
    base = _stage(reuse4, runtime)
    reuse5 = config("reuse", "reuse", True)  # the same experiment, one domain added
    log("(b) reuse: docs added to the finished demo")
    b = _stage(reuse5, runtime)
    if full_proc.wait() != 0:
        raise SystemExit("the full recomputation failed")
    a = json.loads((root / "full.json").read_text())

    names = a["domains"]
    wa, wb = np.asarray(a["weights"]), np.asarray(b["weights"])
    inside = None
    if a["interval"] is not None:
        ci = np.asarray(a["interval"])
        inside = {d: bool(ci[i, 0] - 1e-6 <= wb[i] <= ci[i, 1] + 1e-6) for i, d in enumerate(names)}
    # Verify both recommendations (and the prior) in (a)'s workspace: one tokenizer, one suite.
    exp = load_experiment(full5)
    extra = [Mixture("verify:full", tuple(wa)), Mixture("verify:reuse", tuple(wb))]
    t0 = time.time()
    ver = run_sweep(exp, runtime, extra=extra, design=False)
    plan = load_plan(exp, design=False)
    with Store(plan.workspace.db_path) as store:
        scores = record_scores(plan, store)
    measured = {m.origin.split(":")[1]: float(scores[plan.key(m.weights)]) for m in extra}
    prior = float(scores.get(plan.key(plan.prior), np.nan)) if plan.key(plan.prior) in scores else None
    log(f"verification: {ver.trained} proxies, {time.time() - t0:.0f}s; measured {measured}")

    out = {
        "domains": names, "objective": a["objective"], "proxy_tokens": raw["proxy"]["tokens"],
        "design_runs": raw["design"]["runs"],
        "base": base, "full": a, "reuse": b,
        # (a) starts from nothing, so it trains every run it plans (also when --no-fresh resumed it).
        "proxies_ratio": round(b["trained"] / a["planned"], 3),
        "wall_ratio": round(b["seconds"] / a["seconds"], 3),
        "weights_full": dict(zip(names, map(float, wa))), "weights_reuse": dict(zip(names, map(float, wb))),
        "l1": float(np.abs(wa - wb).sum()),
        "interval_full": None if a["interval"] is None else dict(zip(names, a["interval"])),
        "reuse_inside_full_interval": inside,
        "verified_objective": {**measured, "prior": prior},
        "verification_proxies": ver.trained,
        "target": {"proxies_ratio_max": 0.4, "met_proxies": b["trained"] <= 0.4 * a["planned"],
                   "met_interval": None if inside is None else all(inside.values())},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
