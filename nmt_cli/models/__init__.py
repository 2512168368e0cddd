"""Model families. `BUILDERS` maps `model.type` to a function that turns the model config
and vocabulary sizes into a module implementing the decoding interface:

- `forward(src, src_mask, tgt_in) -> logits [B, T, V]` (teacher forcing)
- `encode(src, src_mask) -> memory`
- `init_state(memory) -> DecoderState`
- `step(prev_tokens [B], state) -> (log_probs [B, V], state, attention [B, S] or None)`

A plain dict, so finding a family's code takes one click.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from nmt_cli.models.ntm import build_ntm
from nmt_cli.models.rnn import build_rnn
from nmt_cli.models.transformer import build_transformer

BUILDERS = {"rnn": build_rnn, "transformer": build_transformer, "ntm": build_ntm}


def build_model(model_cfg: Any, src_vocab: int, tgt_vocab: int, shared_vocab: bool) -> nn.Module:
    return BUILDERS[model_cfg.type](model_cfg, src_vocab, tgt_vocab, shared_vocab)
