"""The experiment's schema: frozen pydantic models with every default here. Imports nothing from mixopt:
cross-checks that need the file system or other stages live in load.py and the stages themselves."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


NAME_MAX = 100  # characters: a name is a file or folder name (at most 255 bytes) inside longer temp names


def _word(v: str) -> str:
    """Names become folder names and metric names: keep them to one safe word."""
    if len(v) > NAME_MAX:
        raise ValueError(f"a name of {len(v)} characters is too long for a file name; use at most {NAME_MAX}")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", v):
        raise ValueError("use letters, digits, '_', '.', '-' only")
    if set(v) == {"."}:  # '.' and '..' name the folder itself or its parent, not a new one
        raise ValueError(f"'{v}' is not a name; use letters or digits")
    return v


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # .inf / .nan never pass


class Source(_Strict):
    """One place a domain's documents come from: `path` (files, folders, globs, fsspec URLs) or `hub`."""

    # A file, a folder, a glob (shards/*.parquet, **/*.jsonl.zst) or an fsspec URL (s3://, gs://,
    # hf://datasets/..., https://, memory://, file://); or a list of them.
    path: str | list[str] | None = None
    hub: str | None = None  # a Hugging Face Hub dataset (org/name, or a local folder laid out like one)
    config: str | None = None  # hub: the dataset's configuration (subset)
    format: Literal["auto", "parquet", "jsonl", "text", "hf", "arrow"] = "auto"
    text_field: str = "text"  # column / JSON key holding the document text
    extensions: list[str] | None = None  # for directories: which files are documents
    split: str | None = None  # for a saved HF DatasetDict; hub: the split (default train)
    storage_options: dict[str, Any] = {}  # passed to fsspec (endpoint_url, anon, ...); credentials from the env
    on_error: Literal["fail", "skip"] = "fail"  # skip: unreadable shards are skipped and counted

    @model_validator(mode="after")
    def _one_place(self):
        if (self.path is None) == (self.hub is None):
            raise ValueError("give exactly one of `path` and `hub`")
        if isinstance(self.path, list) and not self.path:
            raise ValueError("`path` is an empty list")
        if self.config is not None and self.hub is None:
            raise ValueError("`config` applies to a `hub` source")
        return self


class Domain(_Strict):
    name: str
    sources: list[Source] = Field(min_length=1)
    min: float = Field(0.0, ge=0.0, le=1.0)  # lower bound on this domain's weight
    max: float = Field(1.0, ge=0.0, le=1.0)  # upper bound on this domain's weight
    # Set by data.pools for a domain made from a pool (its documents whose field value, tier or cluster
    # is this one); part of the domain's sample key. Not written by users.
    select: dict[str, Any] | None = Field(None, exclude=True)

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


class Tiers(_Strict):
    """Cut a numeric field (a quality score) into tiers: at `edges` (ascending cut points; k edges make
    k + 1 tiers) or at the pool's `quantiles` (K tiers of equal document counts, edges computed by one
    pass over the field and recorded in the sample manifest). A tier is [edge_i, edge_i+1)."""

    field: str  # a.b.c for a nested JSON object / Parquet struct field
    edges: list[float] | None = Field(None, min_length=1)
    quantiles: int | None = Field(None, ge=2, le=100)

    @model_validator(mode="after")
    def _one_cut(self):
        if (self.edges is None) == (self.quantiles is None):
            raise ValueError("give exactly one of `edges` and `quantiles`")
        if self.edges is not None and any(b <= a for a, b in zip(self.edges, self.edges[1:])):
            raise ValueError("`edges` must be strictly ascending")
        return self


class Cluster(_Strict):
    """Cluster a pool's documents by content: embed a seeded sample (hashed words -> TF-IDF -> SVD, no
    download), k-means, then assign every document to its nearest centroid."""

    k: int | None = Field(None, ge=2, le=256)  # null: the k in k_range with the best silhouette
    k_range: tuple[int, int] = (2, 12)  # searched when k is null (inclusive)
    sample_documents: int = Field(2000, ge=20)  # documents embedded to fit the model (seeded)
    dims: int = Field(32, ge=2, le=256)  # SVD components
    features: int = Field(1 << 16, ge=1 << 10, le=1 << 20)  # hashed word features
    # A local folder of a Hugging Face encoder (save_pretrained: sentence-transformers models are one):
    # documents are its mean-pooled last hidden states instead (dims, features unused); never downloaded.
    embedder: str | None = None

    @model_validator(mode="after")
    def _range_ordered(self):
        if not 2 <= self.k_range[0] <= self.k_range[1]:
            raise ValueError("`k_range` is [low, high] with 2 <= low <= high")
        return self


