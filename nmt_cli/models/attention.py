"""Attention over the encoder states: score, softmax-normalise, take the weighted sum.

The encoder keeps one vector per source position. At each decoder step the query (the
decoder state) is scored against every position, the scores become alignment weights
a_t = softmax(score(h_t, h_s)), and the context is c_t = sum_s a_t(s) h_s
(Luong et al. 2015, eqs. 7-8). The scoring functions:

- dot:     score = h_t . h_s
- general: score = h_t . W_a h_s                  (Luong's "general")
- concat:  score = v_a . tanh(W_q h_t + W_k h_s)  (Bahdanau et al. 2015, additive)

The source-side half of each score (W_a h_s, W_k h_s) does not depend on the step, so it is
computed once per sentence by `precompute_keys` and reused at every decoder step.
"""

from __future__ import annotations

import torch
from torch import nn


class Attention(nn.Module):
    def __init__(self, kind: str, query_dim: int, memory_dim: int) -> None:
        super().__init__()
        self.kind = kind
        if kind == "dot":
            if query_dim != memory_dim:
                raise ValueError("dot attention needs query_dim == memory_dim")
        elif kind == "general":
            self.key_proj = nn.Linear(memory_dim, query_dim, bias=False)
        elif kind == "concat":
            self.key_proj = nn.Linear(memory_dim, query_dim, bias=False)
            self.query_proj = nn.Linear(query_dim, query_dim, bias=True)
            self.energy = nn.Linear(query_dim, 1, bias=False)
        else:
            raise ValueError(f"unknown attention kind {kind!r}")

    def precompute_keys(self, memory: torch.Tensor) -> torch.Tensor:
        """Source-side part of the score: [B, S, D_mem] -> keys [B, S, D_query]."""
        return memory if self.kind == "dot" else self.key_proj(memory)

    def forward(
        self, query: torch.Tensor, keys: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """query [B, Q], keys [B, S, Q], memory [B, S, D], mask [B, S] (True = real token)
        -> context [B, D], weights [B, S]."""
        if self.kind == "concat":
            hidden = torch.tanh(keys + self.query_proj(query).unsqueeze(1))  # [B, S, Q]
            scores = self.energy(hidden).squeeze(2)  # [B, S]
        else:
            scores = torch.bmm(keys, query.unsqueeze(2)).squeeze(2)  # [B, S]
        scores = scores.float().masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=-1)  # [B, S]
        context = torch.bmm(weights.unsqueeze(1).to(memory.dtype), memory).squeeze(1)  # [B, D]
        return context, weights
