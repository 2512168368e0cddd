"""Decoding without a cache: every step runs the teacher-forced forward over the whole prefix.

Each step costs the full prefix instead of one position, so this is slow; it exists to show
that the key/value and LSTM-state caches change nothing: search over this wrapper must give
the same translations as search over the model itself (`bench/decode_speed.py` compares
their BLEU, the tests their outputs).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from nmt_cli.models.interface import DecoderState, step_log_probs


@dataclasses.dataclass
class PrefixState(DecoderState):
    src: torch.Tensor  # [R, S]
    src_mask: torch.Tensor  # [R, S]
    prefix: torch.Tensor  # [R, t] BOS and the words decoded so far


class Uncached(nn.Module):
    """The decoding interface over any model's `forward(src, src_mask, tgt_in)`."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor) -> PrefixState:
        return PrefixState(src, src_mask, src.new_empty(src.size(0), 0))

    def init_state(self, memory: PrefixState) -> PrefixState:
        return memory

    def step(
        self, prev_tokens: torch.Tensor, state: PrefixState
    ) -> tuple[torch.Tensor, PrefixState, None]:
        prefix = torch.cat([state.prefix, prev_tokens.unsqueeze(1)], dim=1)
        logits = self.model(state.src, state.src_mask, prefix)[:, -1]
        return step_log_probs(logits), dataclasses.replace(state, prefix=prefix), None
