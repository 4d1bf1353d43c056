"""The command line. Each verb parses flags, loads the config, calls one library function, prints."""

from __future__ import annotations

import errno
import json
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from mixopt.errors import MixoptError, plain

EXIT_CODES = ("Exit codes: 0 done; 1 done, but some runs failed or were left out (see stderr); 2 bad input (one "
              "`error:` line naming the problem and the fix; nothing half-written); 130 interrupted (Ctrl-C: "
              "finished results are kept).")

app = typer.Typer(add_completion=True, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Find the best data mixture for LM pretraining: sample -> sweep -> fit.", epilog=EXIT_CODES)

# -v / -q, given before the verb: how much a verb says while it works (see _progress_mode).
VERBOSITY = {"level": 0}


def _version(value: bool) -> None:
    if value:
        from mixopt import __version__

        typer.echo(f"mixopt {__version__}")
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                          help="Print the version and exit."),
             verbose: bool = typer.Option(False, "--verbose", "-v", help="One line per finished run on stderr, "
                                                                        "also on a terminal (instead of bars)."),
             quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress at all: neither bars nor lines.")):
    """Find the best data mixture for LM pretraining: sample -> sweep -> fit."""
    VERBOSITY["level"] = -1 if quiet else 1 if verbose else 0


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


class SampleBackend(str, Enum):
    local = "local"
    ray = "ray"


class Compile(str, Enum):
    auto = "auto"
    on = "on"
    off = "off"


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


CONFIG = typer.Argument(..., help="The experiment YAML (e.g. mixtures/demo.yaml).")
# Runtime flags shared by the verbs that train or evaluate: they choose where work runs, never what.
WORKERS = typer.Option(1, min=1, help="Local worker processes (one per core on CPU).")
PROGRESS = typer.Option(None, "--progress/--no-progress", show_default=False,
                        help="Progress on stderr; default: bars on a terminal, else one line per finished run.")
TRACK = typer.Option([], "--track", help="Also log to wandb or mlflow (the `track` extra; repeat or a,b for both). "
                                         "See docs/howto/export-tracking.md.")
DEVICE = typer.Option("auto", help="Where proxies train and evaluate: auto (a GPU where the worker sees one), "
                                   "cpu, cuda or cuda:N.")
PRECISION = typer.Option(Precision.auto, help="How proxies train (and are measured): auto (bf16 autocast on a GPU with "
                                              "bf16 in hardware, compute capability >= 8.0; float32 on the CPU and "
                                              "older GPUs), fp32 everywhere, or bf16 (also on the CPU, slowly where "
                                              "it lacks bf16 instructions; refused on an older GPU). No fp16: it "
                                              "needs loss scaling. Part of each run's key: runs trained otherwise "
                                              "are other runs.")


FORCE = typer.Option(False, "--force", help="Replace an existing file mixopt did not write (never the config, "
                                          "its inputs or the workspace's records).")


FORCE_BESIDE = typer.Option(False, "--force", help="Replace the file it writes beside the config "
                                                  "(<name>.optimal.yaml or .proposed.yaml) when mixopt did not "
                                                  "write it.")


def _finite_at_least_0(value: float) -> float:
    """A number flag: finite and >= 0, by the same rule as the config's numbers (one line if not)."""
    from mixopt.config.validate import check_finite

    if value is None:  # not given: the default is the config's (or the table fit's)
        return None
    try:
        return check_finite(value, "", 0.0)
    except MixoptError as e:
        raise typer.BadParameter(e.problem.strip()) from None


def _progress_mode(progress: bool | None):
    """Bars only on a terminal; otherwise (or with -v) one line per finished run; nothing with -q or
    --no-progress; --progress forces bars."""
    if progress is False or VERBOSITY["level"] < 0:
        return False
    if VERBOSITY["level"] > 0:
        return "lines"
    if progress:
        return True
    return True if sys.stderr.isatty() else "lines"


def _runtime(workers: int = 1, progress: bool | None = None, device: str = "auto", say=typer.echo, **more):
    """The one Runtime value of a command, from its flags; a bad flag is one line, exit 2."""
    from mixopt.config.runtime import Runtime

    try:
        return Runtime(workers=workers, progress=_progress_mode(progress), device=device, say=say, **more)
    except ValueError as e:
        raise MixoptError(str(e), "see `mixopt COMMAND --help`") from None


FORMAT = typer.Option(Format.text, "--format", help="text for people; json (stdout holds the JSON alone, "
                                                    "notices go to stderr) for scripts.")


@app.command()
def cluster(config: Path = CONFIG, refit: bool = typer.Option(False, help="Fit the clusters again on the pool as "
                                                                          "it is now (the cluster domains change)."),
            format: Format = FORMAT):
    """Fit each cluster pool's model (embed a seeded sample, k-means) and show its clusters."""
    from mixopt.config.load import load_experiment
    from mixopt.data.pools import cluster_pools
    from mixopt.data.sources import check_workspace_place

    exp = load_experiment(config)
    check_workspace_place(exp)
    pools = cluster_pools(exp, refit=refit)
    if format is Format.json:
        typer.echo(json.dumps(pools))
        return
    from mixopt.report.terminal import format_clusters

    typer.echo(format_clusters(pools))
    typer.echo(f"models in {exp.workspace_dir / 'clusters'}; `mixopt sample CONFIG` assigns every document")


