import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mixopt.proxy import loss
from mixopt.proxy.checkpoint import load_checkpoints, save_checkpoint, state_path
from mixopt.proxy.loss import chunked_losses, token_losses
from mixopt.proxy.model import SIZES, ProxySpec, build_model, project, stack_weights
from mixopt.proxy.train import (
    RESUME_SAVES,
    _clip_per_proxy,
    _interval_rows,
    _stage_tokens,
    lr_at,
    mixture_sequences,
    train_proxies,
)

GOLDEN = Path(__file__).parent / "golden" / "tiny_proxy_losses.json"
SPEC = ProxySpec(size="tiny", hidden=64, layers=2, heads=2, seq_len=32, batch_size=4, lr=3e-3, warmup=0.1,
                 weight_decay=0.1, tokens=4096, vocab_size=512)


def _streams():
    rng = np.random.default_rng(0)
    # Two "domains" with different token statistics, so the mixture matters.
    return [rng.integers(0, 256, 20000).astype(np.uint16), rng.integers(200, 512, 20000).astype(np.uint16)]


def test_first_losses_match_the_golden_file():
    """A silent change in the model, init, data order or optimizer shows up here."""
    _, (losses,), _ = train_proxies(SPEC, [(0.7, 0.3)], _streams(), seed=0)  # N = 1
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
        assert {"tiny": 1e5, "1m": 1e6, "5m": 5e6, "15m": 1.4e7, "30m": 3.1e7, "60m": 6e7, "150m": 1.5e8}[name] == pytest.approx(
            non_embedding, rel=0.25)


