"""The command line. Each verb parses flags, loads the config, calls one library function, prints."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from mixopt.errors import MixoptError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Find the best data mixture for LM pretraining: sample -> sweep -> fit.")


class Format(str, Enum):
    text = "text"
    json = "json"


class TableFormat(str, Enum):
    csv = "csv"
    json = "json"


class Backend(str, Enum):
    local = "local"
    ray = "ray"
    slurm = "slurm"


CONFIG = typer.Argument(..., help="The experiment YAML (e.g. mixtures/demo.yaml).")
# Runtime flags shared by the verbs that train or evaluate: they choose where work runs, never what.
WORKERS = typer.Option(1, min=1, help="Local worker processes (one per core on CPU).")
PROGRESS = typer.Option(True, help="Show progress bars on stderr.")
DEVICE = typer.Option("auto", help="Where proxies train and evaluate: auto (a GPU where the worker sees one), "
                                   "cpu, cuda or cuda:N.")


def _runtime(workers: int = 1, progress: bool = True, device: str = "auto", say=typer.echo, **more):
    """The one Runtime value of a command, from its flags; a bad flag is one line, exit 2."""
    from mixopt.config.runtime import Runtime

    try:
        return Runtime(workers=workers, progress=progress, device=device, say=say, **more)
    except ValueError as e:
        raise MixoptError(str(e), "see `mixopt COMMAND --help`") from None


@app.command()
def sample(config: Path = CONFIG, force: bool = typer.Option(False, help="Resample even if up to date."),
           retokenize: bool = typer.Option(False, help="Make a new tokenizer (the workspace's is kept otherwise); "
                                                       "every run trained so far becomes invalid.")):
    """Count each domain's tokens, draw train/validation slices, build the tokenizer."""
    from mixopt.data.sample import sample_corpus
    from mixopt.report import format_sample

    exp = _load(config)
    manifest = sample_corpus(exp, force=force, retokenize=retokenize)
    typer.echo(format_sample(manifest))
    typer.echo(("sample up to date in " if manifest["reused"] else "sample written to ") + str(exp.workspace_dir))
    ch = manifest.get("changes")
    if ch and not manifest["reused"]:
        renamed = "".join(f"; {n} renamed from {o} (slices kept)" for n, o in ch["renamed"].items())
        typer.echo(f"domains sampled: {', '.join(ch['sampled']) or 'none'}; kept: {', '.join(ch['kept']) or 'none'}"
                   f"{renamed}{'; dropped: ' + ', '.join(ch['removed']) if ch['removed'] else ''}; "
                   f"tokenizer {ch['tokenizer']}")
        if ch["retokenized"]:
            from mixopt.sweep.status import trained_runs

            typer.echo(f"new tokenizer: the {trained_runs(exp)} runs trained so far are superseded (kept in the "
                       "store, not used); the next sweep trains the design again")


@app.command()
def sweep(config: Path = CONFIG,
          workers: int = WORKERS, progress: bool = PROGRESS, device: str = DEVICE,
          mixtures: Optional[Path] = typer.Option(None, help="Also train these mixtures (what `mixopt propose` wrote)."),
          backend: Backend = typer.Option(Backend.local, help="Where proxies train."),
          ray_address: Optional[str] = typer.Option(None, help="ray: join this cluster (auto or HOST:PORT); "
                                                               "default: start a local Ray."),
          slurm_partition: Optional[str] = typer.Option(None, help="slurm: partition (overrides slurm.partition)."),
          slurm_cluster: Optional[str] = typer.Option(None, help="slurm: submitit cluster (slurm, local, debug); "
                                                                 "default: slurm where sbatch exists."),
          batch_proxies: str = typer.Option("auto", help="Proxies trained together per worker: auto (as many as "
                                                         "fit on a GPU, 1 on CPU) or a number."),
          dry_run: bool = typer.Option(False, "--dry-run", help="Say what the sweep would train and reuse, and why; "
                                                                "train nothing.")):
    """Design the mixtures, train and evaluate one proxy per mixture not yet finished."""
    from mixopt.core.mixtures import Mixture, read_mixtures
    from mixopt.errors import MixoptError
    from mixopt.report import format_sweep
    from mixopt.sweep.run import run_sweep

    exp = _load(config)
    if dry_run:
        from mixopt.sweep.status import cost_lines, experiment_status

        st = experiment_status(exp)
        if st["sample"] != "up to date":
            typer.echo(f"sample: {st['sample']}")
        for line in cost_lines(st):
            typer.echo(line)
        return
    extra = []
    if mixtures:
        _, ids, W = read_mixtures(mixtures, exp.domain_names)
        extra = [Mixture(f"file:{mixtures.stem}:{i}", tuple(w)) for i, w in zip(ids, W)]
    if batch_proxies != "auto" and not (batch_proxies.isdigit() and int(batch_proxies) >= 1):
        raise MixoptError(f"--batch-proxies {batch_proxies}: expected auto or a positive integer", "e.g. --batch-proxies 8")
    runtime = _runtime(workers, progress, device, backend=backend.value, ray_address=ray_address,
                       slurm_partition=slurm_partition, slurm_cluster=slurm_cluster,
                       batch_proxies=batch_proxies if batch_proxies == "auto" else int(batch_proxies))
    report = run_sweep(exp, runtime, extra=extra)
    typer.echo(format_sweep(report))
    if report.failed:
        raise typer.Exit(1)


