"""Benchmark (issue 24): at equal compute, does spending some of it on larger proxies give a better
mixture for the larger size than spending all of it on cheap ones?

Per set of real-text domains (the demo's four corpora after `make demo`, and bench/calibration.py's
`python` set built from this machine's files), two arms with the same FLOPs (6 x parameters x tokens
per proxy, as the store records them):

- single fidelity: tiny proxies only (design.runs chosen so the arm's FLOPs match the other's within
  one tiny proxy), fit at tiny; its recommendation is used as is for 1m;
- multi-fidelity: fewer tiny proxies plus a few `1m` ones (design.fidelities), one law across the
  sizes, recommending for optimum.target_size = the 1m proxy's parameters.

Both recommendations and the prior are then trained at 1m with 3 seeds (replicate k has the same seed
for every mixture, so differences are paired) in a workspace of their own, which neither arm's fit
sees. Reported per set: the verified objectives, multi minus single per seed with its 90% t interval
(negative: multi-fidelity better), whether multi's predicted interval covers its verified mean, the
cross-scale rank correlation (the tiny fit's predictions vs what 1m measured), each arm's FLOPs and
device-seconds, and the joint law's predictions of 1m runs it did not see (each of the arm's 1m runs
left out in turn, and the three verified mixtures) against what they measured: Spearman.

Every sweep goes through the CLI (what a user runs) and is resumable (the store); a finished set is
kept under --root/done/, so a rerun picks up where one stopped. --quick: one set, fewer and shorter
proxies (a smoke run, minutes). Prints one JSON object and writes it to --out.

On a CUDA GPU the same script runs at `5m` (the swarm) and `30m` (the larger fidelity and the verify
size) with token counts sized for a GPU (GPU_FULL, GPU_QUICK); `--sizes SMALL,LARGE` picks other
sizes anywhere. The JSON records the sizes and the device. While a set runs, its figures so far are
kept under --root/partial/ and in the JSON's "partial" (a run cut short keeps them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from calibration import mixopt  # noqa: E402 (one CLI-in-a-subprocess helper for the benches)
LEVEL = 0.9


@dataclass(frozen=True)
class Sizing:
    """One run of the benchmark's proxy budget: multi = small x tiny_runs (+ prior + vertices) and
    big x big_runs; single = the small size only, as many as the same FLOPs buy."""

    tokens: int  # per proxy, at both sizes
    tiny_runs: int  # the multi arm's random runs at the small size
    big_runs: int  # the multi arm's proxies at the big size
    train_tokens: int = 40_000  # per domain, the sample
    val_tokens: int = 4_000
    vocab: int = 512
    small: str = "tiny"  # the swarm's size
    big: str = "1m"  # the larger fidelity's, and the size the decision is for (verified there)
    seq_len: int = 64  # one shape for both sizes: at equal tokens both then train the same steps
    batch_size: int = 8
    batch_proxies: int = 1  # proxies trained together (--batch-proxies): 1 on 2 CPU cores
    seeds: int = 3  # verification seeds per mixture at the big size


FULL = Sizing(tokens=16_000, tiny_runs=8, big_runs=3)
QUICK = Sizing(tokens=8_000, tiny_runs=4, big_runs=3, train_tokens=20_000, val_tokens=3_000)
# make gpu-check's CPU rehearsal: the smallest budget that still has both arms, a verification (2 seeds:
# the least that has an interval) and a law; ~2 min on 2 loaded cores, most of it per-proxy overhead
REHEARSE = Sizing(tokens=2_048, tiny_runs=2, big_runs=1, train_tokens=8_000, val_tokens=2_000, seeds=2)
# On a GPU: 5m and 30m with 4,096 tokens a step (seq 256 x batch 16), so a proxy is ~250 steps (full)
# or ~64 (quick) instead of the CPU's 16-31 at 512 a step; 8 proxies trained together, since one 5m
# proxy leaves an H100 nearly idle (launch-bound). The python set has ~200k tokens a domain at vocab
# 512 (400 kB of text each; its code domain 200,826 here), so the sample stays at 150k a domain and a
# full proxy sees its mixture's text ~1.7 times (1M tokens of a 600k sample): the data is the limit.
GPU_FULL = Sizing(tokens=1_048_576, tiny_runs=8, big_runs=3, train_tokens=150_000, small="5m", big="30m",
                  seq_len=256, batch_size=16, batch_proxies=8)
# The quick GPU variant fits `make gpu-check`'s last step (a few minutes at most on one H100): 50
# proxies in all (38 at 5m, 12 at 30m), 64 steps each.
GPU_QUICK = Sizing(tokens=262_144, tiny_runs=4, big_runs=3, train_tokens=80_000, val_tokens=4_000, small="5m",
                   big="30m", seq_len=256, batch_size=16, batch_proxies=8)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- the domain sets ------------------------------------------------------------------------------

def demo_set() -> dict[str, dict] | None:
    """The demo's four corpora (`make demo` builds them), or None where they are not built."""
    data = REPO / "demo" / "data"
    if not (data / "code.parquet").is_file():
        return None
    return {"code": {"path": str(data / "code.parquet")},
            "qa": {"path": str(data / "qa"), "extensions": [".txt"]},
            "dialogue": {"path": str(data / "dialogue")},
            "wiki": {"path": str(data / "wiki.jsonl.gz")}}