@app.command()
def sample(config: Path = CONFIG, force: bool = typer.Option(False, help="Resample even if up to date."),
           workers: int = typer.Option(1, min=1, help="local: processes reading each domain's shards; ray: at "
                                                      "most this many tasks per domain (default: one per CPU of "
                                                      "the cluster). The same result for any number."),
           backend: SampleBackend = typer.Option(SampleBackend.local, help="Where shards are read: local processes, "
                                                 "or Ray tasks (each reads its shards itself: local paths must be "
                                                 "readable on every node; the driver merges and writes)."),
           ray_address: Optional[str] = typer.Option(None, help="ray: join this cluster (auto or HOST:PORT); "
                                                                "default: start a local Ray."),
           retokenize: bool = typer.Option(False, help="Make a new tokenizer (the workspace's is kept otherwise); "
                                                       "every run trained so far becomes invalid."),
           progress: bool = PROGRESS, format: Format = FORMAT):
    """Count each domain's tokens, draw train/validation slices, build the tokenizer."""
    from dataclasses import replace

    from mixopt.data.sample import sample_corpus
    from mixopt.report.terminal import format_sample

    if ray_address is not None and backend is not SampleBackend.ray:
        raise MixoptError("--ray-address applies with --backend ray only", "add --backend ray, or drop it")
    exp = _load(config, build=True)
    if backend is SampleBackend.ray:
        from mixopt.backends.ray import check_reachable

        check_reachable(ray_address)  # before anything is written
    # A line per stage on a terminal or with -v; off a terminal sample stays silent, so a bad corpus
    # found midway is still the one `error:` line a script sees.
    runtime = _runtime(workers, progress, say=_stderr, backend=backend.value, ray_address=ray_address)
    runtime = replace(runtime, progress=runtime.progress is True or bool(runtime.progress and VERBOSITY["level"] > 0))
    manifest = sample_corpus(exp, runtime, force=force, retokenize=retokenize)
    if format is Format.json:
        typer.echo(json.dumps({**manifest, "workspace": str(exp.workspace_dir)}))
        return
    typer.echo(format_sample(manifest))
    for name, d in manifest["domains"].items():
        if d.get("skipped_shards"):
            typer.echo(f"{name}: skipped {d['skipped_shards']} unreadable shard(s) (on_error: skip): "
                       + "; ".join(d.get("skipped", [])[:3]))
        if d.get("scan"):
            sc = d["scan"]
            typer.echo(f"{name}: read {sc['shards_read']} of {sc['shards']} shards (sample.scan): ~{d['tokens']:,} "
                       f"tokens +- {sc['tokens_stderr']:,} (1 standard error)")
        if d.get("truncated_documents"):
            typer.echo(f"{name}: {d['truncated_documents']} document(s) cut to sample.max_document_bytes="
                       f"{exp.sample.max_document_bytes}")
    typer.echo(("sample up to date in " if manifest["reused"] else "sample written to ") + str(exp.workspace_dir))
    ch = manifest.get("changes")
    if ch and not manifest["reused"]:
        renamed = "".join(f"; {n} renamed from {o} (slices kept)" for n, o in ch["renamed"].items())
        from mixopt.core.mixtures import name_list

        typer.echo(f"domains sampled: {name_list(ch['sampled'])}; kept: {name_list(ch['kept'])}"
                   f"{renamed}{'; dropped: ' + name_list(ch['removed']) if ch['removed'] else ''}; "
                   f"tokenizer {ch['tokenizer']}")
        if ch["retokenized"]:
            from mixopt.sweep.status import trained_runs

            typer.echo(f"new tokenizer: the {trained_runs(exp)} runs trained so far are superseded (kept in the "
                       "store, not used); the next sweep trains the design again")


@app.command()
def sweep(config: Path = CONFIG,
          workers: int = WORKERS, progress: bool = PROGRESS, device: str = DEVICE,
          precision: Precision = PRECISION,
          mixtures: Optional[Path] = typer.Option(None, help="Also train these mixtures (what `mixopt propose` wrote)."),
          backend: Backend = typer.Option(Backend.local, help="Where proxies train."),
          ray_address: Optional[str] = typer.Option(None, help="ray: join this cluster (auto or HOST:PORT); "
                                                               "default: start a local Ray."),
          slurm_partition: Optional[str] = typer.Option(None, help="slurm: partition (overrides slurm.partition)."),
          slurm_cluster: Optional[str] = typer.Option(None, help="slurm: submitit cluster (slurm, local, debug); "
                                                                 "default: slurm where sbatch exists."),
          batch_proxies: str = typer.Option("auto", help="Proxies trained together per worker: auto (as many as "
                                                         "fit on a GPU, 1 on CPU) or a number."),
          compile: Compile = typer.Option(Compile.auto, help="torch.compile the training forward: auto (when the "
                                                             "steps each worker trains win back the compile time, "
                                                             "measured once per machine and spec), on or off."),
          dry_run: bool = typer.Option(False, "--dry-run", help="Say what the sweep would train and reuse, and why; "
                                                                "train nothing."),
          retry_failed: bool = typer.Option(False, "--retry-failed", help="Also retrain runs that failed with a "
                                            "non-finite result (a diverged proxy, a NaN measurement); other failed "
                                            "runs are retried by every sweep."),
          track: list[str] = TRACK, format: Format = FORMAT):
    """Design the mixtures, train and evaluate one proxy per mixture not yet finished."""
    from mixopt.core.mixtures import Mixture, read_mixtures
    from mixopt.errors import MixoptError
    from mixopt.tracking import check_trackers, track_runs
    from mixopt.report.terminal import format_sweep
    from mixopt.sweep.run import run_sweep

    _backend_flags_apply(backend, ray_address, slurm_partition, slurm_cluster)
    if dry_run and (mixtures or track):
        raise MixoptError(f"{'--mixtures' if mixtures else '--track'} does not apply with --dry-run (the dry run reports "
                          "the design's runs and trains nothing)", "drop one of them")
    exp = _load(config)
    if dry_run:
        from mixopt.sweep.plan import other_ways_note
        from mixopt.sweep.run import sweep_measurement
        from mixopt.sweep.status import cost_lines, experiment_status
        from mixopt.sweep.work import check_local_device

        where = _runtime(workers, progress, device, backend=backend.value, precision=precision.value)
        if backend is Backend.local:
            check_local_device(where)
        measured_as = sweep_measurement(exp, where)
        st = experiment_status(exp, measured_as=measured_as)  # the keys this sweep would train
        if exp.design.fidelities and st["sample"] == "up to date":
            from mixopt.sweep.status import fidelity_costs

            st["fidelity_costs"] = fidelity_costs(exp, st)
        if format is Format.json:
            typer.echo(json.dumps(st))
            return
        if st["sample"] != "up to date":
            typer.echo(f"sample: {st['sample']}")
        lines = cost_lines(st)
        if not lines and st["design"]["planned"]:  # no store yet: every run of the design is to train
            lines = [f"to train: {st['design']['pending']} runs (the whole design; none trained yet)"]
        for line in lines:
            typer.echo(line)
        if note := other_ways_note(st.get("done_other_ways") or {}, measured_as):
            typer.echo(note)
        for c in st.get("fidelity_costs") or []:
            took = f"~{c['seconds']:.0f} device-seconds ({c['seconds_from']})" if c["seconds"] is not None else \
                "time unknown until a run of some size has trained"
            typer.echo(f"  size {c['size']} ({c['params']:,} params, {c['tokens']:,} tokens): {c['to_train']} runs to "
                       f"train, {c['flops']:.3g} FLOPs, {took}")
        return
    trackers = check_trackers(track)
    extra = []
    if mixtures:  # any mixtures file: proposed YAML, optimal.yaml, CSV or Parquet
        from mixopt.config.validate import check_input_path

        check_input_path(mixtures, "--mixtures file", exp.workspace_dir)
        _, ids, W = read_mixtures(mixtures, exp.domain_names)
        extra = [Mixture(f"file:{mixtures.stem}:{i}", tuple(w)) for i, w in zip(ids, W)]
    # isascii: str.isdigit also accepts digits int() refuses ('²')
    if batch_proxies != "auto" and not (batch_proxies.isascii() and batch_proxies.isdigit() and int(batch_proxies) >= 1):
        raise MixoptError(f"--batch-proxies {batch_proxies}: expected auto or a positive integer", "e.g. --batch-proxies 8")
    runtime = _runtime(workers, progress, device, backend=backend.value, ray_address=ray_address,
                       slurm_partition=slurm_partition, slurm_cluster=slurm_cluster,
                       batch_proxies=batch_proxies if batch_proxies == "auto" else int(batch_proxies),
                       compile=compile.value, precision=precision.value, **_say_for(format))
    if backend is Backend.ray:
        from mixopt.backends.ray import check_reachable

        check_reachable(ray_address)
    again = (f" --mixtures {mixtures}" if mixtures else "") + \
        (f" --precision {precision.value}" if precision is not Precision.auto else "")  # it changes the keys
    with _interrupted(exp, "sweep", config, extra, again, runtime):
        report = run_sweep(exp, runtime, extra=extra, retry_failed=retry_failed)
    track_runs(exp, trackers, _stderr)
    if format is Format.json:
        from dataclasses import asdict

        typer.echo(json.dumps({**asdict(report), "failed": [{"key": k, "error": e} for k, e in report.failed],
                               "held_back": [{"key": k, "error": e} for k, e in report.held_back],
                               "workspace": str(exp.workspace_dir)}))
    else:
        typer.echo(format_sweep(report))
    if report.failed or report.held_back:
        raise typer.Exit(1)


