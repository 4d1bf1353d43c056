"""The experiment's schema: frozen pydantic models with every default here. Imports nothing from mixopt:
cross-checks that need the file system or other stages live in load.py and the stages themselves."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


def _word(v: str) -> str:
    """Names become folder names and metric names: keep them to one safe word."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", v):
        raise ValueError("use letters, digits, '_', '.', '-' only")
    return v


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # .inf / .nan never pass


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
    tokens: int = Field(20_000_000, gt=0, le=10**13)  # training tokens per proxy (<= 10T: a proxy, not a run)
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
    # After domains are added or their data changes: reuse (the unchanged domains as one virtual
    # domain at their last recommended ratio; O(changed) new runs) or extend (old runs as points, new
    # runs over the enlarged simplex). See "When the data changes" in README.md.
    after_change: Literal["reuse", "extend"] = "reuse"
    after_change_runs: int = Field(4, ge=1)  # random runs per changed domain (+ 1 for the rest)


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

    def resolve(self, path: str) -> Path:
        """A path in the suite, relative to the suite file's folder (or the config's, for inline suites)."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else (Path(self.base_dir) / p).resolve()


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
    seed: int = Field(0, ge=0, lt=2**63)  # numpy's seeds are non-negative
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
