"""Read an experiment YAML (and its suite file) into the schema; every problem becomes one MixoptError
(the file itself is read by yaml_file.py)."""

from __future__ import annotations

import difflib
import math
import os
from pathlib import Path

from pydantic import BaseModel, ValidationError

from mixopt.config.paths import local_roots
from mixopt.config.evals import EVAL_KINDS
from mixopt.config.schema import EvalSuite, Experiment
from mixopt.config.validate import check_weights, input_path_problem, is_inside, read_model_config
from mixopt.config.yaml_file import MAX_DOMAINS, read_yaml_lines
from mixopt.errors import MixoptError, plain


def load_experiment(path: str | Path) -> Experiment:
    """Read and validate an experiment YAML; every problem (all of them at once, each with its line)
    becomes one MixoptError."""
    path = Path(path)
    if path.is_dir():
        raise MixoptError(f"{path} is a folder, not a config file", "pass the path of an experiment YAML in it")
    if not path.is_file():
        raise MixoptError(f"config file not found: {path}", "pass the path of an experiment YAML")
    raw, lines = _read_mapping(path, ("base_dir", "config_path", "overrides"), "a mapping at the top",
                               "see docs/reference/config.md")
    raw.setdefault("name", path.name.split(".")[0])
    if isinstance(raw.get("domains"), list) and len(raw["domains"]) > MAX_DOMAINS:
        raise MixoptError(f"{path}: line {lines.get(('domains',), '?')}: {len(raw['domains']):,} domains; mixopt "
                          f"handles at most {MAX_DOMAINS:,}", "group sources into fewer domains (by source, "
                          "topic or cluster)")
    for i, d in enumerate(raw.get("domains") or []):
        if isinstance(d, dict) and "select" in d:
            raise MixoptError(f"{path}: line {lines.get(('domains', i, 'select'), '?')}: 'select' is set by mixopt",
                              "split a pool with `pools:` (group_by, tiers, cluster); see docs/howto/pools.md")
    if "evals" in raw:
        raw["evals"] = _read_suite(raw["evals"], path, lines)
    try:
        exp = Experiment(**raw, base_dir=str(path.parent.resolve()), config_path=str(path.resolve()))
    except ValidationError as e:
        raise _problems(path, _explain(e, Experiment, lines)) from None
    _problems(path, _cross_references(exp, path, lines), raise_=True)
    return exp


def override_experiment(exp: Experiment, changes: list[tuple[str, tuple, object]],
                        record: dict[str, str]) -> Experiment:
    """The experiment with command-line overrides ((flag, config location, value) each), validated by
    the config's own rules (a bad value is one error naming the flag); `record` (flag -> as given) is
    kept in `overrides` for what fit prints and writes."""
    if not changes:
        return exp
    # Section by section (fit, optimum): the rest of the experiment is kept as loaded (a pool's
    # domains keep what selects their documents, which no dump of the config carries).
    sections: dict[str, dict] = {}
    for _, loc, value in changes:
        sections.setdefault(loc[0], getattr(exp, loc[0]).model_dump(by_alias=True))[loc[1]] = value
    update = {}
    for name, data in sections.items():
        try:
            update[name] = type(getattr(exp, name))(**data)
        except ValidationError as e:
            first = e.errors()[0]
            at = (name, *first["loc"])
            flag = next((f for f, loc, _ in changes if at[:len(loc)] == loc), "a flag")
            raise MixoptError(f"{flag}: {plain(first['msg'])}",
                              "see `mixopt fit --help`") from None
    new = exp.model_copy(update={**update, "overrides": dict(record)})
    problems = _cross_references(new, Path(exp.config_path or "."), {})
    if problems:
        flag = f"--bound {record['bound']}" if "bound" in record else "the command line's settings"
        raise MixoptError(f"{flag}, with the config: {problems[0]}")
    return new


def _problems(path: Path, problems: list[str], raise_: bool = False) -> MixoptError | None:
    """Several problems of one file as one line: 'FILE: N problems: line 3: ...; line 7: ...'."""
    if not problems:
        return None
    if len(problems) == 1:
        err = MixoptError(f"{path}: {problems[0]}")
    else:
        err = MixoptError(f"{path}: {len(problems)} problems: " + "; ".join(problems))
    if raise_:
        raise err
    return err


