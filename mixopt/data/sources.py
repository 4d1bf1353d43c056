"""Where a source's documents are: expand a `path` (file, folder, glob, list, fsspec URL such as
s3://, gs://, hf://, https://, memory://, file://) or a `hub` dataset into shards, in a stable order,
and identify a source by content (sha256 of local files, the store's checksum, the Hub's commit).

Only regular files are read; a shard that cannot be read is a ShardError (readers.py) that names it.
"""

from __future__ import annotations

import glob as globlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from mixopt.config.paths import has_magic, is_url, local_root, resolve_path, source_paths
from mixopt.config.schema import Experiment
from mixopt.config.source import Source
from mixopt.core.credentials import redact
from mixopt.errors import MixoptError

TEXT_EXTENSIONS = (".txt", ".md", ".rst", ".py", ".c", ".h", ".cc", ".cpp", ".hpp", ".java", ".js",
                   ".ts", ".go", ".rs", ".rb", ".sh", ".pl", ".pm", ".pod", ".tex", ".html", ".json",
                   ".yaml", ".yml", ".toml", ".sql", ".scala", ".kt", ".swift", ".lua", ".r", ".jl")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".json.zst",
                  ".ndjson.gz", ".ndjson.zst")
ARROW_SUFFIXES = (".arrow", ".feather", ".ipc")
# In a folder read with format auto, these mark data shards (a plain .json stays a text document).
DATA_SUFFIXES = (".parquet", *ARROW_SUFFIXES, ".jsonl", ".ndjson", ".jsonl.gz", ".jsonl.zst", ".ndjson.gz",
                 ".ndjson.zst")
SKIP_FIX = "replace or remove the file, or set `on_error: skip` on the source to skip bad shards"


class ShardError(Exception):
    """One shard could not be read; `str()` names it and says why."""


@dataclass(frozen=True)
class Shard:
    """One unit of reading: a file (local path or URL) or one shard of a Hub dataset."""

    uri: str  # local absolute path, URL, or hub name
    fmt: str  # parquet | jsonl | arrow | text | hf | hub
    local: bool = True
    index: int = 0  # hub: this shard's index among `count`
    count: int = 1
    size: int | None = field(default=None, compare=False)  # bytes on disk / in the store, when known
    opts: dict = field(default_factory=dict, compare=False, hash=False)  # storage_options


def detect_format(path: Path | str) -> str:
    name = str(path).lower().rstrip("/")
    if isinstance(path, Path) and path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists() \
                or (path / "state.json").exists():
            return "hf"
        return "text"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(ARROW_SUFFIXES):
        return "arrow"
    return "text"


def describe(source: Source) -> str:
    return redact(source.hub if source.hub else ", ".join(source_paths(source)))


def local_inputs(exp: Experiment) -> list[tuple[Path, str]]:
    """(path, what it is) of every local file or folder the config reads: the config, its suite file,
    the domains' and evaluations' sources, a given tokenizer. Outputs never land on or in them."""
    out = [(Path(exp.config_path), "the config")] if exp.config_path else []
    for d in exp.domains:
        for s in d.sources:
            roots = [local_root(p, exp.base_dir) for p in source_paths(s)]
            if s.hub and Path(_hub_target(s, exp.base_dir)).is_dir():
                roots.append(Path(_hub_target(s, exp.base_dir)))
            out += [(r, f"a source of domain '{d.name}' ({r})") for r in roots if r is not None]
    if exp.sample.tokenizer.path:
        out.append((exp.resolve(exp.sample.tokenizer.path), "the config's tokenizer"))
    if exp.evals is not None:
        suite = exp.evals
        if suite.path:
            out.append((Path(suite.path), "the eval suite file"))
        for e in suite.evaluations:
            if e.path and e.kind in ("choice", "lm_eval"):
                out.append((suite.resolve(e.path), f"the data of evaluation '{e.name}' ({suite.resolve(e.path)})"))
            for s in e.sources or []:
                roots = [local_root(p, suite.base_dir) for p in source_paths(s)]
                out += [(r, f"a source of evaluation '{e.name}' ({r})") for r in roots if r is not None]
    return out