class Model(str, Enum):
    linear = "linear"
    loglinear = "loglinear"
    law = "law"
    gbm = "gbm"
    auto = "auto"


@app.command()
def fit(config: Optional[Path] = typer.Argument(None, help="The experiment YAML; or fit a table with --runs."),
        format: Format = typer.Option(Format.text, "--format"),
        reeval: bool = typer.Option(True, "--reeval/--no-reeval",
                                    help="Evaluate stored checkpoints on what the eval suite added (never trains)."),
        workers: int = WORKERS, progress: bool = PROGRESS, device: str = DEVICE,
        plots: bool = typer.Option(True, help="Write PNG plots next to fit.json."),
        runs: Optional[Path] = typer.Option(None, help="External swarm: mixture weights per run (.csv/.parquet)."),
        scores: Optional[Path] = typer.Option(None, help="External swarm: scores per run, joined on --key."),
        key: Optional[str] = typer.Option(None, help="The run id column joining --runs and --scores."),
        target: list[str] = typer.Option([], help="Score column to minimize; COLUMN=WEIGHT to combine several."),
        domains: Optional[str] = typer.Option(None, help="Weight columns are those starting with this prefix."),
        model: Model = typer.Option(Model.auto, help="External swarm: the regressor (auto: best CV Spearman)."),
        save: Optional[Path] = typer.Option(None, help="External swarm: write fit.json, runs.parquet, plots here."),
        tolerance: float = typer.Option(0.01, min=0, help="External swarm: how far a row's weights may sum from 1."),
        bound: list[str] = typer.Option([], help="External swarm: DOMAIN=LOW:HIGH weight bounds."),
        kl_weight: float = typer.Option(0.0, min=0, help="External swarm: KL(w || swarm mean) penalty."),
        bootstrap: int = typer.Option(50, min=0, help="External swarm: bootstrap refits for the intervals."),
        cv_folds: int = typer.Option(5, min=2, help="External swarm: cross-validation folds."),
        seed: int = typer.Option(0, help="External swarm: seed for folds, trees and simulation.")):
    """Fit the regression, cross-validate it, and write the recommended mixture.

    With CONFIG: fit the experiment's sweep. With --runs: fit an external swarm table."""
    from mixopt.errors import MixoptError

    if runs is None:
        if config is None:
            raise MixoptError("fit needs an experiment CONFIG or an external swarm with --runs", "see `mixopt fit --help`")
        external = [n for n, v in (("--scores", scores), ("--key", key), ("--target", target), ("--domains", domains),
                                   ("--save", save), ("--bound", bound)) if v]
        if external or model is not Model.auto:
            raise MixoptError(f"{external[0] if external else '--model'} applies to --runs fits only",
                              "with a CONFIG, set these in its fit/optimum sections")
        if not _fit_and_print(_load(config), format, _runtime(workers, progress, device), reeval, plots):
            raise typer.Exit(1)
        return
    if config is not None:
        raise MixoptError("give either CONFIG or --runs, not both", "drop one")
    from mixopt.fit.swarm import FitSettings
    from mixopt.fit.tables import fit_external, load_swarm, parse_targets
    from mixopt.report import format_recommendation

    swarm = load_swarm(runs, parse_targets(target), scores, key, domains, tolerance, bound)
    settings = FitSettings(model.value, cv_folds, seed, kl_weight, bootstrap)
    rec = fit_external(swarm, settings, save, plots)
    if format is Format.json:
        typer.echo(json.dumps({**rec.to_json(), "written": str(save) if save else None}))
    else:
        typer.echo(format_recommendation(rec))
        if save:
            typer.echo(f"written: {save / 'fit.json'}, {save / 'optimal.yaml'}")


