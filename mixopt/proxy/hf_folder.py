"""A proxy as a Hugging Face model folder (config.json, model.safetensors, the tokenizer), so
`transformers`, `lm_eval --model hf` or any HF tool loads it like a Hub model."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from mixopt.core.workspace import fsync_dir, process_umask
from mixopt.data.tokenizer import EOS_CANDIDATES, load_tokenizer
from mixopt.errors import MixoptError
from mixopt.proxy.model import ProxySpec, build_model


def export_hf(W: dict, i: int, spec: ProxySpec, tokenizer_path: Path, out: Path) -> Path:
    """Proxy i of stacked weights W to the folder `out` (which must not exist, or be empty), atomically:
    it is written beside it and renamed, so `out` is whole or absent."""
    from safetensors import SafetensorError
    from transformers import PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards" bars: stderr holds mixopt's own lines

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MixoptError(f"{out} already exists and is not an empty folder", "name a new folder with --output")
    tok = load_tokenizer(tokenizer_path)
    eos = next((t for t in EOS_CANDIDATES if tok.token_to_id(t) is not None), None)
    model = build_model(spec)
    state = {name: w[i].detach().float().cpu() for name, w in W.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:  # lm_head is tied to the embedding
        raise MixoptError(f"the checkpoint does not fit the proxy spec (missing {missing[:3]}, unexpected "
                          f"{unexpected[:3]})", "export with the config the sweep trained")
    model.tie_weights()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, bos_token=eos, unk_token=None,
                                       model_max_length=spec.seq_len)
        fast.save_pretrained(tmp)
        # mkdtemp and the savers make 0700/0600: the folder and files follow the umask, like mixopt's others
        umask = process_umask()
        for f in tmp.rglob("*"):
            os.chmod(f, (0o777 if f.is_dir() else 0o666) & ~umask)
        os.chmod(tmp, 0o777 & ~umask)
        if out.is_dir():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
        fsync_dir(out.parent)
    except (OSError, SafetensorError) as e:  # a full disk or a file size limit: safetensors' own error type
        shutil.rmtree(tmp, ignore_errors=True)
        raise MixoptError(f"cannot write the model folder {out}: {' '.join(str(e).split()) or type(e).__name__}",
                          "free space (or raise the quota, or choose a writable place) and rerun; nothing was "
                          "left behind") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