def python_set(cache: Path) -> dict[str, dict]:
    """bench/calibration.py's `python` set: stdlib code, pydoc's prose, .pyi stubs, license texts."""
    sys.path.insert(0, str(REPO / "bench"))
    from calibration import build_corpora

    return {d: {"path": v["path"]} for d, v in build_corpora(cache, sets=("python",))["python"].items()}


# --- configs --------------------------------------------------------------------------------------

def param_counts(s: Sizing) -> dict[str, int]:
    from mixopt.config.schema import Proxy
    from mixopt.proxy.model import param_count, proxy_spec

    return {size: param_count(proxy_spec(Proxy(size=size, tokens=s.tokens, seq_len=s.seq_len,
                                               batch_size=s.batch_size), s.vocab))
            for size in (s.small, s.big)}


def single_runs(s: Sizing) -> int:
    """The single arm's random runs: the multi arm's plus what its big proxies cost in small ones
    (both arms have the same prior and vertices, every proxy the same tokens)."""
    p = param_counts(s)
    return s.tiny_runs + round(s.big_runs * p[s.big] / p[s.small])


def config(domains: dict[str, dict], root: Path, set_name: str, arm: str, s: Sizing) -> Path:
    """The YAML of one arm (single | multi | verify), its workspace its own."""
    name = f"{set_name}-{arm}"
    doc = {
        "name": name, "seed": 0, "workspace": str(root / "ws" / name),
        "domains": [{"name": d, "sources": [v]} for d, v in domains.items()],
        "sample": {"train_tokens": s.train_tokens, "val_tokens": s.val_tokens, "tokenizer": {"vocab_size": s.vocab}},
        "proxy": {"size": s.big if arm == "verify" else s.small, "tokens": s.tokens, "seq_len": s.seq_len,
                  "batch_size": s.batch_size},
        "design": {"min_weight": 0.01, "replicates": None},
        "fit": {"model": "loglinear", "cv_folds": 5},
    }
    if arm == "single":
        doc["design"]["runs"] = single_runs(s)
    elif arm == "multi":
        doc["design"]["fidelities"] = [{"size": s.small, "runs": s.tiny_runs}, {"size": s.big, "runs": s.big_runs}]
        doc["optimum"] = {"target_size": float(param_counts(s)[s.big])}
    else:
        doc["design"]["runs"] = 0
    path = root / "configs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# --- the measurements -----------------------------------------------------------------------------

