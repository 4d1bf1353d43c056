import json
from pathlib import Path

import numpy as np
import pytest

from mixopt.proxy.checkpoint import save_checkpoint
from mixopt.proxy.model import SIZES, ProxySpec, build_model
from mixopt.proxy.train import lr_at, mixture_sequences, train_proxy

GOLDEN = Path(__file__).parent / "golden" / "tiny_proxy_losses.json"
SPEC = ProxySpec(size="tiny", hidden=64, layers=2, heads=2, seq_len=32, batch_size=4, lr=3e-3, warmup=0.1,
                 weight_decay=0.1, tokens=4096, vocab_size=512)


def _streams():
    rng = np.random.default_rng(0)
    # Two "domains" with different token statistics, so the mixture matters.
    return [rng.integers(0, 256, 20000).astype(np.uint16), rng.integers(200, 512, 20000).astype(np.uint16)]


def test_first_losses_match_the_golden_file():
    """A silent change in the model, init, data order or optimizer shows up here."""
    _, losses, _ = train_proxy(SPEC, [0.7, 0.3], _streams(), seed=0)
    golden = json.loads(GOLDEN.read_text())
    assert len(losses) == SPEC.steps == 32
    np.testing.assert_allclose(losses[:8], golden["first_losses"], rtol=2e-4)
    assert losses[-1] < losses[0] - 0.3  # it learns


def test_sequences_follow_the_mixture_exactly():
    spec = ProxySpec(**{**SPEC.__dict__, "tokens": 32 * 4 * 100})
    seqs, epochs = mixture_sequences([0.25, 0.75, 0.0], [20000, 2000, 5000], spec, np.random.default_rng(0))
    counts = np.bincount(seqs[:, 0], minlength=3)
    assert counts.tolist() == [100, 300, 0]
    assert epochs[1] == pytest.approx(300 / ((2000 - 1) // 32))  # a small slice repeats, counted in epochs
    uses = np.bincount(seqs[seqs[:, 0] == 1][:, 1] // 32)
    assert len(uses) == (2000 - 1) // 32 and uses.min() == 4 and uses.max() == 5  # whole epochs, then a partial one


def test_schedule_and_sizes():
    assert lr_at(0, SPEC) < lr_at(3, SPEC) == pytest.approx(SPEC.lr)
    assert lr_at(SPEC.steps - 1, SPEC) == pytest.approx(0.1 * SPEC.lr, rel=0.05)
    for name, (h, layers, *_rest) in SIZES.items():
        non_embedding = 12 * layers * h * h
        assert {"tiny": 1e5, "1m": 1e6, "5m": 5e6, "15m": 1.4e7, "30m": 3.1e7}[name] == pytest.approx(
            non_embedding, rel=0.25)


def test_checkpoint_roundtrip(tmp_path):
    import torch
    from safetensors.torch import load_model

    torch.manual_seed(0)
    model = build_model(SPEC)
    sha = save_checkpoint(model, tmp_path / "m.safetensors")
    assert len(sha) == 64 and not list(tmp_path.glob(".*tmp"))
    fresh = build_model(SPEC)
    load_model(fresh, str(tmp_path / "m.safetensors"))
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
