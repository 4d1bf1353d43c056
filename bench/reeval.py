"""Benchmark: re-evaluate + refit after an eval-suite change, vs the sweep that trained the proxies.

Works on a copy of a finished experiment's workspace (default: the demo's, after `make demo`), so
the real one is untouched. The suite change adds a text evaluation (CPython's `unittest` sources,
a code set outside the sample, 20k tokens like the demo's held-out sets) and gives the FAQ task a weight: every checkpoint is reloaded and
measured on both, then the ratio is refit. Prints one JSON object and writes it to --out: the
split (checkpoint loading, the forward passes, the rest of the evaluation step, the refit), the
ratio to the sweep in wall-clock seconds and, with --sweep-cpu-seconds (the sweep's user + system
CPU time, e.g. from /usr/bin/time), in CPU seconds: on a shared machine the wall clock of either
side depends on what else runs, CPU seconds much less. The load average is recorded too.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sysconfig
import tempfile
import time
from pathlib import Path

import yaml

from mixopt.config.load import load_experiment
from mixopt.config.runtime import Runtime
from mixopt.fit.from_store import recommend_mixture
from mixopt.sweep.reeval import run_eval
from mixopt.sweep.store import Store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=Path("mixtures/demo.yaml"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("bench/results/reeval.json"))
    ap.add_argument("--sweep-seconds", type=float, default=None,
                    help="the sweep's wall time, when the store's finished sweeps did not train every run "
                         "(one was killed and resumed)")
    ap.add_argument("--sweep-cpu-seconds", type=float, default=None,
                    help="the sweep's CPU time (user + system, workers included), for the CPU-seconds ratio")
    args = ap.parse_args()
    exp = load_experiment(args.config)
    ws = exp.workspace_dir
    with Store(ws / "mixopt.db") as store:
        sweeps = [s for s in store.sweeps() if s["kind"] == "sweep" and s["trained"] > 0 and s["finished"]]
        runs = len(store.runs(status="done"))
    if not sweeps:
        raise SystemExit(f"no finished sweep recorded in {ws}: run `make demo` first")
    sweep_seconds = sum(s["finished"] - s["started"] for s in sweeps)
    recorded_trained = sum(s["trained"] for s in sweeps)
    if recorded_trained < runs and args.sweep_seconds is None:
        raise SystemExit(f"the finished sweeps in {ws} trained {recorded_trained} of {runs} runs (one was "
                         f"interrupted): pass --sweep-seconds")
    sweep_source = "the store's finished sweeps"
    if args.sweep_seconds is not None:
        sweep_seconds, sweep_source = args.sweep_seconds, "--sweep-seconds"

    with tempfile.TemporaryDirectory(prefix="mixopt-bench-") as tmp:
        tmp = Path(tmp)
        shutil.copytree(ws, tmp / "ws")
        raw = yaml.safe_load(args.config.read_text())
        suite = yaml.safe_load(Path(exp.evals.path).read_text()) if exp.evals and exp.evals.path else \
            {"evaluations": [e.model_dump(exclude_none=True) for e in exp.evals.evaluations]}
        base = Path(exp.evals.base_dir) if exp.evals else exp.resolve(".")
        for e in suite["evaluations"]:  # the copied suite lives elsewhere: make its paths absolute
            if "path" in e:
                e["path"] = str((base / e["path"]).resolve())
            if "sources" in e:
                e["sources"] = [{"path": s} if isinstance(s, str) else s for s in e["sources"]]
                for s in e["sources"]:
                    s["path"] = str((base / s["path"]).resolve())
            if e["kind"] == "choice":
                e["weight"] = 0.5
        unittest_src = Path(sysconfig.get_paths()["stdlib"]) / "unittest"
        suite["evaluations"].append({"name": "unittest-src", "kind": "text", "weight": 1.0, "max_tokens": 20_000,
                                     "sources": [{"path": str(unittest_src), "extensions": [".py"]}]})
        (tmp / "suite.yaml").write_text(yaml.safe_dump(suite, sort_keys=False))
        # Next to the real config, so its relative corpus paths (part of the sample key) stay the same.
        raw |= {"name": f"{exp.name}-bench", "workspace": str(tmp / "ws"), "evals": str(tmp / "suite.yaml")}
        bench_cfg = args.config.with_name(f".{exp.name}-bench-{tmp.name}.yaml")
        bench_cfg.write_text(yaml.safe_dump(raw, sort_keys=False))
        try:
            changed = load_experiment(bench_cfg)
            with Store(tmp / "ws" / "mixopt.db") as store:
                trainings_before = store.summary()["trainings"]
            load_before = os.getloadavg()[0]
            c0 = _cpu_seconds()
            t0 = time.perf_counter()
            evaluated = run_eval(changed, Runtime(workers=args.workers, say=lambda m: None))
            t1 = time.perf_counter()
            c1 = _cpu_seconds()
            rec = recommend_mixture(changed, Runtime(say=lambda m: None), reeval=False)
            t2 = time.perf_counter()
            c2 = _cpu_seconds()
            reeval_seconds = t2 - t0
            with Store(tmp / "ws" / "mixopt.db") as store:
                trainings_after = store.summary()["trainings"]
        finally:
            bench_cfg.unlink(missing_ok=True)
            changed_optimal = bench_cfg.with_name(f"{exp.name}-bench.optimal.yaml")
            changed_optimal.unlink(missing_ok=True)

    result = {
        "experiment": exp.name, "runs": runs, "sweep_seconds": round(sweep_seconds, 2), "sweep_seconds_from": sweep_source,
        "reeval_and_refit_seconds": round(reeval_seconds, 2),
        "of_which": {"evaluate_seconds": round(t1 - t0, 2),
                     "evaluate_split": {"load_checkpoints_seconds": round(evaluated.load_seconds, 2),
                                        "forward_seconds": round(evaluated.measure_seconds, 2),
                                        "rest_seconds": round(t1 - t0 - evaluated.load_seconds
                                                              - evaluated.measure_seconds, 2),
                                        "processes": evaluated.workers},
                     "refit_seconds": round(t2 - t1, 2), "evaluations_computed": evaluated.evaluations},
        "ratio": round(reeval_seconds / sweep_seconds, 4), "target_ratio": 0.05,
        "cpu_seconds": {"evaluate": round(c1 - c0, 2), "refit": round(c2 - c1, 2), "sweep": args.sweep_cpu_seconds},
        "cpu_ratio": round((c2 - c0) / args.sweep_cpu_seconds, 4) if args.sweep_cpu_seconds else None,
        "load_average": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2),
                         "cores": os.cpu_count()},
        "proxies_trained_during_reeval": trainings_after - trainings_before, "workers": args.workers,
        "suite_change": "added text eval unittest-src (20k tokens, the size of the demo's held-out sets); faq-answer weight 0 -> 0.5",
        "new_objective": rec.objective, "new_weights": dict(zip(rec.domains, map(float, rec.weights))),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


if __name__ == "__main__":
    main()
