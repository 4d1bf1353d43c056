"""The command line. Each verb parses flags, loads the config, calls one library function, prints."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path

import typer

from .errors import MixoptError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Find the best data mixture for LM pretraining: sample -> sweep -> fit.")


class Format(str, Enum):
    text = "text"
    json = "json"


CONFIG = typer.Argument(..., help="The experiment YAML (e.g. mixtures/demo.yaml).")


@app.command()
def sample(config: Path = CONFIG, force: bool = typer.Option(False, help="Resample even if up to date.")):
    """Count each domain's tokens, draw train/validation slices, build the tokenizer."""
    from .config import load_experiment
    from .corpus import sample_corpus
    from .report import format_sample

    exp = load_experiment(config)
    manifest = sample_corpus(exp, force=force)
    typer.echo(format_sample(manifest))
    typer.echo(("sample up to date in " if manifest["reused"] else "sample written to ") + str(exp.workspace_dir))


@app.command()
def sweep(config: Path = CONFIG,
          workers: int = typer.Option(1, min=1, help="Local worker processes (one per core on CPU)."),
          progress: bool = typer.Option(True, help="Show progress bars on stderr.")):
    """Design the mixtures, train and evaluate one proxy per mixture not yet finished."""
    from .config import load_experiment
    from .report import format_sweep
    from .sweep import run_sweep

    exp = load_experiment(config)
    report = run_sweep(exp, workers=workers, progress=progress, say=typer.echo)
    typer.echo(format_sweep(report))
    if report.failed:
        raise typer.Exit(1)


@app.command()
def fit(config: Path = CONFIG, format: Format = typer.Option(Format.text, "--format"),
        reeval: bool = typer.Option(True, "--reeval/--no-reeval",
                                    help="Evaluate stored checkpoints on what the eval suite added (never trains)."),
        workers: int = typer.Option(1, min=1, help="Worker processes for that evaluation."),
        progress: bool = typer.Option(True, help="Show progress bars on stderr.")):
    """Fit the regression, cross-validate it, and write the recommended mixture."""
    from .config import load_experiment

    exp = load_experiment(config)
    _fit_and_print(exp, format, reeval, workers, progress)


def _fit_and_print(exp, format: Format, reeval: bool, workers: int, progress: bool) -> None:
    from .recommend import recommend_mixture
    from .report import format_recommendation

    say = (lambda m: typer.echo(m, err=True)) if format is Format.json else typer.echo
    rec = recommend_mixture(exp, reeval=reeval, workers=workers, progress=progress, say=say)
    if format is Format.json:
        typer.echo(json.dumps({**rec.to_json(), "written": str(exp.optimal_path)}))
    else:
        typer.echo(format_recommendation(rec))
        typer.echo(f"written: {exp.optimal_path}")


@app.command("eval")
def eval_(config: Path = CONFIG,
          workers: int = typer.Option(1, min=1, help="Worker processes (one per core on CPU)."),
          progress: bool = typer.Option(True, help="Show progress bars on stderr."),
          watch: bool = typer.Option(False, help="Re-evaluate and refit each time the config or suite is saved."),
          interval: float = typer.Option(1.0, min=0.05, help="--watch: seconds between checks.")):
    """Evaluate every stored checkpoint on what the current eval suite lacks (never trains)."""
    from .config import load_experiment
    from .report import format_eval
    from .sweep import run_eval

    def once() -> None:
        exp = load_experiment(config)
        typer.echo(format_eval(run_eval(exp, workers=workers, progress=progress, say=typer.echo)))
        if watch:
            _fit_and_print(exp, Format.text, False, workers, progress)

    if not watch:
        once()
        return
    from .watch import watch as watch_files

    try:
        watch_files(config, once, typer.echo, interval)
    except KeyboardInterrupt:
        pass


@app.command()
def status(config: Path = CONFIG, format: Format = typer.Option(Format.text, "--format")):
    """What is done: runs planned, trained, failed; evals per suite."""
    from .config import load_experiment
    from .status import experiment_status

    exp = load_experiment(config)
    st = experiment_status(exp)
    if format is Format.json:
        typer.echo(json.dumps(st))
        return
    typer.echo(f"workspace: {st['workspace']}")
    typer.echo(f"sample: {st['sample']}")
    r = st["runs"]
    typer.echo(f"runs in this design: {st['design']['planned']} planned, {st['design']['done']} done, "
               f"{st['design']['failed']} failed, {st['design']['pending']} pending")
    typer.echo(f"runs in store (all designs): {r['done']} done, {r['failed']} failed, {r['planned']} planned; "
               f"proxies trained: {st['trainings']}")
    cur = st["current_suite"]
    if cur:
        typer.echo(f"current eval suite {cur['key'][:12]}: {cur['objective']}; "
                   f"{cur['runs_lacking']} finished runs lack some of it")
    for key, s in st["suites"].items():
        mark = " (current)" if key == st["suite"] else ""
        typer.echo(f"  suite {key[:12]}{mark}: {s['runs_scored']} runs scored, {len(s['evaluations'])} evaluations")


def main() -> None:
    try:
        app()  # standalone: click reports its own usage errors and exits 2
    except MixoptError as e:
        typer.echo(f"error: {e.one_line()}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