def _backend_flags_apply(backend: Backend, ray_address, slurm_partition, slurm_cluster) -> None:
    """A cluster flag with another backend would be ignored: refuse it in one line."""
    for flag, value, needs in (("--ray-address", ray_address, Backend.ray),
                               ("--slurm-partition", slurm_partition, Backend.slurm),
                               ("--slurm-cluster", slurm_cluster, Backend.slurm)):
        if value is not None and backend is not needs:
            raise MixoptError(f"{flag} applies with --backend {needs.value} only", f"add --backend {needs.value}, or drop it")


def _model_choices() -> type[Enum]:
    """`--model`'s choices: the registered families, then auto."""
    from mixopt.fit.families import NAMES

    return Enum("Model", {k: k for k in (*NAMES, "auto")}, type=str)


Model = _model_choices()


class TrustRegion(str, Enum):
    range = "range"
    none = "none"


@app.command()
def fit(config: Optional[Path] = typer.Argument(None, help="The experiment YAML; or fit a table with --runs."),
        format: Format = typer.Option(Format.text, "--format"),
        reeval: Optional[bool] = typer.Option(None, "--reeval/--no-reeval", show_default=False,
                                              help="With CONFIG: evaluate stored checkpoints on what the eval suite "
                                                   "added (never trains); default --reeval."),
        workers: int = WORKERS, progress: bool = PROGRESS, device: str = DEVICE,
        plots: Optional[bool] = typer.Option(None, "--plots/--no-plots", show_default=False,
                                             help="Write PNG plots next to fit.json (default: yes)."),
        runs: Optional[Path] = typer.Option(None, help="External swarm: mixture weights per run (.csv/.parquet)."),
        scores: Optional[Path] = typer.Option(None, help="External swarm: scores per run, joined on --key."),
        key: Optional[str] = typer.Option(None, help="The run id column joining --runs and --scores."),
        target: list[str] = typer.Option([], help="Score column to minimize; COLUMN=WEIGHT to combine several "
                                "(COLUMN=0: fit by --model multitask, not counted in the objective)."),
        domains: Optional[str] = typer.Option(None, help="Weight columns: a,b,c names them; one word is a prefix "
                                                             "they start with (default: numeric columns; an "
                                                             "export's domain columns)."),
        model: Optional[Model] = typer.Option(None, show_default=False, help="The regressor (auto: best CV ranking "
                                              "and error); default auto, or the config's fit.model."),
        save: Optional[Path] = typer.Option(None, help="External swarm: write fit.json, runs.parquet, plots here."),
        tolerance: Optional[float] = typer.Option(None, callback=_finite_at_least_0, show_default=False,
                                                  help="External swarm: how far a row's weights may sum from 1 "
                                                       "(default 0.01)."),
        bound: list[str] = typer.Option([], help="DOMAIN=LOW:HIGH weight bounds (with CONFIG: over the domain's "
                                                 "min/max)."),
        kl_weight: Optional[float] = typer.Option(None, callback=_finite_at_least_0, show_default=False,
                                                  help="KL(w || prior) penalty; default 0 (the swarm mean as prior), "
                                                       "or the config's optimum.kl_weight."),
        bootstrap: Optional[int] = typer.Option(None, min=0, show_default=False,
                                                help="Bootstrap refits for the intervals; default 50, or the "
                                                     "config's fit.bootstrap."),
        cv_folds: Optional[int] = typer.Option(None, min=2, show_default=False,
                                               help="Cross-validation folds; default 5, or the config's fit.cv_folds."),
        seed: Optional[int] = typer.Option(None, min=0, show_default=False,
                                           help="Seed for folds, trees and simulation; default 0, or the config's "
                                                "fit.seed (else its seed)."),
        trust_region: Optional[TrustRegion] = typer.Option(None, show_default=False,
                                                           help="range keeps each weight within what the runs "
                                                                "covered; none only within the bounds; default "
                                                                "range, or the config's optimum.trust_region."),
        scale_column: Optional[str] = typer.Option(None, help="External swarm: model-size column; fits one law "
                                                   "across sizes and recommends at --at-scale."),
        tokens_column: Optional[str] = typer.Option(None, help="External swarm: training-tokens column (with "
                                                    "--scale-column), recommended at --at-tokens."),
        at_scale: Optional[float] = typer.Option(None, help="The target model size (same units as --scale-column)."),
        at_tokens: Optional[float] = typer.Option(None, help="The target run's tokens (with --tokens-column)."),
        against: Optional[Path] = typer.Option(None, help="Also judge the recommendation against this mixture (a "
                                               "human's choice; any mixture file: YAML, CSV, Parquet; its first row)."),
        track: list[str] = TRACK, force: bool = FORCE_BESIDE):
    """Fit the regression, cross-validate it, and write the recommended mixture.

    With CONFIG: fit the experiment's sweep. With --runs: fit an external swarm table."""
    from mixopt.errors import MixoptError

    if runs is None:
        if config is None:
            raise MixoptError("fit needs an experiment CONFIG or an external swarm with --runs", "see `mixopt fit --help`")
        external = [n for n, v in (("--scores", scores), ("--key", key), ("--target", target), ("--domains", domains),
                                   ("--save", save), ("--tolerance", tolerance is not None),
                                   ("--scale-column", scale_column), ("--tokens-column", tokens_column),
                                   ("--at-scale", at_scale is not None), ("--at-tokens", at_tokens is not None)) if v]
        if external:
            raise MixoptError(f"{external[0]} applies to --runs fits only",
                              "with a CONFIG, the config names its domains, objective and workspace")
        from mixopt.tracking import check_trackers

        exp = _fit_overrides(_load(config), model, cv_folds, bootstrap, seed, kl_weight, trust_region, bound)
        if not _fit_and_print(exp, format, _runtime(workers, progress, device), reeval is not False, plots is not False,
                              check_trackers(track), _against(against, exp.domain_names), force):
            raise typer.Exit(1)
        return
    if config is not None:
        raise MixoptError("give either CONFIG or --runs, not both", "drop one")
    if force:
        raise MixoptError("--force applies to a CONFIG's fit (its <name>.optimal.yaml)", "drop it")
    if track:
        raise MixoptError("--track logs an experiment's runs and fits", "use it with a CONFIG")
    # Flags that choose how an experiment's checkpoints are evaluated: a table has none.
    runtime_only = [n for n, v in (("--reeval/--no-reeval", reeval is not None), ("--workers", workers != 1),
                                   ("--device", device != "auto"), ("--progress/--no-progress", progress is not None))
                    if v]
    if runtime_only:
        raise MixoptError(f"{runtime_only[0]} applies to a CONFIG's fit only (a --runs table has no checkpoints"
                          " to evaluate)", "drop it")
    from mixopt.fit.swarm import FitSettings
    from mixopt.fit.external import fit_external, load_swarm, parse_targets
    from mixopt.report.terminal import format_recommendation

    covariates = [c for c in (scale_column, tokens_column) if c]
    if (tokens_column or at_scale or at_tokens) and not scale_column:
        raise MixoptError("--tokens-column, --at-scale and --at-tokens need --scale-column", "name the model-size column")
    if scale_column and at_scale is None:
        raise MixoptError("--scale-column needs --at-scale: the model size to recommend for", "e.g. --at-scale 1e9")
    swarm = load_swarm(runs, parse_targets(target), scores, key, domains, 0.01 if tolerance is None else tolerance,
                       bound, covariates)
    settings = FitSettings((model or Model.auto).value, 5 if cv_folds is None else cv_folds, seed or 0, kl_weight or 0.0,
                           50 if bootstrap is None else bootstrap, trust_region=(trust_region or TrustRegion.range).value)
    rec = fit_external(swarm, settings, save, plots is not False, scaled=dict(scale=scale_column, at_scale=at_scale, tokens=tokens_column,
                                                                 at_tokens=at_tokens) if scale_column else None,
                       against=_against(against, swarm.domains))
    if format is Format.json:
        typer.echo(json.dumps({**rec.to_json(), "written": str(save) if save else None}))
    else:
        typer.echo(format_recommendation(rec))
        if save:
            typer.echo(f"written: {save / 'fit.json'}, {save / 'optimal.yaml'}")


