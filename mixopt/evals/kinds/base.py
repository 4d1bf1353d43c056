"""What every eval kind does at run time (one subclass per kind, one file each, registered in
kinds/__init__.py): fingerprint its data, check it, tokenize it once, and score N proxies on it.
Its config is the model of the same kind in mixopt/config/evals.py."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from mixopt.config.evals import HIGHER_IS_BETTER, EvalSuite, EvaluationBase
from mixopt.config.schema import Experiment
from mixopt.core.workspace import Workspace

if TYPE_CHECKING:
    from mixopt.proxy.model import ProxySpec


@dataclass(frozen=True)
class Measure:
    """One evaluation of the suite, resolved (evals/suites.py builds it from what the kinds say; the kinds
    read it)."""

    name: str  # e.g. "heldout/code"; metrics are "<name>/<metric>"
    kind: str  # its name in evals.kinds.KINDS (heldout, text, choice, lm_eval)
    key: str  # what is computed (see the module docstring)
    metric: str  # the metric that enters the objective
    weight: float  # as written in the suite
    family: str
    domain: str | None  # heldout: the domain whose validation slice is read
    data: str | None  # text / choice: the prepared file (token ids) in the workspace; lm_eval: its task
    higher_is_better: bool | None = None  # lm_eval: the metric's direction (others: known from the metric)

    @property
    def direction(self) -> int:
        """+1 if lower is better (loss, BPB), -1 if higher is (accuracy, probability)."""
        if self.higher_is_better is not None:
            return -1 if self.higher_is_better else 1
        return -1 if self.metric in HIGHER_IS_BETTER else 1


class EvalKind:
    """One eval kind. `name` is its `kind:` in the suite; `config` its pydantic model."""

    name: ClassVar[str]
    config: ClassVar[type[EvaluationBase]]
    prepared: ClassVar[bool] = True  # its data is tokenized once into evalsets/ (heldout reads the sample)

    def default_metric(self, exp: Experiment) -> str:
        """The metric that enters the objective when the evaluation names none."""
        return exp.fit.objective.metric

    def higher_is_better(self, e: EvaluationBase, metric: str) -> bool | None:
        """The metric's direction when the metric's name does not say it (None: it does)."""
        return None

    def identity(self, e: EvaluationBase, suite: EvalSuite, manifest: dict, exp: Experiment) -> dict:
        """What is computed (beside the kind and EVAL_VERSION): the data's fingerprint, not its paths."""
        raise NotImplementedError

    def check(self, e: EvaluationBase, suite: EvalSuite, exp: Experiment) -> None:
        """What every verb checks before any work (a bad task file fails here)."""

    def prepare(self, e: EvaluationBase, m: Measure, suite: EvalSuite, exp: Experiment, ws: Workspace,
                tok, eos: int) -> dict:
        """The tokenized eval set written to m.data (prepared kinds only)."""
        raise NotImplementedError

    def scores(self, W: dict, spec: ProxySpec, m: Measure, sample_dir: Path,
               token_bytes: np.ndarray) -> list[dict[str, float]]:
        """For each of the N proxies in W: metric -> value."""
        raise NotImplementedError

    def tokens(self, m: Measure, sample_dir: Path) -> int:
        """Tokens one proxy reads to be measured (from file sizes, nothing loaded)."""
        return os.path.getsize(m.data) // 3  # JSON token ids, ~3 bytes each
