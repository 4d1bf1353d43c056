"""Benchmark (issue 21): are the fit's intervals and verdicts calibrated against real seed replicates?

Three sets of real-text domains built from text that ships with Debian and Python on this machine
(not the demo's): `python` (stdlib sources, pydoc's prose topics, .pyi stubs, license texts),
`debian` (man pages of commands, man pages of the C API, Debian changelogs, copyright files) and
`sources` (C headers, Perl modules, Python library code). Each set is swept with tiny proxies at
several budgets (tokens per proxy) and design seeds, with the default seed replicates
(`design.replicates`: the prior and spread-out mixtures x 3 seeds). Each sweep is fitted with
several settings (fit model x objective; each a config of its own name on the same workspace, so
each writes its own recommendation) before anything is verified, so no fit sees another's
verification runs. A check is one fit + `mixopt verify --seeds 3` (the recommendation and the prior,
seeds 0..2, paired).

Reported per check: the fit's prediction, its 90% interval for the seed-mean and for one new proxy,
its verdict and gain over the prior, the recommendation's and the prior's 3-seed means, whether the
3-seed mean lies in the seed-mean interval and each single seed in the new-proxy interval, verify's
paired gain and verdict, and a violation when the fit said "better" but the 3-seed mean at the
recommendation is worse than the prior's. Summaries: coverage of both intervals (target 0.85-0.97),
their median widths (also over the sd of the sweep's runs and over one proxy's seed noise),
violations (target 0), how often verify confirms a "better", the fit's gain interval against the
measured paired gain (with and without the 3 seeds' own noise), the fit's error at the
recommendation and at the prior, the replicates' share of the sweep's proxies, wall time. The
default plan (27 checks, 9 sweeps, 360 proxies) took 16.5 min on 2 CPU cores (26.5 with other work running).

Every step goes through the CLI in a subprocess (what a user runs). Sweeps are resumable (the store)
and each finished check is kept under --root/checks/, so a rerun picks up where one stopped; --fresh
deletes --root first; --resummarize recomputes the summary of the run in --out. Prints one JSON object
and writes it to --out.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
DOMAIN_BYTES = 400_000  # text per domain: the sample needs ~100 kB; more only slows the scan
MARKER = ".made-by-bench-calibration"  # --fresh empties --root only when this file says the benchmark made it
MIN_BYTES = 300_000  # a domain with less is a warning: its validation slice would be small


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- the corpora ---------------------------------------------------------------------------------

def _files(paths, limit: int, read, seed: int = 0) -> list[str]:
    """Documents from `paths` in a seeded shuffle (so a domain is not all one letter of the
    alphabet) until `limit` characters; empty and duplicate texts skipped."""
    paths = sorted(set(paths))
    order = np.random.default_rng(seed).permutation(len(paths))
    out, seen, n = [], set(), 0
    for i in order:
        try:
            text = read(paths[i])
        except (OSError, UnicodeDecodeError, EOFError):
            continue
        text = text.strip()
        if len(text) < 200 or text in seen:
            continue
        seen.add(text)
        out.append(text[:40_000])  # one huge file must not be the whole domain
        n += len(out[-1])
        if n >= limit:
            break
    return out


def _plain(p: Path) -> str:
    return p.read_text(encoding="utf-8", errors="replace")


def _gz(p: Path) -> str:
    with gzip.open(p, "rt", encoding="utf-8", errors="replace") as f:
        return f.read()


def _man(p: Path) -> str:
    """A man page with the roff markup crudely stripped: requests, font escapes, comments."""
    t = _gz(p)
    t = re.sub(r'^\.\\".*$', "", t, flags=re.M)
    t = re.sub(r"^\.(SH|SS)\s*", "\n", t, flags=re.M)
    t = re.sub(r"^\.[A-Za-z]{1,3}\b ?", "", t, flags=re.M)
    t = re.sub(r"\\f[BIRP]|\\f\(..|\\\(..|\\[&|^e]", "", t).replace("\\-", "-")
    return re.sub(r"\n{3,}", "\n\n", t)


def _pydoc(_) -> list[str]:
    import pydoc_data.topics

    return [f"{k}\n\n{v}" for k, v in sorted(pydoc_data.topics.topics.items())]


def domain_sets() -> dict[str, dict[str, tuple[str, Callable[[], list[str]]]]]:
    """set -> domain -> (format, a function giving its documents)."""
    std = Path(sysconfig.get_paths()["stdlib"])
    site = Path(sysconfig.get_paths()["purelib"])
    man = Path("/usr/share/man")
    doc = Path("/usr/share/doc")
    std_code = [p for pkg in ("idlelib", "multiprocessing", "unittest", "urllib", "ctypes", "tomllib", "sqlite3",
                              "curses", "dbm", "wsgiref", "xmlrpc", "zoneinfo", "lib2to3")
                for p in (std / pkg).rglob("*.py") if "test" not in p.parts and "tests" not in p.parts]
    licenses = [p for p in site.glob("*.dist-info/**/*") if p.is_file() and p.name.upper().startswith(
        ("LICENSE", "COPYING", "NOTICE"))] + list(Path("/usr/share/common-licenses").glob("*"))
    lib_code = [p for pkg in ("pip", "setuptools", "yaml", "pydantic", "typer", "click", "rich", "jinja2")
                for p in (site / pkg).rglob("*.py") if "tests" not in p.parts]
    return {
        "python": {
            "code": ("parquet", lambda: _files(std_code, DOMAIN_BYTES, _plain)),
            "prose": ("jsonl", lambda: _pydoc(None)),
            "stubs": ("txt", lambda: _files(site.rglob("*.pyi"), DOMAIN_BYTES, _plain)),
            "legal": ("txt", lambda: _files(licenses, DOMAIN_BYTES, _plain)),
        },
        "debian": {
            "commands": ("jsonl", lambda: _files(man.glob("man1/*.gz"), DOMAIN_BYTES, _man)),
            "capi": ("parquet", lambda: _files([*man.glob("man2/*.gz"), *man.glob("man3/*.gz")], DOMAIN_BYTES, _man)),
            "changelogs": ("jsonl", lambda: _files(doc.glob("*/changelog*.gz"), DOMAIN_BYTES, _gz)),
            "copyright": ("txt", lambda: _files(doc.glob("*/copyright"), DOMAIN_BYTES, _plain)),
        },
        "sources": {
            "c": ("parquet", lambda: _files(Path("/usr/include").rglob("*.h"), DOMAIN_BYTES, _plain)),
            "perl": ("jsonl", lambda: _files(Path("/usr/share/perl").rglob("*.pm"), DOMAIN_BYTES, _plain)),
            "pylib": ("txt", lambda: _files(lib_code, DOMAIN_BYTES, _plain)),
        },
    }


def build_corpora(root: Path, sets: tuple[str, ...] | None = None) -> dict[str, dict[str, dict]]:
    """Write each domain (of `sets`, default all) in a format mixopt reads (Parquet, JSONL.gz, a .txt
    folder); set -> domain -> {path, docs, bytes}. Reuses what an earlier run wrote."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out: dict[str, dict[str, dict]] = {}
    for set_name, domains in domain_sets().items():
        if sets is not None and set_name not in sets:
            continue
        out[set_name] = {}
        for name, (fmt, docs_of) in domains.items():
            folder = root / set_name
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / {"parquet": f"{name}.parquet", "jsonl": f"{name}.jsonl.gz", "txt": name}[fmt]
            meta = folder / f"{name}.meta.json"
            if not meta.is_file():
                docs = docs_of()
                if fmt == "parquet":
                    pq.write_table(pa.table({"text": docs}), path)
                elif fmt == "jsonl":
                    with gzip.open(path, "wt", encoding="utf-8") as f:
                        f.writelines(json.dumps({"text": d}) + "\n" for d in docs)
                else:
                    path.mkdir(exist_ok=True)
                    for i, d in enumerate(docs):
                        (path / f"{i:04d}.txt").write_text(d, encoding="utf-8")
                meta.write_text(json.dumps({"docs": len(docs), "bytes": sum(len(d.encode()) for d in docs)}))
            info = json.loads(meta.read_text())
            if info["bytes"] < MIN_BYTES:
                log(f"warning: domain {set_name}/{name} has only {info['bytes']} bytes of text")
            out[set_name][name] = {"path": str(path), **info}
    return out


