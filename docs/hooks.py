"""mkdocs hook: writes the generated parts of the docs (CLI, config, module map, benchmarks) at build time.

A page asks for one with a line `<!-- generated: NAME -->`; `on_page_markdown` replaces it with
GENERATORS[NAME](), so the references are rebuilt from the code on every `make docs` and cannot drift.
"""

from __future__ import annotations

import ast
import inspect
import io
import json
import re
import sys
import tokenize
import typing
from enum import Enum
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # build from a checkout: the mixopt beside this file, installed or not
    sys.path.insert(0, str(ROOT))

MARK = re.compile(r"^<!-- generated: ([a-z-]+) -->$", re.M)


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _first_sentence(doc: str) -> str:
    """A docstring's opening sentence (its first line, carried on where the sentence goes on)."""
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    match = re.search(r"[.:;!?](?=\s|$)", paragraph)
    return paragraph[:match.end()] if match else paragraph


# --- the CLI reference: every verb, its usage, options and help, from the CLI's own (click) parser ---

def cli_group():
    """The click command group that `mixopt` runs (typer builds it from mixopt.cli.app)."""
    import typer.main

    from mixopt.cli import app
    return typer.main.get_command(app)


def _options_table(command, ctx) -> list[str]:
    rows = [p.get_help_record(ctx) for p in command.params]
    rows = [r for r in rows if r]
    if not rows:
        return []
    out = ["| argument / option | what it does |", "|---|---|"]
    out += [f"| `{_cell(names)}` | {_cell(help_)} |" for names, help_ in rows]
    return out + [""]


def cli_reference() -> str:
    """Markdown for `mixopt --help` and every verb's `--help`."""
    group = cli_group()
    top = group.context_class(group, info_name="mixopt")  # click's, whichever click typer brings
    out = ["```", group.get_usage(top), "```", "", _cell(group.help or ""), "",
           "Options before the verb:", ""] + _options_table(group, top)
    if group.epilog:
        out += [_cell(group.epilog), ""]
    for name, command in group.commands.items():
        ctx = command.context_class(command, info_name=name, parent=top)
        out += [f"### mixopt {name}", "", "```", command.get_usage(ctx), "```", "",
                _cell(command.help or ""), ""] + _options_table(command, ctx)
    return "\n".join(out)


# --- the config reference: every key of the YAML, from the pydantic models and their field comments ---

def _field_comments(model) -> dict[str, str]:
    """Each field's comment in the model's source: on its line, else the comment lines just above it."""
    try:
        source = inspect.getsource(model)
    except (OSError, TypeError):
        return {}
    on_line = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            on_line[tok.start[0]] = tok.string.lstrip("#").strip()
    lines = source.splitlines()
    found = {}
    for node in ast.parse(source).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        text, k = [], node.lineno - 1
        while k >= 1 and lines[k - 1].strip().startswith("#"):  # lines[k - 1] is source line k
            text.insert(0, lines[k - 1].strip().lstrip("#").strip())
            k -= 1
        found[node.target.id] = on_line.get(node.end_lineno) or on_line.get(node.lineno) or " ".join(text)
    return found


def _models_in(annotation) -> list:
    """The pydantic model classes an annotation names (through Optional, unions, lists, dicts, Annotated)."""
    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _type_name(annotation) -> str:
    text = str(annotation).replace("typing.", "").replace("NoneType", "None")
    text = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", text)
    return re.sub(r"\b(?:[a-z_]+\.)+([A-Z]\w*)", r"\1", text)  # mixopt.config.schema.Domain -> Domain


def _default(field) -> str:
    from pydantic import BaseModel
    from pydantic_core import PydanticUndefined

    if field.default is PydanticUndefined:
        return "required" if field.default_factory is None else "(computed)"
    value = field.default
    if isinstance(value, BaseModel):  # a nested model: its own table gives its defaults
        return f"{type(value).__name__}()"
    if isinstance(value, Enum):
        value = value.value
    return json.dumps(value, default=str) if not isinstance(value, str) else value


