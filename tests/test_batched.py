"""Training N proxies together computes what training them one by one computes."""

import json

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


def _models(n: int, spec=SPEC):
    torch.manual_seed(0)
    models = [build_model(spec) for _ in range(n)]
    return {k: torch.stack([dict(m.named_parameters())[k].detach() for m in models]) for k in stack_weights(models[0], 1)}


def test_stacked_evaluation_equals_one_at_a_time_at_any_pass_budget(monkeypatch):
    """Re-evaluation measures many checkpoints in one stacked pass: each proxy's numbers are the
    ones it gets alone, and passes sized by a byte budget (chunked cross-entropy) change nothing."""
    from mixopt.evals import measure

    W = _models(3)
    stream = np.random.default_rng(1).integers(0, SPEC.vocab_size, 3000)
    token_bytes = np.arange(SPEC.vocab_size) % 3 + 1
    items = [{"context": [1, 2, 3, 4], "choices": [[5, 6], [7], [8, 9, 10]], "bytes": [2, 1, 3], "answer": 1},
             {"context": [11] * 40, "choices": [[12] * 50, [13]], "bytes": [50, 1], "answer": 0}]
    stacked = measure.stream_loss(W, SPEC, stream, token_bytes), measure.choice_scores(W, SPEC, items)
    monkeypatch.setattr(measure, "CPU_PASS_BYTES", 64 << 10)  # 64 KiB: one sequence per pass, logits in chunks
    assert measure.rows_per_pass(SPEC, 3, measure.CPU_PASS_BYTES) == 1
    small = measure.stream_loss(W, SPEC, stream, token_bytes), measure.choice_scores(W, SPEC, items)
    for i in range(3):
        one = {k: v[i:i + 1] for k, v in W.items()}
        alone = measure.stream_loss(one, SPEC, stream, token_bytes)[0], measure.choice_scores(one, SPEC, items)[0]
        for got in (stacked, small):
            assert got[0][i] == pytest.approx(alone[0], rel=1e-5)
            assert got[1][i] == pytest.approx(alone[1], rel=1e-5)
    assert abs(stacked[0][0]["loss"] - stacked[0][1]["loss"]) > 1e-4  # three different models (near ln V: untrained)


def test_auto_batch_size_is_chosen_by_a_measurement_and_cached(tmp_path, monkeypatch):
    from mixopt.config.runtime import Runtime
    from mixopt.core.workspace import Workspace
    from mixopt.proxy import speed
    from mixopt.sweep import choose

    monkeypatch.delenv("MIXOPT_AUTO_BATCH", raising=False)  # conftest fixes it for the other tests
    ws = Workspace(tmp_path)
    choice = choose.choose_batch(Runtime(), SPEC, ws, runs=10)  # measured: a few real steps of each path
    assert set(choice.rates) == {1, choose.CPU_BATCH} and all(r > 0 for r in choice.rates.values())
    assert choice.proxies == (choose.CPU_BATCH if choice.rates[choose.CPU_BATCH] > choice.rates[1] else 1)
    assert "measured now" in choice.why and "proxy-steps/s" in choice.why
    cached = json.loads((tmp_path / "trainer-choice.json").read_text())
    assert len(cached) == 1

    monkeypatch.setattr(speed, "training_rates", lambda *a, **k: pytest.fail("measured again"))
    again = choose.choose_batch(Runtime(), SPEC, ws, runs=10)
    assert again.proxies == choice.proxies and again.rates == pytest.approx(choice.rates, rel=1e-3)
    assert "cached" in again.why
    choose.record_choice(ws, 7, again)
    assert json.loads((tmp_path / "sweeps" / "7.json").read_text())["batch_proxies"] == again.proxies

    # The faster path wins, whichever it is; a spec with other numbers is measured anew.
    for rates, pick in (({1: 1.0, 4: 2.0}, 4), ({1: 2.0, 4: 1.0}, 1)):
        monkeypatch.setattr(speed, "training_rates", lambda *a, r=rates, **k: r)
        spec = ProxySpec(**{**SPEC.to_dict(), "lr": SPEC.lr * (2 + pick)})
        assert choose.choose_batch(Runtime(), spec, ws, runs=10).proxies == pick
    assert choose.choose_batch(Runtime(batch_proxies=3), SPEC, ws, runs=10).proxies == 3
    assert choose.choose_batch(Runtime(), SPEC, ws, runs=1).proxies == 1  # one run: nothing to batch


def test_auto_choices_are_timed_at_the_precision_the_sweep_trains_at(tmp_path, monkeypatch):
    """--batch-proxies auto and --compile auto time the steps at the sweep's --precision (a bf16 sweep is
    not sized on float32 steps), and a measurement at one precision is not reused for another."""
    from mixopt.config.runtime import Runtime
    from mixopt.core.workspace import Workspace
    from mixopt.proxy import speed
    from mixopt.sweep import choose

    monkeypatch.delenv("MIXOPT_AUTO_BATCH", raising=False)
    monkeypatch.delenv("MIXOPT_AUTO_COMPILE", raising=False)
    ws = Workspace(tmp_path)
    timed = []

    def rates(spec, ns, device, **k):
        timed.append(("rates", k.get("precision", "auto")))
        return {n: float(n) for n in ns}

    def compile_timings(spec, n, device, **k):
        timed.append(("compile", k.get("precision", "auto")))
        return {"compile_seconds": 1.0, "eager_step": 0.1, "compiled_step": 0.05}

    monkeypatch.setattr(speed, "training_rates", rates)
    monkeypatch.setattr(speed, "compile_timings", compile_timings)
    spec = ProxySpec(**{**SPEC.to_dict(), "tokens": SPEC.seq_len * SPEC.batch_size * 1000})
    bf16, fp32 = Runtime(precision="bf16"), Runtime(precision="fp32")
    b = choose.choose_batch(bf16, spec, ws, runs=10)
    assert timed == [("rates", "bf16")] and "in bf16-autocast" in b.why
    c = choose.choose_compile(bf16, spec, ws, b.proxies, runs=10, rates=b.rates)
    assert timed[-1] == ("compile", "bf16") and "in bf16-autocast" in c.why
    # float32 is measured anew (not the bf16 row), and keyed as before precision entered the key.
    f = choose.choose_batch(fp32, spec, ws, runs=10)
    assert timed[-1] == ("rates", "fp32") and "measured now" in f.why and "bf16" not in f.why
    assert len(json.loads((tmp_path / "trainer-choice.json").read_text())) == 2
    assert "cached" in choose.choose_batch(Runtime(precision="auto"), spec, ws, runs=10).why  # auto on a CPU: fp32
    assert "cached" in choose.choose_batch(bf16, spec, ws, runs=10).why and len(timed) == 3


