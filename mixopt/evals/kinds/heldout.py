"""`kind: heldout`: loss and bits per byte on one domain's held-out validation slice of the sample."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from mixopt.config.evals import HeldoutEvaluation
from mixopt.core.workspace import slice_file
from mixopt.evals.kinds.base import EvalKind


class Heldout(EvalKind):
    name: ClassVar[str] = "heldout"
    config = HeldoutEvaluation
    prepared: ClassVar[bool] = False  # the sample's validation slice is already token ids

    def identity(self, e, suite, manifest, exp) -> dict:
        return {"data": manifest["domains"][e.domain]["val_sha256"]}  # no tokenizer: the slice is its tokens

    def scores(self, W, spec, m, sample_dir, token_bytes):
        from mixopt.evals.measure import stream_loss

        return stream_loss(W, spec, np.load(slice_file(sample_dir, m.domain, "val"), mmap_mode="r"), token_bytes)

    def tokens(self, m, sample_dir) -> int:
        return len(np.load(slice_file(sample_dir, m.domain, "val"), mmap_mode="r"))