def config_models() -> list:
    """Every model reachable from the experiment's, the experiment first, each once."""
    from mixopt.config.schema import Experiment

    seen, order = set(), []

    def visit(model):
        if model in seen:
            return
        seen.add(model)
        order.append(model)
        for field in model.model_fields.values():
            for sub in _models_in(field.annotation):
                visit(sub)
    visit(Experiment)
    return order


def config_reference() -> str:
    """Markdown: one table per config model (key, type, default, what it is)."""
    from mixopt.config.schema import experiment_json_schema

    user_keys = experiment_json_schema()
    hidden = {"Experiment": set(Experiment_hidden(user_keys))}
    out = []
    for model in config_models():
        doc = _first_sentence(model.__dict__.get("__doc__") or "")  # its own, not BaseModel's
        comments = _field_comments(model)
        rows = []
        for name, field in model.model_fields.items():
            if name in hidden.get(model.__name__, ()) or field.exclude:
                continue
            what = field.description or comments.get(name, "")
            key = field.validation_alias if isinstance(field.validation_alias, str) else field.alias or name
            rows.append(f"| `{key}` | `{_cell(_type_name(field.annotation))}` | `{_cell(_default(field))}` | "
                        f"{_cell(what)} |")
        out += [f"### {model.__name__}", ""] + ([_cell(doc), ""] if doc else []) + ["| key | type | default | what it is |",
                "|---|---|---|---|"] + rows + [""]
    return "\n".join(out)


def Experiment_hidden(schema: dict) -> list[str]:
    """The experiment's keys mixopt sets itself (absent from the user-facing JSON Schema)."""
    from mixopt.config.schema import Experiment

    return [k for k in Experiment.model_fields if k not in schema.get("properties", {})]


# --- the architecture page: every module's first docstring line, and the modules each verb imports ---

def module_map() -> str:
    """Markdown: per package, a table of its modules and the first line of each one's docstring."""
    pkg = ROOT / "mixopt"
    groups: dict[str, list[tuple[str, str]]] = {}
    for path in sorted(pkg.rglob("*.py")):
        rel = path.relative_to(ROOT)
        first = _first_sentence(ast.get_docstring(ast.parse(path.read_text())) or "") or "(no docstring)"
        package = str(rel.parent).replace("/", ".")
        groups.setdefault(package, []).append((path.name, first))
    out = []
    for package in sorted(groups, key=lambda p: (p.count("."), p)):
        out += [f"**`{package}`**", "", "| module | purpose |", "|---|---|"]
        out += [f"| `{name}` | {_cell(first)} |" for name, first in groups[package]] + [""]
    return "\n".join(out)


def verb_modules() -> dict[str, list[str]]:
    """Each verb of mixopt/cli.py -> the mixopt modules its function imports (sorted)."""
    tree = ast.parse((ROOT / "mixopt" / "cli.py").read_text())
    verbs = {}
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef):
            continue
        for dec in node.decorator_list:
            if isinstance(dec, ast.Call) and getattr(dec.func, "attr", "") == "command":
                name = dec.args[0].value if dec.args else node.name.replace("_", "-")
                verbs[name] = sorted(_imports_of(node))
    return verbs


def _imports_of(fn) -> set[str]:
    """The mixopt modules a verb's own function imports (the CLI imports inside each verb)."""
    found = set()
    for node in ast.walk(fn):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mixopt"):
            found |= {f"{node.module}.{a.name}" if node.module == "mixopt" else node.module for a in node.names}
    return {m for m in found if m != "mixopt.errors"}


def verb_map() -> str:
    out = ["| verb | mixopt modules its code imports |", "|---|---|"]
    for verb, modules in verb_modules().items():
        out.append(f"| `mixopt {verb}` | {', '.join(f'`{m}`' for m in modules) or '(cli.py only)'} |")
    return "\n".join(out) + "\n"


