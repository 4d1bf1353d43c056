"""Domains from a pool of sources (`pools:` in the config): one per value of a field (`group_by`), per
tier of a score (`tiers`), or per cluster (`cluster`, data.clusters). `expand_pools` turns each pool
into ordinary domains whose `select` says which of the pool's documents are theirs (and is part of
their sample key); `draw_pool` reads the pool's shards once for all of its domains, routing each
document to its domain's bottom-k pool. What needs a pass over the data first (the values a field
takes, quantile edges) is recorded in the sample manifest under "pools", by the pool's content key,
and read from there while the pool's files are unchanged.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from mixopt.backends.base import Executor
from mixopt.backends.local_executor import LocalExecutor
from mixopt.config.schema import Domain, Experiment, Pool
from mixopt.config.source import NAME_MAX
from mixopt.core.keys import FileHashes, content_hash
from mixopt.core.workspace import Workspace
from mixopt.data.fields import iter_fields
from mixopt.data.resample import SAMPLER_VERSION
from mixopt.data.scan import (
    TASKS_PER_WORKER,
    Candidates,
    Pool as DocPool,
    finish_candidates,
    read_groups,
    seed_key,
    split_units,
)
from mixopt.data.sources import SKIP_FIX, ShardError, list_shards, source_fingerprint
from mixopt.errors import MixoptError

DROP = -1  # a document no domain of the pool takes (group_by's unlisted values with rest: drop)
UNKNOWN = -2  # group_by of every value: a value the first pass did not see
_FOUND: dict[str, dict] = {}  # first passes done in this process, by pool key (content: never stale)


def domain_name(prefix: str | None, part: str) -> str:
    """A field value (or tier, cluster) as a domain name: runs of characters other than letters, digits,
    '_', '.', '-' become '_'."""
    word = re.sub(r"[^A-Za-z0-9_.-]+", "_", part).strip("_")
    if not word or set(word) == {"."}:  # nothing of the value is a name ('日本', '..'): v + its hash
        word = "v" + hashlib.sha256(part.encode()).hexdigest()[:8]
    name = f"{prefix}-{word}" if prefix else word
    return name[:NAME_MAX]


def pool_prefix(pool: Pool) -> str | None:
    if pool.name is not None or pool.group_by is not None:
        return pool.name
    if pool.tiers is not None:
        return domain_name(None, pool.tiers.field)
    return "cluster"


def pool_key(exp: Experiment, pool: Pool, hashes: FileHashes) -> str:
    """The pool's files by content and the settings of its first pass: what its values or edges depend on."""
    return content_hash({"sources": [source_fingerprint(s, exp.base_dir, hashes) for s in pool.sources],
                         "group_by": pool.group_by, "tiers": pool.tiers.model_dump() if pool.tiers else None,
                         "max_document_bytes": exp.sample.max_document_bytes})


@dataclass(frozen=True)
class Router:
    """Which of a pool's domains each document goes to (an index into `names`, or DROP)."""

    kind: str  # group_by | tiers | cluster
    field: str | None
    names: tuple[str, ...]
    values: dict = field(default_factory=dict, hash=False)  # group_by: value -> index
    rest: int = DROP  # group_by: the index of unlisted values (`other`), or DROP
    edges: tuple[float, ...] = ()  # tiers: the inner cut points
    model: object = field(default=None, hash=False, compare=False)  # cluster: data.clusters.ClusterModel
    cache: str | None = None  # cluster: the folder of per-shard assignments
    identities: dict = field(default_factory=dict, hash=False)  # cluster: shard uri -> content identity

    @property
    def as_(self) -> str:
        return "float" if self.kind == "tiers" else "string"

    def route(self, text, values, where: str) -> np.ndarray:
        if self.kind == "tiers":
            v = values.to_numpy(zero_copy_only=False)
            if np.isnan(v).any():
                raise MixoptError(f"{where}: field '{self.field}' is NaN", "give every document a numeric score")
            return np.searchsorted(np.asarray(self.edges), v, side="right")
        if self.kind == "cluster":
            return self.model.assign(text.to_pylist())
        return np.fromiter((self.values.get(v, self.rest) for v in values.to_pylist()), dtype=np.int64,
                           count=len(values))


