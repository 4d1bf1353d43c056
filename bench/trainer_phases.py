"""Where a training step's CPU time goes: mixopt's one loop at N = 1 (its stacked forward, the
tied output layer + token_losses, AdamW, per-proxy clipping) vs the plain loop over transformers'
LlamaForCausalLM (F.cross_entropy, clip_grad_norm_, torch.optim.AdamW), same spec and init, one
thread. The two models step alternately on the same batches (the order flips every step: a
shared machine's load falls on both), and each phase is timed in CPU seconds
(time.process_time), medians over the steps. The learning rate is constant (the schedule costs
nothing); the optimizers are the same as bench/trainer.py's.

    python bench/trainer_phases.py --size 1m --steps 10
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

PHASES = ("forward", "loss", "backward", "clip", "optimizer")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1m")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per loop (after 2 untimed)")
    ap.add_argument("--vocab", type=int, default=8192)
    args = ap.parse_args()
    import torch

    from mixopt.config.schema import Proxy
    from mixopt.proxy.model import proxy_spec

    torch.set_num_threads(1)
    spec = proxy_spec(Proxy(size=args.size, tokens=1), vocab_size=args.vocab)
    loops = {"plain_loop": _plain_step(spec), "one_loop_n1": _one_step(spec)}
    rng = np.random.default_rng(0)
    seen = {k: [] for k in loops}
    for step in range(args.steps + 2):
        x = torch.from_numpy(rng.integers(0, spec.vocab_size, (spec.batch_size, spec.seq_len + 1)))
        for k in (list(loops) if step % 2 else list(loops)[::-1]):
            times = loops[k](x[:, :-1], x[:, 1:])
            if step >= 2:
                seen[k].append(times)
    out = {"size": args.size, "steps": args.steps, "cpu_seconds_per_step_median": {}}
    for k, rows in seen.items():
        med = np.median(np.array(rows), axis=0)
        out["cpu_seconds_per_step_median"][k] = {p: round(float(v), 4) for p, v in zip(PHASES, med)} | {
            "total": round(float(np.median(np.array(rows).sum(axis=1))), 4)}
    one, plain = (out["cpu_seconds_per_step_median"][k]["total"] for k in ("one_loop_n1", "plain_loop"))
    out["one_loop_n1_over_plain_loop_per_cpu_s"] = round(plain / one, 3)
    print(json.dumps(out, indent=2))


def _phases(forward, loss, params, opt, clip):
    """A step function timing its phases: forward (to the logits), loss, backward, clip, optimizer."""
    pt = time.process_time

    def step(x, t):
        t0 = pt()
        out = forward(x)
        t1 = pt()
        ce = loss(out, t)
        t2 = pt()
        opt.zero_grad(set_to_none=True)
        ce.backward()
        del out
        t3 = pt()
        clip(params)
        t4 = pt()
        opt.step()
        return [t1 - t0, t2 - t1, t3 - t2, t4 - t3, pt() - t4]
    return step


def _adamw(params, spec, matrix_ndim: int):
    import torch

    return torch.optim.AdamW([{"params": [p for p in params if p.ndim >= matrix_ndim], "weight_decay": spec.weight_decay},
                              {"params": [p for p in params if p.ndim < matrix_ndim], "weight_decay": 0.0}],
                             lr=spec.lr, betas=(0.9, 0.95))


def _plain_step(spec):
    import torch
    import torch.nn.functional as F

    from mixopt.proxy.model import build_model

    torch.manual_seed(0)
    model = build_model(spec).train()
    params = list(model.parameters())
    return _phases(lambda x: model(input_ids=x).logits,
                   lambda out, t: F.cross_entropy(out.reshape(-1, out.shape[-1]), t.reshape(-1)),
                   params, _adamw(params, spec, 2), lambda ps: torch.nn.utils.clip_grad_norm_(ps, 1.0))


def _one_step(spec):
    import torch

    from mixopt.proxy.loss import token_losses
    from mixopt.proxy.model import build_model, forward_logits, stack_weights
    from mixopt.proxy.train import _clip_per_proxy

    torch.manual_seed(0)
    W = {k: v.detach().requires_grad_(True) for k, v in stack_weights(build_model(spec), 1).items()}
    params = list(W.values())
    return _phases(lambda x: forward_logits(W, x[None], spec),
                   lambda out, t: token_losses()(out.float().reshape(-1, out.shape[-1]), t.reshape(-1)).mean(),
                   params, _adamw(params, spec, 3), lambda ps: _clip_per_proxy(ps, 1.0))


if __name__ == "__main__":
    main()
