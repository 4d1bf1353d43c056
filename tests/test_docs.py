"""The docs cannot drift: every command a how-to shows is run by a named test (or marked as needing a GPU
or a cluster), every option shown exists in the CLI's parser, the generated references cover the code,
and `mkdocs build --strict` passes where mkdocs is installed.
"""

import ast
import functools
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
HOWTOS = sorted((DOCS / "howto").glob("*.md")) + sorted((DOCS / "concepts").glob("*.md"))
NEEDS = re.compile(r"^<!-- needs: (gpu|cluster)\b.*-->$")

# (verb, its options as the page shows them) -> the test that runs that command. The test's function
# must hold each option, and its module the verb (checked below), so an entry cannot point at nothing.
RUN_BY = {
    ("fit", ("--bootstrap", "--key", "--runs", "--target")):
        "tests/test_regress.py::test_external_fit_save_then_predict_csv",
    ("fit", ("--key", "--runs", "--target")): "tests/test_fit_honesty.py::test_scores_print_sanely_and_predict_writes_full_precision",
    ("fit", ("--key", "--runs", "--save", "--scores", "--target")):
        "tests/test_regress.py::test_regmix_predict_ranks_the_best_1b_mixture_first_or_second",
    ("fit", ("--at-scale", "--bootstrap", "--key", "--runs", "--scale-column", "--target")):
        "tests/test_fit_scaling.py::test_scaling_law_recommends_for_the_target_size_not_the_proxies",
    ("predict", ()): "tests/test_regress.py::test_regmix_predict_ranks_the_best_1b_mixture_first_or_second",
    ("verify", ("--size", "--top")): "tests/test_fit_verify_size.py::test_verify_at_a_larger_size",
    ("status", ()): "tests/test_data_change.py::test_status_before_sampling_a_change_shows_the_store_and_what_the_change_keeps",
    ("status", ("--format",)): "tests/test_evals.py::test_suite_change_reevaluates_without_retraining",
    ("sample", ()): "tests/test_data_change.py::test_added_domain_trains_only_new_runs_and_reuses_every_old_one",
    ("sample", ("--backend",)): "tests/test_sample_ray.py::test_ray_tasks_read_s3_and_local_shards_into_the_same_manifest",
    ("sweep", ("--device", "--precision")): "tests/test_measured_as.py::test_bf16_on_the_cpu_trains_in_bf16_and_keys_it",
    ("sweep", ("--dry-run",)): "tests/test_data_change.py::test_added_domain_trains_only_new_runs_and_reuses_every_old_one",
    ("sweep", ("--workers",)): "tests/test_fidelity.py::test_verify_size_runs_are_data_for_the_joint_fit",
    ("fit", ()): "tests/test_data_change.py::test_added_domain_trains_only_new_runs_and_reuses_every_old_one",
    ("fit", ("--no-reeval",)): "tests/test_evals.py::test_fit_no_reeval_uses_runs_lacking_only_a_weight_0_task",
    ("eval", ()): "tests/test_evals.py::test_suite_change_reevaluates_without_retraining",
    ("eval", ("--no-progress",)): "tests/test_evals.py::test_suite_change_reevaluates_without_retraining",
    ("eval", ("--watch",)): "tests/test_evals.py::test_suite_change_reevaluates_without_retraining",
    ("export-model", ("--output",)):
        "tests/test_lm_eval.py::test_lm_eval_task_scores_each_checkpoint_and_exports_load_in_hf_tools",
    ("cluster", ()): "tests/test_domain_groups.py::test_clusters_are_named_deterministic_and_become_domains",
    ("report", ()): "tests/test_domain_groups.py::test_a_cluster_experiment_samples_sweeps_fits_and_reports",
    ("report", ("--output",)): "tests/test_report.py::test_report_renders_in_chromium",
    ("optimize", ("--budget", "--no-progress")):
        "tests/test_optimize_budget.py::test_kill_9_then_rerun_trains_nothing_twice_and_finishes",
    ("optimize", ("--budget", "--no-progress", "--workers")):
        "tests/test_optimize_budget.py::test_a_budget_that_cannot_reach_a_fit_is_refused_before_training",
}


