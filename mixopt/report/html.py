"""`mixopt report`: one self-contained HTML page (no network: figures are inline PNGs, styles and
the one small script inline) a team reads to decide on a mixture: the recommendation and its
intervals, how well each model ranks unseen mixtures, predicted vs measured by run origin, each
domain's effect curve with the repetition cap and the KL pull, the eval suites used so far,
verification runs and every warning.

The fit is recomputed in memory as `mixopt fit` computes it (same seed, same result); nothing is
evaluated or trained (runs lacking the current suite are left out, with a warning), and besides the
page only each run's objective under the current suite is recorded, as `fit` records it.
"""

from __future__ import annotations

import base64
import html
import io
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from mixopt import __version__
from mixopt.config.runtime import Runtime
from mixopt.config.schema import Experiment
from mixopt.core.mixtures import Bounds
from mixopt.core.outputs import write_output
from mixopt.fit.from_store import experiment_swarm
from mixopt.fit.noise import collapse_replicates
from mixopt.fit.optimize import penalized_scores
from mixopt.fit.plots import domain_panels, weight_sweep
from mixopt.fit.recommend import fit_swarm
from mixopt.fit.regress import score_text
from mixopt.fit.verdict import noise_line
from mixopt.sweep.store import Store

# How a run came to be, from its origin in the store: the legend of the predicted-vs-measured plot.
ORIGINS = {"pure-domain": ("#d62728", "s"), "prior": ("#2ca02c", "D"), "design": ("#1f77b4", "o"),
           "proposed": ("#ff7f0e", "^"), "verify": ("#9467bd", "*"), "other": ("#7f7f7f", "x")}


def origin_kind(origin: str) -> str:
    if origin.startswith("vertex:"):
        return "pure-domain"
    if origin == "prior":
        return "prior"
    if origin.startswith(("random:", "user:")):
        return "design"
    if origin.startswith("verify:"):
        return "verify"
    if origin.startswith("file:") and "proposed" in origin:  # `mixopt propose` writes <name>.proposed.yaml
        return "proposed"
    return "other"


@dataclass(frozen=True)
class ReportResult:
    path: Path
    runs: int
    warnings: list[str]


def write_report(exp: Experiment, output: Path | None = None, runtime: Runtime = Runtime()) -> ReportResult:
    """Fit in memory and write the page (default <workspace>/report.html), atomically."""
    said: list[str] = []

    def say(message: str) -> None:
        said.append(message)
        runtime.say(message)

    plan, swarm, settings, fit_key = experiment_swarm(exp, replace(runtime, say=say), reeval=False)
    rec, model = fit_swarm(swarm, settings, fit_key)
    swarm = collapse_replicates(swarm, swarm.replicate).swarm  # one row per mixture, as fitted
    with Store(plan.workspace.db_path, readonly=True) as store:
        runs = {r.key: r for r in store.runs(plan.context)}
        failed = [r for r in runs.values() if r.status == "failed"]
        suspect = [r for r in runs.values() if r.status == "suspect"]
        suites = store.summary()["suites"]
        scores = store.scores(plan.suite.key)
        from mixopt.sweep.fidelity import size_table

        sizes = size_table(exp, store)  # runs and compute of every proxy size the experiment has
    warnings = [s.removeprefix("warning: ") for s in said]
    warnings += [f"run {r.key[:12]} ({r.origin}) failed: {(r.error or '').splitlines()[-1][:300] if r.error else '?'}"
                 for r in failed]
    warnings += [f"run {r.key[:12]} ({r.origin}) is suspect (checkpoint missing or not the one recorded): left "
                 "out; `mixopt sweep CONFIG` retrains it" for r in suspect]
    warnings += list(rec.warnings)  # the fit's own warnings, worded as `mixopt fit` prints them
    origins = [runs[k].origin if k in runs else "?" for k in swarm.keys]
    verify = _verify_rows(swarm, rec, origins, scores)
    for name, measured, oof, _ in verify:
        if name == "verify:recommended":
            prior = next((m for n, m, _, _ in verify if n in ("verify:prior", "prior")), None)
            if prior is not None and measured >= prior:
                warnings.append(f"verification: the recommended mixture measured {measured:.4f}, not better than "
                                f"the prior's {prior:.4f}")
    page = _page(exp, plan, swarm, settings, rec, model, origins, suites, verify, warnings,
                 _sizes_section(exp, plan, swarm, model, sizes, replace(runtime, say=lambda m: None)))
    out = output or plan.workspace.root / "report.html"
    write_output(out, page.encode(), "--output", plan.workspace.root)
    return ReportResult(out, len(swarm.keys), warnings)


