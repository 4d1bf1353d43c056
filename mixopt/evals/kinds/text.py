"""`kind: text`: loss and bits per byte on local text files (the first `max_tokens` tokens, in file order)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from mixopt.config.evals import TextEvaluation
from mixopt.config.source import Source
from mixopt.core.keys import file_sha256
from mixopt.data.readers import iter_documents, source_files
from mixopt.data.sources import extension_note
from mixopt.errors import MixoptError
from mixopt.evals.kinds.base import EvalKind


class Text(EvalKind):
    name: ClassVar[str] = "text"
    config = TextEvaluation

    def identity(self, e, suite, manifest, exp) -> dict:
        return {"tokenizer": manifest["tokenizer_sha256"], "max_tokens": e.max_tokens,
                "data": [_source_fingerprint(s, suite.resolve(s.path), e.name) for s in e.sources]}

    def prepare(self, e, m, suite, exp, ws, tok, eos) -> dict:
        ids: list[int] = []
        for s in e.sources:
            for doc in iter_documents(s, suite.resolve(s.path), max_document_bytes=exp.sample.max_document_bytes):
                ids += tok.encode(doc).ids + [eos]
                if len(ids) >= e.max_tokens + 1:
                    break
            if len(ids) >= e.max_tokens + 1:
                break
        if len(ids) < 2:
            raise MixoptError(f"evaluation '{m.name}': its text files hold no text", "point `sources` at text")
        return {"tokens": ids[:e.max_tokens + 1]}

    def scores(self, W, spec, m, sample_dir, token_bytes):
        from mixopt.evals.measure import evalset, stream_loss

        return stream_loss(W, spec, evalset(m.data)["tokens"], token_bytes)


def _source_fingerprint(source: Source, path: Path, name: str) -> list:
    files = source_files(source, path)
    if not files:
        note = extension_note(source.model_copy(update={"path": str(path), "hub": None}))
        raise MixoptError(f"evaluation '{name}': text source not found or empty: {path}{note}",
                          "fix the evaluation's `sources` path" + (" or extensions" if note else ""))
    for f in files:  # hashing /dev/zero (or a FIFO) never ends: even `status` would hang
        if not f.is_file():
            raise MixoptError(f"evaluation '{name}': text source {f} is not a regular file (a device, FIFO or "
                              "socket)", "point `sources` at files, or a folder of files")
    opts = source.model_dump(exclude={"path"})
    return [opts, [[f.name if f == path else str(f.relative_to(path)), file_sha256(f)] for f in files]]
