"""`kind: choice`: a multiple-choice task, each choice scored by its likelihood after the question."""

from __future__ import annotations

from typing import ClassVar

from mixopt.config.evals import ChoiceEvaluation
from mixopt.core.keys import content_hash
from mixopt.evals.choice import read_choice_task
from mixopt.evals.kinds.base import EvalKind


class Choice(EvalKind):
    name: ClassVar[str] = "choice"
    config = ChoiceEvaluation

    def default_metric(self, exp) -> str:
        return "prob"  # smooth: it still ranks mixtures when tiny proxies are near chance on accuracy

    def identity(self, e, suite, manifest, exp) -> dict:
        # What is scored, whatever file or schema it came from: every item's text (few-shot
        # exemplars included). Reading it here also validates it: one clear error, nothing computed.
        return {"tokenizer": manifest["tokenizer_sha256"],
                "items": content_hash(read_choice_task(e, suite.resolve, exp.seed))}

    def check(self, e, suite, exp) -> None:
        read_choice_task(e, suite.resolve, exp.seed)

    def prepare(self, e, m, suite, exp, ws, tok, eos) -> dict:
        def ids_of(ctx):  # one context, or one per choice (Winogrande)
            return [tok.encode(c).ids for c in ctx] if isinstance(ctx, list) else tok.encode(ctx).ids

        return {"items": [{
            "context": ids_of(it["context"]),
            "choices": [tok.encode(c).ids for c in it["choices"]],
            "bytes": [max(1, len(c.encode())) for c in it["choices"]],
            "answer": it["answer"]} for it in read_choice_task(e, suite.resolve, exp.seed)]}

    def scores(self, W, spec, m, sample_dir, token_bytes):
        from mixopt.evals.measure import choice_scores, evalset

        return choice_scores(W, spec, evalset(m.data)["items"])
