"""The package's one-way import rule: config <- core <- data <- proxy <- evals <- sweep <- fit <- cli.

A stage imports only stages to its left (and `mixopt.errors`); backends import only core and errors;
the config schema imports nothing from mixopt. A violation names the file, the line and the import.
"""

import ast
from pathlib import Path

import mixopt

ROOT = Path(mixopt.__file__).parent
ORDER = ["config", "core", "data", "proxy", "evals", "sweep", "fit", "cli"]
# Modules and packages outside the stage folders, and the layer each sits in: report/ (the terminal
# tables and the HTML page) and tracking.py (logs sweeps and fits, reads the store) serve the CLI.
TOP = {"cli.py": "cli", "report": "cli", "tracking.py": "cli", "errors.py": "errors", "__init__.py": "errors"}


def _stage(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return TOP.get(rel.parts[0], rel.parts[0]) if len(rel.parts) > 1 else TOP[rel.name]


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
            dst = TOP.get(f"{dst}.py", TOP.get(dst, "errors" if dst == "__version__" else dst))
            if not _allowed(src, dst):
                bad.append(f"{path.relative_to(ROOT)}:{line} ({src}) imports {module} ({dst})")
    assert not bad, "imports against the stage order:\n" + "\n".join(bad)


def test_config_schema_imports_nothing_from_mixopt():
    assert not list(_imports(ROOT / "config" / "schema.py"))


def test_every_stage_is_a_package_with_a_docstring():
    for stage in [s for s in ORDER if s != "cli"] + ["backends"]:
        init = ROOT / stage / "__init__.py"
        assert init.is_file() and ast.get_docstring(ast.parse(init.read_text())), stage


# The fit modules that read an experiment's store (the sweep's plan, store, results): every other
# fit module works on arrays and tables, so `fit --runs TABLE` never loads the sweep.
FIT_FROM_STORE = {"from_store.py", "fidelity.py", "reuse.py", "verify.py"}


def test_only_the_store_facing_fit_modules_import_the_sweep():
    importing = {p.name for p in (ROOT / "fit").rglob("*.py")
                 if any(m.startswith("mixopt.sweep") for _, m in _imports(p))}
    assert importing == FIT_FROM_STORE


def test_fit_of_a_table_loads_no_sweep_module(tmp_path):
    """`mixopt fit --runs TABLE`, run in a fresh interpreter: no mixopt.sweep module is imported."""
    import subprocess
    import sys

    import numpy as np
    from conftest import write_csv

    X = np.random.default_rng(0).dirichlet(np.ones(3), 12)
    write_csv(tmp_path / "runs.csv", ["a", "b", "c", "loss"], [[*x, 3 - x[0] + 0.5 * x[1]] for x in X])
    code = ("import sys\nfrom mixopt.cli import app\n"
            "try:\n    app([*sys.argv[1:]], prog_name='mixopt')\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "print('LOADED', sorted(m for m in sys.modules if m.startswith('mixopt.')))")
    r = subprocess.run([sys.executable, "-c", code, "fit", "--runs", str(tmp_path / "runs.csv"), "--target", "loss",
                        "--model", "linear", "--bootstrap", "0", "--no-plots", "--format", "json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    loaded = r.stdout.rsplit("LOADED", 1)[1]
    assert "mixopt.fit.recommend" in loaded and "mixopt.sweep" not in loaded, loaded