# --- configs and the CLI -------------------------------------------------------------------------

# Fit settings per sweep: each is one check. The objective is either the default (mean held-out BPB
# over the domains) or the first domain's alone (RegMix-style target, steeper).
FITS = (("auto", "mean"), ("loglinear", "mean"), ("loglinear", "first"))


def config(corpora: dict[str, dict], set_name: str, tokens: int, seed: int, model: str, objective: str,
           root: Path, runs: int) -> Path:
    """The YAML of one check: its name is unique (its own recommendation file), its workspace is the
    sweep's (set, budget, seed)."""
    domains = corpora[set_name]
    first = next(iter(domains))
    sweep = f"{set_name}-{tokens // 1000}k-s{seed}"
    name = f"{sweep}-{model}-{objective}"
    doc = {
        "name": name, "seed": seed, "workspace": str(root / "ws" / sweep),
        "domains": [{"name": d, "sources": [{"path": v["path"]}]} for d, v in domains.items()],
        "sample": {"train_tokens": 40_000, "val_tokens": 4_000, "tokenizer": {"vocab_size": 512}},
        "proxy": {"size": "tiny", "tokens": tokens, "seq_len": 64, "batch_size": 8},
        # design.replicates left at its default: the noise model under test is the one users get
        "design": {"runs": runs - len(domains) - 1, "min_weight": 0.01},
        "fit": {"model": model, "cv_folds": 5,
                **({"objective": {"domains": {first: 1.0}}} if objective == "first" else {})},
    }
    path = root / "configs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def mixopt(*args, json_out: bool = False):
    """One CLI verb in a subprocess, with the worktree's mixopt; its stdout parsed as JSON if asked."""
    # the caller's PYTHONPATH kept after the worktree: on a lent GPU machine it holds the wheels
    # bench/gpu_check.sh installed (pydantic, zstandard, ...), without which the CLI cannot import
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "MIXOPT_AUTO_BATCH": "1", "MIXOPT_AUTO_COMPILE": "off",
           "TOKENIZERS_PARALLELISM": "false", "HF_DATASETS_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "mixopt.cli", *map(str, args)], capture_output=True, text=True,
                       env=env, cwd=REPO)
    if r.returncode != 0:
        raise RuntimeError(f"mixopt {' '.join(map(str, args))} exited {r.returncode}:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout) if json_out else r.stdout


def sweep_stats(cfg: Path) -> dict:
    """The sweep's proxies (its design, replicates included: not verification runs) and how many are
    replicates."""
    sys.path.insert(0, str(REPO))
    from mixopt.config.load import load_experiment
    from mixopt.sweep.plan import load_plan

    plan = load_plan(load_experiment(cfg))
    return {"proxies": len(plan.mixtures), "replicate_proxies": sum(1 for m in plan.mixtures if m.replicate > 0)}


# --- one check -----------------------------------------------------------------------------------

def inside(x: float, ci) -> bool | None:
    return None if ci is None else bool(ci[0] <= x <= ci[1])


def check_record(meta: dict, fit: dict, ver: dict) -> dict:
    """The figures of one check from `fit --format json` and `verify --seeds K --format json`."""
    d = fit["decision"]
    g = d["gains"][0]
    rec, prior = ver["mixtures"][0], ver["mixtures"][1]
    mean_ci, proxy_ci = d["mean_interval"], d["new_proxy_interval"]
    fit_better = d["verdict"] == "better"
    worse_measured = rec["mean"] > prior["mean"]  # lower is better
    return {
        **meta,
        "cv_spearman": (fit.get("cv") or {}).get("spearman"), "model_chosen": fit.get("model"),
        "predicted": fit["predicted"], "mean_interval": mean_ci, "mean_width": mean_ci[1] - mean_ci[0],
        "proxy_interval": proxy_ci, "proxy_width": proxy_ci[1] - proxy_ci[0],
        "model_error_sd": d["model_error_sd"],
        "noise_sd_one_proxy": (d["noise"] or {}).get("sd_one_proxy"),
        "noise_sd_within_seed": (d["noise"] or {}).get("sd_within_seed"),
        "fit_verdict": d["verdict"], "fit_gain": g["gain"], "fit_gain_interval": g["interval"],
        "fit_p_better": g["p_better"],
        "rec_seeds": rec["measured"], "rec_mean": rec["mean"], "prior_seeds": prior["measured"],
        "prior_mean": prior["mean"],
        "inside_mean_interval": inside(rec["mean"], mean_ci),
        "inside_proxy_interval": [inside(x, proxy_ci) for x in rec["measured"]],
        "measured_gain": ver["gain"], "measured_gain_interval": ver["gain_interval"],
        "measured_p_better": ver["p_better"], "verify_verdict": ver["verdict"],
        "agrees_with_fit": ver["agrees_with_fit"], "prior_predicted": ver["prior_predicted"],
        "violation": bool(fit_better and worse_measured),
        "verify_trained": ver.get("trained"),
    }


def run_checks(cfgs: list[Path], fits, set_name: str, tokens: int, seed: int, done: Path, workers: int):
    """Sample and sweep the configs' shared workspace, fit each config, then verify each; (the sweep's
    figures, the checks, the failures). A finished check is read back from `done`."""
    sweep = f"{set_name}-{tokens // 1000}k-s{seed}"
    ts = time.time()
    mixopt("sample", cfgs[0])
    mixopt("sweep", cfgs[0], "--workers", workers, "--no-progress")
    stats = sweep_stats(cfgs[0])
    log(f"{sweep}: {stats['proxies']} proxies ({stats['replicate_proxies']} replicates) in {time.time() - ts:.0f}s")
    done.mkdir(parents=True, exist_ok=True)
    # every fit before any verify: a verification's runs join the store, and a later fit would fit
    # them (its check would no longer be out of sample)
    fitted, failed = {}, []
    for c in cfgs:
        if not (done / f"{c.stem}.json").is_file():
            try:
                fitted[c] = mixopt("fit", c, "--format", "json", "--no-plots", json_out=True)
            except RuntimeError as e:
                failed.append({"check": c.stem, "step": "fit", "error": str(e)})
                log(f"  {c.stem}: fit failed")
    checks = []
    for c, (model, objective) in zip(cfgs, fits):
        out = done / f"{c.stem}.json"
        if c in fitted:
            tv = time.time()
            try:
                ver = mixopt("verify", c, "--seeds", 3, "--workers", workers, "--no-progress", "--format", "json",
                             json_out=True)
            except RuntimeError as e:
                failed.append({"check": c.stem, "step": "verify", "error": str(e)})
                log(f"  {c.stem}: verify failed")
                continue
            measured = json.loads(Path(fitted_path(c)).read_text())["measured"]
            meta = {"check": c.stem, "sweep": sweep, "set": set_name, "tokens": tokens, "seed": seed, "model": model,
                    "objective": objective, "fit_runs": len(measured), "runs_sd": float(np.std(measured)),
                    "verify_s": round(time.time() - tv, 1)}
            out.write_text(json.dumps(check_record(meta, fitted[c], ver)))
        if not out.is_file():
            continue
        rec = json.loads(out.read_text())
        checks.append(rec)
        log(f"  {rec['check']}: fit {rec['fit_verdict']} (gain {rec['fit_gain']:+.4f}), rec {rec['rec_mean']:.4f} "
            f"vs prior {rec['prior_mean']:.4f}, pred {rec['predicted']:.4f} in [{rec['mean_interval'][0]:.4f}, "
            f"{rec['mean_interval'][1]:.4f}]: {rec['inside_mean_interval']}; verify {rec['verify_verdict']}")
    return {"sweep": sweep, **stats, "seconds": round(time.time() - ts, 1)}, checks, failed


# --- the summary ---------------------------------------------------------------------------------

def _coverage(checks: list[dict]) -> dict:
    return {"checks": len(checks),
            "coverage_mean_interval": float(np.mean([c["inside_mean_interval"] for c in checks])),
            "coverage_proxy_interval": float(np.mean([x for c in checks for x in c["inside_proxy_interval"]])),
            "median_mean_width": float(np.median([c["mean_width"] for c in checks])),
            "violations": sum(c["violation"] for c in checks)}


def summarize(checks: list[dict], sweeps: list[dict], wall_s: float, target=(0.85, 0.97)) -> dict:
    """The benchmark's figures from its checks and sweeps (also recomputable from a finished run's
    JSON: --resummarize)."""
    from scipy.stats import norm

    mean_in = [c["inside_mean_interval"] for c in checks]
    proxy_in = [x for c in checks for x in c["inside_proxy_interval"]]
    below = sum(c["measured_gain"] < c["fit_gain_interval"][0] for c in checks)
    above = sum(c["measured_gain"] > c["fit_gain_interval"][1] for c in checks)
    # the fit's gain interval is for the seed-mean; a 3-seed paired mean adds the paired noise
    # sd_within x sqrt(2 / seeds): widened by it, a miss is the fit's, not the seeds'
    z = norm.ppf(0.95)

    def widened(c):
        sd = c["noise_sd_within_seed"] or c["noise_sd_one_proxy"] or 0.0
        h = z * sd * np.sqrt(2 / len(c["rec_seeds"]))
        lo, hi = c["fit_gain_interval"]
        return lo - h <= c["measured_gain"] <= hi + h

    # the fit's prediction at the prior minus the prior's measured 3-seed mean (the same runs the fit
    # saw, replicates averaged): its in-sample error where the gain is measured from
    prior_err = np.array([c["predicted"] + c["fit_gain"] - c["prior_mean"] for c in checks])
    better = [c for c in checks if c["fit_verdict"] == "better"]
    verdicts = {}
    for c in checks:
        key = f"fit {c['fit_verdict']} / verify {c['verify_verdict']}"
        verdicts[key] = verdicts.get(key, 0) + 1
    cov_mean, cov_proxy = float(np.mean(mean_in)), float(np.mean(proxy_in))
    rel = [c["mean_width"] / c["runs_sd"] for c in checks if c["runs_sd"]]
    proxies = sum(s["proxies"] for s in sweeps)
    reps = sum(s["replicate_proxies"] for s in sweeps)
    return {
        "checks": len(checks), "sweeps": len(sweeps), "level": 0.9, "target_coverage": list(target),
        "coverage_mean_interval": cov_mean, "coverage_mean_interval_n": len(mean_in),
        "coverage_proxy_interval": cov_proxy, "coverage_proxy_interval_n": len(proxy_in),
        "mean_in_target": target[0] <= cov_mean <= target[1],
        "median_mean_width": float(np.median([c["mean_width"] for c in checks])),
        "median_proxy_width": float(np.median([c["proxy_width"] for c in checks])),
        "median_mean_width_over_runs_sd": float(np.median(rel)) if rel else None,
        "median_mean_width_over_noise_sd": float(np.median([c["mean_width"] / c["noise_sd_one_proxy"]
                                                            for c in checks if c["noise_sd_one_proxy"]])),
        "median_abs_error": float(np.median([abs(c["rec_mean"] - c["predicted"]) for c in checks])),
        "mean_error_at_recommendation": float(np.mean([c["rec_mean"] - c["predicted"] for c in checks])),
        "mean_error_at_prior": float(-prior_err.mean()), "prior_predicted_too_high": int((prior_err > 0).sum()),
        "coverage_gain_interval": float(np.mean([not (c["measured_gain"] < c["fit_gain_interval"][0]
                                                      or c["measured_gain"] > c["fit_gain_interval"][1])
                                                 for c in checks])),
        "gain_interval_misses": {"measured_below": int(below), "measured_above": int(above)},
        "coverage_gain_interval_with_seed_noise": float(np.mean([widened(c) for c in checks])),
        "violations": sum(c["violation"] for c in checks),
        "fit_said_better": len(better),
        "better_confirmed_by_verify": sum(c["verify_verdict"] == "better" for c in better),
        "better_mean_gain_claimed": float(np.mean([c["fit_gain"] for c in better])) if better else None,
        "better_mean_gain_measured": float(np.mean([c["measured_gain"] for c in better])) if better else None,
        "verdicts": verdicts,
        "by_group": {f"{k}={v}": _coverage([c for c in checks if c[k] == v])
                     for k in ("set", "tokens", "model", "objective") for v in sorted({c[k] for c in checks})},
        "replicate_share": reps / proxies if proxies else None, "sweep_proxies": proxies,
        "replicate_proxies": reps,
        "verification_proxies": sum(c["verify_trained"] or 0 for c in checks),
        "wall_s": round(wall_s, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=REPO / "workspaces" / "bench-calibration")
    ap.add_argument("--cache", type=Path, default=REPO / "bench" / "cache" / "calibration",
                    help="the domain sets' files (built once)")
    ap.add_argument("--sets", default="python,debian,sources")
    # 24k tokens at two seeds, 48k at a third: 9 sweeps of 31 proxies, 27 checks in ~30 min on 2 cores
    ap.add_argument("--sweeps", default="24000:0,24000:1,48000:2",
                    help="TOKENS:SEED per sweep of each set: the proxy budget (tokens per proxy) and the design "
                         "(and training) seed")
    ap.add_argument("--fits", default=",".join(f"{m}:{o}" for m, o in FITS), help="MODEL:OBJECTIVE per check")
    ap.add_argument("--runs", type=int, default=27, help="design runs per sweep: random + prior + vertices")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--fresh", action="store_true", help="delete --root first")
    ap.add_argument("--resummarize", action="store_true",
                    help="recompute the summary of the finished run in --out (its checks, sweeps and wall time)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "calibration.json")
    args = ap.parse_args()
    if args.resummarize:
        old = json.loads(args.out.read_text())
        old["summary"] = {**summarize(old["checks"], old["sweeps"], old["summary"]["wall_s"]),
                          "domain_sets": old["summary"]["domain_sets"]}
        args.out.write_text(json.dumps(old, indent=1))
        print(json.dumps(old["summary"], indent=1))
        return
    t0 = time.time()
    marker = args.root / MARKER
    if args.fresh and args.root.exists():
        if not marker.is_file():  # never delete a folder this benchmark did not make
            sys.exit(f"error: --fresh: {args.root} was not made by bench/calibration.py (no {MARKER}); "
                     "give an empty or new --root")
        shutil.rmtree(args.root)
    if args.root.exists() and any(args.root.iterdir()) and not marker.is_file():
        sys.exit(f"error: {args.root} holds other files; give an empty or new --root")
    args.root.mkdir(parents=True, exist_ok=True)
    marker.write_text("made by bench/calibration.py\n")
    corpora = build_corpora(args.cache)
    log(f"corpora: {json.dumps({k: {d: v['bytes'] for d, v in s.items()} for k, s in corpora.items()})}")
    fits = [tuple(f.split(":")) for f in args.fits.split(",")]
    checks, sweeps, failed = [], [], []
    plan = [tuple(map(int, x.split(":"))) for x in args.sweeps.split(",")]
    for set_name in args.sets.split(","):
        for tokens, seed in plan:
            cfgs = [config(corpora, set_name, tokens, seed, m, o, args.root, args.runs) for m, o in fits]
            sweep, got, bad = run_checks(cfgs, fits, set_name, tokens, seed, args.root / "checks", args.workers)
            sweeps.append(sweep)
            checks += got
            failed += bad
    used = {k: {d: {"docs": v["docs"], "bytes": v["bytes"]} for d, v in corpora[k].items()}
            for k in args.sets.split(",")}
    result = {"summary": {**summarize(checks, sweeps, time.time() - t0), "domain_sets": used}, "sweeps": sweeps,
              "checks": checks, "failed": failed, "command": " ".join(sys.argv)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


def fitted_path(cfg: Path) -> str | None:
    """The fit.json of a config's recommendation (the sweep's runs and their measured objective)."""
    opt = cfg.with_name(f"{cfg.stem}.optimal.yaml")
    return (yaml.safe_load(opt.read_text()) or {}).get("fit") if opt.is_file() else None


if __name__ == "__main__":
    main()
