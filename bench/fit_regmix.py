"""Benchmark: fit + cross-validation + optimum on RegMix's 512-run, 17-domain swarm.

mixopt's `auto` (4 regressors x 5-fold CV, the chosen one refit, its optimum) against the same job
done the way RegMix's notebook does it: LightGBM (gbdt, 1000 iterations, lr 0.01, seed 42) on all
runs, then 100k simulated mixtures scored and the top 100 averaged (no cross-validation at all).
Both are timed in this process, on the same table; ranking quality on the 256 unseen 1M mixtures is
printed next to the times. Reads ../shared/anchors/regmix; prints JSON and writes it to --out.
"""

from __future__ import annotations

import argparse
import json
import os
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
    from mixopt.fit.tables import check_mixtures, load_swarm, read_table

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

    result = {
        "table": "RegMix train_*_1m.csv: 512 runs x 17 domains, target " + TARGET,
        "cores": os.cpu_count(),
        "mixopt_auto_seconds": round(min(ours), 3),
        "mixopt_auto": {"chosen": rec.model, "cv_spearman": {k: round(v.spearman, 4) for k, v in rec.candidates.items()},
                        "test_spearman_1m": round(spearman(model.predict(Xt), yt), 4),
                        "work": "4 regressors x 5-fold CV + refit + optimum (100k simulations, top-100 mean)"},
        "regmix_way_seconds": round(min(theirs), 3),
        "regmix_way": {"test_spearman_1m": round(spearman(base.predict(Xt), yt), 4),
                       "work": "LightGBM 1000 iterations + 100k simulations, top-100 mean; no CV"},
        "ratio_mixopt_over_regmix": round(min(ours) / min(theirs), 3),
        "pile_cc_weight": {"mixopt": round(float(rec.weights[swarm.domains.index("train_the_pile_pile_cc")]), 4),
                           "regmix_way": round(float(base_w[swarm.domains.index("train_the_pile_pile_cc")]), 4)},
        "target_seconds": 2.0,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