class Pool(_Strict):
    """Domains from one pool of sources: one per value of a field (`group_by`), per tier of a score
    (`tiers`), or per cluster (`cluster`). They are ordinary domains from `sample` on."""

    name: str | None = None  # prefix of the domain names (NAME-VALUE); group_by: none by default
    sources: list[Source] = Field(min_length=1)
    group_by: str | None = None  # a field (a.b.c nests): one domain per value
    values: list[str] | None = Field(None, min_length=1)  # group_by: these values only; null: every value found
    rest: Literal["drop", "other"] = "drop"  # group_by with values: documents of other values dropped or one domain
    tiers: Tiers | None = None
    cluster: Cluster | None = None
    min: float = Field(0.0, ge=0.0, le=1.0)  # bounds for each of its domains' weights
    max: float = Field(1.0, ge=0.0, le=1.0)

    _paths_as_sources = field_validator("sources", mode="before")(classmethod(
        lambda cls, v: Domain._paths_as_sources(v)))

    @field_validator("name")
    @classmethod
    def _name_word(cls, v):
        return v if v is None else _word(v)

    @model_validator(mode="after")
    def _one_kind(self):
        kinds = [k for k in ("group_by", "tiers", "cluster") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("give exactly one of `group_by`, `tiers` and `cluster`")
        if self.group_by is None and ("values" in self.model_fields_set or "rest" in self.model_fields_set):
            raise ValueError("`values` and `rest` apply to `group_by`")
        if self.rest == "other" and self.values is None:
            raise ValueError("`rest: other` needs `values` (without them every value is a domain)")
        return self


class Tokenizer(_Strict):
    path: str | None = None  # a tokenizer.json to use as is; otherwise one is trained
    name: str | None = None  # a Hugging Face tokenizer: a folder (save_pretrained) or a Hub name

    @model_validator(mode="after")
    def _one_given(self):
        if self.path and self.name:
            raise ValueError("give `path` or `name`, not both")
        return self
    vocab_size: int = Field(8192, ge=260, le=1 << 20)
    train_bytes_per_domain: int = Field(2_000_000, gt=0)  # equal bytes per domain: no domain dominates


class Scan(_Strict):
    """Read a seeded subset of each domain's shards (huge domains); the token count is then estimated."""

    fraction: float = Field(gt=0, le=1)  # of each domain's shards (at least min_shards of them)
    min_shards: int = Field(2, ge=1)


class Sample(_Strict):
    train_tokens: int | None = Field(None, gt=0)  # per domain; default: one proxy's whole budget
    val_tokens: int = Field(50_000, gt=0)  # per domain, held out from training
    # Longer documents are cut to this many bytes (counted in the manifest): no giant document reaches
    # the tokenizer whole.
    max_document_bytes: int = Field(1_000_000, ge=1024)
    scan: Scan | None = None  # default: read every shard (exact counts)
    tokenizer: Tokenizer = Tokenizer()


PROXY_SIZES = ("tiny", "1m", "5m", "15m", "30m", "60m", "150m")  # proxy.model.SIZES' names


class Proxy(_Strict):
    size: Literal["tiny", "1m", "5m", "15m", "30m", "60m", "150m"] = "1m"
    # Your own architecture instead of `size`: an HF LlamaConfig-style JSON (hidden_size,
    # num_hidden_layers, num_attention_heads, intermediate_size; the vocabulary is the tokenizer's).
    hf_config: str | None = Field(None, alias="model_config")
    tokens: int = Field(20_000_000, gt=0, le=10**13)  # training tokens per proxy (<= 10T: a proxy, not a run)
    # Expert overrides; None means "what `size` picks".
    seq_len: int | None = Field(None, gt=1)
    batch_size: int | None = Field(None, gt=0)
    lr: float | None = Field(None, gt=0)
    warmup: float = Field(0.05, ge=0, lt=1)  # fraction of steps
    weight_decay: float = Field(0.1, ge=0)

    @model_validator(mode="after")
    def _size_or_config(self):
        if self.hf_config is not None and "size" in self.model_fields_set:
            raise ValueError("give `size` or `model_config`, not both")
        return self


class Replicates(_Strict):
    """The same mixture trained again with other init / data-order seeds (the sample stays the
    same): what measures the seed noise that every fit, interval and verdict is judged against."""

    seeds: int = Field(3, ge=2, le=64)  # proxies per replicated mixture, the design's own run included
    # Replicated mixtures: the prior first, then design mixtures spread apart; null: as many as keep
    # the extra proxies within `budget` of the design's (at least the prior's).
    mixtures: int | None = Field(None, ge=1)
    budget: float = Field(0.15, gt=0, le=1)


class Fidelity(_Strict):
    """One proxy size of a multi-fidelity design: `runs` proxies of `size` (or of `model_config`)."""

    size: Literal["tiny", "1m", "5m", "15m", "30m", "60m", "150m"] | None = None
    hf_config: str | None = Field(None, alias="model_config")  # an HF LlamaConfig-style JSON, as proxy.model_config
    runs: int = Field(ge=1)  # the first fidelity: random mixtures (design.runs); the others: proxies in all
    tokens: int | None = Field(None, gt=0, le=10**13)  # training tokens per proxy; default proxy.tokens

    @model_validator(mode="after")
    def _one_model(self):
        if (self.size is None) == (self.hf_config is None):
            raise ValueError("give exactly one of `size` and `model_config`")
        return self

    @property
    def label(self) -> str:
        """How status, export and fit name this fidelity: the size, or the model config's file name."""
        return self.size or Path(self.hf_config).stem


class Design(_Strict):
    # Random mixtures, besides vertices, the prior and `mixtures`; default (null): 4 per domain, at
    # least 32 (Olmix: the swarm should grow linearly with the number of domains).
    runs: int | None = Field(None, ge=0)
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
    after_change_runs: int = Field(4, ge=1)  # at most this many random runs per changed domain (+ 1); fewer on small designs
    replicates: Replicates | None = Replicates()  # seed replicates; null: none (the noise is not measured)
    # Several proxy sizes in one experiment, cheapest first: the first is the swarm (its size and runs
    # are proxy.size and design.runs); each later one trains `runs` of the mixtures measured at the
    # size before it (the prior, then alternately the best measured and the farthest from those
    # chosen). `fit` then fits one law across the sizes. See "Multi-fidelity" in README.md.
    fidelities: list[Fidelity] | None = Field(None, min_length=2)


class Objective(_Strict):
    metric: Literal["bpb", "loss"] = "bpb"
    domains: dict[str, float] | None = None  # validation domain -> weight; default: all, equal


EVAL_METRICS = {"heldout": ("bpb", "loss"), "text": ("bpb", "loss"), "choice": ("prob", "acc", "acc_norm", "bpb")}


HIGHER_IS_BETTER = {"prob", "acc", "acc_norm"}
# lm-evaluation-harness metrics whose direction is known; another needs `higher_is_better`.
LM_EVAL_DIRECTIONS = {"acc": True, "acc_norm": True, "exact_match": True, "f1": True, "mcc": True, "bleu": True,
                      "perplexity": False, "word_perplexity": False, "byte_perplexity": False,
                      "bits_per_byte": False}
CHOICE_PRESETS = ("arc", "hellaswag", "piqa", "winogrande", "mmlu", "boolq")


class Evaluation(_Strict):
    """One entry of an eval suite: what to measure, and its weight in the objective."""

    name: str
    kind: Literal["heldout", "text", "choice", "lm_eval"]
    weight: float = Field(1.0, ge=0)  # in the objective; normalized over the suite
    family: str | None = None  # with `average: families`, each family counts once
    # heldout/text: bpb|loss (default fit.objective.metric); choice: prob|acc|acc_norm|bpb; lm_eval: the task's
    metric: str | None = None
    domain: str | None = None  # heldout: which domain's validation slice
    sources: list[Source] | None = None  # text: the files, read like a domain's sources
    # choice: a JSONL / JSON / Parquet file or a datasets.save_to_disk folder; lm_eval: a folder of task YAMLs
    path: str | None = None
    dataset: str | None = None  # choice: a Hugging Face Hub dataset by name (needs the network once)
    subset: str | None = None  # choice, dataset: its configuration (e.g. ARC-Easy)
    split: str | None = None  # choice: the split of a Hub dataset or a saved DatasetDict
    preset: Literal["arc", "hellaswag", "piqa", "winogrande", "mmlu", "boolq"] | None = None  # choice: schema
    fields: dict[str, str] | None = None  # choice: question/choices/answer/labels -> the data's field (a.b nests)
    k: int = Field(0, ge=0)  # choice, lm_eval: few-shot exemplars before each item
    fewshot_split: str | None = None  # choice: draw exemplars from this split (default: the other items)
    task: str | None = None  # lm_eval: the harness's task name
    higher_is_better: bool | None = None  # lm_eval: the metric's direction, when the harness's name is not known
    max_tokens: int = Field(50_000, gt=0)  # text: tokens evaluated (the first ones, in file order)
    max_items: int | None = Field(None, gt=0)  # choice, lm_eval: the first N items; default all
    trust_task_code: bool = Field(False, description=(
        "lm_eval: a task folder (`path`) is code: lm-evaluation-harness imports and runs its .py files "
        "(`!function utils.x` in a task YAML) inside mixopt. A folder holding any .py file or `!function` tag "
        "is refused unless this is true. Built-in tasks by name (no `path`) run the harness's own Python "
        "(many of their YAMLs use `!function`), installed with it, and need no flag."))

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
        need = {"heldout": "domain", "text": "sources", "choice": "path", "lm_eval": "task"}[self.kind]
        if self.kind == "choice" and (self.path is None) == (self.dataset is None):
            raise ValueError("a 'choice' evaluation needs one of 'path' (a local file or folder) or 'dataset' "
                             "(a Hub name)")
        if self.kind != "choice" and getattr(self, need) in (None, []):
            raise ValueError(f"a '{self.kind}' evaluation needs '{need}'")
        own = {"heldout": {"domain"}, "text": {"sources", "max_tokens"}, "lm_eval": {"task", "path", "k", "max_items", "trust_task_code"},
               "choice": {"path", "dataset", "subset", "split", "preset", "fields", "k", "fewshot_split",
                          "max_items"}}[self.kind]
        for other in ("domain", "sources", "path", "dataset", "subset", "split", "preset", "fields", "k",
                      "fewshot_split", "task", "higher_is_better", "trust_task_code"):
            if other not in own | {"higher_is_better"} and other in self.model_fields_set:
                raise ValueError(f"'{other}' does not apply to a '{self.kind}' evaluation (it uses '{need}')")
        if self.kind == "lm_eval":
            if self.metric is None:
                raise ValueError("an 'lm_eval' evaluation needs 'metric' (e.g. acc): the harness reports several")
            if self.higher_is_better is None and self.metric not in LM_EVAL_DIRECTIONS:
                raise ValueError(f"metric '{self.metric}': say whether it is better higher with 'higher_is_better'")
        elif self.higher_is_better is not None:
            raise ValueError("'higher_is_better' applies to 'lm_eval' evaluations only")
        elif self.metric is not None and self.metric not in EVAL_METRICS[self.kind]:
            raise ValueError(f"metric '{self.metric}' is not one of {', '.join(EVAL_METRICS[self.kind])}")
        if self.fields and set(self.fields) - {"question", "choices", "answer", "labels"}:
            raise ValueError("'fields' maps question, choices, answer and labels only")
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


# The fit's model families. mixopt/fit/families registers one class per name; the config is the
# lowest layer and cannot import it, so the names are listed here too (the YAML is checked while it
# loads): tests/test_fit_models.py checks that this list, the registry and the CLI agree.
MODELS = ("linear", "loglinear", "law", "quadratic", "logweight", "multitask", "gp", "gbm", "ensemble")


class Fit(_Strict):
    # auto: every family cross-validated, the best ranker within one standard error (the safe choice)
    model: Literal[MODELS + ("auto",)] = "auto"
    cv_folds: int = Field(5, ge=2)
    bootstrap: int = Field(50, ge=0)  # replicates for the intervals; 0 turns them off
    ci: float = Field(0.9, gt=0, lt=1)  # interval level
    seed: int | None = Field(None, ge=0, lt=2**63)  # folds, trees, simulation; default: the experiment's seed
    objective: Objective = Objective()


class Optimum(_Strict):
    # The real run's parameters: `fit` recommends for this size with a law across proxy sizes (with
    # design.fidelities, or runs at several sizes); default: the largest fidelity's.
    target_size: float | None = Field(None, gt=0)
    target_tokens: float | None = Field(None, gt=0)  # the real run's tokens; enables the repetition limit
    max_epochs: float = Field(4.0, gt=0)  # weight x target_tokens <= max_epochs x available tokens
    kl_weight: float = Field(0.05, ge=0)  # objective + kl_weight x KL(w || prior)
    trust_region: Literal["range", "none"] = "range"  # range: each weight within what the runs covered
    # domain -> [low, high] for the recommendation alone (a domain's min/max also bound the design)
    bounds: dict[str, tuple[float, float]] = {}


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
    seed: int = Field(0, ge=0, lt=2**63, strict=True)  # numpy's seeds are non-negative
    workspace: str | None = None
    domains: list[Domain] = []
    pools: list[Pool] = []  # domains made from pools (data.pools), after `domains` in the canonical order
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
    # Set by the CLI (`fit CONFIG --cv-folds 3 ...`): the settings the command line changed, flag -> value,
    # recorded in what fit prints and writes.
    overrides: dict[str, str] = {}

    _name_is_a_word = field_validator("name")(classmethod(lambda cls, v: _word(v)))

    @model_validator(mode="after")
    def _two_domains(self):
        if not self.pools and len(self.domains) < 2:
            raise ValueError("a mixture needs at least 2 domains (give `domains`, or `pools` that make them)")
        return self

    @model_validator(mode="before")
    @classmethod
    def _first_fidelity_is_the_swarm(cls, raw):
        """design.fidelities[0] is the swarm: its size (or model_config), runs and tokens become
        proxy.* and design.runs, so its runs keep the keys a one-size config gives them. Setting both
        to different values is an error."""
        design = raw.get("design") if isinstance(raw, dict) else None
        fids = design.get("fidelities") if isinstance(design, dict) else None
        if not (isinstance(fids, list) and fids and isinstance(fids[0], dict)):
            return raw
        first, proxy = fids[0], raw.get("proxy") or {}
        if not isinstance(proxy, dict):
            return raw
        proxy, design = dict(proxy), dict(design)
        pairs = [("proxy", proxy, k, first.get(k)) for k in ("size", "model_config", "tokens")]
        pairs.append(("design", design, "runs", first.get("runs")))
        for section, target, k, v in pairs:
            if v is None:
                continue
            if k in target and target[k] != v:
                raise ValueError(f"design.fidelities[0].{k} is {v!r} but {section}.{k} is {target[k]!r}: the first "
                                 f"fidelity is the swarm; drop {section}.{k} (or make them equal)")
            target[k] = v
        return {**raw, "proxy": proxy, "design": design}

    @property
    def fidelity_labels(self) -> list[str]:
        return [f.label for f in self.design.fidelities or ()]

    @property
    def domain_names(self) -> list[str]:
        """The one canonical domain order: the config's."""
        return [d.name for d in self.domains]

    def resolve(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else (Path(self.base_dir) / p).resolve()

    @property
    def workspace_dir(self) -> Path:
        """`workspace:` (relative to the config's folder, like every path), default <config folder>/workspaces/<name>.
        A workspace made before the default followed the config (./workspaces/<name> of the folder mixopt ran
        in, usually the config folder's parent) is still found when the new default does not exist yet."""
        if self.workspace:
            return self.resolve(self.workspace)
        here = (Path(self.base_dir) / "workspaces" / self.name).resolve()
        if not here.exists():
            for old in (Path.cwd(), Path(self.base_dir).parent):
                legacy = old / "workspaces" / self.name
                if (legacy / "mixopt.db").is_file() or (legacy / "sample" / "manifest.json").is_file():
                    return legacy.resolve()
        return here

    @property
    def optimal_path(self) -> Path:
        """The recommended ratio is written next to the config: mixtures/<name>.optimal.yaml."""
        folder = Path(self.config_path).parent if self.config_path else Path(self.base_dir)
        return folder / f"{self.name}.optimal.yaml"

    @property
    def train_tokens(self) -> int:
        return self.sample.train_tokens or self.proxy.tokens


SCHEMA_TITLE = "mixopt experiment"  # `schema --out` knows its own earlier file by it


def experiment_json_schema() -> dict:
    """The config as a JSON Schema (for editors), as users write it: without the keys mixopt sets,
    with the short forms the loader accepts (a source as a bare path, `evals:` as a suite file name)."""
    schema = Experiment.model_json_schema(mode="validation")
    defs = schema.get("$defs", {})
    for model, hidden in ((schema, ("base_dir", "config_path")), (defs.get("EvalSuite", {}), ("base_dir", "path"))):
        for key in hidden:
            model.get("properties", {}).pop(key, None)
    source = {"anyOf": [{"type": "string"}, {"$ref": "#/$defs/Source"}]}
    defs["Domain"]["properties"].pop("select", None)  # set by mixopt for a pool's domains
    defs["Domain"]["properties"]["sources"] = {"anyOf": [source, {"type": "array", "items": source, "minItems": 1}]}
    defs["Evaluation"]["properties"]["sources"] = {"anyOf": [source, {"type": "array", "items": source},
                                                             {"type": "null"}], "default": None}
    schema["properties"]["evals"] = {"anyOf": [{"type": "string", "description": "an eval suite file"},
                                               {"$ref": "#/$defs/EvalSuite"}, {"type": "null"}], "default": None}
    schema["properties"]["name"]["description"] = "default: the config file's name"
    schema["required"] = [r for r in schema.get("required", []) if r != "name"]
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema, "title": SCHEMA_TITLE}
