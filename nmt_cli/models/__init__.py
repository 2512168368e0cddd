"""Model families. `BUILDERS` maps `model.type` to a function that turns the model config
and vocabulary sizes into a module implementing the decoding interface (`Seq2Seq`, in
`interface.py`). A plain dict, so finding a family's code takes one click.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from nmt_cli.config import ModelConfig
from nmt_cli.models.ntm import build_ntm
from nmt_cli.models.rnn import build_rnn
from nmt_cli.models.transformer import build_transformer

BUILDERS = {"rnn": build_rnn, "transformer": build_transformer, "ntm": build_ntm}


def build_model(
    model_cfg: ModelConfig, src_vocab: int, tgt_vocab: int, shared_vocab: bool
) -> nn.Module:
    return BUILDERS[model_cfg.type](model_cfg, src_vocab, tgt_vocab, shared_vocab)


def build_model_shapes(
    model_cfg: ModelConfig, src_vocab: int, tgt_vocab: int, shared_vocab: bool
) -> nn.Module:
    """The model on the meta device: every weight's name and shape, no memory. Readers check a
    checkpoint's weights against it before building the real model, so a config naming a huge
    model over small weights costs nothing."""
    with torch.device("meta"), _NoInitialisation():
        return build_model(model_cfg, src_vocab, tgt_vocab, shared_vocab)


class _NoInitialisation(TorchFunctionMode):
    """Skips `torch.nn.init` fills: a meta tensor holds no values to fill, and PyTorch's meta
    kernel for `normal_` imports its compiler stack on first use (seconds at every start)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__module__", None) == "torch.nn.init" or func is torch.Tensor.normal_:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)
