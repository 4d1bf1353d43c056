"""`kind: lm_eval`: an lm-evaluation-harness task run on each proxy, its metric as the value.

Each proxy is exported as a Hugging Face model folder (proxy/hf_folder.py) into a temporary folder and
evaluated with the harness's own `hf` model, as `lm_eval --model hf --model_args pretrained=DIR`
would; a custom task comes from a folder of task YAMLs (`path`), a built-in one by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

from mixopt.config.evals import LmEvalEvaluation
from mixopt.core.keys import file_sha256
from mixopt.errors import MixoptError
from mixopt.proxy.hf_folder import export_hf
from mixopt.proxy.model import ProxySpec

INSTALL = "install the harness: pip install 'mixopt[lm_eval]'"


def check_lm_eval(e: LmEvalEvaluation, include: Path | None) -> None:
    """What every verb checks before any work: the harness is installed and the task folder exists."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise MixoptError(f"evaluation '{e.name}' needs lm-evaluation-harness, which is not installed",
                          INSTALL) from None
    if include is not None and not include.is_dir():
        raise MixoptError(f"evaluation '{e.name}': task folder not found: {include}",
                          "point `path` at the folder holding the task YAMLs")
    code = task_code(include) if include is not None and not e.trust_task_code else []
    if code:
        shown = ", ".join(code[:3]) + (f" and {len(code) - 3} more" if len(code) > 3 else "")
        raise MixoptError(f"evaluation '{e.name}': the task folder {include} holds code ({shown}) that "
                          "lm-evaluation-harness imports and runs inside mixopt",
                          "read it, then set `trust_task_code: true` on this evaluation to run it")


FUNCTION_TAG = b"!function"  # a task YAML's hook into Python: `process_docs: !function utils.process_docs`


def task_code(folder: Path) -> list[str]:
    """What in an lm_eval task folder runs as Python: each .py file, and each YAML with a `!function`
    tag (relative paths, sorted)."""
    out = []
    for f in sorted(folder.rglob("*")):
        if not f.is_file():
            continue
        if f.suffix == ".py":
            out.append(str(f.relative_to(folder)))
        elif f.suffix in (".yaml", ".yml") and FUNCTION_TAG in f.read_bytes():
            out.append(f"`!function` in {f.relative_to(folder)}")
    return out


def lm_eval_identity(e: LmEvalEvaluation, include: Path | None) -> dict:
    """What the harness computes: the task and every file of the task folder (YAMLs and data kept
    there), few-shot count, item limit and the harness's version."""
    check_lm_eval(e, include)
    import lm_eval

    files = sorted(f for f in include.rglob("*") if f.is_file()) if include else []
    return {"task": e.task, "k": e.k, "max_items": e.max_items, "harness": lm_eval.__version__,
            "files": [[str(f.relative_to(include)), file_sha256(f)] for f in files]}


def lm_eval_task(e: LmEvalEvaluation, include: Path | None, tokenizer: Path) -> dict:
    """The prepared task a worker runs: checked against the harness's task index once, here."""
    from lm_eval.tasks import TaskManager

    defaults = include is None or e.task not in TaskManager(include_path=str(include), include_defaults=False).all_tasks
    if defaults and e.task not in TaskManager(include_path=str(include) if include else None).all_tasks:
        raise MixoptError(f"evaluation '{e.name}': lm_eval has no task '{e.task}'"
                          + (f" (nor does {include})" if include else ""),
                          "see `lm_eval ls tasks`, or put a task YAML in the folder named by `path`")
    return {"task": e.task, "include": str(include) if include else None, "defaults": defaults, "k": e.k,
            "limit": e.max_items, "metric": e.metric, "tokenizer": str(tokenizer)}


def lm_eval_scores(W: dict, spec: ProxySpec, m) -> list[dict[str, float]]:
    """Each proxy's value of the task's metric: the harness's `hf` model on the proxy's float32 weights,
    its forward passes under the precision the proxy trained under (bf16 autocast for a bf16 run, as
    mixopt's own measures: measure.evaluation_autocast)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from mixopt.evals.measure import evaluation_autocast

    t = json.loads(Path(m.data).read_text())
    manager = TaskManager(include_path=t["include"], include_defaults=t["defaults"])
    device = str(next(iter(W.values())).device)
    out = []
    for i in range(next(iter(W.values())).shape[0]):
        with (tempfile.TemporaryDirectory(prefix="mixopt-lm-eval-") as tmp, _quiet(Path(tmp) / "log"),
              evaluation_autocast(device)):
            folder = export_hf(W, i, spec, Path(t["tokenizer"]), Path(tmp) / "model")
            res = lm_eval.simple_evaluate(model="hf", model_args={"pretrained": str(folder), "dtype": "float32"},
                                          tasks=[t["task"]], num_fewshot=t["k"] or None, limit=t["limit"],
                                          task_manager=manager, device=device, batch_size=16,
                                          bootstrap_iters=0, log_samples=False, verbosity="ERROR")
        scores = res["results"][t["task"]]
        value = scores.get(f"{t['metric']},none", scores.get(t["metric"]))
        if value is None:
            have = sorted(k.split(",")[0] for k in scores if "," in k and "_stderr" not in k)
            raise MixoptError(f"lm_eval task '{t['task']}' reports no metric '{t['metric']}' (it has {', '.join(have)})",
                              "set the evaluation's `metric` to one of those")
        out.append({t["metric"]: float(value)})
    return out


@contextlib.contextmanager
def _quiet(log: Path):
    """The harness's chatter (progress bars per request type, its git probe's "fatal: not a git
    repository") goes to a file, not the terminal; shown if the harness fails."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved, ok = [os.dup(1), os.dup(2)], False
    try:
        with open(log, "wb") as f:
            os.dup2(f.fileno(), 1)
            os.dup2(f.fileno(), 2)
            yield
        ok = True
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)
        if not ok:
            sys.stderr.write(log.read_text(errors="replace")[-4000:])
