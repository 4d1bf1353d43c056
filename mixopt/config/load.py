"""Read an experiment YAML (and its suite file) into the schema; every problem becomes one MixoptError."""

from __future__ import annotations

import difflib
import math
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from mixopt.config.schema import EvalSuite, Experiment
from mixopt.config.validate import check_weights
from mixopt.errors import MixoptError


def load_experiment(path: str | Path) -> Experiment:
    """Read and validate an experiment YAML; every problem becomes one MixoptError."""
    path = Path(path)
    if not path.is_file():
        raise MixoptError(f"config file not found: {path}", "pass the path of an experiment YAML")
    raw = _read_mapping(path, ("base_dir", "config_path"), "a mapping at the top", "see the config reference in README.md")
    raw.setdefault("name", path.name.split(".")[0])
    if "evals" in raw:
        raw["evals"] = _read_suite(raw["evals"], path)
    try:
        exp = Experiment(**raw, base_dir=str(path.parent.resolve()), config_path=str(path.resolve()))
    except ValidationError as e:
        raise MixoptError(f"{path}: {_explain(e)}") from None
    _check_cross_references(exp, path)
    return exp


def _read_mapping(path: Path, reserved: tuple[str, ...], expected: str, help: str) -> dict:
    """A YAML file that must hold a mapping without keys mixopt sets itself."""
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise MixoptError(f"{path}: expected {expected}", help)
    for key in reserved:
        if key in raw:
            raise MixoptError(f"{path}: '{key}' is set by mixopt", "remove it from the file")
    return raw


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load, except that a key given twice in one mapping is an error (YAML itself keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str | int | float | bool) and key in seen:
                raise MixoptError(f"line {key_node.start_mark.line + 1}: key '{key}' is given twice",
                                  "keep one of them")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path):
    """A YAML file as data; bad syntax, bad encoding and repeated keys are one MixoptError naming the file."""
    try:
        text = path.read_bytes().decode("utf-8-sig")  # a BOM is fine; other non-UTF-8 bytes are not
    except UnicodeDecodeError as e:
        raise MixoptError(f"{path}: not UTF-8 text (byte {e.start})", "save the file as UTF-8") from None
    except OSError as e:
        raise MixoptError(f"{path}: cannot read it ({e.strerror})", "check the path and its permissions") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except MixoptError as e:
        raise MixoptError(f"{path}: {e.problem}", e.fix) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise MixoptError(f"{path}: not valid YAML{where}", "fix the YAML syntax") from None


def _read_suite(value, config: Path) -> dict:
    """`evals:` as a file name (read and validated here, so errors name that file) or a mapping."""
    if isinstance(value, dict):
        for reserved in ("base_dir", "path"):
            if reserved in value:
                raise MixoptError(f"{config}: 'evals.{reserved}' is set by mixopt", "remove it from the config")
        return {**value, "base_dir": str(config.parent.resolve())}
    if not isinstance(value, str):
        raise MixoptError(f"{config}: 'evals' must be a suite file name or a mapping",
                          "e.g. `evals: suite.yaml`; see 'Eval suites' in README.md")
    suite = Path(value).expanduser()
    suite = suite if suite.is_absolute() else (config.parent / suite).resolve()
    if not suite.is_file():
        raise MixoptError(f"{config}: eval suite file not found: {suite}", "fix the path in `evals:`")
    raw = _read_mapping(suite, ("base_dir", "path"), "a mapping with 'evaluations'", "see 'Eval suites' in README.md")
    try:
        EvalSuite(**raw)
    except ValidationError as e:
        raise MixoptError(f"{suite}: {_explain(e, EvalSuite)}") from None
    return {**raw, "base_dir": str(suite.parent), "path": str(suite)}


