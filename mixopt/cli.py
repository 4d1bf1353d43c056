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
    report = run_sweep(exp, workers=workers, progress=progress)
    typer.echo(format_sweep(report))
    if report.failed:
        raise typer.Exit(1)


@app.command()
def fit(config: Path = CONFIG, format: Format = typer.Option(Format.text, "--format")):
    """Fit the regression, cross-validate it, and write the recommended mixture."""
    from .config import load_experiment
    from .recommend import recommend_mixture
    from .report import format_recommendation

    exp = load_experiment(config)
    rec = recommend_mixture(exp)
    if format is Format.json:
        typer.echo(json.dumps({**rec.to_json(), "written": str(exp.optimal_path)}))
    else:
        typer.echo(format_recommendation(rec))
        typer.echo(f"written: {exp.optimal_path}")


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
    typer.echo(f"runs in store (all designs): {r['done']} done, {r['failed']} failed, {r['planned']} planned")
    for suite, n in st["evals_by_suite"].items():
        mark = " (current)" if suite == st["suite"] else ""
        typer.echo(f"evals under suite {suite[:12]}{mark}: {n} runs")


def main() -> None:
    try:
        app()  # standalone: click reports its own usage errors and exits 2
    except MixoptError as e:
        typer.echo(f"error: {e.one_line()}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
