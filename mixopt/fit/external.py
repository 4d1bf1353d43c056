"""External swarms: fit a table of mixtures and scores that mixopt did not train (e.g. RegMix's
released runs), and score candidate mixtures with a saved fit (`mixopt predict`)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from mixopt.config.validate import check_weight_rows
from mixopt.core.mixtures import Bounds, read_mixtures
from mixopt.core.tables import numeric_text_columns, read_table, weight_matrix
from mixopt.core.workspace import check_folder, claim_folder, read_json
from mixopt.errors import MixoptError, shown
from mixopt.fit.families.base import MixtureModel
from mixopt.fit.families.scaling import ScalingLaw
from mixopt.fit.noise import collapse_replicates
from mixopt.fit.recommend import Recommendation, fit_swarm, save_fit, write_optimal
from mixopt.fit.regress import fit_model
from mixopt.fit.swarm import FitSettings, Swarm

SAVED_FIT = ("fit.json",)  # a --save folder an older mixopt wrote (before folders carried its marker)
TABLE_TOLERANCE = 0.01  # published swarms round weights (RegMix: to 1e-3, rows sum to 1 +- 0.004)


def parse_targets(targets: list[str]) -> dict[str, float]:
    """'COLUMN' or 'COLUMN=WEIGHT' (a negative weight for a higher-is-better score; 0 for a metric
    that only the shared multitask model learns from)."""
    if not targets:
        raise MixoptError("no --target given", "name the score column to minimize, e.g. --target val_loss")
    out: dict[str, float] = {}
    for t in targets:
        name, weight = t, 1.0
        if "=" in t:
            head, _, tail = t.rpartition("=")
            try:
                name, weight = head, float(tail)
            except ValueError:
                pass
        if not math.isfinite(weight):
            raise MixoptError(f"--target {t}: weight must be a finite number", "e.g. --target loss=0.5")
        out[name] = out.get(name, 0.0) + weight
    if not any(out.values()):
        raise MixoptError("every --target has weight 0: nothing to minimize", "give at least one a non-zero weight")
    return out


def load_swarm(runs: Path, targets: dict[str, float], scores: Path | None = None, key: str | None = None,
               domains: str | None = None, tolerance: float = TABLE_TOLERANCE,
               bounds: list[str] | None = None, covariates: list[str] = ()) -> Swarm:
    """`covariates` (e.g. a model-size column) are read per run, never taken for weight columns."""
    import polars as pl

    table = read_table(runs)
    if _is_export(table):  # `mixopt export`: its run keys, and only finished runs have scores
        key = key or "key"
        table = table.filter(pl.col("status") == "done")
        if table.height == 0:
            raise MixoptError(f"{runs}: no finished runs (status done) in this export", "run `mixopt sweep` first")
    if key is not None and scores is None:
        if key not in table.columns:
            raise MixoptError(f"{runs}: no column '{key}'", f"columns: {', '.join(shown(c) for c in table.columns[:12])}")
        if table[key].n_unique() != table.height:
            raise MixoptError(f"{runs}: key '{key}' repeats", "give each run one row")
    if scores is not None:
        if key is None:
            raise MixoptError("--scores needs --key: the column that joins the two tables", "e.g. --key index")
        right = read_table(scores)
        for t, name in ((table, runs), (right, scores)):
            if key not in t.columns:
                raise MixoptError(f"{name}: no column '{key}'", f"columns: {', '.join(shown(c) for c in t.columns[:12])}")
            if t[key].n_unique() != t.height:
                raise MixoptError(f"{name}: key '{key}' repeats", "give each run one row")
        if table[key].dtype != right[key].dtype:
            def kind(t):
                return "a number" if t[key].dtype.is_numeric() else "text" if t[key].dtype == pl.String \
                    else str(t[key].dtype)
            raise MixoptError(f"join key '{key}' is {kind(table)} in {runs} but {kind(right)} in {scores}",
                              "write the key the same way in both tables")
        lost = table.join(right, on=key, how="anti")
        if lost.height:
            raise MixoptError(f"{lost.height} runs in {runs} have no row in {scores} (first {key}: {lost[key][0]})",
                              "pass tables with the same runs, or drop those runs")
        weight_cols = _domain_columns(table, key, domains, exclude=set(covariates))
        _check_target_columns(targets, table, right, weight_cols, runs, scores)
        table = table.join(right.select([key, *[c for c in right.columns if c != key and c not in table.columns]]),
                           on=key, how="inner")
    else:
        weight_cols = _domain_columns(table, key, domains, exclude=set(targets) | set(covariates))
    for t in targets:
        if t not in table.columns:
            raise MixoptError(f"target column '{t}' not found", f"score columns: {_score_columns(table, weight_cols, key)}")
    if len(weight_cols) < 2:
        raise MixoptError(f"found {len(weight_cols)} weight columns ({', '.join(weight_cols)}); a mixture needs >= 2",
                          "name them with --domains PREFIX")
    X = check_mixtures(table, weight_cols, str(runs), tolerance)
    metrics = {}
    for t in targets:
        v = table[t].cast(pl.Float64, strict=False).to_numpy()
        bad = np.flatnonzero(~np.isfinite(v))
        if bad.size:
            raise MixoptError(f"{t}: row {bad[0] + 1} has no finite score", "fill or drop that run")
        metrics[t] = v
    covs = {}
    for c in covariates:
        if c not in table.columns:
            raise MixoptError(f"column '{c}' not found", f"columns: {', '.join(shown(c) for c in table.columns[:12])}")
        v = table[c].cast(pl.Float64, strict=False).to_numpy()
        bad = np.flatnonzero(~(np.isfinite(v) & (v > 0)))
        if bad.size:
            raise MixoptError(f"{c}: row {bad[0] + 1} is not a positive number", "give every run its size")
        covs[c] = v
    keys = [str(k) for k in table[key]] if key else [str(i) for i in range(table.height)]
    objective = " + ".join(f"{w:g}*{t}" if w != 1 else t for t, w in targets.items() if w)
    # an export's seed replicates (mixopt export): the noise model separates the seed shift with them
    seeds = table["replicate"].fill_null(0).cast(pl.Int64).to_numpy() if _is_export(table) and "replicate" in table.columns \
        else None
    return Swarm(weight_cols, X, metrics, targets, keys, _prior(X), parse_bounds(bounds or [], weight_cols),
                 objective, covariates=covs, replicate=seeds)


def _check_target_columns(targets, runs_table, scores_table, weight_cols, runs: Path, scores: Path) -> None:
    """A target must name one score column: the join keeps the runs' column where both tables have
    one (RegMix-style files name a domain's weight and its loss alike), so the fit would regress a
    weight on the weights (R^2 1.000) and say nothing."""
    for t in targets:
        if t in scores_table.columns and t in runs_table.columns:
            raise MixoptError(f"--target {t} names a column of both {runs} and {scores}: ambiguous (the scores' "
                              "column would be dropped and a weight fitted)",
                              f"rename the score column in {scores.name} (e.g. {t}_loss) and target that")
        if t in weight_cols:
            raise MixoptError(f"--target {t} is a weight column of {runs}, not a score",
                              f"name a column of {scores.name}")


def _is_export(table) -> bool:
    return all(c in table.columns for c in ("key", "origin", "status", "objective"))


def _domain_columns(table, key, prefix, exclude) -> list[str]:
    import polars as pl

    if prefix and "," in prefix:  # --domains a,b,c: exactly these columns
        cols = [c.strip() for c in prefix.split(",") if c.strip()]
        missing = [c for c in cols if c not in table.columns]
        if missing:
            raise MixoptError(f"--domains: no column '{missing[0]}'", f"columns: {', '.join(shown(c) for c in table.columns[:12])}")
        return cols
    if prefix:
        cols = [c for c in table.columns if c.startswith(prefix) and c != key and c not in exclude]
        if not cols:
            raise MixoptError(f"no column starts with '{prefix}'", f"columns: {', '.join(shown(c) for c in table.columns[:12])}")
        return cols
    if _is_export(table):  # the weight columns lie between `status` (or `replicate`) and `objective`
        start = table.columns.index("replicate" if "replicate" in table.columns else "status") + 1
        return table.columns[start:table.columns.index("objective")]
    mixed = set(numeric_text_columns(table, exclude | {key}))  # a word among the weights: named, not dropped
    return [c for c in table.columns if c != key and c not in exclude and (c in mixed or (
        table[c].dtype.is_numeric() and table[c].dtype != pl.Boolean))]


def _score_columns(table, weight_cols, key) -> str:
    rest = [c for c in table.columns if c not in weight_cols and c != key]
    return ", ".join(rest[:12]) or "(none)"


def check_mixtures(table, cols: list[str], where: str, tolerance: float) -> np.ndarray:
    """A table's weight columns, validated as mixtures and normalized."""
    return check_weight_rows(weight_matrix(table, cols, where), cols, where, tolerance)


def parse_bounds(specs: list[str], names: list[str]) -> Bounds:
    """--bound DOMAIN=LOW:HIGH (either side may be empty)."""
    lower, upper = np.zeros(len(names)), np.ones(len(names))
    reason = ["none"] * len(names)
    for s in specs:
        name, _, rng = s.partition("=")
        lo, sep, hi = rng.partition(":")
        if name not in names or not sep:
            raise MixoptError(f"--bound {s}: expected DOMAIN=LOW:HIGH with a known domain",
                              f"domains: {', '.join(names[:8])}{' ...' if len(names) > 8 else ''}")
        i = names.index(name)
        try:
            lower[i] = float(lo) if lo else 0.0
            upper[i] = float(hi) if hi else 1.0
        except ValueError:
            raise MixoptError(f"--bound {s}: bounds must be numbers", "e.g. --bound code=0.05:0.4") from None
        if not (0 <= lower[i] <= upper[i] <= 1):
            raise MixoptError(f"--bound {s}: need 0 <= low <= high <= 1", "fix the bound")
        reason[i] = "max" if upper[i] < 1 else "none"
    return Bounds(lower, upper, tuple(reason))


def _prior(X: np.ndarray) -> np.ndarray:
    """Without token counts, the swarm's mean mixture is the centre the KL term and simulation use."""
    p = X.mean(axis=0)
    return p / p.sum()


def fit_external(swarm: Swarm, settings: FitSettings, save: Path | None, plots: bool = True,
                 scaled: dict | None = None, against=()) -> Recommendation:
    """`scaled`: fit_scaled's size (and tokens) arguments; the saved model is the law at the target size."""
    if save is not None:
        check_folder(save, "--save folder", SAVED_FIT)  # before the fit: it takes a while
    if scaled:
        from mixopt.fit.scaling import fit_scaled

        rec, model = fit_scaled(swarm, settings, **scaled)
    else:
        rec, model = fit_swarm(swarm, settings, against=against)
    if save is not None:
        claim_folder(save, "--save folder", SAVED_FIT)  # never over the user's own files (its --runs table)
        fitted = swarm if scaled else collapse_replicates(swarm, swarm.replicate).swarm  # the table as fitted
        save_fit(save, fitted, settings, rec, model, plots=plots)
        write_optimal(save / "optimal.yaml", rec, save.name, save)
    return rec


def load_fit(fit_dir: Path) -> tuple[dict, MixtureModel]:
    """A saved fit, refit from its own table (deterministic): the model that made its recommendation."""

    meta_path, runs_path = fit_dir / "fit.json", fit_dir / "runs.parquet"
    if not meta_path.is_file() or not runs_path.is_file():
        raise MixoptError(f"{fit_dir}: not a saved fit (needs fit.json and runs.parquet)",
                          "pass a folder written by `mixopt fit --save DIR` or a workspace's fits/<key>/")
    fix = "refit and save it again (`mixopt fit ... --save DIR`, or `mixopt fit CONFIG`)"
    meta = read_json(meta_path, " (a saved fit)", fix)
    if not isinstance(meta, dict) or not {"domains", "terms", "model", "settings"} <= set(meta):
        raise MixoptError(f"{meta_path}: not a fit written by this mixopt", fix)
    if meta["model"] == "scaling":  # the joint law, evaluated at the target size: kept as fitted
        return meta, ScalingLaw(meta["terms"], {m: np.asarray(p, float) for m, p in meta["params"].items()})
    table = read_table(runs_path)
    missing = [c for c in (*meta["domains"], *(meta.get("metrics") or meta["terms"])) if c not in table.columns]
    if missing:
        raise MixoptError(f"{runs_path}: no column '{missing[0]}', which fit.json names", fix)
    X = np.column_stack([table[d].to_numpy() for d in meta["domains"]])
    metrics = {m: table[m].to_numpy() for m in meta.get("metrics") or meta["terms"]}
    return meta, fit_model(meta["model"], X, metrics, meta["terms"], meta["settings"]["seed"],
                           members=tuple(meta.get("ensemble_members") or ()))


def predict_mixtures(fit_dir: Path, mixtures: Path, key: str | None = None,
                     tolerance: float = TABLE_TOLERANCE) -> tuple[str, list, np.ndarray, np.ndarray | None]:
    """(id name, ids, predicted objective, intervals) for each mixture of a mixtures file (YAML, CSV
    or Parquet); intervals: mixtures x 4 (seed-mean low, high; one new proxy low, high), None when
    the fit had none (an unreliable fit, or one saved by an older mixopt)."""
    meta, model = load_fit(fit_dir)
    name, ids, X = read_mixtures(mixtures, meta["domains"], tolerance, key)
    pred = model.predict(X)
    return name, ids, pred, prediction_intervals(meta.get("decision"), X, pred)


def prediction_intervals(decision: dict | None, X: np.ndarray, pred: np.ndarray) -> np.ndarray | None:
    """The fit's calibrated intervals at any mixture (rows: seed-mean low, high; one new proxy low,
    high): its conformal model error over every run and the seed shift's uncertainty for the mean,
    plus one proxy's seed noise at that mixture (NoiseModel.sd_at) for a new proxy."""
    from mixopt.fit.noise import NoiseModel
    from mixopt.fit.verdict import mean_interval, proxy_interval

    if not decision or decision.get("model_halfwidth") is None or not decision.get("reliable", True):
        return None
    level = decision["level"]
    noise = NoiseModel.from_json(decision["noise"]) if decision.get("noise") else None
    out = []
    for x, p in zip(X, pred):
        mean = mean_interval(float(p), None, decision["model_halfwidth"], noise.offset_se if noise else 0.0, level)
        out.append([*mean, *proxy_interval(float(p), mean, noise.sd_at(x) if noise else None, level)])
    return np.array(out).reshape(len(X), 4)