def check_workspace_place(exp: Experiment) -> None:
    """Refuse a workspace inside a folder a source reads (a domain's or a text evaluation's): its own
    files (file-hashes.json, slices) would be read as documents and the sample would never settle."""
    from fnmatch import fnmatch

    ws = Path(os.path.realpath(exp.workspace_dir))
    places = [(s, exp.base_dir, f"domain '{d.name}'") for d in exp.domains for s in d.sources]
    places += [(s, exp.base_dir, f"pool {i + 1}") for i, p in enumerate(exp.pools) for s in p.sources]
    if exp.evals is not None:
        places += [(s, exp.evals.base_dir, f"evaluation '{e.name}'") for e in exp.evals.evaluations
                   for s in e.sources or []]
    for source, base, whose in places:
        for p in source_paths(source):
            root = local_root(p, base)
            if root is None or not root.is_dir():
                continue
            root = Path(os.path.realpath(root))
            if not (ws == root or ws.is_relative_to(root)):
                continue
            where = resolve_path(p, base)
            if has_magic(where) and "**" not in where and not any(
                    fnmatch(str(a), where) for a in (ws, *ws.parents) if a.is_relative_to(root)):
                continue  # a glob that cannot reach into the workspace
            raise MixoptError(f"the workspace {exp.workspace_dir} is inside the source folder {root} of {whose}, so "
                              "its own files would be read as documents",
                              "put the workspace outside the source folder (`workspace:` in the config)")


def list_shards(source: Source, base_dir: str | Path = ".") -> list[Shard]:
    """The shards a source reads, in a stable order; every path must match something."""
    if source.hub:
        return _hub_shards(source, base_dir)
    shards: list[Shard] = []
    for p in source_paths(source):
        where = resolve_path(p, base_dir)
        found = _remote_shards(source, where) if is_url(where) else _local_shards(source, where)
        if found is None or not found and has_magic(where):
            if has_magic(where):
                raise MixoptError(f"no file matches {redact(where)}", "fix the glob in the domain's source path")
            raise MixoptError(f"corpus not found: {redact(where)}", "check the domain's source path in the config")
        shards += found
    seen, out = set(), []
    for s in shards:  # a file named twice (overlapping globs) is read once
        if s.uri not in seen:
            seen.add(s.uri)
            out.append(s)
    return out


def extension_note(source: Source, base_dir: str | Path = ".") -> str:
    """Why a local folder gave no shards, when its `extensions` filter skipped text files there:
    '; the `extensions` filter ... skipped N files (e.g. NAME)' (or '')."""
    if source.hub or source.format not in ("auto", "text"):
        return ""
    skipped = []
    for p in source_paths(source):
        where = resolve_path(p, base_dir)
        if is_url(where) or has_magic(where) or not os.path.isdir(where):
            continue
        files = walk_files(where)
        if _folder_format(source, files) == "text":
            skipped += [f for f in files if not _wanted(source, f, "text")]
    if not skipped:
        return ""
    which = "the default `extensions` filter (.txt, .md, .py and other text suffixes)" if source.extensions is None \
        else f"its `extensions` filter ({', '.join(source.extensions)})"
    return (f"; {which} skipped {len(skipped)} files there (e.g. {os.path.basename(skipped[0])}): to read them, "
            "give the source `extensions: ['']` (every file) or their suffixes")


def _folder_format(source: Source, files: list[str]) -> str:
    if source.format != "auto":
        return source.format
    return "data" if any(f.lower().endswith(DATA_SUFFIXES) for f in files) else "text"


def _local_shards(source: Source, where: str) -> list[Shard] | None:
    if has_magic(where):
        out = []
        for m in sorted(globlib.glob(where, recursive=True)):
            if os.path.isdir(m):
                files = walk_files(m)
                kind = _folder_format(source, files)
                out += [_local_shard(source, f) for f in files if _wanted(source, f, kind)]
            else:
                out.append(_local_shard(source, m))
        return out
    if not os.path.lexists(where):
        return None
    if os.path.isdir(where):
        if detect_format(Path(where)) == "hf" and source.format in ("auto", "hf"):
            return [Shard(where, "hf")]
        files = walk_files(where)
        kind = _folder_format(source, files)
        return [_local_shard(source, f) for f in files if _wanted(source, f, kind)]
    return [_local_shard(source, where)]