def _fit_overrides(exp, model, cv_folds, bootstrap, seed, kl_weight, trust_region, bound: list[str]):
    """`fit CONFIG --cv-folds 3 ...`: the flags given, over the config's fit and optimum settings (recorded in
    what fit prints and writes)."""
    from mixopt.config.load import override_experiment
    from mixopt.fit.external import parse_bounds

    changes, record = [], {}
    for flag, loc, value in (("--model", ("fit", "model"), model and model.value),
                             ("--cv-folds", ("fit", "cv_folds"), cv_folds), ("--bootstrap", ("fit", "bootstrap"), bootstrap),
                             ("--seed", ("fit", "seed"), seed), ("--kl-weight", ("optimum", "kl_weight"), kl_weight),
                             ("--trust-region", ("optimum", "trust_region"), trust_region and trust_region.value)):
        if value is not None:
            changes.append((flag, loc, value))
            record[flag.lstrip("-")] = str(value)
    names = exp.domain_names
    bounds = parse_bounds(bound, names)  # one error line for a bad --bound
    if bound:
        limits = {**exp.optimum.bounds}
        for spec in bound:
            i = names.index(spec.partition("=")[0])
            limits[names[i]] = (float(bounds.lower[i]), float(bounds.upper[i]))
        changes.append(("--bound", ("optimum", "bounds"), limits))
        record["bound"] = " ".join(bound)
    return override_experiment(exp, changes, record)


@app.command()
def predict(fit_dir: Path = typer.Argument(..., help="A saved fit: `fit --save DIR` or a workspace's fits/<key>/."),
            mixtures: Path = typer.Argument(..., help="Candidate mixtures: CSV/Parquet (one weight column per domain), "
                                                      "proposed YAML or an optimal.yaml."),
            key: Optional[str] = typer.Option(None, help="Id column to echo (default: the first non-weight column)."),
            tolerance: float = typer.Option(0.01, callback=_finite_at_least_0, help="How far a row's weights may sum from 1."),
            format: TableFormat = typer.Option(TableFormat.csv, "--format")):
    """Predict the objective of each candidate mixture with a saved fit (lower is better)."""
    from mixopt.fit.external import predict_mixtures

    name, ids, pred, ci = predict_mixtures(fit_dir, mixtures, key, tolerance)
    order = sorted(range(len(ids)), key=lambda i: pred[i])
    rank = {i: r + 1 for r, i in enumerate(order)}
    cols = ["mean_low", "mean_high", "proxy_low", "proxy_high"]  # seed-mean; one new proxy
    if format is TableFormat.json:
        typer.echo(json.dumps([{name: ids[i], "predicted": float(pred[i]), "rank": rank[i],
                                **({c: float(v) for c, v in zip(cols, ci[i])} if ci is not None else {})}
                               for i in range(len(ids))]))
        return
    import csv

    out = csv.writer(sys.stdout, lineterminator="\n")  # quotes ids holding commas, quotes or newlines
    out.writerow([name, "predicted", "rank"] + (cols if ci is not None else []))
    for i in range(len(ids)):
        out.writerow([ids[i], f"{pred[i]:.9g}", rank[i]] + ([f"{v:.9g}" for v in ci[i]] if ci is not None else []))


@app.command()
def propose(config: Path = CONFIG, n: int = typer.Option(4, "--n", min=1, help="How many mixtures."),
            candidates: Optional[Path] = typer.Option(None, help="Pick among these mixtures only (proposed YAML, "
                                                                 "optimal.yaml, CSV or Parquet)."),
            format: Format = FORMAT, force: bool = FORCE_BESIDE):
    """The next mixtures to train: where the fit is least sure about the optimum."""
    from mixopt.fit.propose import propose_mixtures

    exp = _load(config)
    if candidates is not None:
        from mixopt.config.validate import check_input_path

        check_input_path(candidates, "--candidates file", exp.workspace_dir)
    picks, out = propose_mixtures(exp, n, _runtime(progress=False, **_say_for(format)), candidates, force)
    then = f"mixopt sweep {config} --mixtures {out}"
    if format is Format.json:
        typer.echo(json.dumps({"mixtures": [dict(zip(exp.domain_names, map(float, w))) for w in picks],
                               "written": str(out), "next": then}))
        return
    typer.echo(f"{len(picks)} mixtures written to {out}; train them with `{then}`, then `mixopt fit {config}`")