def _explain(err: ValidationError, root: type[BaseModel] | None = None) -> str:
    """The first validation error as 'where: what; fix'."""
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"])
    if e["type"] == "extra_forbidden":
        parent, key = e["loc"][:-1], e["loc"][-1]
        model = _model_at(parent, root or Experiment)
        known = sorted(model.model_fields) if model else []
        hidden = {Experiment: {"base_dir", "config_path"}, EvalSuite: {"base_dir", "path"}}.get(model, set())
        known = [k for k in known if k not in hidden]
        close = difflib.get_close_matches(str(key), known, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(known)}"
        return f"unknown key '{loc}'; {hint}"
    if e["type"] == "missing":
        return f"'{loc}' is required; add it"
    msg = e["msg"].removeprefix("Value error, ")
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


def _check_cross_references(exp: Experiment, path: Path) -> None:
    names = exp.domain_names
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise MixoptError(f"{path}: domain '{sorted(dupes)[0]}' is listed twice", "give each domain one entry")
    lo = sum(d.min for d in exp.domains)
    hi = sum(d.max for d in exp.domains)
    if lo > 1 + 1e-9:
        raise MixoptError(f"{path}: domain minimums sum to {_beside_one(lo)} > 1, so no mixture fits",
                          "lower some 'min'")
    if hi < 1 - 1e-9:
        raise MixoptError(f"{path}: domain maximums sum to {_beside_one(hi)} < 1, so no mixture fits",
                          "raise some 'max'")
    for i, m in enumerate(exp.design.mixtures):
        check_weights(m, names, f"{path}: design.mixtures[{i}]")
    obj = exp.fit.objective.domains
    if obj is not None:
        unknown = sorted(set(obj) - set(names))
        if unknown:
            raise MixoptError(f"{path}: fit.objective.domains names unknown domain '{unknown[0]}'",
                              f"use one of: {', '.join(names)}")
        if any(not math.isfinite(v) or v < 0 for v in obj.values()) or sum(obj.values()) <= 0:
            raise MixoptError(f"{path}: fit.objective.domains weights must be finite, >= 0, not all 0",
                              "fix the weights")
    if exp.evals is not None:
        _check_suite(exp, path)
    lo_c, hi_c = exp.design.concentration
    if not (0 < lo_c <= hi_c):
        raise MixoptError(f"{path}: design.concentration must be 0 < low <= high", "e.g. [0.1, 5.0]")


def _beside_one(x: float) -> str:
    """A sum near 1 with enough digits that it never reads as exactly 1 ("sums to 1 < 1")."""
    for digits in range(4, 17):
        text = f"{x:.{digits}g}"
        if float(text) != 1.0:
            return text
    return repr(x)


def _check_suite(exp: Experiment, path: Path) -> None:
    suite = exp.evals
    where = suite.path or f"{path}: evals"
    if exp.fit.objective.domains is not None:
        raise MixoptError(f"{path}: fit.objective.domains and an eval suite both set objective weights",
                          "give the weights in the suite (each evaluation's `weight`) and drop fit.objective.domains")
    names = [e.name for e in suite.evaluations]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise MixoptError(f"{where}: evaluation '{dupes[0]}' is listed twice", "give each evaluation its own name")
    for e in suite.evaluations:
        if e.kind == "heldout" and e.domain not in exp.domain_names:
            raise MixoptError(f"{where}: evaluation '{e.name}' names unknown domain '{e.domain}'",
                              f"use one of: {', '.join(exp.domain_names)}")
        for s in e.sources or ():
            if not suite.resolve(s.path).exists():
                raise MixoptError(f"{where}: evaluation '{e.name}': text source not found: "
                                  f"{suite.resolve(s.path)}", "fix the path under `sources`")
        # A choice file's rows are checked by evals.suites.check_suite_files, which every verb runs.
        if e.kind == "choice" and e.path and not suite.resolve(e.path).exists():  # a file, or a save_to_disk folder
            raise MixoptError(f"choice task file not found: {suite.resolve(e.path)}", "fix the evaluation's `path`")
    if sum(e.weight for e in suite.evaluations) <= 0:
        raise MixoptError(f"{where}: every evaluation has weight 0, so there is no objective",
                          "give at least one evaluation a positive weight")