def _read_mapping(path: Path, reserved: tuple[str, ...], expected: str, help: str) -> tuple[dict, dict]:
    """A YAML file that must hold a mapping without keys mixopt sets itself, and its keys' line numbers."""
    raw, lines = read_yaml_lines(path)
    if not isinstance(raw, dict):
        raise MixoptError(f"{path}: expected {expected}", help)
    for key in reserved:
        if key in raw:
            raise MixoptError(f"{path}: line {lines.get((key,), '?')}: '{key}' is set by mixopt",
                              "remove it from the file")
    return raw, lines


def _line(lines: dict, loc) -> str:
    """'line N: ' for the deepest part of `loc` the file spells out ('' when none is known)."""
    loc = tuple(p if isinstance(p, int) else str(p) for p in loc)
    for n in range(len(loc), 0, -1):
        if loc[:n] in lines:
            return f"line {lines[loc[:n]]}: "
    return ""


def _read_suite(value, config: Path, lines: dict) -> dict:
    """`evals:` as a file name (read and validated here, so errors name that file) or a mapping."""
    if isinstance(value, dict):
        for reserved in ("base_dir", "path"):
            if reserved in value:
                raise MixoptError(f"{config}: {_line(lines, ('evals', reserved))}'evals.{reserved}' is set by "
                                  "mixopt", "remove it from the config")
        return {**value, "base_dir": str(config.parent.resolve())}
    if not isinstance(value, str):
        raise MixoptError(f"{config}: {_line(lines, ('evals',))}'evals' must be a suite file name or a mapping",
                          "e.g. `evals: suite.yaml`; see docs/howto/evals.md")
    suite = Path(value).expanduser()
    suite = suite if suite.is_absolute() else (config.parent / suite).resolve()
    if not suite.is_file():
        raise MixoptError(f"{config}: {_line(lines, ('evals',))}eval suite file not found: {suite}",
                          "fix the path in `evals:`")
    raw, suite_lines = _read_mapping(suite, ("base_dir", "path"), "a mapping with 'evaluations'",
                                     "see docs/howto/evals.md")
    try:
        EvalSuite(**raw)
    except ValidationError as e:
        raise _problems(suite, _explain(e, EvalSuite, suite_lines)) from None
    _SUITE_LINES[str(suite)] = suite_lines
    return {**raw, "base_dir": str(suite.parent), "path": str(suite)}


_SUITE_LINES: dict[str, dict] = {}  # suite file -> its keys' lines, for the cross-checks' messages


def _explain(err: ValidationError, root: type[BaseModel], lines: dict) -> list[str]:
    """Every validation error as 'line N: where: what; fix', in file order, one per place."""
    out, seen = [], set()
    for e in err.errors():
        kind, loc = _eval_kind(tuple(e["loc"]))
        if loc in seen:  # a union reports each alternative; one line per place is enough
            continue
        seen.add(loc)
        e = {**e, "loc": loc}
        text = _say_eval(e, kind) or _say(e, root)
        out.append((_line_no(lines, loc), _line(lines, loc) + text))
    return [text for _, text in sorted(out, key=lambda x: x[0])]


def _eval_kind(loc: tuple) -> tuple[str | None, tuple]:
    """An evaluation's kind, from the tag pydantic puts in the place of an error inside one
    ('evaluations', 0, 'heldout', 'path'), and the place as the file spells it (without the tag)."""
    for i in range(2, len(loc)):
        if loc[i - 2] == "evaluations" and isinstance(loc[i - 1], int) and loc[i] in EVAL_KINDS:
            return loc[i], loc[:i] + loc[i + 1:]
    return None, loc


def _say_eval(e: dict, kind: str | None) -> str | None:
    """The errors of an evaluation's own shape: its kind missing or unknown, a key of another kind."""
    loc = ".".join(str(p) for p in e["loc"])
    kinds = ", ".join(EVAL_KINDS)
    if e["type"] == "union_tag_not_found":
        return f"'{loc}.kind' is required; add it (one of: {kinds})"
    if e["type"] == "union_tag_invalid":
        return f"'{loc}.kind': unknown kind '{e['ctx']['tag']}'; use one of: {kinds}"
    if e["type"] != "extra_forbidden" or kind is None:
        return None
    key, model = e["loc"][-1], EVAL_KINDS[kind]
    users = [k for k, m in EVAL_KINDS.items() if key in m.model_fields]
    if not users:  # no kind has it: a misspelling
        close = difflib.get_close_matches(str(key), list(model.model_fields), n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(sorted(model.model_fields))}"
        return f"unknown key '{loc}'; {hint}"
    where = ".".join(str(p) for p in e["loc"][:-1])
    return (f"'{where}': '{key}' does not apply to a '{kind}' evaluation (it uses '{model.needs}'; "
            f"'{key}' is for {', '.join(users)})")