def test_auto_compile_pays_only_past_the_break_even(tmp_path, monkeypatch):
    """`--compile auto` on fake timings: compile when the steps each worker trains x the seconds a
    compiled step saves exceed the compile seconds; no measurement when even the whole eager
    training is under the least a compile takes; measured once per machine and shapes."""
    from dataclasses import replace

    from mixopt.config.runtime import Runtime
    from mixopt.core.workspace import Workspace
    from mixopt.proxy import speed
    from mixopt.sweep import choose

    monkeypatch.delenv("MIXOPT_AUTO_COMPILE", raising=False)  # conftest fixes it for the other tests
    ws = Workspace(tmp_path)
    calls = []

    def timings(spec, n, device, **_):
        calls.append(n)
        return {"compile_seconds": 10.0, "eager_step": 0.1, "compiled_step": 0.05}  # break-even: 200 steps

    monkeypatch.setattr(speed, "compile_timings", timings)
    monkeypatch.setattr(speed, "training_rates", lambda *a, **k: pytest.fail("the batch choice's rates are reused"))
    rates = {1: 10.0, 2: 20.0}  # proxy-steps/s: 0.1 s per step at N = 1 and at N = 2

    def spec_of(steps):
        return replace(SPEC, tokens=SPEC.seq_len * SPEC.batch_size * steps)

    # A worker trains 5 steps x 0.1 s = 0.5 s eager: under MIN_COMPILE_SECONDS, so no compile is measured.
    short = choose.choose_compile(Runtime(), spec_of(5), ws, 1, runs=1, rates=rates)
    assert not short.compile and "not measured" in short.why and calls == []
    # 300 steps: 300 x 0.05 = 15 s saved > 10 s to compile.
    long = choose.choose_compile(Runtime(), spec_of(300), ws, 1, runs=1, rates=rates)
    assert long.compile and long.timings["break_even_steps"] == 200 and "measured now" in long.why and calls == [1]
    # 90 steps per batch, 4 runs 2 at a time, one worker: 2 batches = 180 steps, under break-even: eager.
    # With 2 workers each trains one batch. The measurement is cached (no tokens in its key).
    assert not choose.choose_compile(Runtime(), spec_of(90), ws, 2, runs=4, rates=rates).compile
    assert choose.choose_compile(Runtime(), spec_of(150), ws, 2, runs=4, rates=rates).compile  # 300 steps
    assert choose.choose_compile(Runtime(), spec_of(150), ws, 2, runs=4, rates=rates).timings["steps"] == 300
    assert not choose.choose_compile(Runtime(workers=2), spec_of(150), ws, 2, runs=4, rates=rates).compile
    # 3 runs 2 at a time: the last batch (1 proxy) compiles again, so 300 x 0.05 = 15 s < 2 x 10 s.
    odd = choose.choose_compile(Runtime(), spec_of(150), ws, 2, runs=3, rates=rates)
    assert not odd.compile and odd.timings["compiles"] == 2 and odd.timings["break_even_steps"] == 400
    assert calls[:2] == [1, 2] and len(calls) <= 3  # N = 2 measured once (and once more for 2 workers' threads)
    assert "cached" in choose.choose_compile(Runtime(), spec_of(150), ws, 2, runs=4, rates=rates).why
    # Compiled not faster: never pays; a compiler that fails: eager, saying why, once.
    monkeypatch.setattr(speed, "compile_timings", lambda *a, **k: {"compile_seconds": 1.0, "eager_step": 0.1,
                                                              "compiled_step": 0.11})
    slower = choose.choose_compile(Runtime(), replace(spec_of(10**5), lr=1.0), ws, 1, runs=1, rates=rates)
    assert not slower.compile and "never" in slower.why

    def broken(*a, **k):
        raise RuntimeError("InductorError: no C++ compiler")

    monkeypatch.setattr(speed, "compile_timings", broken)
    failed = choose.choose_compile(Runtime(), replace(spec_of(10**5), lr=2.0), ws, 1, runs=1, rates=rates)
    assert not failed.compile and "no C++ compiler" in failed.why
    # Explicit choices and other backends are not measured.
    assert choose.choose_compile(Runtime(compile="on"), spec_of(5), ws, 1, runs=1).compile
    assert not choose.choose_compile(Runtime(compile="off"), spec_of(10**5), ws, 1, runs=1).compile
    assert not choose.choose_compile(Runtime(backend="ray"), spec_of(10**5), ws, 1, runs=1).compile
    choose.record_choice(ws, 3, choose.BatchChoice(2, "--batch-proxies 2", {}), long)
    row = json.loads((tmp_path / "sweeps" / "3.json").read_text())
    assert row["compile"] is True and row["compile_timings"]["compile_seconds"] == 10.0
