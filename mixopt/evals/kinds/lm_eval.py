"""`kind: lm_eval`: an lm-evaluation-harness task on each proxy (the harness's adapter is evals/lm_eval.py,
imported only when such an evaluation runs: the harness is an optional extra)."""

from __future__ import annotations

from typing import ClassVar

from mixopt.config.evals import LM_EVAL_DIRECTIONS, LmEvalEvaluation
from mixopt.evals.kinds.base import EvalKind


class LmEval(EvalKind):
    name: ClassVar[str] = "lm_eval"
    config = LmEvalEvaluation

    def higher_is_better(self, e, metric) -> bool | None:
        return e.higher_is_better if e.higher_is_better is not None else LM_EVAL_DIRECTIONS[metric]

    def identity(self, e, suite, manifest, exp) -> dict:
        from mixopt.evals.lm_eval import lm_eval_identity

        return {"tokenizer": manifest["tokenizer_sha256"], **lm_eval_identity(e, suite.resolve(e.path) if e.path else None)}

    def check(self, e, suite, exp) -> None:
        from mixopt.evals.lm_eval import check_lm_eval

        check_lm_eval(e, suite.resolve(e.path) if e.path else None)

    def prepare(self, e, m, suite, exp, ws, tok, eos) -> dict:
        from mixopt.evals.lm_eval import lm_eval_task

        return lm_eval_task(e, suite.resolve(e.path) if e.path else None, ws.tokenizer_path)

    def scores(self, W, spec, m, sample_dir, token_bytes):
        from mixopt.evals.lm_eval import lm_eval_scores

        return lm_eval_scores(W, spec, m)
