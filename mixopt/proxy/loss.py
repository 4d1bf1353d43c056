"""The training loss: the tied output layer and per-token cross-entropy, whole (token_losses) or a
chunk of tokens at a time (chunked_losses) where the logits would be too large to hold."""

from __future__ import annotations

import functools

from mixopt.proxy.model import ProxySpec


@functools.cache
def token_losses():
    """Cross-entropy per token ([tokens, V] logits, [tokens] targets -> [tokens]), F.cross_entropy's
    within float noise. The forward is one fused log_softmax (torch.logsumexp is a max, a subtraction,
    an exp and a sum, each a pass over [tokens, V]: its forward cost 1.6x F.cross_entropy's at 1m on
    a CPU) and keeps the log-probabilities, not the logits. The backward turns them into
    softmax - one-hot in place: no [tokens, V] gradient is allocated (F.cross_entropy's first
    zero-fills a fresh one, 10% of a tiny proxy's CPU step) and no logits - lse is computed again.
    The backward consumes what the forward saved: it runs once (no retain_graph)."""
    import torch

    class TokenLosses(torch.autograd.Function):
        @staticmethod
        def forward(ctx, logits, targets):
            logp = torch.log_softmax(logits, dim=-1)
            ctx.save_for_backward(logp, targets)
            return -logp.gather(-1, targets[:, None])[:, 0]

        @staticmethod
        def backward(ctx, grad):
            if getattr(ctx, "consumed", False):
                raise RuntimeError("token_losses: its backward consumes the saved log-probabilities; run it once")
            ctx.consumed = True
            logp, targets = ctx.saved_tensors
            g = logp.exp_()  # softmax, in the saved buffer: nothing else reads it
            g.scatter_add_(-1, targets[:, None], torch.full((len(targets), 1), -1.0, dtype=g.dtype, device=g.device))
            return g.mul_(grad[:, None]), None

    return TokenLosses.apply


CHUNK_LOGITS = 1 << 28  # logits (N x batch x seq x vocab) above which the loss runs in chunks: 1 GiB in fp32
CHUNK_ELEMENTS = 1 << 26  # logits of one chunk (256 MiB in fp32)


def chunk_rows(n: int, spec: ProxySpec) -> int:
    """Tokens per proxy in one chunk of the chunked loss for N proxies of `spec`; 0 (not chunked)
    while their logits stay under CHUNK_LOGITS (every CPU test and the golden file)."""
    if n * spec.batch_size * spec.seq_len * spec.vocab_size <= CHUNK_LOGITS:
        return 0
    return max(1, CHUNK_ELEMENTS // (n * spec.vocab_size))


@functools.cache
def chunked_losses():
    """The tied output layer and the per-token cross-entropy, a chunk of tokens at a time:
    (hidden [N, M, H], embedding [N, V, H], targets [N, M], rows per chunk, matmul dtype or None)
    -> losses [N, M] in float32. Only one chunk's logits exist at once, forward or backward (the
    backward computes them again): a chunk's [N, rows, V], where the unchunked loss holds the
    logits, a float32 copy and a float32 gradient of all M tokens (~12 bytes a logit in bf16).
    The same function as project + token_losses, rounded the same per token; the embedding's
    gradient is summed chunk by chunk (float noise, not bitwise)."""
    import torch

    def logits_of(h, emb, dtype):
        return torch.bmm(h.to(dtype), emb.to(dtype).transpose(1, 2)).float()  # [N, rows, V]

    class ChunkedLosses(torch.autograd.Function):
        @staticmethod
        def forward(ctx, h, emb, targets, rows, dtype):
            dtype = dtype or h.dtype
            out = torch.empty(targets.shape, dtype=torch.float32, device=h.device)
            lse = torch.empty_like(out)
            with torch.autocast(device_type=h.device.type, enabled=False):
                for c in range(0, h.shape[1], rows):
                    logits = logits_of(h[:, c:c + rows], emb, dtype)
                    lse[:, c:c + rows] = torch.logsumexp(logits, dim=-1)
                    out[:, c:c + rows] = lse[:, c:c + rows] - logits.gather(-1, targets[:, c:c + rows, None])[..., 0]
            ctx.save_for_backward(h, emb, targets, lse)
            ctx.rows, ctx.dtype = rows, dtype
            return out

        @staticmethod
        def backward(ctx, grad):
            h, emb, targets, lse = ctx.saved_tensors
            rows, dtype = ctx.rows, ctx.dtype
            dh = torch.empty_like(h)
            demb = torch.zeros(emb.shape, dtype=torch.float32, device=emb.device)
            e = emb.to(dtype)
            with torch.autocast(device_type=h.device.type, enabled=False):
                for c in range(0, h.shape[1], rows):
                    hc, t = h[:, c:c + rows], targets[:, c:c + rows, None]
                    g = (logits_of(hc, emb, dtype) - lse[:, c:c + rows, None]).exp_()  # softmax
                    g.scatter_add_(-1, t, torch.full(t.shape, -1.0, device=g.device))  # - one-hot
                    g = g.mul_(grad[:, c:c + rows, None]).to(dtype)
                    dh[:, c:c + rows] = torch.bmm(g, e).to(h.dtype)
                    demb.add_(torch.bmm(g.transpose(1, 2), hc.to(dtype)).float())
            return dh, demb.to(emb.dtype), None, None, None

    return ChunkedLosses.apply
