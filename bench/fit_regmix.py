"""Benchmark: fit + cross-validation + optimum on RegMix's 512-run, 17-domain swarm.

Two measurements, each against the same job done the way RegMix's notebook does it: LightGBM
(gbdt, 1000 iterations, lr 0.01, seed 42) on all runs, then 100k simulated mixtures scored and the
top 100 averaged (no cross-validation, no intervals):

1. in this process: mixopt's `auto` (every family x 5-fold CV, the ensemble, the chosen one refit,
   its optimum within the trust region and without it), no bootstrap; target < 2 s;
2. whole processes, interpreter start and imports included: the default `mixopt fit --runs ...`
   (the above plus 50 bootstrap refits for the intervals) against a `python -c` running RegMix's
   way (reading the CSVs with polars, which imports faster than the notebook's pandas); target: ratio <= 1.

Runs are interleaved and the minimum of --repeats is kept (this machine is shared and noisy).
Ranking quality on the 256 unseen 1M mixtures is printed next to the times. Reads
../shared/anchors/regmix; prints JSON and writes it to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ANCHOR = Path(__file__).resolve().parents[2] / "shared" / "anchors" / "regmix"
TARGET = "metric/the_pile_pile_cc_val_loss"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--anchor", type=Path, default=ANCHOR)
    ap.add_argument("--out", type=Path, default=Path("bench/results/fit_regmix.json"))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if not (args.anchor / "train_mixture_1m.csv").is_file():
        print(f"skipped: RegMix anchor data not found in {args.anchor}")
        return
    import lightgbm

    from mixopt.fit.recommend import fit_swarm
    from mixopt.fit.regress import spearman
    from mixopt.fit.swarm import FitSettings
    from mixopt.fit.external import check_mixtures, load_swarm, read_table

    swarm = load_swarm(args.anchor / "train_mixture_1m.csv", {TARGET: 1.0}, args.anchor / "train_pile_loss_1m.csv",
                       "index")
    test = read_table(args.anchor / "test_mixture_1m.csv").join(read_table(args.anchor / "test_pile_loss_1m.csv"),
                                                                on="index")
    Xt, yt = check_mixtures(test, swarm.domains, "test", 0.01), test[TARGET].to_numpy()
    fit_swarm(swarm, FitSettings(model="gbm", bootstrap=0, cv_folds=2))  # warm imports, not timed

    ours = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        rec, model = fit_swarm(swarm, FitSettings(model="auto", bootstrap=0))
        ours.append(time.perf_counter() - t0)

    def regmix_way():
        m = lightgbm.LGBMRegressor(objective="regression", boosting_type="gbdt", n_estimators=1000,
                                   learning_rate=0.01, random_state=42, verbose=-1)
        m.fit(swarm.X, swarm.metrics[TARGET])
        rng = np.random.default_rng(42)
        sims = rng.dirichlet(np.maximum(swarm.prior, 1e-3) * 1.0, 100_000)
        top = np.argsort(m.predict(sims))[:100]
        return m, sims[top].mean(axis=0)

    theirs = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        base, base_w = regmix_way()
        theirs.append(time.perf_counter() - t0)

    cli, script = _whole_process_commands(args.anchor)
    whole_ours, whole_theirs = [], []
    for _ in range(args.repeats):
        for cmd, out in ((cli, whole_ours), (script, whole_theirs)):
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            out.append(time.perf_counter() - t0)

    wide = _wide_swarm_seconds(args.repeats)

    result = {
        "table": "RegMix train_*_1m.csv: 512 runs x 17 domains, target " + TARGET,
        "cores": os.cpu_count(),
        "mixopt_auto_seconds": round(min(ours), 3),
        "mixopt_auto": {"chosen": rec.model, "cv_spearman": {k: round(v.spearman, 4) for k, v in rec.candidates.items()},
                        "test_spearman_1m": round(spearman(model.predict(Xt), yt), 4),
                        "work": "every family x 5-fold CV + ensemble + refit + optimum (100k simulations, top-100 mean) "
                                "within the trust region and without it; no bootstrap"},
        "regmix_way_seconds": round(min(theirs), 3),
        "regmix_way": {"test_spearman_1m": round(spearman(base.predict(Xt), yt), 4),
                       "work": "LightGBM 1000 iterations + 100k simulations, top-100 mean; no CV"},
        "ratio_mixopt_over_regmix": round(min(ours) / min(theirs), 3),
        "pile_cc_weight": {"mixopt": round(float(rec.weights[swarm.domains.index("train_the_pile_pile_cc")]), 4),
                           "regmix_way": round(float(base_w[swarm.domains.index("train_the_pile_pile_cc")]), 4)},
        "target_seconds": 2.0,
        "whole_process": {
            "mixopt_fit_cli_seconds": round(min(whole_ours), 3),
            "mixopt_fit_cli": " ".join(map(str, cli[2:])) + "  (default: auto + 50 bootstrap refits)",
            "regmix_way_process_seconds": round(min(whole_theirs), 3),
            "ratio_mixopt_over_regmix": round(min(whole_ours) / min(whole_theirs), 3),
            "all_seconds": {"mixopt": [round(x, 2) for x in whole_ours],
                            "regmix_way": [round(x, 2) for x in whole_theirs]},
            "target_ratio": 1.0,
        },
        "wide_swarm": {
            "table": "32 domains x 49 runs, objective = noise (random splits of one corpus): every model's CV R^2 <= 0",
            "mixopt_fit_cli_seconds": round(min(wide), 3),
            "all_seconds": [round(x, 2) for x in wide],
            "target_seconds": 10.0,
        },
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


REGMIX_WAY = """
import sys
import lightgbm
import numpy as np
import polars as pl
a = sys.argv[1]
t = pl.read_csv(a + "/train_mixture_1m.csv").join(pl.read_csv(a + "/train_pile_loss_1m.csv"), on="index")
X = t.select([c for c in t.columns if c.startswith("train_")]).to_numpy()
m = lightgbm.LGBMRegressor(objective="regression", boosting_type="gbdt", n_estimators=1000, learning_rate=0.01,
                           random_state=42, verbose=-1).fit(X, t[sys.argv[2]].to_numpy())
prior = X.mean(axis=0)
sims = np.random.default_rng(42).dirichlet(np.maximum(prior, 1e-3), 100_000)
print(sims[np.argsort(m.predict(sims))[:100]].mean(axis=0))
"""


def _wide_swarm_seconds(repeats: int) -> list[float]:
    """Whole-process `mixopt fit --runs` on 32 domains x 49 runs whose objective the mixture does not move."""
    import csv
    import tempfile

    rng = np.random.default_rng(0)
    X, y = rng.dirichlet(np.ones(32), 49), 3.0 + rng.normal(0, 0.01, 49)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "runs.csv"
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["run", *[f"d{i}" for i in range(32)], "bpb"])
            w.writerows([[f"r{i}", *map(float, x), float(v)] for i, (x, v) in enumerate(zip(X, y))])
        for _ in range(repeats):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "mixopt.cli", "fit", "--runs", str(path), "--key", "run", "--target",
                            "bpb"], check=True, capture_output=True)
            out.append(time.perf_counter() - t0)
    return out


def _whole_process_commands(anchor: Path) -> tuple[list[str], list[str]]:
    cli = [sys.executable, "-m", "mixopt.cli", "fit", "--runs", str(anchor / "train_mixture_1m.csv"), "--scores",
           str(anchor / "train_pile_loss_1m.csv"), "--key", "index", "--target", TARGET]
    return cli, [sys.executable, "-c", REGMIX_WAY, str(anchor), TARGET]


if __name__ == "__main__":
    main()
