"""The package's one-way import rule: config <- core <- data <- proxy <- evals <- sweep <- fit <- cli.

A stage imports only stages to its left (and `mixopt.errors`); backends import only core and errors;
the config schema imports nothing from mixopt but its own models. Backends are imported by the stages that run work
somewhere: data (`sample`'s shard reading, backends.base.Executor), sweep, fit and the CLI. A violation names the file, the line and the import.
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
        return src in ("data", "sweep", "fit", "cli")
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


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Module -> the mixopt modules it imports, at the top or inside a function."""
    paths = {_module(p): p for p in ROOT.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mixopt"):
                deps |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in paths else node.module
                         for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("mixopt")}
        graph[name] = {d for d in deps if d in paths and d != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_cycle_finder_sees_function_level_imports():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_even_through_function_level_imports():
    cycles = _cycles(_import_graph())
    assert not cycles, "modules that import each other (break the circle: move the shared thing down):\n" + \
        "\n".join(" <-> ".join(c) for c in cycles)


def _unused_imports(source: str) -> list[tuple[int, str]]:
    """Names a module imports from mixopt at its top and never uses (listing one in __all__ is no use)."""
    tree = ast.parse(source)
    imported = [(node.lineno, a.asname or a.name) for node in tree.body if isinstance(node, ast.ImportFrom)
                and node.module and node.module.startswith("mixopt") for a in node.names]
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    return [(line, name) for line, name in imported if name not in used]


def test_unused_import_finder_sees_a_reexport():
    src = ("from mixopt.data.sources import Shard, list_shards\n"
           "__all__ = ['Shard']\n"
           "def f(s: Shard):\n    return list_shards\n")
    assert _unused_imports(src) == []
    assert _unused_imports(src.replace("s: Shard", "s")) == [(1, "Shard")]


def test_no_module_reexports_what_it_imports():
    """A name imported from another mixopt module is used there, not only listed in __all__ for
    callers: they import it from where it lives. Packages' __init__ files are the stage's front door."""
    bad = [f"{path.relative_to(ROOT)}:{line}: imports {name} only to re-export it (or not at all)"
           for path in sorted(ROOT.rglob("*.py")) if path.name != "__init__.py"
           for line, name in _unused_imports(path.read_text())]
    assert not bad, "\n".join(bad)


def test_the_objective_formula_is_written_once():
    """A weighted sum of measurements is mixopt.evals.objective's; every other module calls it."""
    import re

    formula = re.compile(r"sum\(a \* [\w.]*metrics\[m\] for m, a in")
    places = [str(p.relative_to(ROOT)) for p in sorted(ROOT.rglob("*.py")) if formula.search(p.read_text())]
    assert places == ["evals/objective.py"], places


# The fit modules that read an experiment's store (the sweep's plan, store, results): every other
# fit module works on arrays and tables, so `fit --runs TABLE` never loads the sweep.
FIT_FROM_STORE = {"from_store.py", "fidelity.py", "reuse.py", "rounds.py", "calls.py",  # rounds: optimize --budget sweeps
                  "outcome.py", "verify.py"}


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