@app.command()
def verify(config: Path = CONFIG, workers: int = WORKERS, progress: bool = PROGRESS, device: str = DEVICE,
           precision: Precision = PRECISION, format: Format = typer.Option(Format.text, "--format"),
           size: Optional[str] = typer.Option(None, help="Train at this larger proxy size (e.g. 5m) instead: the "
                                              "recommendation, the prior and the --top best runs; rank correlation "
                                              "across scales."),
           top: Optional[int] = typer.Option(None, min=0, show_default=False,
                                             help="With --size: how many of the swarm's best runs to train again "
                                                  "(default 3)."),
           seeds: int = typer.Option(1, min=1, help="Proxies per mixture, each with its own seed (paired across "
                                     "mixtures): mean +- sd, the paired gain over the prior with its interval."),
           against: Optional[Path] = typer.Option(None, help="Also train and compare this mixture (any mixture file: "
                                                  "YAML, CSV, Parquet, an optimal.yaml; its first row).")):
    """Train proxies on the recommended mixture and on the prior; compare measured with predicted."""
    from mixopt.fit.verify import verify_at_size, verify_recommendation

    exp = _load(config)
    if size is not None and (seeds != 1 or against is not None):
        raise MixoptError("--seeds and --against apply without --size", "run them as separate checks")
    if size is None and top is not None:
        raise MixoptError("--top applies with --size only (the best runs trained again at that size)",
                          "add --size, or drop it")
    if size is not None:
        c = verify_at_size(exp, size, 3 if top is None else top, _runtime(workers, progress, device, say=_stderr,
                                                                          precision=precision.value))
        if format is Format.json:
            typer.echo(json.dumps(c.to_json()))
            return
        typer.echo(f"objective: {c.objective} (lower is better); at {c.at_size} (swarm: {c.size}); "
                   f"{c.trained} proxies trained for this check")
        typer.echo(f"{'mixture':<20} {'predicted':>9} {'at ' + c.size:>9} {'at ' + c.at_size:>9}")
        for r in c.mixtures:
            small = f"{r['measured']:.4f}" if r["measured"] is not None else "-"
            typer.echo(f"{r['name']:<20} {r['predicted']:>9.4f} {small:>9} {r['measured_at_size']:>9.4f}")
        typer.echo(f"rank correlation across scales (measured {c.size} vs {c.at_size}): {c.spearman_scales:.3f}; "
                   f"fit's prediction vs {c.at_size}: {c.spearman_predicted:.3f}")
        typer.echo(f"the recommendation ranks {c.recommended_rank} of {len(c.mixtures)} at {c.at_size}")
        joint = exp.design.fidelities or exp.optimum.target_size
        typer.echo(f"these {c.at_size} runs are data for the fit across sizes: `mixopt fit {config}` uses them"
                   if joint else f"to fit one law across sizes with these {c.at_size} runs, set optimum.target_size "
                   "(the real run's parameters) and run `mixopt fit CONFIG`")
        return
    others = _against(against, exp.domain_names)
    v = verify_recommendation(exp, _runtime(workers, progress, device, say=_stderr, precision=precision.value), seeds,
                              others)
    if format is Format.json:
        typer.echo(json.dumps(v.to_json()))
        return
    for w in v.warnings:
        typer.echo(f"warning (from the fit): {w}")
    typer.echo(f"objective: {v.objective} (lower is better); {v.seeds} seed(s) per mixture; {v.trained} proxies "
               "trained for this check")
    if v.size:
        typer.echo(v.size)
    if v.space != "full":
        typer.echo(f"fit: {v.space} (predictions are the reduced model's; the prior's at its point on that plane)")
    for m in v.mixtures:
        spread = f" +- {m.sd:.4f} (sd over {len(m.values)} seeds)" if m.sd is not None else ""
        label = "natural prior" if m.name == "prior" else f"{m.name} mixture" if m.name == "recommended" else m.name
        typer.echo(f"{label + ':':<22} measured {m.mean:.4f}{spread}, predicted {m.predicted:.4f} "
                   f"(error, measured - predicted: {m.mean - m.predicted:+.4f})")
    which = "seed-mean" if v.seeds > 1 else "one new proxy"
    ci = v.interval if v.seeds > 1 else v.proxy_interval
    if ci is not None:
        typer.echo(f"the fit's {v.level:.0%} interval for the {which}: {ci[0]:.4f} .. {ci[1]:.4f}: measured "
                   + ("inside" if v.inside else "OUTSIDE"))
    typer.echo(f"rank {v.rank} of {v.runs + 1} among the fit's runs; best of them {v.best_run:.4f}")
    if v.gain_interval is not None:
        typer.echo(f"paired gain over the prior (same seeds): {v.gain:+.4f} ({v.level:.0%} interval "
                   f"{v.gain_interval[0]:+.4f} .. {v.gain_interval[1]:+.4f}; P(better) {v.p_better:.2f}): {v.verdict}")
    else:
        typer.echo(f"gain over the prior: {v.gain:+.4f} at one seed; one seed cannot separate that from seed noise "
                   "(`--seeds 3` gives an interval)")
    if v.fit_verdict is not None:
        typer.echo(f"the fit said: {v.fit_verdict}" + ("" if v.agrees else
                   " -- NOT borne out: the measured recommendation is worse than the prior"))


@app.command()
def optimize(config: Path = CONFIG,
             budget: str = typer.Option(..., help="What the rounds may spend in all (the store's runs count): "
                                        "proxies (40), FLOPs (3e12flops) or device-hours (0.5h)."),
             workers: int = WORKERS, progress: bool = PROGRESS, device: str = DEVICE, precision: Precision = PRECISION,
             format: Format = FORMAT, force: bool = FORCE_BESIDE):
    """Rounds of sweep -> fit -> verify -> propose until the verdict against the prior is decided or the
    budget is spent; kill it at any time and rerun: nothing is trained twice."""
    from mixopt.fit.rounds import optimize_budget
    from mixopt.sweep.budget import parse_budget

    b = parse_budget(budget)  # a bad --budget is one line before anything is loaded or written
    exp = _load(config)
    say = _stderr if format is Format.json else typer.echo
    runtime = _runtime(workers, progress, device, say=_stderr, precision=precision.value)
    with _interrupted(exp, "optimize", config, flags=f" --budget {budget}", runtime=runtime):
        out = optimize_budget(exp, b, runtime, say, force)
    if format is Format.json:
        typer.echo(json.dumps(out.to_json()))
        return
    typer.echo(f"stopped: {out.stopped}")
    this = "none by this call" if out.already else f"{len(out.rounds)} by this call"
    typer.echo(f"spent {b.show(out.spent)} of {b.show(b.amount)} (the store's runs) over {out.rounds_in_all} "
               f"round(s) in all ({this}); verdict against the prior: {out.verdict}")
    if out.weights:
        which = "" if out.candidate_round is None else \
            f" (the candidate of round {out.candidate_round}, the mixture the verdict is about)"
        typer.echo(f"recommendation{which}: " + ", ".join(f"{d} {v:.3f}" for d, v in out.weights.items())
                   + (f" (written: {out.written})" if out.written else f" (recorded: {out.recorded}; nothing written now)"))