def walk_files(root: str) -> list[str]:
    out = []
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if not x.startswith("."))
        out += [os.path.join(d, f) for f in files if not f.startswith(".")]
    return sorted(out)


def _wanted(source: Source, f: str, kind: str) -> bool:
    """Whether a file found in a folder is one of the source's shards."""
    name = f.lower()
    if kind == "data" and source.format == "auto":
        return name.endswith(DATA_SUFFIXES)
    if source.format == "parquet":
        return name.endswith(".parquet")
    if source.format == "jsonl":
        return name.endswith(JSONL_SUFFIXES)
    if source.format == "arrow":
        return name.endswith(ARROW_SUFFIXES)
    exts = tuple(e.lower() for e in (source.extensions or TEXT_EXTENSIONS))
    return name.endswith(exts)


def _local_shard(source: Source, f: str) -> Shard:
    fmt = source.format if source.format not in ("auto", "hf") else detect_format(f)
    try:
        size = os.stat(f).st_size
    except OSError:
        size = None
    return Shard(f, fmt, size=size)


def fs_for(url: str, opts: dict):
    import fsspec

    try:
        return fsspec.core.url_to_fs(url, **opts)
    except (ImportError, ValueError) as e:
        raise MixoptError(redact(f"{url}: {str(e).splitlines()[0]}"),
                          "install the filesystem's package (e.g. s3fs, gcsfs) or fix the URL") from None


# Credential failures by exception type (botocore's, google-auth's, huggingface_hub's), not by message.
_CREDENTIAL_ERRORS = {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError",
                      "DefaultCredentialsError", "RefreshError", "GatedRepoError"}


def _remote_error(url: str, e: BaseException) -> MixoptError:
    url = redact(url)
    text = redact(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": "))
    names = {c.__name__ for c in type(e).__mro__}
    if isinstance(e, PermissionError) or names & _CREDENTIAL_ERRORS:
        return MixoptError(f"{url}: access denied ({text})",
                           "give credentials in the environment (e.g. AWS_ACCESS_KEY_ID) or the source's "
                           "storage_options")
    return MixoptError(f"{url}: cannot be reached ({text})",
                       "check the URL, the network and the source's storage_options")


def _remote_shards(source: Source, url: str) -> list[Shard] | None:
    fs, root = fs_for(url, dict(source.storage_options))
    proto = url.split("://", 1)[0]
    try:
        fs.invalidate_cache()  # fsspec keeps listings per filesystem instance: list the store as it is now
        if has_magic(root):
            infos = fs.glob(root, detail=True)
        elif fs.isdir(root):
            infos = fs.find(root, detail=True)
        elif fs.exists(root):
            infos = {root: fs.info(root)}
        else:
            return None
    except FileNotFoundError:
        return None
    except Exception as e:  # network, credentials: the library's own error types vary by backend
        raise _remote_error(url, e) from None
    out = []
    kind = _folder_format(source, list(infos))
    for name, info in sorted(infos.items()):
        if info.get("type") == "directory":
            continue
        if not (has_magic(root) or name == root) and not _wanted(source, name, kind):
            continue
        if info.get("type") not in ("file", None):
            if source.on_error == "skip":
                continue
            raise MixoptError(f"{redact(name)}: not a regular file", SKIP_FIX)
        uri = name if "://" in name else f"{proto}://{name}"
        fmt = source.format if source.format not in ("auto", "hf") else detect_format(name)
        out.append(Shard(uri, fmt, local=False, size=info.get("size"), opts=dict(source.storage_options)))
    return out


def _hub_target(source: Source, base_dir) -> str:
    local = Path(source.hub).expanduser()
    local = local if local.is_absolute() else Path(base_dir) / local
    return str(local.absolute()) if local.is_dir() else source.hub


