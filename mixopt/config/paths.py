"""Paths a config names: relative ones against the config's folder, URLs told apart from local paths,
and the local file or folder a source reads (a glob's folder before its first wildcard). The config
checks (a source inside the workspace) and the data readers use these, so the rule has one owner."""

from __future__ import annotations

from pathlib import Path

from mixopt.config.source import Source


def is_url(p: str) -> bool:
    return "://" in p and not p.startswith("file://")


def has_magic(p: str) -> bool:
    return any(c in p for c in "*?[")


def source_paths(source: Source) -> list[str]:
    return [] if source.path is None else [source.path] if isinstance(source.path, str) else list(source.path)


def resolve_path(p: str, base_dir: str | Path) -> str:
    """A config path as a local absolute path (relative ones against the config's folder), or the URL."""
    if p.startswith("file://"):
        p = p[len("file://"):]
    if is_url(p):
        return p
    q = Path(p).expanduser()
    return str(q if q.is_absolute() else (Path(base_dir) / q).absolute())


def local_root(p: str, base_dir: str | Path) -> Path | None:
    """The local file or folder a source path reads from (a glob: its folder before the first wildcard);
    None for a URL."""
    where = resolve_path(p, base_dir)
    if is_url(where):
        return None
    if has_magic(where):
        fixed = []
        for part in Path(where).parts:
            if has_magic(part):
                break
            fixed.append(part)
        return Path(*fixed)
    return Path(where)


def local_roots(source: Source, base_dir: str | Path) -> list[Path]:
    """The local folders or files a source reads: its paths' roots, or its `hub:` taken as a local
    path (a Hub name that is no folder here lies nowhere a check would find); none for URLs."""
    paths = [source.hub] if source.hub else source_paths(source)
    return [r for r in (local_root(p, base_dir) for p in paths) if r is not None]