def _line_no(lines: dict, loc) -> int:
    text = _line(lines, loc)
    return int(text.split()[1].rstrip(":")) if text else 0


def _say(e: dict, root: type[BaseModel]) -> str:
    loc = ".".join(str(p) for p in e["loc"])
    if e["type"] == "extra_forbidden":
        parent, key = e["loc"][:-1], e["loc"][-1]
        model = _model_at(parent, root)
        known = sorted(model.model_fields) if model else []
        hidden = {Experiment: {"base_dir", "config_path", "overrides"}, EvalSuite: {"base_dir", "path"}}.get(model, set())
        known = [k for k in known if k not in hidden]
        close = difflib.get_close_matches(str(key), known, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(known)}"
        return f"unknown key '{loc}'; {hint}"
    if e["type"] == "missing":
        return f"'{loc}' is required; add it"
    msg = plain(e["msg"])
    return f"'{loc}': {msg}" if loc else msg


def _model_at(loc, root: type[BaseModel]) -> type[BaseModel] | None:
    model: type[BaseModel] = root
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        ann = field.annotation
        for cand in (ann, *getattr(ann, "__args__", ())):
            inner = getattr(cand, "__args__", None)
            cands = (cand, *(inner or ()))
            found = next((c for c in cands if isinstance(c, type) and issubclass(c, BaseModel)), None)
            if found:
                model = found
                break
        else:
            return None
    return model


def _cross_references(exp: Experiment, path: Path, lines: dict) -> list[str]:
    """What one field cannot check alone: names that must match, sums over domains, files named."""
    out: list[str] = []

    def problem(loc: tuple, text: str, fix: str) -> None:
        out.append(f"{_line(lines, loc)}{text}; {fix}")

    for loc, value in _path_fields(exp):  # every later check resolves these paths
        if "\0" in value:
            problem(loc, f"{'.'.join(map(str, loc))} holds a NUL byte", "remove it from the path")
        elif value.startswith("~") and not _home_known(value):
            problem(loc, f"{'.'.join(map(str, loc))} is {value[:40]!r}, but no home folder is known for '~' (HOME "
                    "is unset)", "set HOME, or give the path without '~'")
    if out:
        return out
    if not exp.pools:  # with pools, checked once they are domains (check_domains)
        out += _domain_problems(exp, lines)
    if exp.evals is not None:
        out += _check_suite(exp, path, lines)
    configs = [(("proxy", "model_config"), exp.proxy.hf_config)]
    configs += [(("design", "fidelities", i, "model_config"), f.hf_config)
                for i, f in enumerate(exp.design.fidelities or ()) if i > 0]
    for loc, value in configs:
        if value is not None:
            try:
                read_model_config(exp.resolve(value), '.'.join(map(str, loc)))
            except MixoptError as e:
                problem(loc, e.problem, e.fix)
    labels = exp.fidelity_labels
    twice = [i for i, n in enumerate(labels) if n in labels[:i]]
    if twice:
        problem(("design", "fidelities", twice[0]), f"design.fidelities lists '{labels[twice[0]]}' twice",
                "give each proxy size one entry (its `runs` says how many)")
    lo_c, hi_c = exp.design.concentration
    if not (0 < lo_c <= hi_c):
        problem(("design", "concentration"), "design.concentration must be 0 < low <= high", "e.g. [0.1, 5.0]")
    ws = exp.workspace_dir
    if ws.exists() and not ws.is_dir():
        problem(("workspace",), f"the workspace {ws} is a file, not a folder",
                "point `workspace:` at a new or empty folder (or at a workspace mixopt wrote)")
    tok = exp.sample.tokenizer.path
    if tok:
        problem_path = input_path_problem(exp.resolve(tok), "sample.tokenizer.path", ws)
        if problem_path:
            problem(("sample", "tokenizer", "path"), *problem_path)
    for i, d in enumerate(exp.domains):
        for j, s in enumerate(d.sources):
            for local in local_roots(s, exp.base_dir):
                if is_inside(local, ws):
                    problem(("domains", i, "sources", j), f"domain '{d.name}': source {local} is "
                            f"inside the workspace {ws}",
                            "keep corpora outside the workspace (mixopt may replace its folders)")
    for i, pool in enumerate(exp.pools):
        for j, s in enumerate(pool.sources):
            for local in local_roots(s, exp.base_dir):
                if is_inside(local, ws):
                    problem(("pools", i, "sources", j), f"pool {i + 1}: source {local} is inside the "
                            f"workspace {ws}", "keep corpora outside the workspace (mixopt may replace its folders)")
    return out


