"""The eval suite: what each checkpoint is measured on, and the hash that keys its results.

Today's suite is held-out loss and bits per byte on every domain's validation slice. Eval rows
are keyed by (run key, suite key), so a changed suite is visible as missing rows, not stale ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .keys import content_hash
from .proxy import ProxySpec
from .workspace import slice_file, token_bytes_file

EVAL_VERSION = 1
EVAL_BATCH = 32  # windows per forward pass


@dataclass(frozen=True)
class Evaluation:
    name: str  # e.g. "heldout/code"
    kind: str  # "heldout"
    domain: str
    weight: float  # in the objective
    fingerprint: str  # sha256 of the data it reads


@dataclass(frozen=True)
class Suite:
    evaluations: tuple[Evaluation, ...]
    metric: str  # "bpb" or "loss": what the objective averages (lower is better)

    @property
    def key(self) -> str:
        """What is measured, not how it is weighted: loss and BPB are both always computed, and
        objective weights change no eval row, so neither invalidates stored results."""
        return content_hash({"version": EVAL_VERSION,
                             "evaluations": [[e.name, e.kind, e.domain, e.fingerprint] for e in self.evaluations]})

    def objective_terms(self) -> dict[str, float]:
        """metric name -> weight (weights sum to 1)."""
        total = sum(e.weight for e in self.evaluations)
        return {f"{e.name}/{self.metric}": e.weight / total for e in self.evaluations if e.weight > 0}

    def describe_objective(self) -> str:
        terms = self.objective_terms()
        if len(terms) == 1:
            return next(iter(terms))
        if len(set(terms.values())) == 1:
            return f"mean of {len(terms)} x heldout/<domain>/{self.metric}"
        return " + ".join(f"{w:.3g}*{m}" for m, w in terms.items())

    def to_dict(self) -> dict:
        return {"key": self.key, "metric": self.metric, "evaluations": [e.__dict__ for e in self.evaluations]}

    @classmethod
    def from_dict(cls, d: dict) -> Suite:
        return cls(tuple(Evaluation(**e) for e in d["evaluations"]), d["metric"])


def default_suite(exp, manifest: dict) -> Suite:
    """Held-out loss and BPB on every domain; the objective's domain weights come from the config."""
    weights = exp.fit.objective.domains or {n: 1.0 for n in exp.domain_names}
    evals = tuple(
        Evaluation(name=f"heldout/{n}", kind="heldout", domain=n, weight=float(weights.get(n, 0.0)),
                   fingerprint=manifest["domains"][n]["val_sha256"])
        for n in exp.domain_names
    )
    return Suite(evals, exp.fit.objective.metric)


def evaluate_suite(model, spec: ProxySpec, suite: Suite, sample_dir: Path) -> dict[str, float]:
    token_bytes = np.load(token_bytes_file(sample_dir))
    out = {}
    for e in suite.evaluations:
        stream = np.load(slice_file(sample_dir, e.domain, "val"), mmap_mode="r")
        loss, bpb = heldout_loss(model, stream, spec.seq_len, token_bytes)
        out[f"{e.name}/loss"] = loss
        out[f"{e.name}/bpb"] = bpb
    return out


def heldout_loss(model, stream: np.ndarray, seq_len: int, token_bytes: np.ndarray) -> tuple[float, float]:
    """Mean loss (nats/token) over every token of the stream but the first, and bits per byte."""
    import torch
    import torch.nn.functional as F

    model.eval()
    n = len(stream)
    starts = list(range(0, n - 1, seq_len))
    nats, tokens, nbytes = 0.0, 0, 0
    with torch.no_grad():
        for i in range(0, len(starts), EVAL_BATCH):
            chunk = starts[i:i + EVAL_BATCH]
            x = np.zeros((len(chunk), seq_len + 1), dtype=np.int64)
            mask = np.zeros((len(chunk), seq_len), dtype=bool)
            for r, s in enumerate(chunk):
                w = np.asarray(stream[s:s + seq_len + 1], dtype=np.int64)
                x[r, :len(w)] = w
                mask[r, :len(w) - 1] = True
            xt = torch.from_numpy(x)
            logits = model(input_ids=xt[:, :-1]).logits.float()
            ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), xt[:, 1:].reshape(-1), reduction="none")
            m = torch.from_numpy(mask.reshape(-1))
            nats += float(ce[m].sum())
            tokens += int(m.sum())
            nbytes += int(token_bytes[x[:, 1:][mask]].sum())
    model.train()
    return nats / tokens, nats / (math.log(2) * max(nbytes, 1))