@functools.cache
def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def shown_commands(text: str):
    """(line number, command, needs) for each `mixopt ...` line of a fenced block that is not data."""
    lines, i = text.splitlines(), 0
    while i < len(lines):
        fence = re.match(r"^\s*```(\w*)", lines[i])
        if not fence:
            i += 1
            continue
        before = next((lines[k].strip() for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        needs = NEEDS.match(before)
        i += 1
        while i < len(lines) and not lines[i].strip().startswith("```"):
            line = lines[i].strip().removeprefix("$ ")
            start = i
            while line.endswith("\\") and i + 1 < len(lines):  # a command continued on the next line
                i += 1
                line = line[:-1] + " " + lines[i].strip()
            if fence.group(1) not in ("yaml", "json", "python"):
                for part in line.split("&&"):
                    if part.strip().startswith("mixopt "):
                        yield start + 1, part.strip(), needs.group(1) if needs else None
            i += 1
        i += 1


def parse(command: str) -> tuple[str, tuple[str, ...], list[str]]:
    """(verb, its options sorted, the options before the verb) of `mixopt [-v] VERB ARGS... # comment`."""
    tokens = [t for t in shlex.split(command, comments=True) if t != "..."][1:]
    lead = []
    while tokens and tokens[0].startswith("-"):
        lead.append(tokens.pop(0))
    options = sorted({t.split("=")[0] for t in tokens[1:] if t.startswith("-") and not re.match(r"^-\d", t)})
    return tokens[0], tuple(options), lead


@functools.cache
def _cli():
    return _hooks().cli_group()


def unknown_options(command: str) -> list[str]:
    """What in a shown command the CLI's own parser does not know: the verb, or an option of it."""
    group = _cli()
    verb, options, lead = parse(command)
    if verb not in group.commands:
        return [verb]
    known = {o for p in group.commands[verb].params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
    top = {o for p in group.params for o in (*p.opts, *p.secondary_opts)}
    return [o for o in options if o not in known] + [o for o in lead if o not in top]


def all_pages():
    return [ROOT / "README.md", ROOT / "CONTRIBUTING.md"] + sorted(DOCS.rglob("*.md"))


def test_every_option_shown_exists_in_the_cli():
    bad, seen = [], 0
    for page in all_pages():
        if not page.exists():
            continue
        for line, command, _ in shown_commands(page.read_text()):
            seen += 1
            bad += [f"{page.relative_to(ROOT)}:{line}: `{command}`: {o}" for o in unknown_options(command)]
    assert seen > 30, "the extractor found too few commands: is it still reading the pages?"
    assert not bad, "options the CLI does not have:\n" + "\n".join(bad)


def test_a_drifted_option_is_caught():
    assert unknown_options("mixopt sweep c.yaml --no-such-flag 3") == ["--no-such-flag"]
    assert unknown_options("mixopt smaple c.yaml") == ["smaple"]
    assert unknown_options("mixopt -v sweep c.yaml --workers 2 --dry-run  # a comment --bogus") == []


def test_every_howto_command_is_run_by_a_test_or_marked():
    missing = []
    for page in HOWTOS:
        for line, command, needs in shown_commands(page.read_text()):
            verb, options, _ = parse(command)
            if not needs and (verb, options) not in RUN_BY:
                missing.append(f"{page.relative_to(ROOT)}:{line}: `{command}` ({verb} {' '.join(options)})")
    assert not missing, ("commands shown in how-tos that no test runs: add the test to RUN_BY in "
                         "tests/test_docs.py, or mark the block <!-- needs: gpu --> / <!-- needs: cluster -->:\n"
                         + "\n".join(missing))


@pytest.mark.parametrize("key", sorted(RUN_BY), ids=lambda k: f"{k[0]} {' '.join(k[1])}".strip())
def test_each_named_test_runs_that_command(key):
    verb, options = key
    path, _, name = RUN_BY[key].partition("::")
    source = (ROOT / path).read_text()
    fns = {n.name: ast.get_source_segment(source, n) for n in ast.walk(ast.parse(source))
           if isinstance(n, ast.FunctionDef)}
    assert name in fns, f"{RUN_BY[key]}: no such test"
    assert f'"{verb}"' in source, f"{path} never names the verb {verb!r}"
    for option in options:
        assert f'"{option}' in fns[name], f"{RUN_BY[key]} does not pass {option}"


def test_every_verb_and_option_is_in_the_cli_reference():
    hooks = _hooks()
    text = hooks.cli_reference()
    group = hooks.cli_group()
    for name, command in group.commands.items():
        assert f"### mixopt {name}\n" in text
        for p in command.params:
            if p.opts[0].startswith("-"):
                assert p.opts[0] in text, f"{name} {p.opts[0]} missing from the CLI reference"


def test_every_config_key_is_in_the_config_reference():
    from mixopt.config.schema import experiment_json_schema

    text = _hooks().config_reference()
    schema = experiment_json_schema()
    for key in schema["properties"]:
        assert f"| `{key}` |" in text, key
    for model, spec in schema["$defs"].items():
        assert f"### {model}\n" in text, model
        for key in spec.get("properties", {}):
            assert f"| `{key}` |" in text, f"{model}.{key}"


def test_the_module_map_lists_every_module():
    text = _hooks().module_map()
    for path in (ROOT / "mixopt").rglob("*.py"):
        package = str(path.parent.relative_to(ROOT)).replace("/", ".")
        assert f"**`{package}`**" in text and f"| `{path.name}` |" in text, path
    assert "(no docstring)" not in text, "a module without its purpose in a docstring"


def test_benchmark_tables_come_from_the_json(tmp_path):
    hooks = _hooks()
    assert "No benchmark JSON" in hooks.bench_tables(tmp_path)
    (tmp_path / "reeval.json").write_text(json.dumps({"summary": {"ratio": 0.0471234, "seconds": {"eval": 11.1}},
                                                      "runs": list(range(20))}))
    text = hooks.bench_tables(tmp_path)
    assert "| `ratio` | 0.04712 |" in text and "| `seconds.eval` | 11.1 |" in text and "runs" not in text
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json: not a benchmark JSON"):
        hooks.bench_tables(tmp_path)


def test_published_tables_name_their_run_not_the_checkouts_file_times(tmp_path):
    hooks = _hooks()
    assert "No published benchmark JSON" in hooks.bench_tables(tmp_path, published=True)
    (tmp_path / "sample.json").write_text(json.dumps({"measured": "2026-12-07", "command": "bench/sample.py --sizes 1",
                                                      "ratio_w1_vs_polars": 0.212}))
    text = hooks.bench_tables(tmp_path, published=True)
    assert "Measured 2026-12-07: `bench/sample.py --sizes 1`" in text and "| `ratio_w1_vs_polars` | 0.212 |" in text
    assert "Written" not in text and "`measured`" not in text
    for path in sorted((ROOT / "docs" / "results").glob("*.json")):  # what the page renders: each names its run
        doc = json.loads(path.read_text())
        assert doc.get("measured") and doc.get("command"), path


def test_an_unknown_generated_section_fails_the_build():
    with pytest.raises(ValueError, match="unknown generated section 'clii'"):
        _hooks().render("x\n<!-- generated: clii -->\n", "page.md")


def test_the_docs_build_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (the `docs` extra): `make docs` builds the site")
    pytest.importorskip("material", reason="mkdocs-material is not installed (the `docs` extra)")
    # Offline: in a network namespace of its own where the machine allows one (CI runs as root), so a
    # theme or plugin that fetches (fonts, social cards) fails the build instead of passing by luck.
    offline = ["unshare", "-rn"] if shutil.which("unshare") and subprocess.run(
        ["unshare", "-rn", "true"], capture_output=True).returncode == 0 else []
    r = subprocess.run([*offline, sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir",
                        str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    assert "mixopt sweep" in cli and "--batch-proxies" in cli
    pages = [f.read_text() for f in (tmp_path / "site").rglob("*.html")]
    assert not [p for p in pages if "fonts.googleapis" in p or "fonts.gstatic" in p], "pages load web fonts"


def test_readme_and_contributing_links_resolve():
    """The README and CONTRIBUTING.md sit outside the site (mkdocs checks only docs/): their links to
    pages and their anchors are checked here."""
    bad = []
    for page in (ROOT / "README.md", ROOT / "CONTRIBUTING.md"):
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"^[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path) if path else page
            if not file.exists():
                bad.append(f"{page.name}: {target}: no such file")
            elif anchor and file.suffix == ".md":
                slugs = {re.sub(r"[-\s]+", "-", re.sub(r"[^\w\- ]", "", h.strip("# ").lower())).strip("-")
                         for h in re.findall(r"^#{1,6} .*$", file.read_text(), re.M)}
                if anchor not in slugs:
                    bad.append(f"{page.name}: {target}: no heading with that anchor")
    assert not bad, "\n".join(bad)
