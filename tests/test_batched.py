"""Training N proxies together computes what training them one by one computes."""

import numpy as np
import pytest
import torch

from mixopt.proxy.model import ProxySpec, build_model, forward_logits, stack_weights
from mixopt.proxy.train import train_proxies

SPEC = ProxySpec(size="tiny", hidden=64, layers=2, heads=2, seq_len=32, batch_size=4, lr=3e-3, warmup=0.05,
                 weight_decay=0.1, tokens=32 * 4 * 24, vocab_size=300)  # 24 steps


def _streams():
    rng = np.random.default_rng(0)
    # Three "domains" with different token statistics, so mixtures train different models.
    return [rng.integers(lo, hi, 6000).astype(np.uint16) for lo, hi in ((0, 100), (80, 220), (150, 300))]


def test_batched_forward_equals_transformers_llama():
    torch.manual_seed(0)
    models = [build_model(SPEC) for _ in range(3)]
    W = {k: torch.stack([dict(m.named_parameters())[k].detach() for m in models]) for k in stack_weights(models[0], 1)}
    x = torch.randint(0, SPEC.vocab_size, (3, 2, SPEC.seq_len))
    out = forward_logits(W, x, SPEC)
    for i, m in enumerate(models):
        torch.testing.assert_close(out[i], m(input_ids=x[i]).logits, rtol=1e-5, atol=1e-5)


def test_batched_training_matches_sequential_step_by_step():
    streams = _streams()
    mixtures = [(1.0, 0.0, 0.0), (0.2, 0.5, 0.3), (0.0, 0.1, 0.9), (1 / 3, 1 / 3, 1 / 3)]
    W, losses, epochs = train_proxies(SPEC, mixtures, streams, seed=7)
    losses = np.array(losses)  # [N, steps]
    assert losses.shape == (len(mixtures), SPEC.steps)
    for i, w in enumerate(mixtures):
        one, seq_losses, seq_epochs = train_proxies(SPEC, [w], streams, seed=7)
        np.testing.assert_allclose(losses[i], seq_losses[0], rtol=2e-4, atol=2e-4)  # every step
        assert epochs[i] == pytest.approx(seq_epochs[0])
        for name, p in one.items():
            torch.testing.assert_close(W[name][i], p[0], rtol=2e-3, atol=2e-4, msg=f"proxy {i}: {name}")
    assert not np.allclose(losses[0, -1], losses[2, -1])  # different mixtures really trained differently


@pytest.mark.slow
def test_sweep_with_batched_proxies_records_what_a_sequential_sweep_does(make_config, tmp_path):
    import sqlite3

    from typer.testing import CliRunner

    from mixopt.cli import app

    cli = CliRunner()
    tables = []
    for ws, flags in (("seq", []), ("batched", ["--batch-proxies", "3"])):
        cfg = make_config(f"{ws}.yaml", ws=ws, design__runs=2)
        assert cli.invoke(app, ["sample", str(cfg)]).exit_code == 0
        r = cli.invoke(app, ["sweep", str(cfg), "--no-progress", *flags])
        assert r.exit_code == 0 and "6 trained, 0 failed" in r.output, r.output
        with sqlite3.connect(tmp_path / ws / "mixopt.db") as db:
            tables.append({(k, e): (loss, v) for k, e, loss, v in db.execute(
                "SELECT r.key, m.eval, r.train_loss, m.value FROM runs r JOIN measurements m ON m.run_key = r.key "
                "WHERE m.metric = 'bpb'")})
    seq, batched = tables
    assert seq.keys() == batched.keys() and len(seq) == 6 * 3  # the same runs (same slices, mixtures), 3 evals
    for k in seq:
        assert batched[k] == pytest.approx(seq[k], rel=1e-3)