def layout_order() -> str:
    """The one-way import order as tests/test_layout.py enforces it."""
    tree = ast.parse((ROOT / "tests" / "test_layout.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "ORDER":
            order = ast.literal_eval(node.value)
            return f"`{' <- '.join(order)}` (as `tests/test_layout.py` enforces it)\n"
    raise RuntimeError("tests/test_layout.py has no ORDER")


# --- the benchmarks page: the tables come from bench/results/*.json (what `make bench` writes) ---

def _leaves(value, prefix=""):
    """(dotted key, scalar) for every number, string or bool in a JSON document, in file order."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(value, list) and len(value) <= 8 and all(not isinstance(v, (dict, list)) for v in value):
        yield prefix, ", ".join(_number(v) for v in value)
    elif isinstance(value, list):
        yield prefix, f"({len(value)} entries in the file)"
    else:
        yield prefix, _number(value)


def _number(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "null" if v is None else str(v)


def bench_tables(results: Path | None = None, max_rows: int = 40, published: bool = False) -> str:
    """Markdown: one table per bench/results/*.json (its `summary` when it has one, else every value);
    `published`: the JSON committed under docs/results/, each naming its command and date."""
    import datetime

    results = results or ROOT / "bench" / "results"
    files = sorted(results.glob("*.json")) + sorted(results.glob("*/*.json"))
    if not files and published:
        return "No published benchmark JSON in `docs/results/`.\n"
    if not files:
        return ("!!! note \"No benchmark JSON in this checkout\"\n"
                "    `bench/results/` is written by `make bench` (and `make calibration`, `make gpu-check`) and is not\n"
                "    committed, so this build found no results to render. The tables below are the hand-written ones\n"
                "    ported from the README, each row saying which run it comes from.\n")
    out = []
    for path in files:
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: not a benchmark JSON ({e}); rerun its bench script or remove it") from None
        body = doc["summary"] if isinstance(doc, dict) and isinstance(doc.get("summary"), dict) else doc
        if published:  # committed: a checkout's file times say nothing; the file names its run
            said = f"Measured {doc.get('measured', '?')}: `{doc.get('command', '?')}`"
            body = {k: v for k, v in body.items() if k not in ("measured", "command")}
        else:
            when = datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.timezone.utc)
            said = f"Written {when.strftime('%Y-%m-%d %H:%M')} UTC"
        rows = list(_leaves(body))
        out += [f"### `{path.relative_to(results)}`", "",
                f"{said}{' (its summary)' if body is not doc and 'summary' in doc else ''}.", "",
                "| value | measured |", "|---|---|"]
        out += [f"| `{_cell(k)}` | {_cell(v)} |" for k, v in rows[:max_rows]]
        if len(rows) > max_rows:
            out.append(f"| … | {len(rows) - max_rows} more values in the file |")
        out.append("")
    return "\n".join(out)


def published_tables() -> str:
    """The benchmark JSON committed with the pages that quote it (docs/results/: `make bench-publish`)."""
    return bench_tables(ROOT / "docs" / "results", published=True)


GENERATORS = {"cli": cli_reference, "config": config_reference, "modules": module_map, "verbs": verb_map,
              "layout-order": layout_order, "bench": bench_tables, "published": published_tables}


def render(markdown: str, where: str = "a page") -> str:
    """Replace every `<!-- generated: NAME -->` line; an unknown NAME is an error (the build fails)."""
    def one(match):
        name = match.group(1)
        if name not in GENERATORS:
            raise ValueError(f"{where}: unknown generated section '{name}'; known: {', '.join(GENERATORS)}")
        return GENERATORS[name]().rstrip("\n")
    return MARK.sub(one, markdown)


def on_page_markdown(markdown, page, config, files, **kwargs):
    return render(markdown, page.file.src_path)
