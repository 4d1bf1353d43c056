"""The strict base every config model shares, the rule for names, and a source of documents (a
domain's, a pool's, a text evaluation's). Imports nothing from mixopt: schema.py and evals.py build on it."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator


NAME_MAX = 100  # characters: a name is a file or folder name (at most 255 bytes) inside longer temp names


def word(v: str) -> str:
    """Names become folder names and metric names: keep them to one safe word."""
    if len(v) > NAME_MAX:
        raise ValueError(f"a name of {len(v)} characters is too long for a file name; use at most {NAME_MAX}")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", v):
        raise ValueError("use ASCII letters (a-z, A-Z), digits, '_', '.', '-' only")
    if set(v) == {"."}:  # '.' and '..' name the folder itself or its parent, not a new one
        raise ValueError(f"'{v}' is not a name; use letters or digits")
    return v


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # .inf / .nan never pass


class Source(Strict):
    """One place a domain's documents come from: `path` (files, folders, globs, fsspec URLs) or `hub`."""

    # A file, a folder, a glob (shards/*.parquet, **/*.jsonl.zst) or an fsspec URL (s3://, gs://,
    # hf://datasets/..., https://, memory://, file://); or a list of them.
    path: str | list[str] | None = None
    hub: str | None = None  # a Hugging Face Hub dataset (org/name, or a local folder laid out like one)
    config: str | None = None  # hub: the dataset's configuration (subset)
    format: Literal["auto", "parquet", "jsonl", "text", "hf", "arrow"] = "auto"
    text_field: str = "text"  # column / JSON key holding the document text
    extensions: list[str] | None = None  # for directories: which files are documents
    split: str | None = None  # for a saved HF DatasetDict; hub: the split (default train)
    storage_options: dict[str, Any] = {}  # passed to fsspec (endpoint_url, anon, ...); credentials from the env
    on_error: Literal["fail", "skip"] = "fail"  # skip: unreadable shards are skipped and counted

    @model_validator(mode="after")
    def _one_place(self):
        if (self.path is None) == (self.hub is None):
            raise ValueError("give exactly one of `path` and `hub`")
        if isinstance(self.path, list) and not self.path:
            raise ValueError("`path` is an empty list")
        if self.config is not None and self.hub is None:
            raise ValueError("`config` applies to a `hub` source")
        return self


def as_sources(v):
    """The short forms a `sources:` key accepts (a bare path, one mapping) as a list of Source inputs."""
    if isinstance(v, (str, dict)):
        v = [v]
    return [{"path": s} if isinstance(s, str) else s for s in v]
