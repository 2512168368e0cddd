"""Linear layers made for decoding on a CPU: oneDNN-prepacked fp32, or dynamic int8.

Prepacked: PyTorch multiplies fp32 matrices on a CPU with MKL; oneDNN's kernels, given each
weight reordered once into their blocked layout (what `torch.compile` does for CPU inference
when it freezes weights), run the decoder's matrix products about twice as fast on the AMD
EPYC machines we measure on, with results equal to MKL's to within 1e-4. oneDNN keeps memory
for every input shape it meets, and a beam search meets hundreds of row counts, so the rows
are padded to a multiple of `ROW_BUCKET`: that bounds the shapes, for the cost of the padded
rows. `bench/decode_speed.py` measures both (figures in docs/performance.md).

int8: Linear (and LSTM) weights are stored as int8 with one scale per output row; activations
are quantized on the fly at each matmul (`torch.ao.quantization.quantize_dynamic`). Decoding is
dominated by these matmuls, and int8 ones move a quarter of the bytes and run on the CPU's
integer dot-product units. Quality usually drops by a few tenths of BLEU at most.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from nmt_cli.models.transformer import MultiHeadAttention

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


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of `model` (in eval mode) with int8 Linear and LSTM layers."""
    model = replaceable_copy(model)
    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(
            model, {nn.Linear, nn.LSTM}, dtype=torch.qint8
        )


def replaceable_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` in eval mode whose Linear layers can each be swapped for another
    implementation (int8, prepacked): the Transformer's cross-attention, which slices one
    fused query/key/value weight, gets whole Linear layers for its query and key/value rows."""
    model = copy.deepcopy(model).eval()
    for module in model.modules():
        if isinstance(module, MultiHeadAttention):
            module.split_projection()
    return model