def _against(path: Optional[Path], domains: list[str]) -> list:
    """--against FILE as (name, weights): its first mixture."""
    if path is None:
        return []
    from mixopt.core.mixtures import read_mixtures

    _, ids, W = read_mixtures(path, domains)
    return [(path.name if len(ids) == 1 else f"{path.name}:{ids[0]}", W[0])]


@app.command()
def report(config: Path = CONFIG,
           output: Optional[Path] = typer.Option(None, help="The HTML file (default <workspace>/report.html)."),
           force: bool = FORCE):
    """Write one self-contained HTML page: recommendation, CV, runs, effect curves, suites, warnings."""
    from mixopt.report.html import write_report

    exp = _load(config)
    own = exp.workspace_dir / "report.html"
    out = _output(exp, output or own, "--output", force, owned_inside=(own,))
    r = write_report(exp, out, _runtime(progress=False, say=lambda m: typer.echo(m, err=True)))
    typer.echo(f"report on {r.runs} runs ({len(r.warnings)} warning{'' if len(r.warnings) == 1 else 's'}) written to {r.path}")


@app.command("export-model")
def export_model(config: Path = CONFIG,
                 run: str = typer.Argument("best", help="A run key's first characters, or best (lowest objective)."),
                 output: Optional[Path] = typer.Option(None, help="The new folder (default <workspace>/hf/<run>).")):
    """Write a run's proxy as a Hugging Face model folder (transformers, lm_eval --model hf load it)."""
    from mixopt.sweep.export_model import export_run_model

    exp = _load(config)
    if output is not None:
        output = _output(exp, output, "--output", False, owned_inside=(exp.workspace_dir / "hf",), folder=True)
    key, out = export_run_model(exp, run, output)
    typer.echo(f"run {key[:12]} written to {out} (config.json, model.safetensors, tokenizer)")


def _output(exp, path: Path, flag: str, force: bool, owned_inside=(), folder: bool = False) -> Path:
    """An output path checked against the experiment (its workspace and inputs), before any work."""
    from mixopt.core.outputs import check_output
    from mixopt.data.sources import local_inputs

    return check_output(path, flag, force=force, workspace=exp.workspace_dir, owned_inside=owned_inside,
                        protected=tuple(local_inputs(exp)), folder=folder)


def _stderr(message: str) -> None:
    typer.echo(message, err=True)


def _say_for(format: Format) -> dict:
    """With --format json, stdout holds the JSON alone: notices go to stderr."""
    return {"say": _stderr} if format is Format.json else {}


class _interrupted:
    """Ctrl-C during a verb that trains or evaluates: say what was kept and what is pending, exit 130."""

    def __init__(self, exp, verb: str, config: Path, extra=(), flags: str = "", runtime=None):
        self.exp, self.verb, self.config, self.extra, self.flags = exp, verb, config, extra, flags
        self.runtime = runtime  # a verb that trains: count the runs as its sweep keys them (device, precision)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None or not issubclass(exc_type, KeyboardInterrupt):
            return False
        from mixopt.fit.calls import Interrupted
        from mixopt.sweep.status import done_kinds, experiment_status

        if isinstance(exc, Interrupted):  # optimize: the round's runs, not the design's
            left = exc.asked - exc.done
            typer.echo(f"interrupted in round {exc.round}: " + (
                f"{exc.done} of {exc.asked} runs it was training are finished and kept in {self.exp.workspace_dir}; "
                f"{left} left planned (the rerun trains them first)" if exc.asked else "nothing was training")
                + f"; spent {exc.spent}; `mixopt {self.verb} {self.config}{self.flags}` continues where this stopped",
                err=True)
            raise typer.Exit(130) from None
        try:
            trains = None
            if self.runtime is not None:
                from mixopt.sweep.run import sweep_measurement

                trains = sweep_measurement(self.exp, self.runtime)
            # the runs asked (the design's and the mixtures file's), as the command's own sweep keys them
            st = experiment_status(self.exp, self.extra, measured_as=trains)
        except Exception as e:  # the summary must not hide the interrupt
            typer.echo(f"interrupted: finished results are kept ({type(e).__name__} reading the store)", err=True)
            raise typer.Exit(130) from None
        d, cur = st["design"], st["current_suite"] or {}
        asked = "runs asked (the design's and the mixtures file's)" if self.extra else "runs of this design"
        typer.echo(f"interrupted: {d['done']} of {d['planned']} {asked} are finished{done_kinds(st)} and kept "
                   f"in {st['workspace']}; {d['pending'] + d['failed'] + d['suspect']} pending, "
                   f"{cur.get('runs_lacking', 0)} finished runs lack some of the current suite; "
                   f"`mixopt {self.verb} {self.config}{self.flags}` continues where this stopped", err=True)
        raise typer.Exit(130) from None


def _fit_and_print(exp, format: Format, runtime, reeval: bool, plots: bool = True, trackers=(), against=(),
                   force: bool = False) -> bool:
    """Fit and print; False when suspect or failed runs were left out (said on stderr)."""
    from dataclasses import replace

    from mixopt.fit.from_store import recommend_mixture
    from mixopt.tracking import track_fit, track_runs
    from mixopt.report.terminal import format_recommendation, suspect_line

    if format is Format.json:  # stdout holds the JSON alone
        runtime = replace(runtime, say=lambda m: typer.echo(m, err=True))
    rec = recommend_mixture(exp, runtime, reeval=reeval, plots=plots, against=against, force=force)
    if trackers:
        track_runs(exp, trackers, _stderr)
        track_fit(exp, rec, trackers, _stderr)
    from mixopt.core.workspace import Workspace

    fit_dir = Workspace(exp.workspace_dir).fit_dir(rec.fit_key)
    fit_dir = fit_dir if (fit_dir / "fit.json").is_file() else None  # not written in a read-only workspace
    if format is Format.json:
        typer.echo(json.dumps({**rec.to_json(), "written": str(exp.optimal_path), "overrides": exp.overrides,
                               "fit_dir": str(fit_dir) if fit_dir else None}))
    else:
        if exp.overrides:
            typer.echo("command-line overrides of the config: "
                       + ", ".join(f"{k} {v}" for k, v in exp.overrides.items()))
        typer.echo(format_recommendation(rec))
        typer.echo(f"written: {exp.optimal_path}")
        if fit_dir:
            typer.echo(f"fit folder: {fit_dir} (fit.json, runs.parquet, plots)")
    if rec.failed:
        typer.echo(f"note: {len(rec.failed)} failed runs left out of the fit (e.g. {rec.failed[0][0][:12]}: "
                   f"{rec.failed[0][1]}); `mixopt status CONFIG` lists them", err=True)
    if rec.suspect:
        typer.echo(suspect_line(rec.suspect), err=True)
    return not rec.suspect and not rec.failed


