"""Which domains `mixopt sample` draws again, and whether the workspace keeps its tokenizer.

Each domain has its own key: its sources (by content), the budgets and the seed, not its name
nor the other domains. A domain whose key is in the previous sample keeps its slices (under a
new name too: a rename is no change); the others are drawn. The tokenizer is the workspace's as
long as its settings stay: changing them, or `--retokenize`, makes a new one, which every
earlier run was trained without.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mixopt.backends.local_executor import cores
from mixopt.config.paths import is_url, resolve_path, source_paths
from mixopt.config.schema import Experiment, Sample
from mixopt.core.keys import FileHashes, content_hash
from mixopt.core.workspace import Workspace
from mixopt.data.sources import list_shards, source_fingerprint
from mixopt.data.tokenizer import given_tokenizer_id
from mixopt.errors import MixoptError

# In every domain's key: a sampler that draws other documents is a new version. A new workspace gets
# SAMPLER_VERSION; one sampled before keeps the version in its manifest (its slices stay valid, and a
# changed domain is drawn again as before). 1: keyed blake2b priorities; 2: seeded xxh3 (data.scan).
SAMPLER_VERSION = 2
SAMPLER_VERSIONS = (1, 2)


def workspace_sampler(exp: Experiment) -> int:
    """The sampler version of the experiment's workspace: its sample manifest's (1 when it records
    none), SAMPLER_VERSION when it has no sample yet."""
    ws = Workspace(exp.workspace_dir)
    if not ws.manifest_path.is_file():
        return SAMPLER_VERSION
    try:
        version = ws.read_manifest().get("version", 1)
    except MixoptError:
        return SAMPLER_VERSION  # unreadable: `sample` says so, or replaces it
    if version not in SAMPLER_VERSIONS:
        raise MixoptError(f"{ws.manifest_path} was written by sampler version {version}, which this mixopt "
                          f"does not know (it knows {', '.join(map(str, SAMPLER_VERSIONS))})",
                          "upgrade mixopt, or sample into a new workspace")
    return version


def source_keys(exp: Experiment, hashes: FileHashes | None = None, version: int | None = None) -> dict[str, str]:
    """Each domain's key (domain_source_key) by name, for sampler `version` (the workspace's unless given)."""
    hashes = hashes or FileHashes(Workspace(exp.workspace_dir).file_hashes_path)
    version = workspace_sampler(exp) if version is None else version
    hashes.prefetch(_local_files(exp), cores())  # a new corpus: its files hashed on every core
    return {d.name: domain_source_key(exp, d, hashes, version) for d in exp.domains}


def _local_files(exp: Experiment) -> list[str]:
    """The local files the domains read (those source_fingerprint hashes), where they can be listed.
    Sources with a URL or a Hub name are left out: listing them again would cost a round trip."""
    out = []
    for d in exp.domains:
        for s in d.sources:
            if s.hub or any(is_url(resolve_path(p, exp.base_dir)) for p in source_paths(s)):
                continue
            try:
                shards = list_shards(s, exp.base_dir)
            except MixoptError:
                continue  # the fingerprint says "missing"; `sample` says why
            out += [sh.uri for sh in shards if sh.local and sh.fmt not in ("hf", "hub") and sh.index == 0]
    return out


def domain_source_key(exp: Experiment, domain, hashes: FileHashes, version: int) -> str:
    """What decides a domain's slices, given the tokenizer: its sources, the budgets, the seed."""
    sources = [source_fingerprint(s, exp.base_dir, hashes) for s in domain.sources]
    return content_hash({"version": version, "seed": exp.seed, "sources": sources,
                         "train_tokens": exp.train_tokens, "val_tokens": exp.sample.val_tokens,
                         # In the key only when set, so a domain's key stays what it was without them.
                         **({"max_document_bytes": exp.sample.max_document_bytes}
                            if exp.sample.max_document_bytes != Sample().max_document_bytes else {}),
                         **({"scan": exp.sample.scan.model_dump()} if exp.sample.scan else {}),
                         # A pool's domain: which of the pool's documents (value, tier, cluster) are its.
                         **({"select": {k: v for k, v in domain.select.items() if k not in ("pool", "index")}}
                            if domain.select else {})})


def tokenizer_key(exp: Experiment) -> str:
    """The tokenizer settings: a trained one's, or the sha256 of the file the user brings."""
    tok = exp.sample.tokenizer
    return content_hash({"settings": tok.model_dump(exclude={"path"} | ({"name"} if tok.name is None else set())),
                         "file": given_tokenizer_id(tok, exp.base_dir)})


@dataclass
class Resample:
    """What `sample` does: per domain, keep the slices of an earlier one (by its old name) or draw."""

    source_keys: dict[str, str]
    keep_tokenizer: bool
    keep: dict[str, str] = field(default_factory=dict)  # domain -> its name in the previous sample
    draw: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # in the previous sample, matched by no domain

    def summary(self, retokenized: bool) -> dict:
        """retokenized: a tokenizer other than the previous sample's replaced it."""
        return {"sampled": self.draw, "kept": sorted(n for n, o in self.keep.items() if n == o),
                "renamed": {n: o for n, o in self.keep.items() if n != o}, "removed": self.removed,
                "tokenizer": "kept" if self.keep_tokenizer else "new", "retokenized": retokenized}


def plan_resample(exp: Experiment, old: dict | None, ws: Workspace, keys: dict[str, str],
                  force: bool, retokenize: bool) -> Resample:
    """Decide before anything is written; a changed tokenizer setting without --retokenize is an error."""
    names = exp.domain_names
    has_tok = old is not None and ws.tokenizer_path.is_file()
    if has_tok and not retokenize and old.get("tokenizer_key") not in (None, tokenizer_key(exp)):
        raise MixoptError(
            f"sample.tokenizer changed since the workspace's tokenizer was made ({ws.tokenizer_path}); a new "
            "tokenizer makes every run trained so far invalid",
            "rerun with `mixopt sample CONFIG --retokenize` to make a new one (the next sweep retrains every "
            "run), or restore the old sample.tokenizer settings")
    plan = Resample(keys, keep_tokenizer=has_tok and not retokenize)
    if not plan.keep_tokenizer:
        plan.draw = list(names)
        plan.removed = [n for n in (old or {}).get("domains", {}) if n not in names]
        return plan
    by_key: dict[str, str] = {}
    for n, d in old.get("domains", {}).items():
        if d.get("source_key") and (ws.sample_dir / n).is_dir():
            by_key.setdefault(d["source_key"], n)
    # A domain keeps its own name's slices first; a renamed one takes those of the name it had.
    for n in names:
        if not force and old["domains"].get(n, {}).get("source_key") == keys[n] and (ws.sample_dir / n).is_dir():
            plan.keep[n] = n
    taken = set(plan.keep.values())
    for n in names:
        if n in plan.keep or force:
            continue
        o = by_key.get(keys[n])
        if o is not None and o not in taken and o not in names:
            plan.keep[n] = o
            taken.add(o)
    plan.draw = [n for n in names if n not in plan.keep]
    plan.removed = [n for n in old.get("domains", {}) if n not in names and n not in taken]
    return plan


def preview(exp: Experiment, old: dict) -> dict:
    """What `sample` would do now, without reading any document: domains drawn again, kept, renamed."""
    try:
        todo = plan_resample(exp, old, Workspace(exp.workspace_dir), source_keys(exp), False, False)
    except MixoptError as e:
        return {"error": e.one_line()}
    out = todo.summary(False)
    out["tokenizer"] = "kept" if todo.keep_tokenizer else "new"
    return out
