"""The eval kinds: one class per kind, one file each; KINDS (kind name -> kind) is the registry that
suites, measuring and re-evaluation dispatch on. To add a kind: its config model in config/evals.py,
its class here; tests/test_evals.py checks the two agree."""

from mixopt.evals.kinds.base import EvalKind
from mixopt.evals.kinds.choice import Choice
from mixopt.evals.kinds.heldout import Heldout
from mixopt.evals.kinds.lm_eval import LmEval
from mixopt.evals.kinds.text import Text

KINDS: dict[str, EvalKind] = {k.name: k() for k in (Heldout, Text, Choice, LmEval)}
