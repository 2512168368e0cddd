"""Dynamic int8 quantization of a model for CPU decoding.

Linear (and LSTM) weights are stored as int8 with one scale per output row; activations are
quantized on the fly at each matmul (`torch.ao.quantization.quantize_dynamic`). Decoding is
dominated by these matmuls, and int8 ones move a quarter of the bytes and run on the CPU's
integer dot-product units. Quality usually drops by a few tenths of BLEU at most;
`bench/decode_speed.py` measures both.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from nmt_cli.models import replaceable_copy


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of `model` (in eval mode) with int8 Linear and LSTM layers."""
    model = replaceable_copy(model)
    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(
            model, {nn.Linear, nn.LSTM}, dtype=torch.qint8
        )
