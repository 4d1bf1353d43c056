"""A pool's clusters (`cluster:` on a pool): embed a seeded sample of its documents with no download
(hashed words -> TF-IDF -> truncated SVD, scikit-learn), k-means them (K given, or the K of `k_range`
with the best silhouette), and assign every document of the pool to its nearest centroid.

The model lives in the workspace under clusters/<pool settings key>/ (model.npz: IDF weights, SVD
components, centroids; model.json: names, sizes, examples) and is fitted once: a changed shard does
not move the clusters, it is only assigned again. Its key is the sha256 of what it computes with, so
each cluster domain's sample key changes exactly when its model does. Assignments are cached per
shard by content (sha256 of the file, the shard part and the model key): after a change, only the
changed shards are embedded again. The same seed and documents give the same model.
"""

from __future__ import annotations

import hashlib
import heapq
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mixopt.config.schema import Experiment
from mixopt.core.keys import FileHashes, content_hash
from mixopt.core.workspace import Workspace, atomic_write_bytes, atomic_write_json, make_dirs
from mixopt.data.fields import iter_fields
from mixopt.data.sources import SKIP_FIX, ShardError, list_shards, source_fingerprint
from mixopt.errors import MixoptError

EMBED_CHARS = 20_000  # characters of a document embedded: its head says what it is about
NAME_TERMS = 3  # top terms in a cluster's name
EXAMPLES = 2  # snippets per cluster, the documents nearest its centroid
MODEL_VERSION = 1


@dataclass(frozen=True)
class ClusterModel:
    key: str
    idf: np.ndarray  # (features,) float32
    components: np.ndarray  # (dims, features) float32
    centroids: np.ndarray  # (k, dims) float32
    labels: list[str]  # a readable name per cluster: its top terms
    sizes: list[int]  # documents of the fitting sample in each cluster
    examples: list[list[str]]
    criterion: str  # how K was chosen
    embedder: str | None = None  # a local Hugging Face encoder's folder (idf, components then empty)

    @property
    def k(self) -> int:
        return len(self.centroids)

    def embed(self, texts: list[str]) -> np.ndarray:
        from sklearn.preprocessing import normalize

        if self.embedder:
            return normalize(_encode(self.embedder, texts))
        X = _hashed(texts, len(self.idf)).tocsr()
        # 1 + log(tf) x idf, as TfidfTransformer(sublinear_tf=True) fitted it; in place: X stays sparse
        X.data = (1 + np.log(X.data)) * self.idf[X.indices]
        X = normalize(X)
        return normalize(np.asarray(X @ self.components.T, dtype=np.float64))

    def assign(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros(0, dtype=np.int64)
        Z = self.embed(texts)
        d = (Z ** 2).sum(1)[:, None] - 2 * Z @ self.centroids.T.astype(np.float64) + \
            (self.centroids.astype(np.float64) ** 2).sum(1)[None, :]
        return d.argmin(1).astype(np.int64)


def _hashed(texts: list[str], features: int):
    from sklearn.feature_extraction.text import HashingVectorizer

    vec = HashingVectorizer(n_features=features, alternate_sign=False, norm=None, lowercase=True)
    return vec.transform([t[:EMBED_CHARS] for t in texts]).astype(np.float32)


ENCODE_TOKENS = 256  # a local encoder reads each document's first tokens
_ENCODERS: dict = {}  # folder -> (tokenizer, model): loaded once per process


def _encode(folder: str, texts: list[str], batch: int = 32) -> np.ndarray:
    """Mean-pooled last hidden states of a local encoder (CPU, float32, no gradients)."""
    import torch

    if folder not in _ENCODERS:
        from transformers import AutoModel, AutoTokenizer

        try:
            _ENCODERS[folder] = (AutoTokenizer.from_pretrained(folder, local_files_only=True),
                                 AutoModel.from_pretrained(folder, local_files_only=True).eval())
        except (OSError, ValueError) as e:
            raise MixoptError(f"cluster.embedder {folder}: cannot load it ({str(e).splitlines()[0][:200]})",
                              "give the folder of a saved Hugging Face encoder (config.json, weights, tokenizer)") from None
    tok, model = _ENCODERS[folder]
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch):
            enc = tok([t[:EMBED_CHARS] for t in texts[i:i + batch]], padding=True, truncation=True,
                      max_length=ENCODE_TOKENS, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).float().numpy())
    return np.concatenate(out).astype(np.float64) if out else np.zeros((0, 1))


def embedder_folder(exp: Experiment, i: int) -> str | None:
    cfg = exp.pools[i].cluster
    if cfg.embedder is None:
        return None
    folder = exp.resolve(cfg.embedder)
    if not (folder / "config.json").is_file():
        raise MixoptError(f"cluster.embedder {folder}: no config.json there", "give the local folder of a saved "
                          "Hugging Face encoder (models are never downloaded)")
    return str(folder)