def iter_routed(router: Router, source, shard, cap: int):
    """(text, domain index) per chunk of one shard."""
    if router.kind == "cluster":
        from mixopt.data.clusters import cached_assign

        cache = None if router.cache is None else Path(router.cache)
        yield from cached_assign(router.model, cache, router.identities.get(shard.uri), shard, source, cap)
        return
    for text, values in iter_fields(source, shard, cap, router.field, router.as_):
        yield text, router.route(text, values, shard.uri)


# ---- what a pool's first pass finds: the values of a field, quantile edges -------------------------

def _first_pass(exp: Experiment, pool: Pool) -> dict:
    """Read the pool's field once: its distinct values (group_by) or its quantile edges (tiers)."""
    field_name = pool.group_by or pool.tiers.field
    as_ = "string" if pool.group_by else "float"
    counts: dict[str, int] = {}
    scores = []
    cap = exp.sample.max_document_bytes
    for s in pool.sources:
        for shard in list_shards(s, exp.base_dir):
            try:
                for _, values in iter_fields(s, shard, cap, field_name, as_):
                    if pool.group_by:
                        for v in values.to_pylist():
                            counts[v] = counts.get(v, 0) + 1
                    else:
                        scores.append(values.to_numpy(zero_copy_only=False))
            except ShardError as e:
                if s.on_error == "skip":
                    continue
                raise MixoptError(str(e), SKIP_FIX) from None
    if pool.group_by:
        if not counts:
            raise MixoptError(f"the pool split by '{field_name}' has no documents", "check the pool's sources")
        return {"values": sorted(counts), "counts": {k: counts[k] for k in sorted(counts)}}
    v = np.concatenate(scores) if scores else np.zeros(0)
    if not len(v) or np.isnan(v).any():
        raise MixoptError(f"the pool cut by '{field_name}' has {'NaN scores' if len(v) else 'no documents'}",
                          "give every document a numeric score")
    k = pool.tiers.quantiles
    # method "linear" over the sorted scores: the same edges for the same scores, whatever the file order
    edges = [float(x) for x in np.quantile(np.sort(v), [i / k for i in range(1, k)])]
    if any(b <= a for a, b in zip(edges, edges[1:])) or edges[0] <= float(v.min()):
        raise MixoptError(f"{k} quantiles of '{field_name}' give repeated edges {edges} (many equal scores)",
                          "use fewer quantiles, or give `edges`")
    return {"edges": edges, "documents": int(len(v))}


def resolve_pool(exp: Experiment, i: int, hashes: FileHashes, recorded: dict, build: bool = True) -> dict:
    """The pool's domains: names and each one's `select`, plus what its first pass found (for the manifest)."""
    pool = exp.pools[i]
    prefix = pool_prefix(pool)
    found: dict = {}
    if pool.group_by is not None and pool.values is None or pool.tiers is not None and pool.tiers.quantiles:
        key = pool_key(exp, pool, hashes)
        found = recorded.get(key) or _FOUND.get(key)
        if found is None:
            found = _FOUND[key] = _first_pass(exp, pool)
        found = {**found, "key": key}
    parts: list[tuple[str, dict]] = []
    if pool.group_by is not None:
        values = pool.values if pool.values is not None else found["values"]
        parts = [(v, {"value": v}) for v in values]
        if pool.rest == "other":
            parts.append(("other", {"other_than": sorted(values)}))
    elif pool.tiers is not None:
        edges = pool.tiers.edges or found["edges"]
        bounds = [None, *edges, None]
        parts = [(f"t{j}", {"range": [bounds[j], bounds[j + 1]]}) for j in range(len(edges) + 1)]
        found = {**found, "edges": list(edges)}
    else:
        from mixopt.data.clusters import cluster_model_for

        model = cluster_model_for(exp, i, hashes, build=build)
        found = {"model": model.key, "names": model.labels, "sample_sizes": model.sizes, "k": model.k,
                 "criterion": model.criterion, "examples": model.examples}
        parts = [(f"c{j:02d}", {"model": model.key, "cluster": j}) for j in range(model.k)]
    field_name = pool.group_by or (pool.tiers.field if pool.tiers else None)
    names = [domain_name(prefix, p) for p, _ in parts]
    for j, n in enumerate(names):
        if n in names[:j]:
            other = parts[names.index(n)][0]
            raise MixoptError(f"pool {i + 1}: values '{other}' and '{parts[j][0]}' both make the domain name '{n}'",
                              "list `values` that differ in letters and digits")
    kind = "group_by" if pool.group_by else "tiers" if pool.tiers else "cluster"
    selects = [{"pool": i, "kind": kind, "field": field_name, "index": j, **sel} for j, (_, sel) in enumerate(parts)]
    return {"names": names, "selects": selects, "found": found, "kind": kind}