def check_domains(exp: Experiment) -> None:
    """The checks over domain names and bounds, for an experiment whose pools became domains."""
    lines = read_yaml_lines(Path(exp.config_path))[1] if exp.config_path else {}
    _problems(Path(exp.config_path or "config"), _domain_problems(exp, lines), raise_=True)


def _domain_problems(exp: Experiment, lines: dict) -> list[str]:
    out: list[str] = []

    def problem(loc: tuple, text: str, fix: str) -> None:
        out.append(f"{_line(lines, loc)}{text}; {fix}")

    names = exp.domain_names
    dupes = [i for i, n in enumerate(names) if n in names[:i]]
    if dupes:
        problem(("domains", dupes[0], "name"), f"domain '{names[dupes[0]]}' is listed twice",
                "give each domain one entry")
    lo = sum(d.min for d in exp.domains)
    hi = sum(d.max for d in exp.domains)
    if lo > 1 + 1e-9:
        problem(("domains",), f"domain minimums sum to {_beside_one(lo)} > 1, so no mixture fits", "lower some 'min'")
    if hi < 1 - 1e-9:
        problem(("domains",), f"domain maximums sum to {_beside_one(hi)} < 1, so no mixture fits", "raise some 'max'")
    for i, m in enumerate(exp.design.mixtures):
        try:
            check_weights(m, names, f"design.mixtures[{i}]")
        except MixoptError as e:
            out.append(f"{_line(lines, ('design', 'mixtures', i))}{e}")
    for name, (low, high) in exp.optimum.bounds.items():
        if name not in names:
            problem(("optimum", "bounds", name), f"optimum.bounds names unknown domain '{name}'",
                    f"use one of: {', '.join(names)}")
        elif not 0 <= low <= high <= 1:
            problem(("optimum", "bounds", name), f"optimum.bounds.{name}: need 0 <= low <= high <= 1", "fix the bound")
    if exp.optimum.bounds:
        within = [exp.optimum.bounds.get(d.name, (0.0, 1.0)) for d in exp.domains]
        lo = sum(max(d.min, b[0]) for d, b in zip(exp.domains, within))
        hi = sum(min(d.max, b[1]) for d, b in zip(exp.domains, within))
        if lo > 1 + 1e-9 or hi < 1 - 1e-9:
            problem(("optimum", "bounds"), f"with optimum.bounds the lower bounds sum to {_beside_one(lo)} and the "
                    f"upper to {_beside_one(hi)}, so no mixture fits", "loosen the bounds")
    obj = exp.fit.objective.domains
    if obj is not None:
        unknown = sorted(set(obj) - set(names))
        if unknown:
            problem(("fit", "objective", "domains", unknown[0]),
                    f"fit.objective.domains names unknown domain '{unknown[0]}'", f"use one of: {', '.join(names)}")
        elif any(not math.isfinite(v) or v < 0 for v in obj.values()) or sum(obj.values()) <= 0:
            problem(("fit", "objective", "domains"), "fit.objective.domains weights must be finite, >= 0, not all 0",
                    "fix the weights")
    if exp.pools:  # the suite's held-out domains, once pools are domains
        for i, e in enumerate(exp.evals.evaluations if exp.evals else []):
            for d in e.domains():
                if d not in names:
                    problem(("evals", "evaluations", i, "domain"), f"evaluation '{e.name}' names unknown domain "
                            f"'{d}'", f"use one of: {', '.join(names)}")
    return out


