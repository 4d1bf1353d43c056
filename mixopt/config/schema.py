"""The experiment's schema: frozen pydantic models with every default here. Imports nothing from mixopt
but the config models it is built of (source.py: a source and the strict base; evals.py: the eval
kinds): cross-checks that need the file system or other stages live in load.py and the stages themselves."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from mixopt.config.evals import EvalSuite
from mixopt.config.source import Source, Strict as _Strict, as_sources, word as _word


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
        return as_sources(v)

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
    # runs over the enlarged simplex). See docs/howto/data-changes.md.
    after_change: Literal["reuse", "extend"] = "reuse"
    after_change_runs: int = Field(4, ge=1)  # at most this many random runs per changed domain (+ 1); fewer on small designs
    replicates: Replicates | None = Replicates()  # seed replicates; null: none (the noise is not measured)
    # Several proxy sizes in one experiment, cheapest first: the first is the swarm (its size and runs
    # are proxy.size and design.runs); each later one trains `runs` of the mixtures measured at the
    # size before it (the prior, then alternately the best measured and the farthest from those
    # chosen). `fit` then fits one law across the sizes. See docs/howto/multi-fidelity.md.
    fidelities: list[Fidelity] | None = Field(None, min_length=2)


class Objective(_Strict):
    metric: Literal["bpb", "loss"] = "bpb"
    domains: dict[str, float] | None = None  # validation domain -> weight; default: all, equal


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
    defs["TextEvaluation"]["properties"]["sources"] = {"anyOf": [source, {"type": "array", "items": source,
                                                                           "minItems": 1}]}
    schema["properties"]["evals"] = {"anyOf": [{"type": "string", "description": "an eval suite file"},
                                               {"$ref": "#/$defs/EvalSuite"}, {"type": "null"}], "default": None}
    schema["properties"]["name"]["description"] = "default: the config file's name"
    schema["required"] = [r for r in schema.get("required", []) if r != "name"]
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema, "title": SCHEMA_TITLE}