def model_dir(exp: Experiment, i: int) -> Path:
    """Where pool i's model is: by the pool's settings (not its files' content: a change keeps the model)."""
    pool = exp.pools[i]
    settings = {"version": MODEL_VERSION, "seed": exp.seed, "cluster": pool.cluster.model_dump(exclude={"embedder"}),
                "sources": [s.model_dump(exclude={"storage_options"}) for s in pool.sources]}
    folder = embedder_folder(exp, i)
    if folder is not None:  # the encoder by content: other weights, another model
        from mixopt.core.keys import file_sha256
        from mixopt.data.sources import walk_files

        settings["embedder"] = sorted(file_sha256(Path(f)) for f in walk_files(folder))
    return Workspace(exp.workspace_dir).root / "clusters" / content_hash(settings)[:16]


def load_cluster_model(exp: Experiment, key: str | None = None, folder: Path | None = None) -> ClusterModel:
    """The model with this key, from whichever pool folder holds it."""
    folders = [folder] if folder else sorted((Workspace(exp.workspace_dir).root / "clusters").glob("*"))
    for f in folders:
        if (f / "model.json").is_file():
            meta = json.loads((f / "model.json").read_text())
            if key is None or meta["key"] == key:
                arrays = np.load(f / "model.npz")
                return ClusterModel(meta["key"], arrays["idf"], arrays["components"], arrays["centroids"],
                                    meta["labels"], meta["sizes"], meta["examples"], meta["criterion"],
                                    meta.get("embedder"))
    raise MixoptError(f"no cluster model {key[:12] if key else ''} in {exp.workspace_dir}/clusters",
                      "run `mixopt cluster CONFIG` (or `mixopt sample CONFIG`) to fit it")


def cluster_model_for(exp: Experiment, i: int, hashes: FileHashes, build: bool, refit: bool = False) -> ClusterModel:
    """Pool i's model: the workspace's, or (build) fitted now and saved."""
    folder = model_dir(exp, i)
    if (folder / "model.json").is_file() and not refit:
        return load_cluster_model(exp, folder=folder)
    if not build:
        raise MixoptError(f"pool {i + 1}'s clusters are not fitted yet (no model in {folder})",
                          "run `mixopt cluster CONFIG` (or `mixopt sample CONFIG`) first")
    model, meta = fit_clusters(exp, i)
    ws = Workspace(exp.workspace_dir)
    ws.claim()
    make_dirs(folder)
    (folder / "model.json").unlink(missing_ok=True)  # a refit: no model.json until the new arrays are whole
    buf = io.BytesIO()
    np.savez(buf, idf=model.idf, components=model.components, centroids=model.centroids)
    atomic_write_bytes(folder / "model.npz", buf.getvalue())
    meta["fingerprint"] = content_hash([source_fingerprint(s, exp.base_dir, hashes) for s in exp.pools[i].sources])
    atomic_write_json(folder / "model.json", meta)  # last: a model.json means a whole model
    return model


def _seeded_sample(exp: Experiment, i: int) -> list[str]:
    """The pool's `sample_documents` distinct documents of smallest seeded content hash (order-free)."""
    pool = exp.pools[i]
    n = pool.cluster.sample_documents
    key = hashlib.sha256(f"{exp.seed}:cluster:{i}".encode()).digest()[:32]
    heap: list = []  # (-priority, text): the n smallest priorities
    seen = set()
    for s in pool.sources:
        for shard in list_shards(s, exp.base_dir):
            try:
                for text, _ in iter_fields(s, shard, exp.sample.max_document_bytes, None, "string"):
                    for t in text.to_pylist():
                        if not t or t.isspace():
                            continue
                        pri = int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8, key=key).digest(), "big")
                        if pri in seen or len(heap) == n and -heap[0][0] < pri:
                            continue
                        seen.add(pri)
                        if len(heap) < n:
                            heapq.heappush(heap, (-pri, t))
                        else:
                            heapq.heapreplace(heap, (-pri, t))
            except ShardError as e:
                if s.on_error == "skip":
                    continue
                raise MixoptError(str(e), SKIP_FIX) from None
    return [t for _, t in sorted(heap, key=lambda x: -x[0])]