def test_losses_reach_the_host_once_per_save_point_not_once_per_step(monkeypatch):
    """On a GPU every host read of a tensor is a sync. The loop keeps its losses on the device and
    reads them at its save points: the reads mixopt's own code makes (Tensor.item, .tolist, .cpu,
    float(), bool(), ...) are as many at 60 steps as at 20, while on_step still sees every step."""
    import torch

    reads = []

    def counting(name):
        orig = getattr(torch.Tensor, name)

        def read(self, *a, **k):
            if sys._getframe(1).f_globals.get("__name__", "").startswith("mixopt"):
                reads.append(name)
            return orig(self, *a, **k)
        return read

    for name in ("item", "tolist", "cpu", "numpy", "__float__", "__bool__", "__int__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    counts = {}
    for steps in (20, 60):
        reads.clear()
        spec = replace(SPEC, tokens=SPEC.seq_len * SPEC.batch_size * steps)
        seen = []
        _, losses, _ = train_proxies(spec, [(0.7, 0.3), (0.2, 0.8)], _streams(), seed=0,
                                     on_step=lambda step, total, last: seen.append((step, len(last))))
        assert seen == [(s, 2) for s in range(1, steps + 1)] and [len(x) for x in losses] == [steps, steps]
        counts[steps] = len(reads)
    assert counts == {20: RESUME_SAVES, 60: RESUME_SAVES}, counts  # one .tolist() per save point


def test_foreach_clipping_is_the_per_tensor_clipping_per_proxy():
    """The foreach clipping computes, bit for bit on a CPU, what the per-tensor loop it replaced did,
    each proxy on its own norm: a proxy with huge gradients is scaled down, one with small ones is
    not touched, and at N = 1 it is torch's clip_grad_norm_."""
    import torch

    def per_tensor(params, max_norm):  # the loop before (mixopt 0.x): ~3 kernels per tensor
        norms = torch.stack([p.grad.reshape(p.shape[0], -1).norm(dim=1) for p in params]).norm(dim=0)
        coef = torch.clamp(max_norm / (norms + 1e-6), max=1.0)
        for p in params:
            p.grad.mul_(coef.view(-1, *([1] * (p.ndim - 1))))

    torch.manual_seed(0)
    W = stack_weights(build_model(SPEC), 3)
    scale = torch.tensor([1e-4, 1.0, 50.0])  # proxy 0's gradient norm is far under 1, the others' over it
    grads = {k: torch.randn(w.shape) * scale.view(-1, *([1] * (w.ndim - 1))) for k, w in W.items()}
    clipped = {}
    for name, clip in (("foreach", _clip_per_proxy), ("per_tensor", per_tensor)):
        for k, w in W.items():
            w.grad = grads[k].clone()
        clip(list(W.values()), 1.0)
        clipped[name] = {k: w.grad.clone() for k, w in W.items()}
    for k in W:
        assert torch.equal(clipped["foreach"][k], clipped["per_tensor"][k]), k
        assert torch.equal(clipped["foreach"][k][0], grads[k][0])  # under the norm: untouched
    norms = torch.stack([g.reshape(3, -1).norm(dim=1) for g in clipped["foreach"].values()]).norm(dim=0)
    assert norms[1:].tolist() == pytest.approx([1.0, 1.0], rel=1e-5)
    one = {k: w[:1].detach().clone().requires_grad_(True) for k, w in W.items()}
    ref = {k: w[:1].detach().clone().requires_grad_(True) for k, w in W.items()}
    for k in W:
        one[k].grad, ref[k].grad = grads[k][2:].clone(), grads[k][2:].clone()
    _clip_per_proxy(list(one.values()), 1.0)
    torch.nn.utils.clip_grad_norm_(list(ref.values()), 1.0, foreach=True)
    for k in W:
        torch.testing.assert_close(one[k].grad, ref[k].grad, rtol=1e-6, atol=0)


def test_an_interval_of_batches_is_gathered_at_once_as_one_slice_per_sequence_would():
    """The token windows of a stretch of steps, gathered in one call (one fancy index per domain),
    are exactly the step-by-step, sequence-by-sequence slices: the same data order, bit for bit."""
    import torch

    streams = _streams()
    width, b = SPEC.seq_len + 1, SPEC.batch_size
    plans = [mixture_sequences(w, [len(s) for s in streams], SPEC, np.random.default_rng([3, 2]))
             for w in [(0.7, 0.3), (0.2, 0.8), (1.0, 0.0)]]
    staged = _stage_tokens(streams, _interval_rows(plans, 5, 12, b), width, "cpu")
    assert staged.shape == (7, 3, b, width) and staged.dtype == torch.int64
    for k, step in enumerate(range(5, 12)):
        for i, (seqs, _) in enumerate(plans):
            for j, (d, start) in enumerate(seqs[step * b:(step + 1) * b]):
                assert staged[k, i, j].tolist() == streams[d][start:start + width].tolist()


def test_token_losses_are_cross_entropy_and_the_backward_allocates_no_logits_sized_tensor():
    """token_losses: F.cross_entropy's losses and gradients within float noise; its backward makes
    no new [tokens, V] tensor (softmax - one-hot is written over the saved log-probabilities: at
    1m on a CPU that is what puts the one loop ahead of the plain loop), and a second backward,
    which would read the overwritten buffer, raises instead of returning a wrong gradient."""
    import torch
    import torch.nn.functional as F
    from torch.utils._python_dispatch import TorchDispatchMode

    m, v = 64, 1000
    g = torch.Generator().manual_seed(0)
    logits, t, w = torch.randn(m, v, generator=g) * 3, torch.randint(0, v, (m,), generator=g), torch.rand(m, generator=g)

    class Made(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.large = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor) and out.numel() == m * v and not any(
                    isinstance(a, torch.Tensor) and a.data_ptr() == out.data_ptr() for a in args):
                self.large.append(str(func))  # a new logits-sized tensor, not an in-place result
            return out

    ref = logits.clone().requires_grad_(True)
    expect = F.cross_entropy(ref, t, reduction="none")
    (expect * w).sum().backward()
    ours = logits.clone().requires_grad_(True)
    got = token_losses()(ours, t)
    with Made() as made:
        (got * w).sum().backward()
    torch.testing.assert_close(got.detach(), expect.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours.grad, ref.grad, rtol=1e-5, atol=1e-7)
    assert made.large == []
    again = token_losses()(logits.clone().requires_grad_(True), t).sum()
    again.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="run it once"):
        again.backward()


