"""The package's one-way import rule: config <- core <- data <- proxy <- evals <- sweep <- fit <- cli.

A stage imports only stages to its left (and `mixopt.errors`); backends import only core and errors;
the config schema imports nothing from mixopt but its own models. A violation names the file, the line and the import.
"""

import ast
from pathlib import Path

import mixopt

ROOT = Path(mixopt.__file__).parent
ORDER = ["config", "core", "data", "proxy", "evals", "sweep", "fit", "cli"]
TOP = {"cli.py": "cli", "report.py": "cli", "errors.py": "errors", "__init__.py": "errors"}


def _stage(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0] if len(rel.parts) > 1 else TOP[rel.name]


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            yield node.lineno, "relative import"  # the rule is checked on absolute imports only
        elif isinstance(node, ast.ImportFrom) and node.module == "mixopt":  # from mixopt import sweep
            for a in node.names:
                yield node.lineno, f"mixopt.{a.name}"
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mixopt"):
            yield node.lineno, node.module
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("mixopt"):
                    yield node.lineno, a.name


def _allowed(src: str, dst: str) -> bool:
    if dst in ("errors", src):
        return True
    if src == "backends":
        return dst == "core"
    if dst == "backends":
        return src in ("sweep", "fit", "cli")
    if src == "errors":
        return False
    return ORDER.index(dst) < ORDER.index(src)


def test_imports_run_one_way():
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        src = _stage(path)
        for line, module in _imports(path):
            if module == "relative import":
                bad.append(f"{path.relative_to(ROOT)}:{line}: a relative import; write `from mixopt.<stage>...`")
                continue
            parts = module.split(".")
            dst = parts[1] if len(parts) > 1 else "errors"
            dst = TOP.get(f"{dst}.py", "errors" if dst == "__version__" else dst)
            if not _allowed(src, dst):
                bad.append(f"{path.relative_to(ROOT)}:{line} ({src}) imports {module} ({dst})")
    assert not bad, "imports against the stage order:\n" + "\n".join(bad)


MODELS = {"source.py": set(), "evals.py": {"mixopt.config.source"},
          "schema.py": {"mixopt.config.source", "mixopt.config.evals"}}  # the config models, base first


def test_config_schema_imports_nothing_from_mixopt():
    """The schema is pure: its models (schema.py, and the eval kinds and source it is built of) import
    nothing from mixopt but each other, in one direction."""
    for name, allowed in MODELS.items():
        assert {m for _, m in _imports(ROOT / "config" / name)} <= allowed, name


def test_every_stage_is_a_package_with_a_docstring():
    for stage in [s for s in ORDER if s != "cli"] + ["backends"]:
        init = ROOT / stage / "__init__.py"
        assert init.is_file() and ast.get_docstring(ast.parse(init.read_text())), stage


def test_the_objective_formula_is_written_once():
    """A weighted sum of measurements is mixopt.evals.objective's; every other module calls it."""
    import re

    formula = re.compile(r"sum\(a \* [\w.]*metrics\[m\] for m, a in")
    places = [str(p.relative_to(ROOT)) for p in sorted(ROOT.rglob("*.py")) if formula.search(p.read_text())]
    assert places == ["evals/objective.py"], places