def fit_clusters(exp: Experiment, i: int) -> tuple[ClusterModel, dict]:
    from sklearn.cluster import KMeans
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfTransformer
    from sklearn.metrics import silhouette_score

    cfg = exp.pools[i].cluster
    docs = _seeded_sample(exp, i)
    k_lo, k_hi = (cfg.k, cfg.k) if cfg.k else cfg.k_range
    encoder = embedder_folder(exp, i)
    dims = 1 if encoder else cfg.dims
    if len(docs) < max(k_hi, dims) + 1:
        raise MixoptError(f"pool {i + 1} has {len(docs)} distinct documents, too few to cluster into {k_hi} with "
                          f"{cfg.dims} dimensions", "lower cluster.k (or k_range) and cluster.dims, or add documents")
    seed = exp.seed % (2 ** 32)
    if encoder:
        idf, components = np.zeros(0, np.float32), np.zeros((0, 0), np.float32)
    else:
        X = _hashed(docs, cfg.features)
        tfidf = TfidfTransformer(sublinear_tf=True).fit(X)
        svd = TruncatedSVD(n_components=cfg.dims, random_state=seed).fit(tfidf.transform(X))
        idf = tfidf.idf_.astype(np.float32)
        components = svd.components_.astype(np.float32)
    partial = ClusterModel("", idf, components, np.zeros((1, 1), np.float32), [], [], [], "", encoder)
    Z = partial.embed(docs)  # as assignment will embed them (float32 weights)
    best = None
    scores = {}
    for k in range(k_lo, k_hi + 1):
        km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(Z)
        if k_lo == k_hi:
            best = km
            break
        scores[k] = float(silhouette_score(Z, km.labels_, sample_size=min(len(docs), 2000), random_state=seed))
        if best is None or scores[k] > scores[best.n_clusters] + 1e-12:
            best = km
    centroids = best.cluster_centers_.astype(np.float32)
    criterion = (f"k={best.n_clusters} given" if k_lo == k_hi else
                 f"k={best.n_clusters}: best silhouette over k={k_lo}..{k_hi} "
                 f"({', '.join(f'{k}: {v:.3f}' for k, v in scores.items())})")
    labels_of = ClusterModel("", idf, components, centroids, [], [], [], "", encoder).assign(docs)
    names, examples = _describe(docs, Z, labels_of, centroids)
    sizes = [int((labels_of == j).sum()) for j in range(len(centroids))]
    h = hashlib.sha256()
    h.update(model_dir(exp, i).name.encode())  # the settings, with a local encoder's files by content
    for a in (idf, components, centroids):
        h.update(np.ascontiguousarray(a).tobytes())
    key = h.hexdigest()
    meta = {"key": key, "version": MODEL_VERSION, "k": len(centroids), "criterion": criterion, "labels": names,
            "sizes": sizes, "examples": examples, "documents": len(docs), "embedder": encoder,
            "embedding": f"{encoder}: mean-pooled last hidden state" if encoder else
            f"HashingVectorizer(words, {cfg.features} features) -> TF-IDF (sublinear tf) -> TruncatedSVD({cfg.dims})"}
    return ClusterModel(key, idf, components, centroids, names, sizes, examples, criterion, encoder), meta


def _describe(docs: list[str], Z: np.ndarray, labels: np.ndarray, centroids: np.ndarray) -> tuple[list, list]:
    """Each cluster's top terms (most over-represented words, by document frequency) and nearest snippets."""
    from sklearn.feature_extraction.text import CountVectorizer

    vec = CountVectorizer(token_pattern=r"(?u)\b[A-Za-z][A-Za-z_]{2,}\b", lowercase=True, binary=True,
                          max_features=20_000, stop_words="english")
    C = vec.fit_transform([d[:EMBED_CHARS] for d in docs])
    terms = np.array(vec.get_feature_names_out())
    overall = (np.asarray(C.sum(0)).ravel() + 1) / (len(docs) + 2)
    names, examples = [], []
    for j in range(len(centroids)):
        mine = labels == j
        if not mine.any():
            names.append("(empty)")
            examples.append([])
            continue
        df = (np.asarray(C[mine].sum(0)).ravel() + 1) / (mine.sum() + 2)
        score = df * np.log(df / overall)  # frequent here, and more frequent than elsewhere
        top = np.lexsort((terms, -score))[:NAME_TERMS]
        names.append(", ".join(terms[top]))
        idx = np.flatnonzero(mine)
        near = idx[np.argsort(((Z[idx] - centroids[j]) ** 2).sum(1), kind="stable")[:EXAMPLES]]
        examples.append([re.sub(r"\s+", " ", docs[t]).strip()[:100] for t in near])
    return names, examples


def assignment_cache(exp: Experiment, model_key: str) -> Path:
    return Workspace(exp.workspace_dir).root / "clusters" / "assign" / model_key[:16]


def cached_assign(model: ClusterModel, cache: Path | None, identity: str | None, shard, source, cap):
    """(text, cluster) per chunk of a shard; the shard's clusters are read from, or saved to, the cache."""
    path = cache / f"{identity}-{shard.index}of{shard.count}.npy" if cache and identity else None
    known = np.load(path) if path is not None and path.is_file() else None
    done, at = [], 0
    for text, _ in iter_fields(source, shard, cap, None, "string"):
        if known is not None and at + len(text) <= len(known):
            where = known[at:at + len(text)]
        else:
            known = None
            where = model.assign([t if isinstance(t, str) else "" for t in text.to_pylist()])
        at += len(text)
        done.append(where)
        yield text, where
    if path is not None and (known is None or len(known) != at):
        buf = io.BytesIO()
        np.save(buf, np.concatenate(done) if done else np.zeros(0, np.int64))
        make_dirs(path.parent)
        atomic_write_bytes(path, buf.getvalue())
