"""The experiment: one YAML file, parsed into frozen pydantic models with every default here."""

from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import MixoptError

WEIGHT_TOLERANCE = 1e-3  # weights given by a user must sum to 1 within this; then they are normalized


def _word(v: str) -> str:
    """Names become folder names and metric names: keep them to one safe word."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", v):
        raise ValueError("use letters, digits, '_', '.', '-' only")
    return v


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(_Strict):
    """One place a domain's documents come from."""

    path: str
    format: Literal["auto", "parquet", "jsonl", "text", "hf"] = "auto"
    text_field: str = "text"  # column / JSON key holding the document text
    extensions: list[str] | None = None  # for directories: which files are documents
    split: str | None = None  # for a saved HF DatasetDict


class Domain(_Strict):
    name: str
    sources: list[Source] = Field(min_length=1)
    min: float = Field(0.0, ge=0.0, le=1.0)  # lower bound on this domain's weight
    max: float = Field(1.0, ge=0.0, le=1.0)  # upper bound on this domain's weight

    _name_is_a_word = field_validator("name")(classmethod(lambda cls, v: _word(v)))

    @field_validator("sources", mode="before")
    @classmethod
    def _paths_as_sources(cls, v):
        if isinstance(v, (str, dict)):
            v = [v]
        return [{"path": s} if isinstance(s, str) else s for s in v]

    @model_validator(mode="after")
    def _bounds_ordered(self):
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max})")
        return self


class Tokenizer(_Strict):
    path: str | None = None  # a tokenizer.json to use as is; otherwise one is trained
    vocab_size: int = Field(8192, ge=260, le=1 << 20)
    train_bytes_per_domain: int = Field(2_000_000, gt=0)  # equal bytes per domain: no domain dominates


class Sample(_Strict):
    train_tokens: int | None = Field(None, gt=0)  # per domain; default: one proxy's whole budget
    val_tokens: int = Field(50_000, gt=0)  # per domain, held out from training
    tokenizer: Tokenizer = Tokenizer()


class Proxy(_Strict):
    size: Literal["tiny", "1m", "5m", "15m", "30m"] = "1m"
    tokens: int = Field(20_000_000, gt=0)  # training tokens per proxy
    # Expert overrides; None means "what `size` picks".
    seq_len: int | None = Field(None, gt=1)
    batch_size: int | None = Field(None, gt=0)
    lr: float | None = Field(None, gt=0)
    warmup: float = Field(0.05, ge=0, lt=1)  # fraction of steps
    weight_decay: float = Field(0.1, ge=0)


class Design(_Strict):
    runs: int = Field(32, ge=0)  # random mixtures, besides vertices, the prior and `mixtures`
    concentration: tuple[float, float] = (0.1, 5.0)  # Dirichlet scale, drawn log-uniformly (RegMix)
    temperature: float = Field(0.5, gt=0)  # prior ** temperature is the Dirichlet centre
    min_weight: float = Field(2e-4, ge=0, lt=1)  # smaller weights are set to 0
    max_prior_multiple: float | None = Field(15.0, gt=0)  # cap a weight at k x tempered prior
    min_distance: float = Field(0.02, ge=0)  # L1: closer mixtures count as duplicates
    include_vertices: bool = True  # each single-domain mixture, where bounds allow
    include_prior: bool = True  # the natural (token) mixture, where bounds allow
    mixtures: list[dict[str, float]] = []  # extra mixtures to train, domain -> weight


class Objective(_Strict):
    metric: Literal["bpb", "loss"] = "bpb"
    domains: dict[str, float] | None = None  # validation domain -> weight; default: all, equal


EVAL_METRICS = {"heldout": ("bpb", "loss"), "text": ("bpb", "loss"), "choice": ("prob", "acc", "acc_norm")}
HIGHER_IS_BETTER = {"prob", "acc", "acc_norm"}


class Evaluation(_Strict):
    """One entry of an eval suite: what to measure, and its weight in the objective."""

    name: str
    kind: Literal["heldout", "text", "choice"]
    weight: float = Field(1.0, ge=0)  # in the objective; normalized over the suite
    family: str | None = None  # with `average: families`, each family counts once
    metric: str | None = None  # heldout/text: bpb|loss (default fit.objective.metric); choice: prob|acc|acc_norm
    domain: str | None = None  # heldout: which domain's validation slice
    sources: list[Source] | None = None  # text: the files, read like a domain's sources
    path: str | None = None  # choice: JSONL with question / choices / answer
    max_tokens: int = Field(50_000, gt=0)  # text: tokens evaluated (the first ones, in file order)
    max_items: int | None = Field(None, gt=0)  # choice: the first N items; default all

    @field_validator("name")
    @classmethod
    def _name_is_a_path_of_words(cls, v: str) -> str:
        for part in v.split("/"):
            _word(part)
        return v

    @field_validator("sources", mode="before")
    @classmethod
    def _paths_as_sources(cls, v):
        return Domain._paths_as_sources(v) if v is not None else v

    @model_validator(mode="after")
    def _fields_match_kind(self):
        need = {"heldout": "domain", "text": "sources", "choice": "path"}[self.kind]
        if getattr(self, need) in (None, []):
            raise ValueError(f"a '{self.kind}' evaluation needs '{need}'")
        for other in {"domain", "sources", "path"} - {need}:
            if getattr(self, other) is not None:
                raise ValueError(f"'{other}' does not apply to a '{self.kind}' evaluation (it uses '{need}')")
        if self.metric is not None and self.metric not in EVAL_METRICS[self.kind]:
            raise ValueError(f"metric '{self.metric}' is not one of {', '.join(EVAL_METRICS[self.kind])}")
        return self