def test_the_chunked_loss_never_holds_the_whole_logits_and_equals_the_plain_one():
    """The output layer + cross-entropy in chunks of 32 tokens: the largest tensor any op makes
    (forward and backward, seen by a dispatch hook) is a chunk's logits or the embedding's
    gradient, not the N x tokens x vocab logits the plain loss makes; losses within 1e-6, gradients
    within float noise."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    n, m, hdim, v, rows = 2, 256, 32, 16384, 32
    g = torch.Generator().manual_seed(0)
    h, emb = torch.randn(n, m, hdim, generator=g), torch.randn(n, v, hdim, generator=g) * 0.1
    t, w = torch.randint(0, v, (n, m), generator=g), torch.rand(n, m, generator=g)

    class Largest(TorchDispatchMode):
        numel = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for o in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(o, torch.Tensor):
                    self.numel = max(self.numel, o.numel())
            return out

    def run(losses):
        hh, ee = h.clone().requires_grad_(True), emb.clone().requires_grad_(True)
        with Largest() as seen:
            loss = losses(hh, ee)
            (loss * w).sum().backward()
        return loss.detach(), hh.grad, ee.grad, seen.numel

    plain = run(lambda hh, ee: token_losses()(project({"model.embed_tokens.weight": ee}, hh).float().reshape(-1, v),
                                               t.reshape(-1)).view(n, m))
    chunked = run(lambda hh, ee: chunked_losses()(hh, ee, t, rows, None))
    assert plain[3] == n * m * v  # the whole logits
    assert chunked[3] == max(n * rows * v, emb.numel()) < plain[3] / 4
    torch.testing.assert_close(chunked[0], plain[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(chunked[1], plain[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(chunked[2], plain[2], rtol=1e-5, atol=1e-6)


def test_training_with_the_chunked_loss_follows_the_plain_loop(monkeypatch):
    """Past CHUNK_LOGITS the loop trains through the chunked loss: the same losses within float noise."""
    spec = replace(SPEC, tokens=SPEC.seq_len * SPEC.batch_size * 6)
    _, plain, _ = train_proxies(spec, [(0.7, 0.3), (0.2, 0.8)], _streams(), seed=0)
    monkeypatch.setattr(loss, "CHUNK_LOGITS", 0)
    monkeypatch.setattr(loss, "CHUNK_ELEMENTS", 2 * 40 * SPEC.vocab_size)  # 40 of 128 tokens a chunk
    _, chunked, _ = train_proxies(spec, [(0.7, 0.3), (0.2, 0.8)], _streams(), seed=0)
    np.testing.assert_allclose(chunked, plain, rtol=1e-5)


class Crash(Exception):
    pass


def _crash_at(k):
    """A progress hook that "crashes" the run once step k is done."""
    def on_step(step, total, last):
        if step == k:
            raise Crash
    return on_step


@pytest.mark.parametrize("n", [1, 3])
def test_resumed_training_equals_an_uninterrupted_run(tmp_path, n):
    import torch

    mixtures = [(0.7, 0.3), (0.2, 0.8), (1.0, 0.0)][:n]
    states = [tmp_path / f"run{i}.resume.pt" for i in range(n)]
    W, losses, epochs = train_proxies(SPEC, mixtures, _streams(), seed=3)

    with pytest.raises(Crash):  # dies after step 13: the state saved after step 12 survives it
        train_proxies(SPEC, mixtures, _streams(), seed=3, on_step=_crash_at(13), states=states)
    assert all(torch.load(p, weights_only=True)["step"] == 12 for p in states)  # saves every 4 of 32 steps
    seen = []
    W2, losses2, epochs2 = train_proxies(SPEC, mixtures, _streams(), seed=3, states=states,
                                         on_step=lambda step, total, last: seen.append((step, total, len(last))))
    assert seen[0] == (13, 32, n) and seen[-1] == (32, 32, n)  # resumed: steps 1-12 not trained again
    assert losses2 == losses and epochs2 == epochs
    for k in W:
        assert torch.equal(W2[k], W[k]), k


def test_unusable_states_start_over(tmp_path):
    import torch

    mixtures = [(0.7, 0.3), (0.2, 0.8)]
    states = [tmp_path / "a.resume.pt", tmp_path / "b.resume.pt"]
    with pytest.raises(Crash):
        train_proxies(SPEC, mixtures[:1], _streams(), seed=3, states=states[:1], on_step=_crash_at(9))
    seen = []
    train_proxies(SPEC, mixtures, _streams(), seed=3, states=states, on_step=lambda step, *_: seen.append(step))
    assert seen[0] == 1  # one member had state, the other none: the batch trained from step 0
    # A state file of the old HF-model trainer (same spec and step, other contents): start over, no error.
    old = torch.load(states[0], weights_only=True)
    torch.save({"spec": old["spec"], "step": old["step"], "losses": old["losses"], "model": {}, "opt": {}}, states[0])
    seen.clear()
    train_proxies(SPEC, mixtures[:1], _streams(), seed=3, states=states[:1], on_step=lambda step, *_: seen.append(step))
    assert seen[0] == 1


def test_checkpoint_roundtrip(tmp_path):
    """A checkpoint is the file safetensors' save_model writes for transformers' model, byte for byte."""
    import torch
    from safetensors.torch import load_model, save_model

    torch.manual_seed(0)
    model = build_model(SPEC)
    W = stack_weights(model, 2)
    sha = save_checkpoint(W, 1, tmp_path / "m.safetensors")
    assert len(sha) == 64 and not list(tmp_path.glob(".*tmp"))
    save_model(model, str(tmp_path / "hf.safetensors"))
    assert (tmp_path / "m.safetensors").read_bytes() == (tmp_path / "hf.safetensors").read_bytes()
    fresh = build_model(SPEC)
    load_model(fresh, str(tmp_path / "m.safetensors"))
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    back = load_checkpoints([tmp_path / "hf.safetensors", tmp_path / "m.safetensors"])
    assert back.keys() == W.keys() and all(torch.equal(back[k], W[k].detach()) for k in W)
    assert state_path(tmp_path / "m.safetensors").name == "m.resume.pt"


@pytest.mark.slow  # compiles with inductor: ~20 CPU-s cold
def test_compiled_training_matches_eager_within_float_noise():
    """torch.compile of the forward (what `--compile on` trains with) computes what eager does,
    rounded differently: per-step losses within 1e-5 relative (seen: 2e-7) and weights within 1e-4
    after 32 steps of two proxies; not bitwise, which is why a result records it."""
    import shutil

    import torch

    from mixopt.proxy import speed

    if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        pytest.skip("no C++ compiler for torch.compile's CPU backend (.ci/run installs Debian's g++)")
    eager = train_proxies(SPEC, [(0.7, 0.3), (0.2, 0.8)], _streams(), seed=0)
    compiled = train_proxies(SPEC, [(0.7, 0.3), (0.2, 0.8)], _streams(), seed=0, compile=True)
    np.testing.assert_allclose(compiled[1], eager[1], rtol=1e-5)
    assert max((compiled[0][k] - eager[0][k]).abs().max().item() for k in eager[0]) < 1e-4
    # The measurement `--compile auto` decides on: real, positive seconds.
    t = speed.compile_timings(SPEC, 2, "cpu", rounds=1)
    assert t["compile_seconds"] >= 0 and t["eager_step"] > 0 and t["compiled_step"] > 0
    torch._dynamo.reset()
