"""Batched beam search with the GNMT length penalty.

All sentences of a batch advance together: the state holds B * K rows (K = beam size),
and after each step the K best continuations of each sentence are kept by reordering the
state with `DecoderState.reorder`. A hypothesis that emits EOS is set aside with the score

    s(Y) = log P(Y | X) / lp(Y),   lp(Y) = ((5 + |Y|) / 6) ** alpha     (Wu et al. 2016, eq. 14)

and a sentence is done when K hypotheses have finished (fairseq's stopping rule) or its
length limit a * |X| + b is reached, where only EOS is allowed.
"""

from __future__ import annotations

import torch

from nmt_cli.decode import Hypothesis, max_output_lengths


def length_penalty(length: int, alpha: float) -> float:
    return ((5.0 + length) / 6.0) ** alpha


@torch.no_grad()
def beam_search(
    model: torch.nn.Module,
    src: torch.Tensor,
    src_mask: torch.Tensor,
    *,
    beam: int,
    bos: int,
    eos: int,
    alpha: float,
    max_len_a: float,
    max_len_b: int,
    n_best: int = 1,
    keep_attention: bool = False,
) -> list[list[Hypothesis]]:
    """src [B, S] -> per sentence, its `n_best` hypotheses, best first."""
    B, K, device = src.size(0), beam, src.device
    limits = max_output_lengths(src_mask, max_len_a, max_len_b)  # [B]
    src_lengths = src_mask.sum(1).tolist()
    state = model.init_state(model.encode(src, src_mask))
    state = state.reorder(torch.arange(B, device=device).repeat_interleave(K))  # B*K rows
    # Only the first beam of each sentence is alive at step 0, so K copies don't compete.
    scores = torch.full((B, K), float("-inf"), device=device)
    scores[:, 0] = 0.0
    prev = torch.full((B * K,), bos, dtype=torch.long, device=device)
    history = torch.empty((B * K, 0), dtype=torch.long, device=device)  # tokens so far
    attn_history = None  # [B*K, t, S]
    finished: list[list[Hypothesis]] = [[] for _ in range(B)]
    done = torch.zeros(B, dtype=torch.bool, device=device)
    row_offsets = torch.arange(B, device=device).unsqueeze(1) * K  # [B, 1]

    for t in range(int(limits.max())):
        log_probs, state, attention = model.step(prev, state)  # [B*K, V]
        V = log_probs.size(1)
        at_limit = (t + 1 >= limits).repeat_interleave(K)  # [B*K]
        if bool(at_limit.any()):
            eos_scores = log_probs[:, eos].clone()
            log_probs[at_limit] = float("-inf")
            log_probs[:, eos] = torch.where(at_limit, eos_scores, log_probs[:, eos])
        candidates = (scores.view(B * K, 1) + log_probs).view(B, K * V)
        top_scores, top_index = candidates.topk(2 * K, dim=1)  # [B, 2K]
        top_beam, top_token = top_index // V, top_index % V
        is_eos = top_token == eos

        if keep_attention and attention is not None:
            step_attn = attention.float().unsqueeze(1)  # [B*K, 1, S]
            attn_history = (
                step_attn if attn_history is None else torch.cat([attn_history, step_attn], dim=1)
            )

        # Set aside EOS hypotheses that rank within the top K of a sentence still running.
        alive = ~done.unsqueeze(1) & torch.isfinite(top_scores[:, :K])
        eos_hits = (is_eos[:, :K] & alive).nonzero().tolist()
        for b, j in eos_hits:
            row = b * K + int(top_beam[b, j])
            normalised = float(top_scores[b, j]) / length_penalty(t + 1, alpha)
            attn = None
            if attn_history is not None:
                attn = attn_history[row, :, : src_lengths[b]].clone()  # [t+1, S_b]
            finished[b].append(Hypothesis(history[row].tolist(), normalised, attn))
        for b in {b for b, _ in eos_hits}:
            if len(finished[b]) >= K:
                done[b] = True
        done |= t + 1 >= limits
        if bool(done.all()):
            break

        # Keep the K best non-EOS continuations: rank EOS candidates after all others.
        rank = is_eos.long() * (2 * K) + torch.arange(2 * K, device=device)
        keep = rank.topk(K, dim=1, largest=False).indices  # [B, K]
        scores = top_scores.gather(1, keep).masked_fill(done.unsqueeze(1), float("-inf"))
        rows = (row_offsets + top_beam.gather(1, keep)).view(-1)  # [B*K]
        prev = top_token.gather(1, keep).view(-1)
        history = torch.cat([history[rows], prev.unsqueeze(1)], dim=1)
        if attn_history is not None:
            attn_history = attn_history[rows]
        state = state.reorder(rows)

    return [sorted(hyps, key=lambda h: -h.score)[:n_best] for hyps in finished]