class EvalSuite(_Strict):
    """The eval suite: a YAML file named by the config's `evals:`, or a mapping inline."""

    average: Literal["tasks", "families"] = "tasks"  # families: mean within each family, then over families
    evaluations: list[Evaluation] = Field(min_length=1)
    base_dir: str = "."  # set by load_experiment: relative paths resolve against the suite's folder
    path: str | None = None  # set by load_experiment: the suite file, when it is one


class Fit(_Strict):
    model: Literal["linear", "loglinear", "law", "gbm", "auto"] = "linear"  # auto: best CV Spearman
    cv_folds: int = Field(5, ge=2)
    bootstrap: int = Field(50, ge=0)  # replicates for the intervals; 0 turns them off
    ci: float = Field(0.9, gt=0, lt=1)  # interval level
    objective: Objective = Objective()


class Optimum(_Strict):
    target_tokens: float | None = Field(None, gt=0)  # the real run's tokens; enables the repetition limit
    max_epochs: float = Field(4.0, gt=0)  # weight x target_tokens <= max_epochs x available tokens
    kl_weight: float = Field(0.05, ge=0)  # objective + kl_weight x KL(w || prior)


class Resources(_Strict):
    """What one proxy asks of a cluster (ray, slurm backends)."""

    gpus: float = Field(0.0, ge=0)  # a fraction packs several proxies on one GPU (Ray)
    cpus: float = Field(1.0, gt=0)


class Slurm(_Strict):
    partition: str | None = None
    time_min: int = Field(60, gt=0)  # per job: one proxy
    mem_gb: float | None = Field(None, gt=0)


class Experiment(_Strict):
    name: str
    seed: int = 0
    workspace: str | None = None
    domains: list[Domain] = Field(min_length=2)
    sample: Sample = Sample()
    proxy: Proxy = Proxy()
    design: Design = Design()
    fit: Fit = Fit()
    optimum: Optimum = Optimum()
    evals: EvalSuite | None = None  # default: held-out loss/BPB on every domain, weighted by fit.objective
    resources: Resources = Resources()
    slurm: Slurm = Slurm()
    # Set by load_experiment: where the YAML lives (relative paths resolve against its folder).
    base_dir: str = "."
    config_path: str | None = None

    _name_is_a_word = field_validator("name")(classmethod(lambda cls, v: _word(v)))

    @property
    def domain_names(self) -> list[str]:
        """The one canonical domain order: the config's."""
        return [d.name for d in self.domains]

    def resolve(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else (Path(self.base_dir) / p).resolve()

    @property
    def workspace_dir(self) -> Path:
        if self.workspace:
            return self.resolve(self.workspace)
        return (Path.cwd() / "workspaces" / self.name).resolve()

    @property
    def optimal_path(self) -> Path:
        """The recommended ratio is written next to the config: mixtures/<name>.optimal.yaml."""
        folder = Path(self.config_path).parent if self.config_path else Path(self.base_dir)
        return folder / f"{self.name}.optimal.yaml"

    @property
    def train_tokens(self) -> int:
        return self.sample.train_tokens or self.proxy.tokens


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
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise MixoptError(f"{path}: not valid YAML{where}", "fix the YAML syntax") from None
    if not isinstance(raw, dict):
        raise MixoptError(f"{path}: expected {expected}", help)
    for key in reserved:
        if key in raw:
            raise MixoptError(f"{path}: '{key}' is set by mixopt", "remove it from the file")
    return raw


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
        raise MixoptError(f"{path}: domain minimums sum to {lo:.4g} > 1, so no mixture fits", "lower some 'min'")
    if hi < 1 - 1e-9:
        raise MixoptError(f"{path}: domain maximums sum to {hi:.4g} < 1, so no mixture fits", "raise some 'max'")
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
    from .suites import read_choice_items, resolve_path

    for e in suite.evaluations:
        if e.kind == "heldout" and e.domain not in exp.domain_names:
            raise MixoptError(f"{where}: evaluation '{e.name}' names unknown domain '{e.domain}'",
                              f"use one of: {', '.join(exp.domain_names)}")
        for s in e.sources or ():
            if not resolve_path(suite, s.path).exists():
                raise MixoptError(f"{where}: evaluation '{e.name}': text source not found: "
                                  f"{resolve_path(suite, s.path)}", "fix the path under `sources`")
        if e.kind == "choice":
            read_choice_items(resolve_path(suite, e.path), e.max_items)
    if sum(e.weight for e in suite.evaluations) <= 0:
        raise MixoptError(f"{where}: every evaluation has weight 0, so there is no objective",
                          "give at least one evaluation a positive weight")


def check_weights(weights: dict[str, float], domains: list[str], where: str,
                  tolerance: float = WEIGHT_TOLERANCE) -> list[float]:
    """Validate a mixture given as domain -> weight; return it normalized, in canonical order."""
    unknown = sorted(set(weights) - set(domains))
    if unknown:
        raise MixoptError(f"{where}: unknown domain '{unknown[0]}'", f"use one of: {', '.join(domains)}")
    values = [weights.get(d, 0.0) for d in domains]
    for d, v in zip(domains, values):
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            raise MixoptError(f"{where}: weight of '{d}' is {v!r}, not a finite number", "give a number in [0, 1]")
        if v < 0:
            raise MixoptError(f"{where}: weight of '{d}' is negative ({v})", "weights must be >= 0")
    total = sum(values)
    if abs(total - 1.0) > tolerance:
        raise MixoptError(f"{where}: weights sum to {total:.6g}, not 1 (tolerance {tolerance})",
                          "make the weights sum to 1")
    return [v / total for v in values]