def load_hub(source: Source, target: str):
    import datasets
    import huggingface_hub

    datasets.logging.set_verbosity_error()  # e.g. "Repo card metadata block was not found", once per shard
    huggingface_hub.utils.logging.set_verbosity_error()
    try:
        ds = datasets.load_dataset(target, source.config, split=source.split or "train", streaming=True,
                                   **({"storage_options": dict(source.storage_options)}
                                      if source.storage_options else {}))
    except Exception as e:  # not found, offline, no such config or split
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MixoptError(f"hub dataset {source.hub}: {msg}",
                          "check `hub`, `config` and `split`, the network, and HF_TOKEN for private datasets") from None
    return ds


def _hub_shards(source: Source, base_dir) -> list[Shard]:
    target = _hub_target(source, base_dir)
    ds = load_hub(source, target)
    n = max(1, int(getattr(ds, "num_shards", None) or getattr(ds, "n_shards", 1)))
    return [Shard(target, "hub", local=False, index=i, count=n) for i in range(n)]


# ---- fingerprints: a source's identity by content ------------------------------------------------

def source_fingerprint(source: Source, base_dir, hashes) -> list:
    """How a source is read and the sorted identities of what it reads (sha256 for local files, the
    store's ETag/checksum and size for remote ones, the Hub's commit for Hub datasets). Not the path:
    a moved or re-spelled corpus is the same corpus, and the sample does not depend on file names."""
    how: dict = {"format": source.format, "text_field": source.text_field, "split": source.split}
    try:
        shards = list_shards(source, base_dir)
    except MixoptError:
        shards = None
    if shards and source.format == "auto" and len({s.fmt for s in shards}) == 1 and not source.hub:
        how["format"] = shards[0].fmt
    if how["format"] == "text":
        how["extensions"] = sorted(e.lower() for e in source.extensions or TEXT_EXTENSIONS)
    if source.hub:
        how |= {"hub": True, "config": source.config}
    if source.on_error != "fail":
        how["on_error"] = source.on_error
    if shards is None:
        return [how, "missing"]
    ids = []
    for s in shards:
        if s.fmt == "hf":
            ids += [_local_identity(f, hashes, source) for f in walk_files(s.uri)]  # unreadable: one line
        elif s.fmt == "hub":
            if s.index == 0:
                ids.append(_hub_identity(source, s.uri, hashes))
        elif s.local:
            ids.append(_local_identity(s.uri, hashes, source))
        else:
            ids.append(_remote_identity(s))
    return [how, sorted(ids)]


def _local_identity(f: str, hashes, source: Source) -> str:
    try:
        st = os.stat(f)
        if not stat.S_ISREG(st.st_mode):
            return f"not-a-file:{f}"
        return hashes.sha256(Path(f))
    except OSError as e:
        if source.on_error == "skip":
            return f"unreadable:{f}"
        raise MixoptError(f"{f}: cannot be read ({e.strerror})", SKIP_FIX) from None


def _remote_identity(s: Shard) -> str:
    fs, path = fs_for(s.uri, s.opts)
    try:
        info = fs.info(path)
    except Exception as e:
        raise _remote_error(s.uri, e) from None
    for k in ("ETag", "etag", "checksum", "sha256", "md5", "crc32c", "md5Hash"):
        if info.get(k):
            return f"{k}:{str(info[k]).strip(chr(34))}:{info.get('size')}"
    import hashlib

    h = hashlib.sha256()  # no checksum from the store (memory://, some HTTP servers): hash the bytes
    with fs.open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _hub_identity(source: Source, target: str, hashes) -> str:
    if os.path.isdir(target):
        from mixopt.core.keys import content_hash

        return content_hash(sorted(hashes.sha256(Path(f)) for f in walk_files(target)))
    try:
        from huggingface_hub import HfApi

        return "hub:" + HfApi().dataset_info(source.hub).sha
    except Exception:  # offline: the name stands for the dataset
        return f"hub-name:{source.hub}"
