"""An ensemble of models that share a vocabulary, behind the single-model decoding interface.

Each step, every member predicts the next word from its own state; the ensemble's
distribution is the members' average probability (fairseq's and Marian's default), and its
attention the members' average attention. Search code sees one model and never knows, and
neither does `nmt score`, whose teacher-forced `forward` averages the same way.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from nmt_cli.models.interface import DecoderState


@dataclasses.dataclass
class EnsembleState(DecoderState):
    members: list[DecoderState]

    def reorder(self, index: torch.Tensor, **grouping) -> EnsembleState:  # noqa: ANN003
        return EnsembleState([state.reorder(index, **grouping) for state in self.members])


class Ensemble(nn.Module):
    def __init__(self, models: list[nn.Module]) -> None:
        super().__init__()
        self.models = nn.ModuleList(models)

    def forward(
        self, src: torch.Tensor, src_mask: torch.Tensor, tgt_in: torch.Tensor
    ) -> torch.Tensor:
        """Teacher-forced log(mean_m P_m(word)) [B, T, V]: log-probabilities, which serve as
        logits (their log-softmax is themselves)."""
        log_probs = torch.stack(
            [
                torch.log_softmax(model(src, src_mask, tgt_in).float(), dim=-1)
                for model in self.models
            ]
        )  # [M, B, T, V]
        return torch.logsumexp(log_probs, dim=0) - math.log(len(self.models))

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor) -> list:
        return [model.encode(src, src_mask) for model in self.models]

    def init_state(self, memories: list) -> EnsembleState:
        return EnsembleState(
            [model.init_state(m) for model, m in zip(self.models, memories, strict=True)]
        )

    def step(
        self, prev_tokens: torch.Tensor, state: EnsembleState
    ) -> tuple[torch.Tensor, EnsembleState, torch.Tensor | None]:
        """log(mean_m P_m(word)) [B, V], the next state, the mean attention [B, S] (or None)."""
        outputs = [
            model.step(prev_tokens, member)
            for model, member in zip(self.models, state.members, strict=True)
        ]
        log_probs = torch.stack([lp.float() for lp, _, _ in outputs])  # [M, B, V]
        mean = torch.logsumexp(log_probs, dim=0) - math.log(len(outputs))
        attentions = [a.float() for _, _, a in outputs if a is not None]
        attention = torch.stack(attentions).mean(dim=0) if attentions else None
        return mean, EnsembleState([s for _, s, _ in outputs]), attention
