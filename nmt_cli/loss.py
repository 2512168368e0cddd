"""Label-smoothed cross-entropy over [tokens x vocabulary] logits, in chunks of rows.

`F.cross_entropy(logits.float(), ..., label_smoothing=eps)` makes about seven passes over the
logits and keeps an fp32 copy and the log-probabilities for backward: at WMT sizes (25k
target tokens x a 32k vocabulary) that is 3.2 GB per fp32 copy and ~50 GB of memory traffic
per update, as much time on a GPU as the model's matrix products. Here the forward pass keeps
only each row's log-sum-exp, computed a chunk of rows at a time in fp32 from the logits in
their own dtype (bf16 under autocast), and backward recomputes the softmax chunk by chunk and
writes each chunk's gradient into one tensor of the logits' dtype (apex's fused `xentropy`
works the same way).
No temporary grows beyond one chunk of `CHUNK_ELEMENTS`, and on a CPU this is also twice as
fast as `F.cross_entropy`.

With eps the smoothing weight, V the vocabulary size and t the reference word, a row's loss
is PyTorch's (1 - eps) * NLL(t) + eps * mean over all V words of NLL(word):

    loss = lse - (1 - eps) * x[t] - eps * mean(x),    lse = log(sum(exp(x)))

and its gradient softmax(x) - (1 - eps) * onehot(t) - eps / V; rows whose target is the
padding index count for nothing.
"""

from __future__ import annotations

import torch

from nmt_cli.data.tokenizer import PAD
from nmt_cli.runtime import autocast

# Elements per chunk. On a CPU a chunk that stays in cache (4 MB of fp32) makes the passes over
# it cheap: forward and backward of 3,400 x 8,000 logits took 104 ms (2 cores), 134 with
# 64 MB chunks, 210 for F.cross_entropy. On a GPU each chunk costs kernel launches (a compiled
# step unrolls the loop), so chunks are large: 256 MB, ~2,000 rows of a 32k vocabulary.
CHUNK_ELEMENTS = {"cpu": 1 << 20, "cuda": 1 << 26}


def chunk_rows(logits: torch.Tensor) -> int:
    """Rows of `logits` per chunk on their device."""
    elements = CHUNK_ELEMENTS.get(logits.device.type, CHUNK_ELEMENTS["cuda"])
    return max(1, elements // logits.size(1))


class _SmoothedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, smoothing: float, ignore_index: int):  # noqa: ANN001
        rows = chunk_rows(logits)
        keep = target != ignore_index
        lse = torch.empty(logits.size(0), dtype=torch.float32, device=logits.device)
        total = torch.zeros((), dtype=torch.float32, device=logits.device)
        for start in range(0, logits.size(0), rows):
            x = logits[start : start + rows].float()
            t = target[start : start + rows]
            chunk_lse = torch.logsumexp(x, dim=1)
            picked = x.gather(1, t.unsqueeze(1)).squeeze(1)
            row_loss = chunk_lse - (1.0 - smoothing) * picked - smoothing * x.mean(dim=1)
            total = total + torch.where(keep[start : start + rows], row_loss, 0.0).sum()
            lse[start : start + rows] = chunk_lse
        ctx.save_for_backward(logits, target, lse)
        ctx.smoothing, ctx.ignore_index = smoothing, ignore_index
        return total

    @staticmethod
    def backward(ctx, grad_total):  # noqa: ANN001
        logits, target, lse = ctx.saved_tensors
        smoothing, vocab = ctx.smoothing, logits.size(1)
        rows = chunk_rows(logits)
        grad = torch.empty_like(logits)
        weight = torch.where(target != ctx.ignore_index, grad_total, 0.0).unsqueeze(1)  # [N, 1]
        in_place = grad.dtype == torch.float32  # else computed in fp32, then cast
        for start in range(0, logits.size(0), rows):
            end = min(start + rows, logits.size(0))
            x, w = logits[start:end].float(), weight[start:end]
            # In place, a few passes over the chunk: w * (softmax - eps / V) ...
            g = grad[start:end] if in_place else torch.empty_like(x)
            torch.sub(x, lse[start:end, None], out=g).exp_()
            torch.addcmul(w * (-smoothing / vocab), g, w, out=g)
            # ... - w * (1 - eps) at the reference word.
            g.scatter_add_(1, target[start:end, None], w * (smoothing - 1.0))
            if not in_place:
                grad[start:end] = g
        return grad, None, None, None


def smoothed_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, *, smoothing: float, ignore_index: int
) -> torch.Tensor:
    """Summed label-smoothed cross-entropy of `logits` [N, V] (any float dtype) against
    `target` [N], as `F.cross_entropy(logits.float(), target, ignore_index=...,
    label_smoothing=smoothing, reduction="sum")` computes it, in fp32."""
    return _SmoothedCrossEntropy.apply(logits, target, smoothing, ignore_index)


class TokenLoss(torch.nn.Module):
    """A model and its training loss as one module, `(src, src_mask, tgt_in, tgt_out) ->`
    the summed loss over the real target tokens: what DDP wraps and torch.compile compiles,
    so the loss and its backward are inside the compiled region."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        label_smoothing: float,
        device: torch.device,
        precision: str,
    ) -> None:
        super().__init__()
        self.model, self.label_smoothing = model, label_smoothing
        self.device, self.precision = device, precision

    def forward(self, src, src_mask, tgt_in, tgt_out) -> torch.Tensor:  # noqa: ANN001
        with autocast(self.device, self.precision):
            logits = self.model(src, src_mask, tgt_in)  # [B, T, V]
        return smoothed_cross_entropy(
            logits.flatten(0, 1),
            tgt_out.flatten(),
            smoothing=self.label_smoothing,
            ignore_index=PAD,
        )