# One sign everywhere (this page, `mixopt verify`): positive means the run measured worse than predicted.
ERROR = "error (measured − predicted)"


def _verify_rows(swarm, rec, origins, scores) -> list[tuple[str, float, float, str]]:
    """(origin, measured, out-of-fold predicted, key) of each verification run in the fit, and of
    the prior's run (`mixopt verify` reuses the design's prior run: same mixture, same key)."""
    rows = [(o, float(swarm.y[i]), float(rec.cv.oof[i]), swarm.keys[i])
            for i, o in enumerate(origins) if o.startswith("verify:") or o == "prior"]
    return rows if any(o.startswith("verify:") for o, *_ in rows) else []


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _weights_figure(rec) -> str:
    import matplotlib.pyplot as plt

    d = len(rec.domains)
    fig, ax = plt.subplots(figsize=(max(4.5, 1.1 * d + 2), 3.2), dpi=100)
    x = np.arange(d)
    ax.bar(x - 0.2, rec.prior, 0.4, label="prior (natural)", color="#bbbbbb")
    err = None
    if rec.weights_ci is not None:
        err = np.abs(np.vstack([rec.weights - rec.weights_ci[:, 0], rec.weights_ci[:, 1] - rec.weights]))
    ax.bar(x + 0.2, rec.weights, 0.4, yerr=err, capsize=4, label="recommended"
           + (f" ({rec.ci:.0%} interval)" if err is not None else ""), color="#1f77b4")
    ax.set_xticks(x, rec.domains, rotation=20 if d > 5 else 0, fontsize=8)
    ax.set_ylabel("weight")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _scatter_figure(swarm, rec, origins) -> str:
    import matplotlib.pyplot as plt

    y, oof = swarm.y, rec.cv.oof
    fig, ax = plt.subplots(figsize=(5.2, 4.6), dpi=100)
    kinds = np.array([origin_kind(o) for o in origins])
    for kind, (color, marker) in ORIGINS.items():
        sel = kinds == kind
        if sel.any():
            ax.scatter(y[sel], oof[sel], s=60 if marker == "*" else 26, c=color, marker=marker,
                       label=f"{kind} ({int(sel.sum())})", alpha=0.85)
    lo, hi = float(min(y.min(), oof.min())), float(max(y.max(), oof.max()))
    ax.plot([lo, hi], [lo, hi], lw=1, color="gray")
    ax.set_xlabel("measured objective (lower is better)")
    ax.set_ylabel(f"predicted, out of fold ({rec.cv.folds}-fold)")
    ax.set_title(f"{rec.model}: Spearman {score_text(rec.cv.spearman)}, R² {score_text(rec.cv.r2)}", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _effects_figure(exp, swarm, settings, rec, model) -> str:
    """Each domain's weight swept over its config range, the others keeping the recommendation's
    proportions: the predicted objective, the same plus the KL penalty the optimum minimizes (the
    pull toward the prior), the repetition cap (shaded beyond it), the prior and the recommendation."""

    d = len(swarm.domains)
    lower = np.array([x.min for x in exp.domains], dtype=float)
    upper = np.array([x.max for x in exp.domains], dtype=float)
    config_bounds = Bounds(lower, upper, ("none",) * d)
    fig, panels = domain_panels(d, 3, (4.2, 3.0), 100)
    w0 = rec.weights
    for i, name in enumerate(swarm.domains):
        ax = panels[i]
        W = weight_sweep(w0, i, lower[i], upper[i], 61, config_bounds)
        pred = model.predict(W)
        ax.plot(W[:, i], pred, lw=1.6, color="#1f77b4", label="predicted")
        lo, hi = float(pred.min()), float(pred.max())
        if settings.kl_weight > 0:
            pen = penalized_scores(model, swarm.prior, settings.kl_weight, W)
            ax.plot(W[:, i], pen, lw=1.3, ls="-.", color="#ff7f0e", label=f"+ {settings.kl_weight:g}·KL(w‖prior)")
            lo, hi = min(lo, float(pen.min())), max(hi, float(pen.min()))
        span = max(hi - lo, 1e-6)  # the KL curve climbs steeply off the prior: keep the predicted curve readable
        ax.set_ylim(lo - 0.1 * span, hi + 0.8 * span)
        if swarm.bounds.upper_reason[i] == "repetition":
            cap = swarm.bounds.upper[i]
            ax.axvspan(cap, upper[i], color="#d62728", alpha=0.12, lw=0)
            ax.axvline(cap, color="#d62728", lw=1, label=f"repetition cap {cap:.3g}")
        ax.axvline(swarm.prior[i], color="#2ca02c", lw=1, ls=":", label="prior")
        ax.axvline(w0[i], color="black", lw=1, ls="--", label="recommended")
        ax.set_title(name, fontsize=10)
        ax.tick_params(labelsize=7)
        if i == 0:
            ax.legend(fontsize=7)
    fig.supxlabel("domain weight (others keep the recommendation's proportions)", fontsize=9)
    fig.supylabel("objective (lower is better)", fontsize=9)
    fig.tight_layout()
    return _png(fig)


def _table(headers: list[str], rows: list[list], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c if isinstance(c, _Raw) else html.escape(str(c))}</td>" for c in r)
                   + "</tr>" for r in rows)
    return f'<table class="sortable {cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


