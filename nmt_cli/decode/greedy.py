"""Greedy decoding: take the most probable word at each step."""

from __future__ import annotations

import torch

from nmt_cli.decode import Hypothesis, max_output_lengths


@torch.no_grad()
def greedy_search(
    model: torch.nn.Module,
    src: torch.Tensor,
    src_mask: torch.Tensor,
    *,
    bos: int,
    eos: int,
    max_len_a: float,
    max_len_b: int,
) -> list[list[Hypothesis]]:
    """src [B, S] -> one hypothesis per sentence, with its attention [T, S]."""
    B = src.size(0)
    limits = max_output_lengths(src_mask, max_len_a, max_len_b)  # [B]
    state = model.init_state(model.encode(src, src_mask))
    prev = torch.full((B,), bos, dtype=torch.long, device=src.device)
    finished = torch.zeros(B, dtype=torch.bool, device=src.device)
    tokens, scores, attentions = [], torch.zeros(B, device=src.device), []
    for t in range(int(limits.max())):
        log_probs, state, attention = model.step(prev, state)  # [B, V]
        at_limit = t + 1 >= limits
        best = log_probs.argmax(dim=-1)
        best = torch.where(at_limit, torch.full_like(best, eos), best)
        scores += torch.where(finished, 0.0, log_probs.gather(1, best[:, None]).squeeze(1))
        tokens.append(best)
        if attention is not None:
            attentions.append(attention.float())
        finished |= best == eos
        if bool(finished.all()):
            break
        prev = best
    steps = torch.stack(tokens, dim=1).tolist()  # [B, T]
    stacked = torch.stack(attentions, dim=1) if attentions else None  # [B, T, S]
    results = []
    for b, seq in enumerate(steps):
        length = seq.index(eos) + 1 if eos in seq else len(seq)
        attention = stacked[b, :length, : int(src_mask[b].sum())] if stacked is not None else None
        results.append([Hypothesis(seq[: length - 1], float(scores[b]), attention)])
    return results
