"""`mixopt sample`: count each domain, draw seeded train/validation slices, build the tokenizer.

One streaming pass per domain keeps the documents with the smallest seeded content hash
("bottom-k" sampling) until a byte budget is met: a uniform random sample without replacement
whose memory is bounded by the slice size, not the corpus size, and that does not depend on file
order. Exact duplicate documents get the same hash and are kept once. In hash order, the first
documents form the validation slice and the following ones the train slice, so no document is in
both; the tokenizer is trained only on documents outside the reserved validation region.
"""

from __future__ import annotations

import itertools
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mixopt.backends import make_executor
from mixopt.config.runtime import Runtime
from mixopt.config.schema import Experiment
from mixopt.core.keys import FileHashes, content_hash, file_sha256
from mixopt.core.workspace import (
    Workspace,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    fsync_dir,
    make_dirs,
    owns,
    slice_file,
    token_bytes_file,
    unmake_workspace,
    write_npy,
)
from mixopt.data.pools import draw_pool, pool_records
from mixopt.data.resample import plan_resample, source_keys, tokenizer_key, workspace_sampler
from mixopt.data.scan import Candidates, draw_candidates
from mixopt.data.spill import Spill
from mixopt.data.tokenizer import (
    eos_id,
    given_tokenizer,
    load_tokenizer,
    token_byte_lengths,
    token_dtype,
    train_tokenizer,
)
from mixopt.errors import MixoptError

MAX_BYTES_PER_TOKEN = 6  # a byte-level BPE averages 3-5 bytes/token; budgets assume at most this


_Candidates = Candidates


def sample_key(exp: Experiment, hashes: FileHashes | None = None) -> str:
    """Everything that changes the sample: each domain's own key (data.resample), names and order,
    the tokenizer settings, the workspace's sampler version."""
    version = workspace_sampler(exp)
    return _sample_key(exp, source_keys(exp, hashes, version), version)


def _sample_key(exp: Experiment, keys: dict[str, str], version: int) -> str:
    return content_hash({"version": version, "domains": [[n, keys[n]] for n in exp.domain_names],
                         "tokenizer": tokenizer_key(exp)})


def sample_corpus(exp: Experiment, runtime: Runtime | None = None, force: bool = False,
                  retokenize: bool = False) -> dict:
    """Write the workspace's sample/ folder (slices, tokenizer, manifest) and return the manifest,
    with what changed under "changes": only domains whose sources changed are drawn again, and the
    workspace's tokenizer is kept unless `retokenize` (data.resample). `runtime` says where each
    domain's shards are read (backend local or ray, `workers`: the result does not depend on their
    number; the executor opens only when a domain is read) and, with `progress`, `say` hears of each
    domain read and written."""
    runtime = runtime or Runtime()
    say = runtime.say if runtime.progress else (lambda line: None)
    ws = Workspace(exp.workspace_dir)
    ws.check()  # before anything is written, even the hash cache
    hashes = FileHashes(ws.file_hashes_path)
    version = workspace_sampler(exp)  # a workspace keeps the sampler it was first sampled with
    keys = source_keys(exp, hashes, version)  # the hashes are saved on success
    key = _sample_key(exp, keys, version)
    previous = ws.read_manifest() if ws.manifest_path.is_file() else None
    if not force and not retokenize and previous is not None and previous.get("key") == key:
        previous["reused"] = True
        return previous
    todo = plan_resample(exp, previous, ws, keys, force, retokenize)

    if ws.sample_dir.exists() and not (owns(ws.sample_dir) or ws.manifest_path.is_file()):
        raise MixoptError(f"{ws.sample_dir} holds files mixopt did not write, so `sample` will not replace it",
                          "move that folder away or point `workspace:` at a new folder")
    fresh = not ws.root.exists()
    spill = Spill(ws, key)  # candidates past SPILL_BYTES wait on disk for the tokenizer
    try:
        manifest = _draw_and_write(exp, runtime, ws, todo, previous, keys, key, version, spill, say)
    except BaseException:
        spill.remove()
        if fresh:  # a workspace made by this failed run goes too: nothing half-written is left
            unmake_workspace(ws.root)
        raise
    spill.remove()
    hashes.save()  # the workspace exists now: later runs of sweep and fit need not hash the corpus again
    manifest["reused"] = False
    manifest["changes"] = todo.summary(retokenized=previous is not None and not todo.keep_tokenizer and
                                       previous.get("tokenizer_sha256") != manifest["tokenizer_sha256"])
    return manifest