class _Raw(str):
    """Markup already escaped."""


def _ago(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "-"


def _pools_section(exp) -> list[str]:
    """The domains made from pools (field values, tiers, clusters with their names and examples)."""
    from mixopt.core.workspace import Workspace

    ws = Workspace(exp.workspace_dir)
    manifest = ws.read_manifest() if ws.manifest_path.is_file() else {}
    if not manifest.get("pools"):
        return []
    out = ["<h2 id='pools'>Domains from pools</h2>"]
    for p in manifest["pools"]:
        what = {"group_by": f"values of '{p['field']}'", "tiers": f"tiers of '{p['field']}' at edges "
                 f"{', '.join(f'{e:.4g}' for e in p.get('edges', []))}",
                "cluster": f"clusters ({p.get('criterion')})"}[p["kind"]]
        rows = []
        for j, n in enumerate(p["domains"]):
            docs = manifest["domains"].get(n, {}).get("documents")
            row = [n, f"{docs:,}" if docs is not None else "-"]
            if p["kind"] == "cluster":
                row += [p["names"][j], " | ".join(x[:80] for x in p["examples"][j])]
            rows.append(row)
        head = ["domain", "documents"] + (["name (top terms)", "examples"] if p["kind"] == "cluster" else [])
        out += [f"<p>Pool {p['pool'] + 1}: {html.escape(what)}</p>", _table(head, rows)]
    return out


def _sizes_section(exp, plan, swarm, model, sizes: list[dict], runtime) -> list[str]:
    """Runs grouped by proxy size with each size's compute; the cross-scale rank correlation (how well
    the swarm's fit and measurements rank what the larger proxies measured) where a larger size has runs."""
    rows = [[z["size"], f"{z['params']:,}", z["done"], z["failed"], z["planned"], f"{z['flops']:.3g}",
             f"{z['device_seconds']:.1f}"] for z in sizes]
    out = ["<h2 id='sizes'>Runs by size</h2>",
           _table(["size", "parameters", "done", "failed", "pending", "FLOPs", "device-seconds"], rows, "sizes"),
           f"<p>This experiment's compute: {sum(z['flops'] for z in sizes):.3g} FLOPs, "
           f"{sum(z['device_seconds'] for z in sizes):.1f} device-seconds.</p>"]
    if sum(z["done"] > 0 for z in sizes) > 1:
        from mixopt.fit.fidelity import cross_scale, size_swarms

        ranks = cross_scale(size_swarms(exp, plan, swarm, runtime, reeval=False), model)
        num = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
        out.append(_table(["larger size", "mixtures", "shared with the swarm", "Spearman: swarm fit's prediction",
                           "Spearman: swarm measured"],
                          [[c["size"], c["mixtures"], c["shared"], num(c["spearman_predicted"]),
                            num(c["spearman_measured"])] for c in ranks], "cross-scale"))
    return out


def _page(exp, plan, swarm, settings, rec, model, origins, suites, verify, warnings, sizes=()) -> str:
    import matplotlib

    matplotlib.use("Agg")
    e = html.escape
    ci = rec.weights_ci
    rec_rows = []
    for i, dname in enumerate(rec.domains):
        row = [dname]
        if rec.available:
            row.append(f"{rec.available[i]:,}")
        row += [f"{rec.prior[i]:.4f}", _Raw(f"<b>{rec.weights[i]:.4f}</b>")]
        if ci is not None:
            row.append(f"{rec.weights[i]:.4f} (held fixed by reuse)" if dname in rec.held_fixed else
                       f"{ci[i][0]:.4f} .. {ci[i][1]:.4f}")
        row.append(rec.binding[i] or "-")
        rec_rows.append(row)
    rec_head = (["domain"] + (["available tokens"] if rec.available else []) + ["prior", "recommended"]
                + ([f"{rec.ci:.0%} interval"] if ci is not None else []) + ["binding constraint"])
    pred = f"{rec.predicted:.4f}"
    if rec.predicted_ci is not None:
        pred += f" ({rec.ci:.0%} interval for the seed-mean {rec.predicted_ci[0]:.4f} .. {rec.predicted_ci[1]:.4f}"
        pred += f"; for one new proxy {rec.decision.proxy[0]:.4f} .. {rec.decision.proxy[1]:.4f}" if rec.decision else ""
        pred += f"; {rec.bootstrap} bootstrap refits)"
    binding = [f"{d}: {b}" for d, b in zip(rec.domains, rec.binding) if b]
    cv_rows = [[_Raw(f"<b>{e(k)}</b> (chosen)") if k == rec.model else k, score_text(v.spearman), score_text(v.r2)]
               for k, v in rec.candidates.items()]
    kinds = [origin_kind(o) for o in origins]
    run_rows = [[k[:12], o, kind, f"{y:.4f}", f"{p:.4f}", f"{y - p:+.4f}"]
                for k, o, kind, y, p in zip(swarm.keys, origins, kinds, swarm.y, rec.cv.oof)]
    suite_rows = [[_Raw(f"<b>{key[:12]}</b> (current)") if key == plan.suite.key else key[:12], s["objective"] or "-",
                   ", ".join(s["evaluations"]), s["runs_scored"], _ago(s["first_used"]), _ago(s["last_scored"])]
                  for key, s in suites.items()]
    verify_rows = [[o, k[:12], f"{m:.4f}", f"{p:.4f}", f"{m - p:+.4f}"] for o, m, p, k in verify]
    warn = ("<ul class='warnings'>" + "".join(f"<li>{e(w)}</li>" for w in warnings) + "</ul>") if warnings else \
        "<p class='ok'>No warnings.</p>"
    cap_note = (f"Repetition limit: a domain's weight × {exp.optimum.target_tokens:.3g} target tokens ≤ "
                f"{exp.optimum.max_epochs:g} × its available tokens." if exp.optimum.target_tokens else
                "No repetition limit (set optimum.target_tokens to enable it).")
    sections = [
        f"<h1>Mixture report: {e(exp.name)}</h1>",
        f"<p class='meta'>objective: <code>{e(rec.objective)}</code> (lower is better) · {rec.runs} runs · "
        f"fit {e(rec.fit_key[:16])} · mixopt {e(__version__)} · {_ago(time.time())}</p>",
        "<h2 id='warnings'>Warnings</h2>", warn,
        "<h2 id='recommendation'>Recommendation</h2>",
        _table(rec_head, rec_rows, "rec"),
        f"<p>Predicted objective at the recommendation: <b>{pred}</b>; at the prior {rec.predicted_prior:.4f}; "
        f"best measured run {rec.best_run:.4f}"
        + (f" (mean of {rec.best_run_proxies} seeds)" if rec.best_run_proxies > 1 else "") + ".</p>",
        *([f"<p class='verdict'><b>Verdict:</b> {e(rec.decision.line)}</p>",
           f"<p>{e(noise_line(rec.decision, rec))}</p>"]
          + ([f"<p>Next step: {e(rec.decision.next_step)}</p>"] if rec.decision.next_step else [])
          + ([_table(["mixture", "weights", "seeds", "sd"],
                     [[f"replicated {i + 1}", ", ".join(f"{x:.3f}" for x in w), k, f"{sd:.4f}"]
                      for i, (w, sd, k) in enumerate(rec.noise.per_mixture)])] if rec.noise else [])
          if rec.decision else []),
        f"<p>Binding constraints: {e('; '.join(binding)) if binding else 'none'}. {e(cap_note)} "
        f"KL weight toward the prior: {settings.kl_weight:g}.</p>",
        f"<img alt='prior and recommended weights' src='{_weights_figure(rec)}'>",
        *_pools_section(exp),
        "<h2 id='cv'>Cross-validation of every model</h2>",
        _table([f"model ({rec.cv.folds}-fold CV)", "Spearman", "R²"], cv_rows),
        "<h2 id='fit'>Predicted vs measured</h2>",
        "<p>Each run's objective against the chosen model's prediction for it when it was held out, "
        "marked by how the run came to be.</p>",
        f"<img alt='predicted vs measured' src='{_scatter_figure(swarm, rec, origins)}'>",
        "<details><summary>Every run</summary>"
        + _table(["run", "origin", "kind", "measured", "predicted (out of fold)", ERROR], run_rows, "runs")
        + "</details>",
        "<h2 id='effects'>Per-domain effects</h2>",
        f"<img alt='per-domain effect curves' src='{_effects_figure(exp, swarm, settings, rec, model)}'>",
        *sizes,
        "<h2 id='suites'>Eval suite history</h2>",
        _table(["suite", "objective", "evaluations", "runs scored", "first used", "last scored"], suite_rows),
        "<h2 id='verify'>Verification</h2>",
        _table(["run", "key", "measured", "predicted (out of fold)", ERROR], verify_rows) if verify_rows else
        "<p>No verification runs yet: <code>mixopt verify CONFIG</code> trains proxies on the recommendation "
        "and the prior.</p>",
    ]
    return PAGE.format(title=e(f"mixopt report: {exp.name}"), body="\n".join(sections))


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }}
h1 {{ font-size: 1.6em; margin-bottom: .2em; }} h2 {{ border-bottom: 1px solid #ddd; margin-top: 1.6em; }}
.meta {{ color: #666; }} code {{ background: #f4f4f4; padding: 0 .25em; }}
table {{ border-collapse: collapse; margin: .6em 0; }}
th, td {{ border: 1px solid #ddd; padding: .25em .6em; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }} th {{ background: #f4f4f4; cursor: pointer; }}
img {{ max-width: 100%; display: block; margin: .6em 0; }}
.warnings li {{ color: #8a4b00; }} .ok {{ color: #2a7a2a; }}
</style></head>
<body>
{body}
<script>
// Click a column header to sort its table (numbers numerically).
document.querySelectorAll("table.sortable th").forEach((th, col) => th.addEventListener("click", () => {{
  const body = th.closest("table").tBodies[0];
  const key = tr => {{ const t = tr.cells[col].textContent; const n = parseFloat(t); return isNaN(n) ? t : n; }};
  const up = th.dataset.dir !== "up"; th.dataset.dir = up ? "up" : "down";
  [...body.rows].sort((a, b) => (key(a) > key(b) ? 1 : key(a) < key(b) ? -1 : 0) * (up ? 1 : -1))
    .forEach(tr => body.appendChild(tr));
}}));
</script>
</body></html>
"""