def expand_pools(exp: Experiment, build: bool = False) -> Experiment:
    """The experiment with each pool's domains after `domains`. A pool's first pass (values, quantile
    edges) is read from the sample manifest when recorded for the pool's current files, else done now;
    a cluster model is fitted only when `build` (sample, cluster), else it must be in the workspace."""
    if not exp.pools:
        return exp
    from mixopt.config.load import check_domains

    ws = Workspace(exp.workspace_dir)
    hashes = FileHashes(ws.file_hashes_path)
    recorded = {}
    if ws.manifest_path.is_file():
        try:
            recorded = {v["key"]: v for v in ws.read_manifest().get("pools", []) if v.get("key")}
        except MixoptError:
            recorded = {}
    domains = list(exp.domains)
    for i, pool in enumerate(exp.pools):
        res = resolve_pool(exp, i, hashes, recorded, build)
        domains += [Domain(name=n, sources=pool.sources, min=pool.min, max=pool.max, select=sel)
                    for n, sel in zip(res["names"], res["selects"])]
    out = exp.model_copy(update={"domains": domains})
    if len(domains) < 2:
        raise MixoptError(f"the config makes {len(domains)} domain(s); a mixture needs at least 2",
                          "add domains, or a pool field with more values")
    check_domains(out)
    if ws.root.is_dir():
        hashes.save()
    return out


def pool_records(exp: Experiment) -> list[dict]:
    """Per pool, what its domains were made from: values and counts, edges, the cluster model's names and
    sizes (for the manifest; status and the report show it)."""
    hashes = FileHashes(Workspace(exp.workspace_dir).file_hashes_path)
    out = []
    for i, pool in enumerate(exp.pools):
        res = resolve_pool(exp, i, hashes, {}, build=False)
        out.append({"pool": i, "kind": res["kind"], "field": res["selects"][0]["field"], "domains": res["names"],
                    **res["found"]})
    return out


# ---- one pass over a pool's shards for all of its domains -----------------------------------------

def router_for(exp: Experiment, i: int) -> Router:
    mine = [d for d in exp.domains if d.select and d.select["pool"] == i]
    pool = exp.pools[i]
    names = tuple(d.name for d in mine)
    sel = [d.select for d in mine]
    if pool.group_by is not None:
        values = {s["value"]: j for j, s in enumerate(sel) if "value" in s}
        rest = next((j for j, s in enumerate(sel) if "other_than" in s), DROP if pool.values else UNKNOWN)
        return Router("group_by", pool.group_by, names, values=values, rest=rest)
    if pool.tiers is not None:
        return Router("tiers", pool.tiers.field, names, edges=tuple(s["range"][1] for s in sel[:-1]))
    from mixopt.data.clusters import assignment_cache, load_cluster_model

    hashes = FileHashes(Workspace(exp.workspace_dir).file_hashes_path)
    identities = {shard.uri: hashes.sha256(Path(shard.uri)) for s in pool.sources
                  for shard in list_shards(s, exp.base_dir) if shard.local}
    return Router("cluster", None, names, model=load_cluster_model(exp, sel[0]["model"]),
                  cache=str(assignment_cache(exp, sel[0]["model"])), identities=identities)