def _draw_and_write(exp: Experiment, runtime: Runtime, ws: Workspace, todo, previous: dict | None,
                    keys: dict[str, str], key: str, version: int, spill: Spill, say) -> dict:
    """Read the domains to draw (their candidates held by `spill`), make or keep the tokenizer, and
    write the slices, tokenizer and manifest into a temp folder swapped in for sample/."""
    budget_tokens = exp.train_tokens + exp.sample.val_tokens
    candidates: dict[str, _Candidates] = {}
    executor = make_executor(runtime) if todo.draw else None
    try:
        for i, d in enumerate(exp.domains, 1):
            if d.name in todo.draw and d.name not in candidates:
                if d.select:  # a pool's domains: one pass over the pool for every one of them drawn
                    drawn = draw_pool(exp, d.select["pool"], todo.draw, budget_tokens * MAX_BYTES_PER_TOKEN,
                                      executor, version)
                    for name, c in drawn.items():
                        spill.hold(name, c)
                    candidates |= drawn
                    say(f"sample: read pool {d.select['pool'] + 1} ({i}/{len(exp.domains)})")
                    continue
                candidates[d.name] = draw_candidates(exp, d, budget_tokens * MAX_BYTES_PER_TOKEN, executor, version)
                spill.hold(d.name, candidates[d.name])
                say(f"sample: read domain '{d.name}' ({i}/{len(exp.domains)})")
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)

    tok_cfg = exp.sample.tokenizer
    if todo.keep_tokenizer:  # the workspace's: domains added or changed are tokenized as before
        tok = load_tokenizer(ws.tokenizer_path)
    else:
        tok = given_tokenizer(tok_cfg, exp.base_dir)
    if tok is None:
        val_region = exp.sample.val_tokens * MAX_BYTES_PER_TOKEN
        tok = train_tokenizer(_tokenizer_texts(candidates, val_region, tok_cfg.train_bytes_per_domain),
                              tok_cfg.vocab_size)
        say(f"sample: trained the tokenizer ({tok_cfg.vocab_size} tokens)")
    eos = eos_id(tok)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    dtype = token_dtype(vocab)

    # Build everything in a temp folder, then swap it in: a crash leaves the old sample or none.
    ws.claim()
    spill.lock()  # a workspace made just now: from here on, the only `sample` writing it
    tmp = ws.root / f".sample.tmp-{key[:12]}"
    shutil.rmtree(tmp, ignore_errors=True)
    make_dirs(tmp)
    try:
        domains = {}
        for i, d in enumerate(exp.domains, 1):
            if d.name in todo.keep:  # same sources, same tokenizer: the slices are the ones drawn before
                was = todo.keep[d.name]
                shutil.copytree(ws.sample_dir / was, tmp / d.name)
                domains[d.name] = {**previous["domains"][was], "drawn_as": previous["domains"][was].get("drawn_as", was)}
            else:
                domains[d.name] = _write_slices(exp, d.name, candidates.pop(d.name), tok, eos, dtype, tmp, version)
                domains[d.name]["drawn_as"] = d.name
                say(f"sample: wrote slices of '{d.name}' ({i}/{len(exp.domains)})")
            domains[d.name]["source_key"] = keys[d.name]
        total = sum(v["tokens"] for v in domains.values())
        for v in domains.values():
            v["prior"] = v["tokens"] / total
        if todo.keep_tokenizer:  # the file as it was: its sha256 is in every run's key
            atomic_write_bytes(tmp / "tokenizer.json", ws.tokenizer_path.read_bytes())
        else:
            atomic_write_text(tmp / "tokenizer.json", tok.to_str(pretty=True))  # what tok.save writes, byte for byte
        write_npy(token_bytes_file(tmp), token_byte_lengths(tok))
        manifest = {
            "key": key, "version": version, "seed": exp.seed, "order": exp.domain_names,
            "vocab_size": vocab, "eos_id": eos, "dtype": np.dtype(dtype).name,
            "tokenizer_sha256": file_sha256(tmp / "tokenizer.json"), "tokenizer_key": tokenizer_key(exp),
            "domains": domains,
        }
        if exp.pools:  # what each pool's domains were made from: values, quantile edges, cluster names
            manifest["pools"] = pool_records(exp)
        atomic_write_json(tmp / "manifest.json", manifest)
        old = ws.root / f".sample.old-{key[:12]}"
        if ws.sample_dir.exists():
            ws.sample_dir.rename(old)
        tmp.rename(ws.sample_dir)
        fsync_dir(ws.root)
        if old.is_symlink():  # sample/ was a link to a folder elsewhere: the link goes, that folder stays as it was
            old.unlink()
        else:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def val_region_docs(sizes: list[int], val_region: int) -> int:
    """How many leading documents the tokenizer skips: every one that starts within val_region
    bytes. The validation slice (val_tokens, at most MAX_BYTES_PER_TOKEN bytes each) lies inside."""
    skipped = 0
    for i, n in enumerate(sizes):
        if skipped >= val_region:
            return i
        skipped += n
    return len(sizes)


