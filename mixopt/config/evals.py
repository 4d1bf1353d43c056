"""The eval suite's config: one model per eval kind, told apart by `kind` (a discriminated union), so a
key that belongs to another kind is refused as an extra input. What each kind does at run time is
in mixopt/evals/kinds/ (one class per kind, registered in KINDS); tests check the two name the same kinds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, ClassVar, Literal, get_args

from pydantic import Field, field_validator, model_validator

from mixopt.config.source import Source, Strict, as_sources, word

HIGHER_IS_BETTER = {"prob", "acc", "acc_norm"}
# lm-evaluation-harness metrics whose direction is known; another needs `higher_is_better`.
LM_EVAL_DIRECTIONS = {"acc": True, "acc_norm": True, "exact_match": True, "f1": True, "mcc": True, "bleu": True,
                      "perplexity": False, "word_perplexity": False, "byte_perplexity": False,
                      "bits_per_byte": False}


class EvaluationBase(Strict):
    """What every entry of an eval suite has: what to measure, and its weight in the objective."""

    needs: ClassVar[str]  # the key that says what this kind reads, for messages
    metrics: ClassVar[tuple[str, ...] | None]  # the metrics it reports; None: any (the harness's names)
    # A kind without `path` or `sources` reads them as None (data.sources lists every evaluation's files).

    name: str
    weight: float = Field(1.0, ge=0)  # in the objective; normalized over the suite
    family: str | None = None  # with `average: families`, each family counts once
    # heldout/text: bpb|loss (default fit.objective.metric); choice: prob|acc|acc_norm|bpb; lm_eval: the task's
    metric: str | None = None

    def domains(self) -> tuple[str, ...]:
        """The domains whose validation slices it reads (names the config must define)."""
        return ()

    def task_file(self) -> str | None:
        """A local task file (or saved dataset folder) it reads, checked like every input path."""
        return None

    @field_validator("name")
    @classmethod
    def _name_is_a_path_of_words(cls, v: str) -> str:
        for part in v.split("/"):
            word(part)
        return v

    @field_validator("metric")
    @classmethod
    def _metric_of_this_kind(cls, v: str | None) -> str | None:
        if v is not None and cls.metrics is not None and v not in cls.metrics:
            raise ValueError(f"metric '{v}' is not one of {', '.join(cls.metrics)}")
        return v


class HeldoutEvaluation(EvaluationBase):
    """Loss / bits per byte on one domain's held-out validation slice."""

    needs: ClassVar[str] = "domain"
    metrics: ClassVar[tuple[str, ...]] = ("bpb", "loss")
    path: ClassVar[None] = None
    sources: ClassVar[None] = None

    kind: Literal["heldout"]
    domain: str  # which domain's validation slice

    def domains(self) -> tuple[str, ...]:
        return (self.domain,)


class TextEvaluation(EvaluationBase):
    """Loss / bits per byte on local text files, read like a domain's sources."""

    needs: ClassVar[str] = "sources"
    metrics: ClassVar[tuple[str, ...]] = ("bpb", "loss")
    path: ClassVar[None] = None

    kind: Literal["text"]
    sources: list[Source] = Field(min_length=1)
    max_tokens: int = Field(50_000, gt=0)  # tokens evaluated (the first ones, in file order)

    _paths_as_sources = field_validator("sources", mode="before")(classmethod(lambda cls, v: as_sources(v)))


class ChoiceEvaluation(EvaluationBase):
    """A multiple-choice task scored by each choice's likelihood: a local file or a Hub dataset."""

    needs: ClassVar[str] = "path"
    metrics: ClassVar[tuple[str, ...]] = ("prob", "acc", "acc_norm", "bpb")
    sources: ClassVar[None] = None

    kind: Literal["choice"]
    path: str | None = None  # a JSONL / JSON / Parquet file or a datasets.save_to_disk folder
    dataset: str | None = None  # a Hugging Face Hub dataset by name (needs the network once)
    subset: str | None = None  # with dataset: its configuration (e.g. ARC-Easy)
    split: str | None = None  # the split of a Hub dataset or a saved DatasetDict
    # The schema of a known task; evals.choice.PRESETS owns the readers (a test checks the names agree).
    preset: Literal["arc", "hellaswag", "piqa", "winogrande", "mmlu", "boolq"] | None = None
    fields: dict[str, str] | None = None  # question/choices/answer/labels -> the data's field (a.b nests)
    k: int = Field(0, ge=0)  # few-shot exemplars before each item
    fewshot_split: str | None = None  # draw exemplars from this split (default: the other items)
    max_items: int | None = Field(None, gt=0)  # the first N items; default all

    def task_file(self) -> str | None:
        return self.path

    @model_validator(mode="after")
    def _one_place(self):
        if (self.path is None) == (self.dataset is None):
            raise ValueError("a 'choice' evaluation needs one of 'path' (a local file or folder) or 'dataset' "
                             "(a Hub name)")
        if self.fields and set(self.fields) - {"question", "choices", "answer", "labels"}:
            raise ValueError("'fields' maps question, choices, answer and labels only")
        return self


class LmEvalEvaluation(EvaluationBase):
    """An lm-evaluation-harness task (built in, or from a folder of task YAMLs), its metric as the value."""

    needs: ClassVar[str] = "task"
    metrics: ClassVar[None] = None
    sources: ClassVar[None] = None

    kind: Literal["lm_eval"]
    task: str  # the harness's task name
    path: str | None = None  # a folder of task YAMLs
    k: int = Field(0, ge=0)  # few-shot exemplars before each item
    max_items: int | None = Field(None, gt=0)  # the first N items; default all
    higher_is_better: bool | None = None  # the metric's direction, when the harness's name is not known
    trust_task_code: bool = Field(False, description=(
        "lm_eval: a task folder (`path`) is code: lm-evaluation-harness imports and runs its .py files "
        "(`!function utils.x` in a task YAML) inside mixopt. A folder holding any .py file or `!function` tag "
        "is refused unless this is true. Built-in tasks by name (no `path`) run the harness's own Python "
        "(many of their YAMLs use `!function`), installed with it, and need no flag."))

    @model_validator(mode="after")
    def _metric_with_direction(self):
        if self.metric is None:
            raise ValueError("an 'lm_eval' evaluation needs 'metric' (e.g. acc): the harness reports several")
        if self.higher_is_better is None and self.metric not in LM_EVAL_DIRECTIONS:
            raise ValueError(f"metric '{self.metric}': say whether it is better higher with 'higher_is_better'")
        return self


EVAL_KINDS: dict[str, type[EvaluationBase]] = {get_args(c.model_fields["kind"].annotation)[0]: c for c in (
    HeldoutEvaluation, TextEvaluation, ChoiceEvaluation, LmEvalEvaluation)}
Evaluation = Annotated[HeldoutEvaluation | TextEvaluation | ChoiceEvaluation | LmEvalEvaluation,
                       Field(discriminator="kind")]


class EvalSuite(Strict):
    """The eval suite: a YAML file named by the config's `evals:`, or a mapping inline."""

    average: Literal["tasks", "families"] = "tasks"  # families: mean within each family, then over families
    evaluations: list[Evaluation] = Field(min_length=1)
    base_dir: str = "."  # set by load_experiment: relative paths resolve against the suite's folder
    path: str | None = None  # set by load_experiment: the suite file, when it is one

    def resolve(self, path: str) -> Path:
        """A path in the suite, relative to the suite file's folder (or the config's, for inline suites)."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else (Path(self.base_dir) / p).resolve()
