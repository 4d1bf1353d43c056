"""The eval suite at run time: every evaluation resolved to the data it reads, and two keys.

- An evaluation's key says what is computed: its kind, a fingerprint of its data (file contents,
  not paths), its limits and prompt format. Measurements are stored per (run key, evaluation key),
  so adding one task to a suite computes that task only, and renaming or reweighting computes nothing.
- The suite's key says what the suite means: every evaluation's key, name, metric, weight and
  family, and how they are averaged. Key order, comments and file bytes don't change it; a new
  weight does. Each run's objective is stored per (run key, suite key).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from mixopt.config.evals import EvalSuite, HeldoutEvaluation
from mixopt.config.schema import Experiment
from mixopt.core.keys import content_hash
from mixopt.core.mixtures import NAMES_SHOWN, name_list
from mixopt.core.workspace import Workspace, atomic_write_json
from mixopt.evals.kinds import KINDS
from mixopt.evals.kinds.base import Measure
from mixopt.evals.objective import objective_of

EVAL_VERSION = 2  # bump when a change alters what an evaluation computes


@dataclass(frozen=True)
class Suite:
    measures: tuple[Measure, ...]
    average: str  # tasks | families

    @property
    def key(self) -> str:
        return content_hash({"version": EVAL_VERSION, "average": self.average, "measures": [
            [m.name, m.key, m.metric, m.weight, m.family] for m in self.measures]})

    def effective_weights(self) -> dict[str, float]:
        """name -> weight in the objective, summing to 1 (families: each family counts once)."""
        if self.average == "tasks":
            total = sum(m.weight for m in self.measures)
            return {m.name: m.weight / total for m in self.measures}
        fam: dict[str, float] = {}
        for m in self.measures:
            fam[m.family] = fam.get(m.family, 0.0) + m.weight
        live = [f for f, w in fam.items() if w > 0]
        return {m.name: (m.weight / fam[m.family] / len(live) if fam[m.family] > 0 else 0.0)
                for m in self.measures}

    def objective_measures(self) -> tuple[Measure, ...]:
        """The measures with weight in the objective: a run measured on these is complete for it."""
        w = self.effective_weights()
        return tuple(m for m in self.measures if w[m.name] > 0)

    def objective_terms(self) -> dict[str, float]:
        """metric name -> signed weight: the objective is their sum, and lower is better."""
        w = self.effective_weights()
        return {f"{m.name}/{m.metric}": m.direction * w[m.name] for m in self.measures if w[m.name] > 0}

    def objective(self, metrics: dict[str, float]) -> float:
        """A run's objective from its metrics ('<evaluation name>/<metric>' -> value)."""
        return objective_of(self.objective_terms(), metrics)

    def describe_objective(self) -> str:
        terms = self.objective_terms()
        if len(terms) == 1:
            (name, a), = terms.items()
            return name if a > 0 else f"-{name}"
        if len({abs(a) for a in terms.values()}) == 1 and all(a > 0 for a in terms.values()):
            return f"mean of {len(terms)}: " + _terms_text(list(terms))
        if len(terms) > NAMES_SHOWN:  # each term's weight would make a line of thousands of characters
            return f"weighted sum of {len(terms)} (see `mixopt status --format json`): " + _terms_text(list(terms))
        text = " ".join(f"{'-' if a < 0 else '+'} {abs(a):.3g}*{n}" for n, a in terms.items())
        return text.removeprefix("+ ")

    def to_dict(self) -> dict:
        return {"key": self.key, "average": self.average, "objective": self.describe_objective(),
                "measures": [asdict(m) for m in self.measures]}


def _terms_text(names: list[str]) -> str:
    """Metric names for one line: all of them when few; else their common pattern and which ones
    (heldout/*/bpb for d00, d01, ..., d63 (64 in all))."""
    if len(names) <= NAMES_SHOWN:
        return ", ".join(names)
    parts = [n.split("/") for n in names]
    head = tail = 0
    while all(len(p) > head + tail + 1 for p in parts) and len({p[head] for p in parts}) == 1:
        head += 1
    while all(len(p) > head + tail + 1 for p in parts) and len({p[-1 - tail] for p in parts}) == 1:
        tail += 1
    if head + tail == 0:
        return name_list(names)
    middles = ["/".join(p[head:len(p) - tail]) for p in parts]
    pattern = "/".join(parts[0][:head] + ["*"] + (parts[0][len(parts[0]) - tail:] if tail else []))
    return f"{pattern} for {name_list(middles)}"


def suite_config(exp: Experiment) -> EvalSuite:
    """The experiment's suite; without `evals:`, held-out loss/BPB on every domain."""
    if exp.evals is not None:
        return exp.evals
    weights = exp.fit.objective.domains or {n: 1.0 for n in exp.domain_names}
    return EvalSuite(evaluations=[
        HeldoutEvaluation(name=f"heldout/{n}", kind="heldout", domain=n, weight=float(weights.get(n, 0.0)))
        for n in exp.domain_names], base_dir=exp.base_dir)


def resolve_suite(exp: Experiment, manifest: dict, ws: Workspace) -> Suite:
    """Fingerprint every evaluation's data and check it; bad task files fail here, before any compute."""
    cfg = suite_config(exp)
    measures = []
    for e in cfg.evaluations:
        kind = KINDS[e.kind]
        metric = e.metric or kind.default_metric(exp)
        key = content_hash({"v": EVAL_VERSION, "kind": e.kind, **kind.identity(e, cfg, manifest, exp)})
        data = str(ws.root / "evalsets" / f"{e.kind}-{key[:24]}.json") if kind.prepared else None
        domain = e.domains()[0] if e.domains() else None
        measures.append(Measure(e.name, e.kind, key, metric, e.weight, e.family or e.name, domain, data,
                                kind.higher_is_better(e, metric)))
    return Suite(tuple(measures), cfg.average)


def prepare_suite(exp: Experiment, suite: Suite, ws: Workspace) -> None:
    """Tokenize each prepared kind's data once per (evaluation, tokenizer); heldout needs nothing."""
    from mixopt.data.tokenizer import eos_id, load_tokenizer

    cfg = suite_config(exp)
    evaluations = {e.name: e for e in cfg.evaluations}
    todo = [m for m in suite.measures if m.data and not Path(m.data).is_file()]
    if not todo:
        return
    tok = load_tokenizer(ws.tokenizer_path)
    eos = eos_id(tok)
    for m in todo:
        body = KINDS[m.kind].prepare(evaluations[m.name], m, cfg, exp, ws, tok, eos)
        atomic_write_json(Path(m.data), body)


def check_suite_files(exp: Experiment) -> None:
    """Read every task of the suite once (choice files, lm_eval folders): a bad row fails every verb, before any work."""
    if exp.evals is None:
        return
    for e in exp.evals.evaluations:
        KINDS[e.kind].check(e, exp.evals, exp)