@app.command()
def predict(fit_dir: Path = typer.Argument(..., help="A saved fit: `fit --save DIR` or a workspace's fits/<key>/."),
            mixtures: Path = typer.Argument(..., help="Candidate mixtures (.csv/.parquet), one weight column per domain."),
            key: Optional[str] = typer.Option(None, help="Id column to echo (default: the first non-weight column)."),
            tolerance: float = typer.Option(0.01, min=0, help="How far a row's weights may sum from 1."),
            format: TableFormat = typer.Option(TableFormat.csv, "--format")):
    """Predict the objective of each candidate mixture with a saved fit (lower is better)."""
    from mixopt.fit.tables import predict_mixtures

    name, ids, pred = predict_mixtures(fit_dir, mixtures, key, tolerance)
    order = sorted(range(len(ids)), key=lambda i: pred[i])
    rank = {i: r + 1 for r, i in enumerate(order)}
    if format is TableFormat.json:
        typer.echo(json.dumps([{name: ids[i], "predicted": float(pred[i]), "rank": rank[i]} for i in range(len(ids))]))
        return
    typer.echo(f"{name},predicted,rank")
    for i in range(len(ids)):
        typer.echo(f"{ids[i]},{pred[i]:.6g},{rank[i]}")


@app.command()
def propose(config: Path = CONFIG, n: int = typer.Option(4, "--n", min=1, help="How many mixtures.")):
    """The next mixtures to train: where the fit is least sure about the optimum."""
    from mixopt.fit.propose import propose_mixtures

    exp = _load(config)
    picks, out = propose_mixtures(exp, n, _runtime(progress=False))
    typer.echo(f"{len(picks)} mixtures written to {out}; train them with "
               f"`mixopt sweep {config} --mixtures {out}`, then `mixopt fit {config}`")


@app.command()
def verify(config: Path = CONFIG, workers: int = WORKERS, progress: bool = PROGRESS, device: str = DEVICE,
           format: Format = typer.Option(Format.text, "--format")):
    """Train proxies on the recommended mixture and on the prior; compare measured with predicted."""
    from mixopt.fit.verify import verify_recommendation

    exp = _load(config)
    v = verify_recommendation(exp, _runtime(workers, progress, device, say=lambda m: typer.echo(m, err=True)))
    if format is Format.json:
        typer.echo(json.dumps(v.to_json()))
        return
    typer.echo(f"objective: {v.objective} (lower is better); {v.trained} proxies trained for this check")
    typer.echo(f"recommended mixture: measured {v.measured:.4f}, predicted {v.predicted:.4f} "
               f"(error {v.measured - v.predicted:+.4f}); rank {v.rank} of {v.runs + 1} among the swarm's runs")
    typer.echo(f"natural prior:       measured {v.prior_measured:.4f}, predicted {v.prior_predicted:.4f}")
    typer.echo(f"best swarm run:      measured {v.best_run:.4f}")
    verdict = "better than" if v.measured < v.prior_measured else "NOT better than"
    typer.echo(f"the recommendation is {verdict} the prior by {abs(v.prior_measured - v.measured):.4f}")


def _fit_and_print(exp, format: Format, runtime, reeval: bool, plots: bool = True) -> bool:
    """Fit and print; False when suspect runs were left out (said on stderr)."""
    from dataclasses import replace

    from mixopt.fit.recommend import recommend_mixture
    from mixopt.report import format_recommendation, suspect_line

    if format is Format.json:  # stdout holds the JSON alone
        runtime = replace(runtime, say=lambda m: typer.echo(m, err=True))
    rec = recommend_mixture(exp, runtime, reeval=reeval, plots=plots)
    if format is Format.json:
        typer.echo(json.dumps({**rec.to_json(), "written": str(exp.optimal_path)}))
    else:
        typer.echo(format_recommendation(rec))
        typer.echo(f"written: {exp.optimal_path}")
    if rec.suspect:
        typer.echo(suspect_line(rec.suspect), err=True)
    return not rec.suspect


