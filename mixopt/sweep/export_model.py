"""`mixopt export-model`: a finished run's proxy as a Hugging Face model folder."""

from __future__ import annotations

from pathlib import Path

from mixopt.config.schema import Experiment
from mixopt.core.keys import file_sha256
from mixopt.errors import MixoptError
from mixopt.proxy.checkpoint import load_checkpoints
from mixopt.proxy.hf_folder import export_hf
from mixopt.sweep.export import sized_plans
from mixopt.sweep.store import Store


def export_run_model(exp: Experiment, run: str, output: Path | None) -> tuple[str, Path]:
    """Export run `run` (a key prefix, or `best`: the lowest objective under the current suite) of
    this config's sweep; returns its key and the folder (default: <workspace>/hf/<key prefix>)."""
    plans = sized_plans(exp)  # the sweep's runs, and `verify --size` runs at their own size
    plan = plans[0][1]
    with Store(plan.workspace.db_path, readonly=True) as store:
        done = {r.key: (r, p) for _, p in plans for r in store.runs(p.context, "done")}
        scores = store.scores(plan.suite.key)
    if run == "best":
        scored = [k for k in done if k in scores and done[k][1] is plan]
        if not scored:
            raise MixoptError("no finished run has the current suite's objective yet",
                              "run `mixopt sweep CONFIG` (or `mixopt eval CONFIG`) first")
        key = min(scored, key=scores.__getitem__)
    else:
        hits = [k for k in done if k.startswith(run)] if len(run) >= 4 else []
        if len(hits) != 1:
            why = "matches no finished run of this config" if not hits else f"matches {len(hits)} runs"
            raise MixoptError(f"run '{run}' {why}", "give `best` or at least 4 leading characters of a run key "
                              "(`mixopt runs CONFIG` lists them)")
        (key,) = hits
    r, plan = done[key]
    path = plan.workspace.root / r.checkpoint
    if not path.is_file() or file_sha256(path) != r.sha256:
        raise MixoptError(f"checkpoint of run {key[:12]} is missing or not the one recorded",
                          "`mixopt check CONFIG --repair`, then `mixopt sweep CONFIG` retrains it")
    out = output or plan.workspace.root / "hf" / key[:12]
    return key, export_hf(load_checkpoints([path]), 0, plan.spec, plan.workspace.tokenizer_path, out)
