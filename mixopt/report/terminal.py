"""Plain-text tables for the terminal."""

from __future__ import annotations

from mixopt.core.mixtures import name_list


def table(headers: list[str], rows: list[list], align: str | None = None) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    align = align or "l" + "r" * (len(headers) - 1)
    lines = []
    for j, r in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, align)).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def human(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def format_sample(manifest: dict) -> str:
    rows = []
    for name, d in manifest["domains"].items():
        tokens = human(d["tokens"]) if d["tokens_exact"] else "~" + human(d["tokens"])
        rows.append([name, f"{d['documents']:,}", human(d["bytes"]) + "B", tokens, f"{d['prior']:.4f}",
                     f"{d['train_documents']:,}", human(d["train_tokens"]), f"{d['val_documents']:,}",
                     human(d["val_tokens"])])
    head = ["domain", "docs", "bytes", "tokens", "prior", "train docs", "train tok", "val docs", "val tok"]
    note = "(~ = estimated from the sample's tokens per byte)" if any(
        not d["tokens_exact"] for d in manifest["domains"].values()) else ""
    return "\n".join(filter(None, [table(head, rows), note, duplicates_note(manifest)]))


def duplicates_note(manifest: dict) -> str:
    """What `docs` counts where exact repeats were dropped: a document is a row (Parquet, Arrow, HF), a
    JSON line or a text file; only repeats of the documents drawn into the sample are looked for."""
    dropped = {n: d["duplicates_dropped"] for n, d in manifest["domains"].items() if d.get("duplicates_dropped")}
    if not dropped:
        return ""
    listed = ", ".join(f"{n} {k:,}" for n, k in dropped.items())
    return (f"(docs = documents read (rows, JSON lines or files) less the exact repeats of sampled documents, "
            f"dropped from the sample: {listed}; repeats among documents not sampled are counted as read)")


def format_recommendation(rec) -> str:
    from mixopt.fit.regress import inner_folds, score_text
    from mixopt.fit.verdict import noise_line  # here, not at the top: scipy.stats costs `sample` ~1 s to import

    ci = rec.weights_ci
    head = ["domain"] + (["available tok"] if rec.available else []) + ["prior", "recommended"]
    head += [f"{rec.ci:.0%} interval"] if ci is not None else []
    head += ["binding"]
    rows = []
    for i, d in enumerate(rec.domains):
        row = [d] + ([human(rec.available[i])] if rec.available else []) + [f"{rec.prior[i]:.4f}",
                                                                          f"{rec.weights[i]:.4f}"]
        if ci is not None:
            row.append(f"{rec.weights[i]:.4f} (held fixed by reuse)" if d in rec.held_fixed else
                       f"{ci[i][0]:.4f} .. {ci[i][1]:.4f}")
        rows.append(row + [rec.binding[i] or "-"])
    law = getattr(rec, "law", None)
    chosen = rec.model if not law else "scaling" if law == "additive" else f"scaling: {law}"
    cv_rows = [[k + (" *" if k == chosen else "") + (f" ({'+'.join(v.members)})" if v.members else ""),
                score_text(v.spearman), score_text(v.r2)] for k, v in rec.candidates.items()]
    pred = f"predicted objective: {rec.predicted:.4f}"
    d = rec.decision
    if rec.predicted_ci is not None:
        pred += f" ({rec.ci:.0%} interval for the seed-mean {rec.predicted_ci[0]:.4f} .. {rec.predicted_ci[1]:.4f}"
        pred += f"; for one new proxy {d.proxy[0]:.4f} .. {d.proxy[1]:.4f}" if d is not None else ""
        pred += f"; {rec.bootstrap} bootstrap refits)"
    lines = [
        f"fit: {rec.model} on {rec.runs} runs; objective = {rec.objective} (lower is better)",
        "",
        table([f"model ({rec.cv.folds}-fold CV)", "Spearman", "R^2"], cv_rows),
        *([f"auto judged by nested CV (its choice repeated inside each fold, {inner_folds(rec.runs)} inner folds): Spearman "
           f"{score_text(rec.selection_cv.spearman)}, R^2 {score_text(rec.selection_cv.r2)}"]
          if getattr(rec, "selection_cv", None) is not None else []),
        "",
        table(head, rows),
        *([f"held fixed by reuse: {name_list(list(rec.held_fixed))} keep their proportions; together "
           f"{sum(w for d, w in zip(rec.domains, rec.weights) if d in rec.held_fixed):.4f} ({rec.ci:.0%} interval "
           f"{rec.held_share()[0]:.4f} .. {rec.held_share()[1]:.4f})"] if rec.held_share() else []),
        "",
        f"{pred} at the recommendation; {rec.predicted_prior:.4f} at the prior; best measured run: {rec.best_run:.4f}"
        + (f" (mean of {rec.best_run_proxies} seeds)" if rec.best_run_proxies > 1 else
           " (one proxy: the best of many single runs is partly luck)" if d is not None and d.noise is not None else ""),
    ]
    if d is not None:
        lines += [noise_line(d, rec), f"verdict: {d.line}"]
        lines += [f"  against {g.against}: gain {g.gain:.4f} ({rec.ci:.0%} interval {g.low:.4f} .. {g.high:.4f}; "
                  f"P(better) {g.p_better:.2f}): {g.verdict}" for g in d.gains[1:]]
        lines += [f"next step: {d.next_step}"] if d.next_step else []
    if rec.unconstrained is not None:
        moved = sorted(range(len(rec.domains)), key=lambda i: -abs(rec.unconstrained[i] - rec.weights[i]))[:3]
        lines.append(f"trust region ({rec.trust_region}): the unconstrained optimum lies outside the runs' evidence; "
                     f"pulled in by L1 {rec.pulled_in:.3f} ("
                     + ", ".join(f"{rec.domains[i]} {rec.unconstrained[i]:.3f} -> {rec.weights[i]:.3f}" for i in moved)
                     + f"; predicted {rec.predicted_unconstrained:.4f} there, unsupported by runs)")
    if getattr(rec, "fidelity", None):
        lines += fidelity_lines(rec)
    if rec.warnings:
        lines[1:1] = [""] + [f"WARNING: {w}" for w in rec.warnings]
    return "\n".join(lines)


def fidelity_lines(rec) -> list[str]:
    """A fit across proxy sizes: the sizes, the law CV picked, cross-scale ranks and how far the
    larger proxies moved the answer."""
    from mixopt.fit.regress import score_text

    f = rec.fidelity
    sizes = "; ".join(f"{z['size']} ({human(z['params'])} params): {z['mixtures']} mixtures"
                      + (f", noise sd {z['noise_sd']:.4f}" if z["noise_sd"] is not None else "") for z in f["sizes"])
    nan = float("nan")
    cv = "; ".join(f"{k} Spearman {score_text(nan if v['spearman'] is None else v['spearman'])}, R^2 "
                   f"{score_text(nan if v['r2'] is None else v['r2'])}"
                   for k, v in (f.get("law_cv") or {}).items())
    out = ["", f"across sizes: {sizes}",
           f"law: {f['law']}, picked by CV ({cv}); for {human(f['target_size'])} params"
           + (f" x {human(f['target_tokens'])} tokens" if f["target_tokens"] else "")
           + f"; recommendation used: {f['used']}"]
    if f["new_proxy_interval"]:
        lo, hi = f["new_proxy_interval"]
        out.append(f"one new proxy at the target: {lo:.4f} .. {hi:.4f} (noise of the largest size's replicates)")
    for c in f["cross_scale"]:
        rho = "n/a (fewer than 3 mixtures)" if c["spearman_predicted"] is None else f"{c['spearman_predicted']:.3f}"
        meas = "" if c["spearman_measured"] is None else f"; measured vs measured on {c['shared']} shared: " \
                                                         f"{c['spearman_measured']:.3f}"
        out.append(f"cross-scale rank correlation, {f['single_fidelity']['size']} fit's predictions vs "
                   f"{c['size']} measured ({c['mixtures']} mixtures): {rho}{meas}")
    if f.get("law_recommendation"):
        law_w = ", ".join(f"{d} {v:.3f}" for d, v in f["law_recommendation"].items())
        out.append(f"not used: the law's own recommendation ({law_w}), since it does not cross-validate")
    single = ", ".join(f"{d} {v:.3f}" for d, v in f["single_fidelity"]["weights"].items())
    out.append(f"the larger proxies {'would move' if f.get('law_recommendation') else 'moved'} the answer by L1 "
               f"{f['moved_l1']:.3f} from the {f['single_fidelity']['size']} swarm's own recommendation ({single}); "
               f"the joint law predicts that one {f['predicted_difference']:+.4f} worse at the target")
    return out


def format_sweep(report) -> str:
    again = f", {report.reevaluated} re-evaluated" if report.reevaluated else ""
    again += f", {report.elsewhere} finished by another sweep" if report.elsewhere else ""
    parts = [f"{report.planned} runs planned: {report.already_done} already done{again}, {report.adopted} adopted, "
             f"{report.trained} trained, {len(report.failed)} failed ({report.seconds:.1f}s)"]
    for key, err in report.failed:
        parts.append(f"  failed {key[:12]}: {err}")
    if report.held_back:
        parts.append(f"  not retrained: {len(report.held_back)} runs that failed with a non-finite result (e.g. "
                     f"{report.held_back[0][0][:12]}: {report.held_back[0][1]}); the same run computes the same: "
                     "`mixopt sweep CONFIG --retry-failed` retrains them")
    return "\n".join(parts)


def format_eval(report) -> str:
    parts = [f"evaluated {report.runs} checkpoints ({report.evaluations} evaluations, {report.seconds:.1f}s); "
             f"{report.up_to_date} already had the whole suite; 0 trained"]
    for key, err in report.failed:
        parts.append(f"  failed {key[:12]}: {err}")
    return "\n".join(parts)


def suspect_line(keys) -> str:
    """The one line `eval` and `fit` end with when runs were left out (they then exit 1)."""
    shown = ", ".join(k[:12] for k in list(keys)[:5]) + (" ..." if len(keys) > 5 else "")
    return (f"error: {len(keys)} runs left out as suspect: checkpoint missing or not the one recorded ({shown}); "
            "their results are kept: `mixopt sweep CONFIG` retrains them (`mixopt check CONFIG` verifies all)")


def format_check(report) -> str:
    db = "ok" if not report.database else "; ".join(report.database[:5])
    lines = [f"workspace {report.workspace}: database {db}; {report.checked} checkpoints verified, "
             f"{len(report.problems)} with problems"]
    for p in report.problems:
        lines.append(f"  {p.key[:12]} ({p.status}): {p.problem}")
    if report.repaired:
        lines.append("repaired: bad checkpoints' runs are pending (results kept until retrained; run "
                     "`mixopt sweep CONFIG`), suspect runs that verify are done again")
    elif report.problems:
        lines.append("run `mixopt check CONFIG --repair` to send them back to pending, then `mixopt sweep CONFIG`")
    elif report.database:
        lines.append("the database is damaged: restore mixopt.db from a backup (checkpoints and their .json "
                     "results beside them are adopted by `mixopt sweep` without retraining)")
    return "\n".join(lines)


def format_clusters(pools: list[dict]) -> str:
    """`mixopt cluster`: each cluster pool's clusters, with names (top terms) and an example."""
    out = []
    for p in pools:
        out.append(f"pool {p['pool'] + 1}: {len(p['clusters'])} clusters ({p['criterion']})")
        out.append(table(["domain", "name (top terms)", "sample docs", "example"],
                         [[c["domain"], c["name"], c["sample_documents"], (c["examples"] or [""])[0][:60]]
                          for c in p["clusters"]], align="llrl"))
    return "\n".join(out)


def format_pools(pools: list[dict]) -> str:
    """`status`: the domains each pool made, with their documents (and a cluster's name)."""
    out = []
    for p in pools:
        what = {"group_by": f"values of '{p['field']}'", "tiers": f"tiers of '{p['field']}' at edges "
                 f"{', '.join(f'{e:.4g}' for e in p.get('edges', []))}",
                "cluster": f"clusters ({p.get('criterion')})"}[p["kind"]]
        out.append(f"pool {p['pool'] + 1}: {len(p['domains'])} domains from {what}")
        for j, n in enumerate(p["domains"]):
            docs = p["documents"].get(n)
            line = f"  {n}: {docs:,} documents" if docs is not None else f"  {n}"
            if p["kind"] == "cluster":
                ex = (p["examples"][j] or [""])[0][:60]
                line += f" [{p['names'][j]}] e.g. \"{ex}\""
            out.append(line)
    return "\n".join(out)