def compute(cfg: Path) -> dict:
    """The arm's trained proxies, FLOPs and device-seconds per size and in total, as its store records them."""
    from mixopt.config.load import load_experiment
    from mixopt.sweep.fidelity import size_table
    from mixopt.sweep.plan import load_plan
    from mixopt.sweep.store import Store

    exp = load_experiment(cfg)
    with Store(load_plan(exp, design=False).workspace.db_path) as store:
        rows = [r for r in size_table(exp, store) if r["done"] or r["suspect"]]
    return {"by_size": {r["size"]: {"proxies": r["done"] + r["suspect"], "params": r["params"], "flops": r["flops"],
                                    "device_seconds": round(r["device_seconds"], 1)} for r in rows},
            "flops": float(sum(r["flops"] for r in rows)),
            "device_seconds": round(float(sum(r["device_seconds"] for r in rows)), 1)}


def verify_at_big(cfg: Path, named: dict[str, list[float]], workers: int, s: Sizing) -> dict[str, list[float]]:
    """Each named mixture trained at the big size with s.seeds seeds (paired: replicate k, the same seed for every
    mixture) in the verify workspace; name -> objective per seed."""
    from mixopt.config.load import load_experiment
    from mixopt.config.runtime import Runtime
    from mixopt.core.mixtures import Mixture
    from mixopt.sweep.plan import load_plan
    from mixopt.sweep.reeval import record_scores
    from mixopt.sweep.run import run_sweep
    from mixopt.sweep.store import Store

    exp = load_experiment(cfg)
    extra = [Mixture(f"verify:{name}", tuple(map(float, w)), r) for name, w in named.items() for r in range(s.seeds)]
    os.environ.setdefault("MIXOPT_AUTO_BATCH", "1")
    os.environ.setdefault("MIXOPT_AUTO_COMPILE", "off")
    report = run_sweep(exp, Runtime(workers=workers, compile="off", batch_proxies=s.batch_proxies), extra=extra,
                       design=False)
    if report.failed:
        raise RuntimeError(f"a verification run failed: {report.failed[0][1]}")
    plan = load_plan(exp, extra, design=False)
    with Store(plan.workspace.db_path) as store:
        scores = record_scores(plan, store)
    return {name: [float(scores[plan.key(tuple(map(float, w)), r)]) for r in range(s.seeds)] for name, w in named.items()}