@app.command("eval")
def eval_(config: Path = CONFIG,
          workers: int = WORKERS, progress: bool = PROGRESS, device: str = DEVICE,
          watch: bool = typer.Option(False, help="Re-evaluate and refit each time the config or suite is saved."),
          interval: Optional[float] = typer.Option(None, min=0.05, max=86400, show_default=False,
                                                   help="--watch: seconds between checks (default 1)."),
          format: Format = FORMAT):
    """Evaluate every stored checkpoint on what the current eval suite lacks (never trains)."""
    from mixopt.report.terminal import format_eval, suspect_line
    from mixopt.sweep.reeval import run_eval

    if watch and format is Format.json:
        raise MixoptError("--watch prints as it goes: it has no --format json", "drop one of them")
    if interval is not None and not watch:
        raise MixoptError("--interval applies with --watch only", "add --watch, or drop it")
    runtime = _runtime(workers, progress, device, **_say_for(format))

    def once() -> bool:
        exp = _load(config)
        with _interrupted(exp, "eval", config):
            report = run_eval(exp, runtime)
        if format is Format.json:
            from dataclasses import asdict

            typer.echo(json.dumps({**asdict(report), "failed": [{"key": k, "error": e} for k, e in report.failed]}))
        else:
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
        watch_files(config, once, typer.echo, 1.0 if interval is None else interval)
    except KeyboardInterrupt:
        pass


@app.command()
def status(config: Path = CONFIG, format: Format = typer.Option(Format.text, "--format")):
    """What is done: runs planned, trained, failed; evals per suite."""
    from mixopt.sweep.status import done_kinds, experiment_status

    exp = _load(config)
    st = experiment_status(exp)  # a mixture is done however it trained (device, precision)
    if format is Format.json:
        typer.echo(json.dumps(st))
        return
    typer.echo(f"workspace: {st['workspace']}")
    typer.echo(f"sample: {st['sample']}")
    if st.get("pools"):
        from mixopt.report.terminal import format_pools

        typer.echo(format_pools(st["pools"]))
    r = st["runs"]
    d = st["design"]
    if st.get("resample"):  # the design follows the sample: not known until it is drawn again
        typer.echo("runs in this design: known once `mixopt sample` has drawn the sample again")
    else:
        typer.echo(f"runs in this design: {d['planned']} planned, {d['done']} done{done_kinds(st)}, "
                   f"{d['failed']} failed, {d['suspect']} suspect, {d['pending']} pending")
    typer.echo(f"runs in store (all designs): {r['done']} done, {r['failed']} failed, {r['suspect']} suspect, "
               f"{r['planned']} planned; proxies trained: {st['trainings']}")
    sizes = st.get("sizes") or []
    if len(sizes) > 1 or exp.design.fidelities:
        for z in sizes:
            asked = f" of {z['asked']} asked" if z["asked"] is not None else ""
            typer.echo(f"  size {z['size']} ({z['params']:,} params): {z['done']} done{asked}, {z['failed']} failed, "
                       f"{z['planned']} pending; {z['flops']:.3g} FLOPs, {z['device_seconds']:.1f} device-seconds")
    if "compute" in st:
        typer.echo(f"compute spent (all runs in store): {st['compute']['flops']:.3g} FLOPs (6 x params x tokens), "
                   f"{st['compute']['device_seconds']:.1f} device-seconds")
    if st.get("experiment_compute"):
        c = st["experiment_compute"]
        typer.echo(f"this experiment's compute (every size): {c['flops']:.3g} FLOPs, {c['device_seconds']:.1f} "
                   "device-seconds")
    if st.get("budget"):
        from mixopt.sweep.budget import Budget

        b = st["budget"]
        show = Budget(b["given"], b["unit"], b["amount"]).show
        ended = {"interrupted": f", interrupted in round {b['round']}", "failed": f", ended by an error in round {b['round']}",
                 "running": f", not finished: killed in round {b['round']}, or still running"}.get(b["state"], "")
        typer.echo(f"budget (mixopt optimize --budget {b['given']}{ended}): spent {show(b['spent'])} of {show(b['amount'])} "
                   f"(the store's runs); {b['rounds']} round(s) finished in all ({b['rounds_by_call']} by the latest call); "
                   + (f"verdict {b['verdict']} (round {b['verdict_round']}); " if b["verdict_round"] else "no verdict yet; ")
                   + (f"stopped: {b['stopped']}" if b["stopped"] else
                      f"rerun `mixopt optimize CONFIG --budget {b['given']}` to continue"))
    failed = st.get("failed_runs") or []
    for f in failed[:10]:
        again = "the next sweep retries it" if f["retried_by_next_sweep"] else \
            "left out of fits; `mixopt sweep CONFIG --retry-failed` retrains it"
        typer.echo(f"  failed {f['key'][:12]} ({f['origin']}): {f['error']} ({again})")
    if len(failed) > 10:
        typer.echo(f"  ... and {len(failed) - 10} more failed runs (`mixopt status CONFIG --format json` lists all)")
    if st.get("precisions"):  # this design's trained runs came from more than one device or precision
        typer.echo("trained as: " + ", ".join(f"{n} {m}" for m, n in st["precisions"].items()) +
                   " (device and precision change the numbers; `mixopt fit` warns when it mixes them)")
    reps = st.get("replicates") or []
    if reps:
        seeds = sorted({g["seeds"] for g in reps})
        typer.echo(f"seed replicates: {len(reps)} mixtures x {'/'.join(map(str, seeds))} seeds "
                   f"({sum(g['done'] for g in reps)} of {sum(g['seeds'] for g in reps)} proxies done); "
                   "`mixopt fit` measures the noise floor from them")
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
    from mixopt.report.terminal import format_check
    from mixopt.sweep.check import check_workspace

    report = check_workspace(_load(config), repair)
    typer.echo(json.dumps(report.to_json()) if format is Format.json else format_check(report))
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def schema(out: Optional[Path] = typer.Option(None, help="Write it to this file (default: stdout)."),
           force: bool = FORCE):
    """The config's JSON Schema, for editors (e.g. `# yaml-language-server: $schema=mixopt.schema.json`)."""
    from mixopt.config.schema import SCHEMA_TITLE, experiment_json_schema
    from mixopt.core.outputs import check_output, write_output

    text = json.dumps(experiment_json_schema(), indent=2) + "\n"
    if out is None:
        typer.echo(text, nl=False)
        return

    def looks_mine(path: Path) -> bool:  # no workspace to record it in: a schema mixopt wrote says so
        try:
            return path.stat().st_size < 1 << 24 and json.loads(path.read_bytes()).get("title") == SCHEMA_TITLE
        except (OSError, ValueError, AttributeError):
            return False

    real = check_output(out, "--out", force=force, looks_mine=looks_mine)
    write_output(real, text.encode(), "--out")
    typer.echo(f"written: {out}")


