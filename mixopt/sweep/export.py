"""`mixopt export`: the experiment's runs as one table (CSV, Parquet or JSON), one row per run, for
notebooks, spreadsheets and other tools; `mixopt fit --runs` reads it back."""

from __future__ import annotations

import io
import json
import math

from mixopt.config.schema import Experiment
from mixopt.core.keys import trained_as
from mixopt.errors import MixoptError
from mixopt.sweep.plan import load_plan
from mixopt.sweep.results import metrics_of
from mixopt.sweep.store import Store

# Columns every export has besides one weight column per domain and one column per measurement
# ('<evaluation>/<metric>'); `fit --runs` knows them, so it never takes them for weights.
BOOKKEEPING = ("key", "origin", "status", "replicate", "objective", "size", "train_loss", "tokens", "train_seconds",
               "trainings", "finished", "error", "params", "flops", "device_seconds", "trained_as")
FORMATS = ("csv", "parquet", "json")


def sized_plans(exp: Experiment) -> list:
    """(size label, plan): the config's plan (with its design), then every other proxy size with runs
    in the store (design.fidelities, `verify --size`)."""
    from mixopt.sweep.fidelity import size_plans

    plan = load_plan(exp)
    if not plan.workspace.db_path.is_file():
        raise MixoptError(f"no runs yet in {plan.workspace.root}", "run `mixopt sweep CONFIG` first")
    sizes = size_plans(exp)
    with Store(plan.workspace.db_path, readonly=True) as store:
        contexts = {r.context for r in store.runs()}
    return [(sizes[0][0], plan)] + [(label, p) for label, p in sizes[1:] if p.context in contexts]


def export_rows(exp: Experiment) -> tuple[list[str], list[dict]]:
    """(columns, rows): every run of this config's context (the design's, proposed and verification
    runs alike, `verify --size` runs with their size), any status. `objective` is under the current
    suite; measurements by evaluations no longer in the suite are kept as '<name>@<key prefix>/<metric>';
    only those taken at the precision the run trained under, as fit reads them (Store.measurements)."""
    from mixopt.sweep.fidelity import params_of

    plans = sized_plans(exp)
    plan = plans[0][1]
    with Store(plan.workspace.db_path) as store:
        runs = [(size, params_of(p), r) for size, p in plans for r in store.runs(p.context)]
        measured = store.measurements(as_trained=True)  # as fit reads them: none taken at another precision
        names = _evaluation_names(store, plan.suite)
    domains = exp.domain_names
    metric_cols: list[str] = []
    rows = []
    for size, params, r in runs:
        row = {"key": r.key, "origin": r.origin, "status": r.status, "replicate": r.replicate, "size": size,
               "params": r.params or params, "flops": r.flops, "device_seconds": r.device_seconds,
               **dict(zip(domains, r.weights))}
        have = measured.get(r.key, {})
        current = metrics_of(plan.suite, have) if r.status == "done" else None
        row["objective"] = plan.suite.objective(current) if current else None
        for ev, values in have.items():
            for metric, v in values.items():
                col = f"{names.get(ev, ev[:12])}/{metric}"
                if col not in metric_cols:
                    metric_cols.append(col)
                row[col] = v
        row.update(train_loss=r.train_loss, tokens=r.tokens, train_seconds=r.train_seconds, trainings=r.trainings,
                   finished=r.finished, error=(r.error or "").splitlines()[-1] if r.error else None,
                   trained_as=trained_as(r.measured_as))  # device and precision: they change the numbers
        rows.append(row)
    current_cols = [f"{m.name}/{k}" for m in plan.suite.measures for k in _metric_names(metric_cols, m.name)]
    metric_cols = current_cols + sorted(c for c in metric_cols if c not in current_cols)
    first = ("key", "origin", "status", "replicate")
    columns = [*first, *domains, "objective", *metric_cols, *[c for c in BOOKKEEPING if c not in (*first, "objective")]]
    return columns, [{c: row.get(c) for c in columns} for row in rows]


def run_listing(exp: Experiment) -> list[dict]:
    """`mixopt runs`: one entry per run (every size): key, size, status, origin, objective, weights and a
    short mixture summary (its largest weights) -- the keys `export-model` takes."""
    columns, rows = export_rows(exp)
    domains = exp.domain_names
    out = []
    for r in rows:
        w = {d: float(r[d]) for d in domains}
        top = sorted(w.items(), key=lambda kv: -kv[1])
        shown = [f"{d} {v:.2f}" for d, v in top[:3] if v > 0]
        rest = sum(1 for _, v in top[3:] if v > 0)
        out.append({"key": r["key"], "size": r["size"], "status": r["status"], "origin": r["origin"],
                    "objective": r["objective"], "mixture": ", ".join(shown) + (f" +{rest} more" if rest else ""),
                    "weights": w})
    return out


def _metric_names(cols: list[str], name: str) -> list[str]:
    return [c[len(name) + 1:] for c in cols if c.startswith(name + "/") and "/" not in c[len(name) + 1:]]


def _evaluation_names(store: Store, suite) -> dict[str, str]:
    """evaluation key -> column prefix: its name in the current suite, else '<name>@<key[:8]>'."""
    names = {m.key: m.name for m in suite.measures}
    for r in store.db.execute("SELECT body FROM suites ORDER BY created"):
        for m in json.loads(r["body"])["measures"]:
            names.setdefault(m["key"], f"{m['name']}@{m['key'][:8]}")
    return names


def export_table(columns: list[str], rows: list[dict], fmt: str) -> bytes:
    """The rows in one format; JSON is a list of objects (null where a run has no value)."""
    if fmt not in FORMATS:
        raise MixoptError(f"unknown export format {fmt!r}", f"use one of {', '.join(FORMATS)}")
    if fmt == "json":
        clean = [{c: (None if isinstance(v, float) and not math.isfinite(v) else v) for c, v in r.items()}
                 for r in rows]
        return (json.dumps(clean) + "\n").encode()
    import polars as pl

    schema = {c: _dtype(c, rows) for c in columns}
    frame = pl.DataFrame(rows, schema=schema, orient="row") if rows else pl.DataFrame(schema=schema)
    buf = io.BytesIO()
    if fmt == "csv":
        frame.write_csv(buf)
    else:
        frame.write_parquet(buf)
    return buf.getvalue()


def _dtype(col: str, rows: list[dict]):
    import polars as pl

    if col in ("key", "origin", "status", "size", "error", "trained_as"):
        return pl.String
    if col in ("tokens", "trainings", "replicate", "params"):
        return pl.Int64
    return pl.Float64