def _path_fields(exp: Experiment) -> list[tuple[tuple, str]]:
    """(location, text) of every path the config gives: the workspace, sources, tokenizer, task files."""
    out = [(("workspace",), exp.workspace)] if exp.workspace else []
    for i, d in enumerate(exp.domains):
        for j, s in enumerate(d.sources):
            out += [(("domains", i, "sources", j), p) for p in _source_texts(s)]
    for i, pool in enumerate(exp.pools):
        for j, s in enumerate(pool.sources):
            out += [(("pools", i, "sources", j), p) for p in _source_texts(s)]
    tok = exp.sample.tokenizer
    out += [(("sample", "tokenizer", k), v) for k, v in (("path", tok.path), ("name", tok.name)) if v]
    for i, e in enumerate(exp.evals.evaluations if exp.evals else []):
        out += [(("evals", "evaluations", i, "path"), e.path)] if e.path else []
        out += [(("evals", "evaluations", i, "sources", j), p) for j, s in enumerate(e.sources or [])
                for p in _source_texts(s)]
    return out


def _source_texts(source) -> list[str]:
    return [source.hub] if source.hub else [source.path] if isinstance(source.path, str) else list(source.path)


def _home_known(path: str) -> bool:
    if path.split("/", 1)[0] == "~" and os.environ.get("HOME") == "":
        return False  # '~' would become '' and ~/ws the root's /ws
    try:
        Path(path.split("/", 1)[0]).expanduser()
        return True
    except RuntimeError:  # "Could not determine home directory"
        return False


def _is_plain_local(source) -> bool:
    """One local file or folder: what an evaluation's text source may be."""
    p = source.path
    return source.hub is None and isinstance(p, str) and "://" not in p \
        and not any(c in p for c in "*?[")


def _beside_one(x: float) -> str:
    """A sum near 1 with enough digits that it never reads as exactly 1 ("sums to 1 < 1")."""
    for digits in range(4, 17):
        text = f"{x:.{digits}g}"
        if float(text) != 1.0:
            return text
    return repr(x)


def _check_suite(exp: Experiment, path: Path, config_lines: dict) -> list[str]:
    suite = exp.evals
    lines = _SUITE_LINES.get(suite.path) if suite.path else None
    if lines is None:  # inline: keys live under `evals` in the config
        lines = {k[1:]: v for k, v in config_lines.items() if k[:1] == ("evals",)}
    out: list[str] = []

    def problem(loc: tuple, text: str, fix: str) -> None:
        prefix = "" if suite.path is None else f"{suite.path}: "
        out.append(f"{prefix}{_line(lines, loc)}{text}; {fix}")

    if exp.fit.objective.domains is not None:
        out.append(f"{_line(config_lines, ('fit', 'objective', 'domains'))}fit.objective.domains and an eval suite "
                   "both set objective weights; give the weights in the suite (each evaluation's `weight`) and drop "
                   "fit.objective.domains")
    names = [e.name for e in suite.evaluations]
    dupes = [i for i, n in enumerate(names) if n in names[:i]]
    if dupes:
        problem(("evaluations", dupes[0], "name"), f"evaluation '{names[dupes[0]]}' is listed twice",
                "give each evaluation its own name")
    ws = exp.workspace_dir
    for i, e in enumerate(suite.evaluations):
        for d in e.domains() if not exp.pools else ():
            if d not in exp.domain_names:
                problem(("evaluations", i, "domain"), f"evaluation '{e.name}' names unknown domain '{d}'",
                        f"use one of: {', '.join(exp.domain_names)}")
        for j, s in enumerate(e.sources or ()):
            if not _is_plain_local(s):
                problem(("evaluations", i, "sources", j), f"evaluation '{e.name}': a text source is one local "
                        "file or folder (globs, lists, URLs and Hub datasets are for domains)",
                        "copy the text to a local file and give its path")
            elif not suite.resolve(s.path).exists():
                problem(("evaluations", i, "sources", j), f"evaluation '{e.name}': text source not found: "
                        f"{suite.resolve(s.path)}", "fix the path under `sources`")
            elif is_inside(suite.resolve(s.path), ws):
                problem(("evaluations", i, "sources", j), f"evaluation '{e.name}': {suite.resolve(s.path)} is "
                        f"inside the workspace {ws}", "keep eval files outside the workspace")
        # A choice file's rows are checked by evals.suites.check_suite_files, which every verb runs.
        if e.task_file():  # a file, or a datasets.save_to_disk folder
            bad = input_path_problem(suite.resolve(e.task_file()), f"evaluation '{e.name}': {e.kind} task file", ws,
                                     folder_ok=True)
            if bad:
                problem(("evaluations", i, "path"), *bad)
    if sum(e.weight for e in suite.evaluations) <= 0:
        problem(("evaluations",), "every evaluation has weight 0, so there is no objective",
                "give at least one evaluation a positive weight")
    return out
