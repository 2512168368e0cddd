"""fp32 linear layers with weights prepacked for oneDNN, for decoding on CPU.

PyTorch multiplies fp32 matrices on CPU with MKL. oneDNN's kernels, given each weight
reordered once into their blocked layout (what `torch.compile` does for CPU inference when it
freezes weights), ran the decoder's matrix products 2-2.5x as fast on the 2-core AMD EPYC we
measure on (MKL is known to favour Intel processors): the Multi30k Transformer's output layer
over 500 hypotheses took 4.3 instead of 10.9 ms, its feed-forward input layer 0.56 instead of
1.22 ms, with results equal to MKL's to within 1e-4. `bench/decode_speed.py` went from 1,916
to 3,012-3,526 target tokens/s in fp32 (two runs).

oneDNN keeps memory for every input shape it meets, and a beam search meets hundreds of row
counts: translating the Multi30k test set three times peaked at 765 MiB of RSS, against 463
MiB with MKL (and still 655 MiB with oneDNN's primitive cache turned off). Padding the rows
to a multiple of 64 bounds the shapes: 520 MiB, for the cost of the padded rows.
"""

from __future__ import annotations

import torch
from torch import nn

from nmt_cli.models import replaceable_copy

ROW_BUCKET = 64  # inputs are padded to a multiple of this many rows (see above)


class PackedLinear(nn.Module):
    """y = x W^T + b with W in oneDNN's blocked layout: inference only (no gradient)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach())
        self.bias = None if linear.bias is None else linear.bias.detach().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        padded = -rows.size(0) % ROW_BUCKET
        if padded:
            rows = torch.cat([rows, rows.new_zeros(padded, self.in_features)])
        y = torch.ops.mkldnn._linear_pointwise(rows, self.packed_weight, self.bias, "none", [], "")
        return y[: y.size(0) - padded].view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


def can_prepack() -> bool:
    """Whether this PyTorch build has oneDNN (x86 and Arm Linux builds do)."""
    return torch.backends.mkldnn.is_available()


def prepack_linear(model: nn.Module) -> nn.Module:
    """A copy of `model` (in eval mode, on CPU, fp32) with every Linear layer prepacked."""
    model = replaceable_copy(model)
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.Linear):
                setattr(parent, name, PackedLinear(child))
    return model