def scan_routed(units: list, router: Router, keys: list[bytes | None], threshold: int, cap: int,
                version: int = SAMPLER_VERSION) -> tuple:
    """Read (source, shard) units once, each document into the pool of its domain (None: not drawn)."""
    pools = [DocPool(threshold, version) if k is not None else None for k in keys]
    skipped = []
    for source, shard in units:
        parts = [DocPool(threshold, version) if k is not None else None for k in keys]
        try:
            for text, where in iter_routed(router, source, shard, cap):
                if (where == UNKNOWN).any():  # every value is a domain: a new one appeared
                    raise MixoptError(f"{shard.uri}: a value of '{router.field}' that no domain has (the files "
                                      "changed while being read?)", "run the command again")
                for j, part in enumerate(parts):
                    if part is not None:
                        mask = where == j
                        if mask.any():
                            part.feed(text.filter(mask) if not mask.all() else text, keys[j], cap)
        except ShardError as e:
            if source.on_error == "skip":
                skipped.append(str(e))
                continue
            raise MixoptError(str(e), SKIP_FIX) from None
        for p, part in zip(pools, parts):
            if p is not None:
                p.merge(part)
    return pools, skipped


def merge_routed(a: tuple, b: tuple) -> tuple:
    """Two scan_routed results as one (order-free, as data.scan's pool merge)."""
    for p, part in zip(a[0], b[0]):
        if p is not None:
            p.merge(part)
    a[1].extend(b[1])
    return a


def draw_pool(exp: Experiment, i: int, draw: list[str], byte_budget: int,
              executor: Executor | None = None, version: int = SAMPLER_VERSION) -> dict[str, Candidates]:
    """Candidates of the pool's domains named in `draw`, from one pass over its shards (sampler `version`)."""
    import pyarrow  # noqa: F401  (Arrow's filter on the text column)

    router = router_for(exp, i)
    cap = exp.sample.max_document_bytes
    threshold = byte_budget + cap
    keys = [seed_key(exp.seed, n) if n in draw else None for n in router.names]
    pool = exp.pools[i]
    units = [(s, shard) for s in pool.sources for shard in list_shards(s, exp.base_dir)]
    executor = executor or LocalExecutor(1)
    workers = executor.tasks
    if workers > 1 and len(units) < workers * TASKS_PER_WORKER:
        units = split_units(units, workers * TASKS_PER_WORKER)
    pools, skipped = read_groups(executor, units, partial(scan_routed, router=router, keys=keys, threshold=threshold,
                                                          cap=cap, version=version), merge_routed)
    by_name = {d.name: d for d in exp.domains}
    return {n: finish_candidates(p, skipped, byte_budget, by_name[n], exp.base_dir) for n, p in zip(router.names, pools)
            if p is not None}


def cluster_pools(exp: Experiment, refit: bool = False) -> list[dict]:
    """Fit (or load) each cluster pool's model; per pool its clusters: domain, name, sample size, examples."""
    from mixopt.data.clusters import cluster_model_for

    hashes = FileHashes(Workspace(exp.workspace_dir).file_hashes_path)
    out = []
    for i, pool in enumerate(exp.pools):
        if pool.cluster is None:
            continue
        model = cluster_model_for(exp, i, hashes, build=True, refit=refit)
        out.append({"pool": i, "model": model.key, "criterion": model.criterion, "clusters": [
            {"domain": domain_name(pool_prefix(pool), f"c{j:02d}"), "name": model.labels[j],
             "sample_documents": model.sizes[j], "examples": model.examples[j]} for j in range(model.k)]})
    if not out:
        raise MixoptError("the config has no pool with `cluster:`", "add one under `pools:` (see docs/howto/pools.md)")
    hashes.save()
    return out


__all__ = ["Router", "cluster_pools", "domain_name", "draw_pool", "expand_pools", "pool_records"]
