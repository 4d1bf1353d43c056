"""The tokenizer every proxy shares: a byte-level BPE trained on the train slices, or a given one."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from mixopt.errors import MixoptError

EOS = "<|endoftext|>"
EOS_CANDIDATES = (EOS, "</s>", "<eos>", "<|end_of_text|>", "<|eot_id|>")


MAX_TRAIN_WORD = 1000  # BPE training is quadratic in a word's length: a 1 MB run of letters takes ~15 min


def _cut_long_words(text: str) -> str:
    """Training text with every run of over MAX_TRAIN_WORD non-space characters split by spaces (text
    without such runs is unchanged). Encoding is unaffected: it is near-linear in a word's length."""
    if len(text) <= MAX_TRAIN_WORD or not _LONG_WORD.search(text):
        return text
    return _LONG_WORD.sub(lambda m: " ".join(m[0][i:i + MAX_TRAIN_WORD]
                                             for i in range(0, len(m[0]), MAX_TRAIN_WORD)), text)


_LONG_WORD = re.compile(r"\S{%d,}" % (MAX_TRAIN_WORD + 1))


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    texts = (_cut_long_words(t) for t in texts)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def load_tokenizer(path: Path) -> Tokenizer:
    if not path.is_file():
        raise MixoptError(f"tokenizer not found: {path}", "point sample.tokenizer.path at a tokenizer.json")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on bad files
        raise MixoptError(f"{path}: not a tokenizers JSON file ({str(e).splitlines()[0]})",
                          "save it with tokenizer.save(path)") from None


def given_tokenizer(cfg, base_dir) -> Tokenizer | None:
    """The tokenizer the config names (sample.tokenizer.path: a tokenizer.json; .name: a Hugging Face
    tokenizer by local folder or Hub name), or None when one is to be trained."""
    if cfg.path:
        return load_tokenizer(_resolve(cfg.path, base_dir))
    if cfg.name:
        return load_named_tokenizer(cfg.name, base_dir)
    return None


def given_tokenizer_id(cfg, base_dir) -> str | None:
    """What identifies a given tokenizer in the sample key: its files' bytes, or the Hub name."""
    from mixopt.core.keys import content_hash, file_sha256

    if cfg.path:
        p = _resolve(cfg.path, base_dir)
        return file_sha256(p) if p.is_file() else None
    if cfg.name:
        p = _resolve(cfg.name, base_dir)
        if p.is_dir():
            return content_hash(sorted([f.name, file_sha256(f)] for f in p.iterdir() if f.is_file()))
        return f"hub:{cfg.name}"
    return None


def _resolve(path: str, base_dir) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else Path(base_dir) / p


def load_named_tokenizer(name: str, base_dir=".") -> Tokenizer:
    """A Hugging Face tokenizer: a folder saved with save_pretrained (or holding a tokenizer.json), or
    a Hub name (downloaded once into the Hugging Face cache)."""
    local = _resolve(name, base_dir)
    if local.is_dir() and (local / "tokenizer.json").is_file():
        return load_tokenizer(local / "tokenizer.json")
    try:
        import huggingface_hub
        from transformers import AutoTokenizer

        huggingface_hub.utils.logging.set_verbosity_error()  # no "Retrying in 1s" lines before our one line

        hf = AutoTokenizer.from_pretrained(str(local) if local.is_dir() else name, use_fast=True)
    except Exception as e:  # not found, offline, gated: transformers' error types vary
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MixoptError(f"tokenizer '{name}' cannot be loaded ({msg})",
                          "give a folder saved with save_pretrained or a Hub name (and HF_TOKEN if gated)") from None
    if not getattr(hf, "is_fast", False):
        raise MixoptError(f"tokenizer '{name}' has no fast (tokenizers) version", "give a fast tokenizer")
    return hf.backend_tokenizer


def eos_id(tok: Tokenizer) -> int:
    for name in EOS_CANDIDATES:
        i = tok.token_to_id(name)
        if i is not None:
            return i
    raise MixoptError("the tokenizer has no end-of-text token", f"add one of {', '.join(EOS_CANDIDATES)}")


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32


def token_byte_lengths(tok: Tokenizer) -> np.ndarray:
    """UTF-8 bytes each token id stands for (0 for special tokens): the denominator of bits per byte."""
    vocab = tok.get_vocab(with_added_tokens=True)
    special = {t.content for t in tok.get_added_tokens_decoder().values() if t.special}
    lengths = np.zeros(tok.get_vocab_size(with_added_tokens=True), dtype=np.int32)
    byte_level = isinstance(tok.pre_tokenizer, pre_tokenizers.ByteLevel) or "ByteLevel" in repr(tok.pre_tokenizer)
    for piece, i in vocab.items():
        if piece in special:
            continue
        # Byte-level BPE writes each byte as one printable character, so characters = bytes.
        lengths[i] = len(piece) if byte_level else len(tok.decode([i], skip_special_tokens=False).encode())
    return lengths