def paired(a: list[float], b: list[float]) -> dict:
    """a - b per seed: mean and its LEVEL t interval (lower objective is better: negative favours a)."""
    from scipy.stats import t

    d = np.asarray(a) - np.asarray(b)
    half = float(t.ppf(0.5 + LEVEL / 2, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
    return {"per_seed": d.tolist(), "mean": float(d.mean()), "interval": [float(d.mean() - half), float(d.mean() + half)]}


def _rho(a, b) -> float | None:
    from mixopt.fit.regress import spearman

    if len(a) < 3:
        return None
    r = float(spearman(np.asarray(a, float), np.asarray(b, float)))
    return r if np.isfinite(r) else None


def held_out_law(cfg: Path, form: str, verified: dict[str, list[float]], named: dict[str, list[float]]) -> dict:
    """The multi arm's joint law against 1m runs it did not see: each of its own 1m runs left out in
    turn (fit on the rest), and the verified mixtures (fit on everything the arm trained)."""
    from mixopt.config.load import load_experiment
    from mixopt.config.runtime import Runtime
    from mixopt.fit.fidelity import SCALE, joint_swarm, size_swarms
    from mixopt.fit.from_store import experiment_swarm
    from mixopt.fit.scaling import _law, fit_law, held_out_largest

    exp = load_experiment(cfg)
    rt = Runtime(compile="off")
    plan, swarm, _, _ = experiment_swarm(exp, rt, reeval=False)
    joint = joint_swarm(size_swarms(exp, plan, swarm, rt, False))
    N = joint.covariates[SCALE]
    n = np.log(N / N.min())
    big = np.flatnonzero(N == N.max())
    loo, at_named = np.zeros(len(big)), np.zeros(len(named))
    W = np.array(list(named.values()), float)
    for m, a in joint.terms.items():
        y = joint.metrics[m]
        full = fit_law(joint.X, y, n, None, form=form)
        loo += a * held_out_largest(joint.X, y, n, None, full, form)
        at_named += a * _law(full, W, np.full(len(W), n.max()), None)
    measured_named = [float(np.mean(v)) for v in verified.values()]
    pred = [*loo.tolist(), *at_named.tolist()]
    meas = [*joint.y[big].tolist(), *measured_named]
    return {"form": form, "left_out_runs": len(big),
            "spearman_left_out": _rho(loo, joint.y[big]),
            "verified": {k: {"predicted": float(p), "measured_mean": v} for k, p, v in zip(named, at_named, measured_named)},
            "spearman_all": _rho(pred, meas), "points": len(pred),
            "mean_abs_error": float(np.mean(np.abs(np.array(pred) - np.array(meas))))}


def partial_path(root: Path, set_name: str) -> Path:
    return root / "partial" / f"{set_name}.json"


def write_partial(root: Path, set_name: str, rec: dict) -> None:
    """The set's figures so far (atomically), so a run cut short (a deadline, a lost machine) keeps them."""
    path = partial_path(root, set_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(rec, indent=1))
    os.replace(tmp, path)


def run_set(set_name: str, domains: dict[str, dict], root: Path, s: Sizing, workers: int,
            progress: Callable[[dict], None] | None = None) -> dict:
    """Both arms of one domain set, swept, fitted and verified at the big size; the set's record (kept
    under root/done/, so a rerun reuses it; the stages reached so far under root/partial/)."""
    done = root / "done" / f"{set_name}.json"
    if done.is_file():
        log(f"{set_name}: finished earlier ({done})")
        return json.loads(done.read_text())
    t0 = time.time()
    cfgs = {arm: config(domains, root, set_name, arm, s) for arm in ("single", "multi", "verify")}
    fits, seconds = {}, {}
    # on the CPU the helper's MIXOPT_AUTO_BATCH=1 decides; a GPU trains s.batch_proxies together
    batch = ["--batch-proxies", s.batch_proxies] if s.batch_proxies > 1 else []
    for arm in ("multi", "single"):
        ts = time.time()
        mixopt("sample", cfgs[arm])
        mixopt("sweep", cfgs[arm], "--workers", workers, "--no-progress", *batch)
        fits[arm] = mixopt("fit", cfgs[arm], "--format", "json", "--no-plots", json_out=True)
        seconds[arm] = round(time.time() - ts, 1)
        log(f"{set_name} {arm}: swept and fitted in {seconds[arm]:.0f}s")
        part = {"set": set_name, "stage": f"{arm} fitted", "sizing": asdict(s), "sizes": [s.small, s.big],
                "arms": {a: {"weights": f["weights"], **compute(cfgs[a])} for a, f in fits.items()},
                "cross_scale": (fits.get("multi", {}).get("fidelity") or {}).get("cross_scale"),
                "seconds": {**seconds, "total": round(time.time() - t0, 1)}}
        write_partial(root, set_name, part)
        if progress:
            progress(part)
    prior = list(fits["single"]["prior"].values()) if isinstance(fits["single"].get("prior"), dict) else None
    from mixopt.config.load import load_experiment
    from mixopt.sweep.plan import load_plan

    prior = prior or list(map(float, load_plan(load_experiment(cfgs["single"]), design=False).prior))
    named = {"single": list(fits["single"]["weights"].values()), "multi": list(fits["multi"]["weights"].values()),
             "prior": prior}
    ts = time.time()
    mixopt("sample", cfgs["verify"])
    verified = verify_at_big(cfgs["verify"], named, workers, s)
    seconds["verify"] = round(time.time() - ts, 1)
    log(f"{set_name}: verified at {s.big} in {seconds['verify']:.0f}s")
    f = fits["multi"].get("fidelity") or {}
    cost = {arm: compute(cfgs[arm]) for arm in ("single", "multi")}
    tiny_flops = 6.0 * param_counts(s)[s.small] * s.tokens
    # the interval for one new 1m proxy where the 1m runs have replicates, else the fit's for its prediction
    decision = fits["multi"].get("decision") or {}
    kinds = (("new proxy", f.get("new_proxy_interval") or decision.get("new_proxy_interval")),
             ("seed-mean", decision.get("mean_interval")),
             ("bootstrap of the prediction", (fits["multi"].get("interval") or {}).get("predicted")))
    interval_kind, multi_interval = next(((k, v) for k, v in kinds if v), (None, None))
    mean_multi = float(np.mean(verified["multi"]))
    rec = {
        "set": set_name, "domains": list(domains), "sizing": asdict(s), "sizes": [s.small, s.big],
        "params": param_counts(s),
        "arms": {
            "single": {"tiny_runs": single_runs(s), "weights": fits["single"]["weights"],
                       "cv": fits["single"].get("cv"), **cost["single"]},
            "multi": {"tiny_runs": s.tiny_runs, "big_runs": s.big_runs, "weights": fits["multi"]["weights"],
                      "used": f.get("used"), "law": f.get("law"), "law_cv": f.get("law_cv"),
                      "predicted": fits["multi"].get("predicted"), "predicted_interval": multi_interval,
                      "predicted_interval_kind": interval_kind,
                      "interval_covers_verified_mean": None if not multi_interval else
                      bool(multi_interval[0] <= mean_multi <= multi_interval[1]),
                      "moved_l1": f.get("moved_l1"), **cost["multi"]},
        },
        # equal compute: the arms' FLOPs may differ by at most one small proxy's
        "flops_ratio_multi_over_single": cost["multi"]["flops"] / cost["single"]["flops"],
        "flops_tolerance": tiny_flops / cost["single"]["flops"],
        "verified": {k: {"per_seed": v, "mean": float(np.mean(v))} for k, v in verified.items()},
        "multi_minus_single": paired(verified["multi"], verified["single"]),
        "multi_minus_prior": paired(verified["multi"], verified["prior"]),
        "single_minus_prior": paired(verified["single"], verified["prior"]),
        "cross_scale": f.get("cross_scale"),
        "held_out_law": held_out_law(cfgs["multi"], f.get("law") or "pooled", verified, named),
        "seconds": {**seconds, "total": round(time.time() - t0, 1)},
    }
    done.parent.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(rec, indent=1))
    partial_path(root, set_name).unlink(missing_ok=True)
    d = rec["multi_minus_single"]
    log(f"{set_name}: at {s.big}, single {rec['verified']['single']['mean']:.4f}, multi {mean_multi:.4f}, "
        f"multi - single {d['mean']:+.4f} [{d['interval'][0]:+.4f}, {d['interval'][1]:+.4f}]")
    return rec


def summarize(sets: list[dict], wall_s: float) -> dict:
    return {"sets": len(sets),
            "multi_no_worse": sum(r["multi_minus_single"]["mean"] <= 0 for r in sets),
            "multi_better_decided": sum(r["multi_minus_single"]["interval"][1] < 0 for r in sets),
            "single_better_decided": sum(r["multi_minus_single"]["interval"][0] > 0 for r in sets),
            "law_used": sum(r["arms"]["multi"]["used"] == "the law across sizes" for r in sets),
            "max_flops_mismatch": max(abs(r["flops_ratio_multi_over_single"] - 1) for r in sets),
            "wall_s": round(wall_s, 1)}


def write(args, s: Sizing, device: str, sets: list[dict], t0: float, partial: dict | None = None) -> dict:
    """The JSON (atomically): finished sets, and the one under way's figures so far (`partial`)."""
    out = {"benchmark": "fidelity", "quick": args.quick, "rehearse": args.rehearse, "device": device,
           "sizes": [s.small, s.big], "target": s.big, "sizing": asdict(s), "seeds": s.seeds, "level": LEVEL,
           "summary": summarize(sets, time.time() - t0) if sets else None, "results": sets, "partial": partial}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(json.dumps(out, indent=1))
    os.replace(tmp, args.out)
    return out


def fail(msg: str) -> None:
    """Bad input: one line, exit code 2."""
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def device_name() -> str:
    import torch

    return f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"


def choose_sizing(cuda: bool, quick: bool, rehearse: bool, sizes: str | None) -> tuple[str, Sizing]:
    """The preset for this device and mode, with --sizes applied; (its name, the sizing)."""
    from mixopt.proxy.model import SIZES

    name, s = (("rehearse", REHEARSE) if rehearse else ("gpu-quick", GPU_QUICK) if cuda and quick
               else ("gpu-full", GPU_FULL) if cuda else ("quick", QUICK) if quick else ("full", FULL))
    if sizes:
        small, _, big = sizes.partition(",")
        bad = [x for x in (small, big) if x not in SIZES]
        if bad or not big:
            fail(f"--sizes {sizes}: expected SMALL,LARGE from {', '.join(SIZES)}; e.g. --sizes 5m,30m")
        s = replace(s, small=small, big=big)
        p = param_counts(s)
        if p[small] >= p[big]:
            fail(f"--sizes {sizes}: {small} ({p[small]:,} parameters) is not smaller than {big} "
                     f"({p[big]:,}); give the smaller size first")
        name += f"-{small}-{big}"
    return name, s


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=REPO / "bench" / "cache" / "fidelity",
                    help="workspaces and finished sets (a rerun reuses them)")
    ap.add_argument("--sets", default="demo,python", help="demo (after `make demo`), python")
    ap.add_argument("--quick", action="store_true", help="one set, fewer and shorter proxies: a smoke run")
    ap.add_argument("--rehearse", action="store_true",
                    help="one set at the smallest budget with both arms (make gpu-check's CPU rehearsal)")
    ap.add_argument("--sizes", default=None, help="SMALL,LARGE proxy sizes (default: tiny,1m on a CPU, 5m,30m on a GPU)")
    ap.add_argument("--workers", type=int, default=None, help="default: 2 on a CPU, 1 on a GPU")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "fidelity.json")
    args = ap.parse_args(argv)
    t0 = time.time()
    device = device_name()
    preset, s = choose_sizing(device != "cpu", args.quick, args.rehearse, args.sizes)
    workers = args.workers or (2 if device == "cpu" else 1)
    root = args.root / preset  # each preset and its sizes their own workspaces and finished sets
    log(f"fidelity: {preset} on {device}: {s.small} swarm, {s.big} larger fidelity and verify size, "
        f"{s.tokens:,} tokens a proxy")
    names = args.sets.split(",")[:1] if args.quick or args.rehearse else args.sets.split(",")
    sets = []
    for name in names:
        if name == "demo":
            domains = demo_set()
            if domains is None:
                log("demo: demo/data is not built (`make demo`): skipped")
                continue
        elif name == "python":
            domains = python_set(args.root / "corpora")
        else:
            fail(f"--sets {name}: not a domain set; use demo, python")
        sets.append(run_set(name, domains, root, s, workers,
                            progress=lambda part: write(args, s, device, sets, t0, partial=part)))
        out = write(args, s, device, sets, t0)  # after each set: a run cut short still has what it finished
    out = write(args, s, device, sets, t0)
    print(json.dumps(out["summary"], indent=1))
    return out


if __name__ == "__main__":
    main()