@app.command("eval")
def eval_(config: Path = CONFIG,
          workers: int = WORKERS, progress: bool = PROGRESS, device: str = DEVICE,
          watch: bool = typer.Option(False, help="Re-evaluate and refit each time the config or suite is saved."),
          interval: float = typer.Option(1.0, min=0.05, help="--watch: seconds between checks.")):
    """Evaluate every stored checkpoint on what the current eval suite lacks (never trains)."""
    from mixopt.report import format_eval, suspect_line
    from mixopt.sweep.reeval import run_eval

    runtime = _runtime(workers, progress, device)

    def once() -> bool:
        exp = _load(config)
        report = run_eval(exp, runtime)
        typer.echo(format_eval(report))
        if report.suspect:
            typer.echo(suspect_line(report.suspect), err=True)
        if watch:
            _fit_and_print(exp, Format.text, runtime, False)
        return not report.suspect

    if not watch:
        if not once():
            raise typer.Exit(1)
        return
    from mixopt.evals.watch import watch as watch_files

    try:
        watch_files(config, once, typer.echo, interval)
    except KeyboardInterrupt:
        pass


@app.command()
def status(config: Path = CONFIG, format: Format = typer.Option(Format.text, "--format")):
    """What is done: runs planned, trained, failed; evals per suite."""
    from mixopt.sweep.status import experiment_status

    exp = _load(config)
    st = experiment_status(exp)
    if format is Format.json:
        typer.echo(json.dumps(st))
        return
    typer.echo(f"workspace: {st['workspace']}")
    typer.echo(f"sample: {st['sample']}")
    r = st["runs"]
    d = st["design"]
    typer.echo(f"runs in this design: {d['planned']} planned, {d['done']} done, {d['failed']} failed, "
               f"{d['suspect']} suspect, {d['pending']} pending")
    typer.echo(f"runs in store (all designs): {r['done']} done, {r['failed']} failed, {r['suspect']} suspect, "
               f"{r['planned']} planned; proxies trained: {st['trainings']}")
    from mixopt.sweep.status import cost_lines

    for line in cost_lines(st):
        typer.echo(line)
    cur = st["current_suite"]
    if cur:
        typer.echo(f"current eval suite {cur['key'][:12]}: {cur['objective']}; "
                   f"{cur['runs_lacking']} finished runs lack some of it")
    for key, s in st["suites"].items():
        mark = " (current)" if key == st["suite"] else ""
        typer.echo(f"  suite {key[:12]}{mark}: {s['runs_scored']} runs scored, {len(s['evaluations'])} evaluations")


@app.command()
def check(config: Path = CONFIG,
          repair: bool = typer.Option(False, help="Send runs with a bad checkpoint back to pending (their results "
                                                  "are kept until the next sweep retrains them)."),
          format: Format = typer.Option(Format.text, "--format")):
    """Verify the store (integrity_check) and every checkpoint's sha256; exit 1 if anything is wrong."""
    from mixopt.report import format_check
    from mixopt.sweep.check import check_workspace

    report = check_workspace(_load(config), repair)
    typer.echo(json.dumps(report.to_json()) if format is Format.json else format_check(report))
    if not report.ok:
        raise typer.Exit(1)


def _load(config: Path):
    """The experiment, with every file its suite names checked: the same errors for every verb."""
    from mixopt.config.load import load_experiment
    from mixopt.evals.suites import check_suite_files

    exp = load_experiment(config)
    check_suite_files(exp)
    return exp


def main() -> None:
    import sqlite3

    try:
        app()  # standalone: click reports its own usage errors and exits 2
    except MixoptError as e:
        typer.echo(f"error: {e.one_line()}", err=True)
        sys.exit(2)
    except (OSError, sqlite3.OperationalError) as e:
        from mixopt.core.workspace import DISK_FULL_ERRNOS

        # SQLite reports no errno: its own codes say "database or disk is full" and "disk I/O error".
        code = (getattr(e, "sqlite_errorcode", None) or 0) & 0xFF  # the primary code
        sqlite_full = code in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR)
        if getattr(e, "errno", None) not in DISK_FULL_ERRNOS and not sqlite_full:
            raise
        typer.echo(f"error: cannot write to the workspace: disk full, file size limit or I/O error ({e}); "
                   "free space (or raise the quota) and rerun: finished results are kept", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