class ExportFormat(str, Enum):
    csv = "csv"
    parquet = "parquet"
    json = "json"


@app.command()
def export(config: Path = CONFIG, format: ExportFormat = typer.Option(ExportFormat.csv, "--format"),
           output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write here (default: stdout; "
                                                                              "Parquet needs a file)."),
           force: bool = FORCE):
    """One row per run: key, origin, weights, objective under the current suite, every measurement,
    train loss, tokens, seconds, status. `mixopt fit --runs FILE --target objective` reads it back."""
    from mixopt.core.outputs import write_output
    from mixopt.sweep.export import export_rows, export_table

    if format is ExportFormat.parquet and output is None:
        raise MixoptError("Parquet is binary: --format parquet needs --output FILE", "e.g. --output runs.parquet")
    exp = _load(config)
    real = _output(exp, output, "--output", force) if output is not None else None
    columns, rows = export_rows(exp)
    data = export_table(columns, rows, format.value)
    if real is None:
        sys.stdout.write(data.decode())
        return
    write_output(real, data, "--output", exp.workspace_dir)
    typer.echo(f"{len(rows)} runs written to {output}", err=True)


@app.command()
def runs(config: Path = CONFIG, format: Format = typer.Option(Format.text, "--format")):
    """List the runs: key, mixture, status, proxy size, objective (the keys `export-model` takes)."""
    from mixopt.sweep.export import run_listing

    rows = run_listing(_load(config))
    if format is Format.json:
        typer.echo(json.dumps(rows))
        return
    typer.echo(f"{'key':<12}  {'size':<4}  {'status':<8}  {'objective':>9}  mixture")
    for r in rows:
        obj = f"{r['objective']:.4f}" if r["objective"] is not None else "-"
        typer.echo(f"{r['key'][:12]:<12}  {r['size']:<4}  {r['status']:<8}  {obj:>9}  {r['mixture']}")
    typer.echo(f"{len(rows)} runs; objective under the current suite (lower is better); "
               "`mixopt export-model CONFIG KEY` takes a key's first characters")


def _load(config: Path, build: bool = False):
    """The experiment, with every file its suite names checked: the same errors for every verb. A config's
    pools become domains; `build` (sample): a cluster model missing from the workspace is fitted."""
    from mixopt.config.load import load_experiment
    from mixopt.data.pools import expand_pools
    from mixopt.data.sources import check_workspace_place
    from mixopt.evals.suites import check_suite_files

    exp = expand_pools(load_experiment(config), build=build)
    check_workspace_place(exp)
    check_suite_files(exp)
    return exp


def _one_line_usage(e) -> str:
    """click's usage error (a box of lines) as one line naming the command to ask for help."""
    ctx = getattr(e, "ctx", None)
    path = ctx.command_path.replace("python -m mixopt.cli", "mixopt") if ctx else "mixopt"
    if isinstance(getattr(e, "message", None), str):  # typer checks option values through pydantic
        e.message = plain(e.message)
    return f"error: {' '.join(e.format_message().split()).rstrip('.')}; see `{path} --help`"


def _guarded(fn):
    """A verb whose stray EOFError (a file that ends early, read by a library) is not taken for Ctrl-D."""
    import functools

    @functools.wraps(fn)
    def verb(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EOFError as e:
            raise MixoptError(f"a file ended before its end ({e or 'truncated'})",
                              "check that the input files are complete") from None
    return verb


def _terminate_as_interrupt() -> None:
    """SIGTERM (a scheduler's preemption, `timeout`, `kill`) stops a command as Ctrl-C does: what it
    finished is kept, what it had half-written (a temp folder, spilled candidates) is removed, and its
    worker processes are shut down; the default would end it on the spot."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, interrupt)


def main() -> None:
    import sqlite3

    try:
        from typer._click import exceptions as cx  # recent typer carries its own click
    except ImportError:  # pragma: no cover - older typer uses click itself
        from click import exceptions as cx

    for info in app.registered_commands:
        if not getattr(info.callback, "__wrapped__", None):
            info.callback = _guarded(info.callback)
    _terminate_as_interrupt()
    try:
        try:
            code = app(standalone_mode=False)  # usage errors come back here: one line, like ours
        except BaseException:
            _settle(ok=False)
            raise
        _settle(ok=not code)
    except MixoptError as e:
        from mixopt.core.credentials import redact

        typer.echo(f"error: {redact(e.one_line())}", err=True)  # a source URL's password never shows
        sys.exit(2)
    except cx.NoArgsIsHelpError as e:  # `mixopt` alone: the help, as click prints it
        typer.echo(e.ctx.get_help(), err=True)
        sys.exit(2)
    except cx.UsageError as e:
        typer.echo(_one_line_usage(e), err=True)
        sys.exit(2)
    except cx.ClickException as e:
        typer.echo(f"error: {' '.join(e.format_message().split())}", err=True)
        sys.exit(e.exit_code or 1)
    except typer.Abort:
        typer.echo("error: interrupted; finished results are kept, rerun to continue", err=True)
        sys.exit(130)
    except sqlite3.DatabaseError as e:
        code = (getattr(e, "sqlite_errorcode", None) or 0) & 0xFF  # the primary code
        if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            typer.echo("error: the workspace's database stayed locked by another process; wait for the other "
                       "mixopt command to finish (or stop it) and rerun", err=True)
            sys.exit(2)
        if code in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
            typer.echo(f"error: the workspace's mixopt.db is damaged ({e}); run `mixopt check CONFIG`, or move it "
                       "away (a new one is made; `mixopt sweep` adopts finished runs from their checkpoints)", err=True)
            sys.exit(2)
        if code in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR):
            _disk_full(e)
        raise
    except OSError as e:
        from mixopt.core.workspace import DISK_FULL_ERRNOS

        if e.errno in DISK_FULL_ERRNOS:
            _disk_full(e)
        if e.errno == errno.EROFS:
            where = Path(e.filename).parent if e.filename else "the workspace"
            typer.echo(f"error: cannot write {e.filename or 'to the workspace'}: read-only filesystem; run this "
                       f"command where {where} is writable (a read-only workspace still serves status, check and "
                       "predict, and fit when the config's folder is writable)", err=True)
            sys.exit(2)
        raise
    sys.exit(code if isinstance(code, int) else 0)


def _settle(ok: bool) -> None:
    """A command that succeeded writes the corpus-hash caches it filled; one that failed writes none
    and takes back the marker it left in an older workspace: an error leaves the folder as found."""
    from mixopt.core.keys import save_file_hashes
    from mixopt.core.workspace import unmark_adopted

    if ok:
        save_file_hashes()
    else:
        unmark_adopted()


def _disk_full(e) -> None:
    typer.echo(f"error: cannot write to the workspace: disk full, file size limit or I/O error ({e}); "
               "free space (or raise the quota) and rerun: finished results are kept", err=True)
    sys.exit(2)


if __name__ == "__main__":
    main()