def _tokenizer_texts(candidates: dict[str, _Candidates], val_region: int, per_domain: int):
    """Train-region documents only, the same number of bytes from each domain."""
    for c in candidates.values():
        start = end = val_region_docs(c.sizes, val_region)
        used = 0
        while end < len(c.sizes) and used < per_domain:
            used += c.sizes[end]
            end += 1
        yield from c.docs[start:end]  # one slice: spilled documents are read back by slices


ENCODE_BYTES = 8 << 20  # text tokenized per call: the tokenizer's per-token objects (~100 bytes each) stay bounded


@dataclass
class Tokenized:
    """Candidates' token ids in sampling order, each document followed by end-of-text, as one array
    (2 or 4 bytes a token, not a Python list of ints), and each document's length in it."""

    stream: np.ndarray
    lengths: np.ndarray  # tokens + 1 per document

    def documents(self, a: int, b: int) -> np.ndarray:
        """Documents a..b-1 joined, each followed by end-of-text."""
        cum = np.concatenate([[0], np.cumsum(self.lengths)])
        return self.stream[cum[a]:cum[b]]


def _encode(tok, c: _Candidates, need_val: int, need_train: int, every: bool, eos: int, dtype) -> Tokenized:
    """Token ids of the candidates in sampling order: all of them when `every`, else only the leading
    ones that fill the validation and train slices (more when there are none to fill them with). Text
    goes to the tokenizer ENCODE_BYTES at a time and its ids into one array, so memory holds ~2-4
    bytes a token, not the tokenizer's per-token objects of the whole slice."""
    # The ids only: encode_batch_fast (tokenizers >= 0.21) skips the character offsets, ~40% of the CPU time.
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
    parts: list[np.ndarray] = []
    lengths: list[int] = []
    upto = np.cumsum(c.sizes)

    def through(end: int) -> None:
        """Tokenize the candidates from the first not yet tokenized up to `end` (exclusive)."""
        a = len(lengths)
        while a < end:
            b = max(a + 1, min(end, int(np.searchsorted(upto, (upto[a - 1] if a else 0) + ENCODE_BYTES)) + 1))
            ids = [e.ids for e in encode(c.docs[a:b], add_special_tokens=False)]
            n = [len(i) + 1 for i in ids]
            parts.append(np.fromiter(itertools.chain.from_iterable(itertools.chain(i, (eos,)) for i in ids),
                                     dtype=dtype, count=sum(n)))
            lengths.extend(n)
            a = b

    if every:
        through(len(c.docs))
    else:
        end = min(len(c.docs), int(np.searchsorted(upto, 4 * (need_val + need_train))) + 1)  # ~4 bytes a token
        while True:
            through(end)
            cum = np.cumsum(lengths)
            n_val = int(np.searchsorted(cum, need_val) + 1)
            if end >= len(c.docs) or (n_val < len(cum) and cum[-1] - cum[n_val - 1] >= need_train):
                break
            end = min(len(c.docs), 2 * end)
    return Tokenized(np.concatenate(parts) if parts else np.zeros(0, dtype), np.array(lengths, dtype=np.int64))


def _write_slices(exp: Experiment, name: str, c: _Candidates, tok, eos: int, dtype, out: Path,
                  version: int) -> dict:
    need_val, need_train = exp.sample.val_tokens, exp.train_tokens
    # Sampler version 1 tokenizes every candidate; version 2 only those the slices take (~half of them),
    # unless the domain was read whole (its token count is then exact), and estimates the domain's
    # tokens per byte from those.
    ids = _encode(tok, c, need_val, need_train, version < 2 or c.complete, eos, dtype)
    cum = np.cumsum(ids.lengths)  # each document's tokens + end-of-text
    n_val = int(np.searchsorted(cum, need_val) + 1)  # documents until val_tokens are reached
    if len(cum) == 1 and c.complete:  # no val_tokens can fix this: a document goes whole to one slice
        raise MixoptError(f"domain '{name}' is one document ({int(cum[-1])} tokens): a document goes whole to the "
                          "validation or the train slice, so one cannot make both",
                          "split it into documents (one per file, JSON line or row) or add documents to the domain")
    if n_val >= len(cum) or cum[n_val - 1] < need_val:
        have = int(cum[-1]) if c.complete else f"at least {int(cum[-1])}"
        raise MixoptError(f"domain '{name}' has {have} tokens, too few for a {need_val}-token validation "
                          f"slice plus a train slice", "lower sample.val_tokens or add text to the domain")
    train_cum = cum[n_val:] - cum[n_val - 1]
    n_train = int(min(np.searchsorted(train_cum, need_train) + 1, len(train_cum)))
    train_tokens = int(train_cum[n_train - 1])
    if train_tokens < need_train:
        raise MixoptError(
            f"domain '{name}' has {int(cum[-1])} tokens: {train_tokens} left for its train slice after "
            f"{int(cum[n_val - 1])} held out, fewer than sample.train_tokens={need_train}",
            f"set sample.train_tokens <= {train_tokens} (runs then repeat this domain's text) or add text")

    if not (exp.sample.tokenizer.path or exp.sample.tokenizer.name) and n_val > val_region_docs(c.sizes, need_val * MAX_BYTES_PER_TOKEN):
        raise MixoptError(f"domain '{name}' averages over {MAX_BYTES_PER_TOKEN} bytes per token, so the "
                          "tokenizer would have seen validation text",
                          "lower sample.tokenizer.vocab_size or give sample.tokenizer.path")
    val = ids.documents(0, n_val)
    train = ids.documents(n_val, n_val + n_train)
    write_npy(slice_file(out, name, "val"), val)
    write_npy(slice_file(out, name, "train"), train)

    # Available tokens: exact when the whole domain was read into the sample, else bytes x tokens/byte.
    per_byte = cum[-1] / sum(c.sizes[:len(cum)])  # tokens per byte of the documents tokenized
    tokens = int(cum[-1]) if c.complete else int(round(c.bytes * per_byte))
    entry = {
        "documents": c.documents, "duplicates_dropped": c.duplicates, "bytes": c.bytes,
        "truncated_documents": c.truncated, "skipped_shards": len(c.skipped), "skipped": c.skipped,
        "tokens": tokens, "tokens_exact": c.complete,
        "train_documents": n_train, "train_tokens": int(train.size),
        "train_bytes": sum(c.sizes[n_val:n_val + n_train]),
        "val_documents": n_val, "val_tokens": int(val.size),
        "val_bytes": sum(c.sizes[:n_val]),
        "train_sha256": file_sha256(slice_file(out, name, "train")),
        "val_sha256": file_sha256(slice_file(out, name, "val")),
    }
    if c.scan:  # sample.scan: read a subset of the shards; the token count's standard error
        entry["scan"] = {**c.scan, "tokens_stderr": int(round(c.scan["bytes_stderr"] * per_byte))}
    return entry
