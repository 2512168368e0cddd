"""Sampling: draw each output word at random from the model's (reshaped) distribution.

Beam search returns the most probable translations, which are bland and alike; sampled
translations are diverse, which is what back-translation wants (Edunov et al. 2018). The
distribution is reshaped before each draw:

    temperature T:  p_i  proportional to  exp(log p_i / T)   (T < 1 sharper, T > 1 flatter)
    top-k:          keep the k most probable words
    top-p:          keep the smallest set of most probable words whose mass reaches p
                    (nucleus sampling, Holtzman et al. 2020)

Draws come from one seeded `torch.Generator`, so the same input and seed give the same
output. Each sample's score is its log-probability under the unchanged model, divided by
the GNMT length penalty, so n samples can be ranked like beam hypotheses.
"""

from __future__ import annotations

import torch

from nmt_cli.config import DecodeConfig
from nmt_cli.decode import Hypothesis, length_penalty, max_output_lengths, scaled_lengths
from nmt_cli.decode.constraints import ban_early_eos, ban_repeated_ngrams
from nmt_cli.models.interface import Seq2Seq


def reshape_distribution(
    log_probs: torch.Tensor, temperature: float, top_k: int, top_p: float
) -> torch.Tensor:
    """log_probs [R, V] -> logits [R, V] with the excluded words at -inf."""
    logits = log_probs / temperature
    if 0 < top_k < logits.size(1):
        kth = logits.topk(top_k, dim=1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=1, descending=True)
        mass_before = sorted_logits.softmax(dim=1).cumsum(dim=1) - sorted_logits.softmax(dim=1)
        drop_sorted = mass_before >= top_p  # the most probable word always stays
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


@torch.inference_mode()
def sample_search(
    model: Seq2Seq,
    src: torch.Tensor,
    src_mask: torch.Tensor,
    settings: DecodeConfig,
    *,
    bos: int,
    eos: int,
    generator: torch.Generator,
    prefixes: list[list[int]] | None = None,
    keep_attention: bool = False,
) -> list[list[Hypothesis]]:
    """src [B, S] -> per sentence, `settings.n_best` sampled hypotheses, best score first.

    Of `settings`: n_best, temperature, top_k, top_p, alpha, the length limits and n-gram
    blocking (`constraints.py`).
    """
    B, n, device = src.size(0), settings.n_best, src.device
    alpha = settings.alpha
    expand = torch.arange(B, device=device).repeat_interleave(n)
    R = B * n
    prefix_rows = [prefixes[b] if prefixes else [] for b in expand.tolist()]
    limits = max_output_lengths(src_mask, settings.max_len_a, settings.max_len_b)[expand]
    limits = torch.maximum(limits, torch.tensor([len(p) + 1 for p in prefix_rows], device=device))
    min_lens = scaled_lengths(src_mask, settings.min_len_a, settings.min_len_b)[expand]
    min_lens = torch.minimum(min_lens, limits - 1)  # the limit's EOS comes first
    longest_min = int(min_lens.max())
    state = model.init_state(model.encode(src, src_mask)).reorder(expand)
    prev = torch.full((R,), bos, dtype=torch.long, device=device)
    finished = torch.zeros(R, dtype=torch.bool, device=device)
    scores = torch.zeros(R, device=device)
    words, attentions = [], []
    for t in range(int(limits.max())):
        log_probs, state, attention = model.step(prev, state)
        log_probs = log_probs.float()
        allowed = log_probs
        below_min, blocking = t < longest_min, bool(settings.no_repeat_ngram and words)
        if below_min or blocking:
            allowed = log_probs.clone()  # the score is the unchanged model's
            if below_min:
                ban_early_eos(allowed, t, min_lens, eos)
            if blocking:
                ban_repeated_ngrams(allowed, torch.stack(words, dim=1), settings.no_repeat_ngram)
            stuck = ~torch.isfinite(allowed).any(dim=1)  # every word banned: it can only end
            allowed[:, eos] = allowed[:, eos].masked_fill(stuck, 0.0)
        logits = reshape_distribution(allowed, settings.temperature, settings.top_k, settings.top_p)
        drawn = torch.multinomial(logits.softmax(dim=1).cpu(), 1, generator=generator)
        drawn = drawn.squeeze(1).to(device)
        for row, prefix in enumerate(prefix_rows):
            if t < len(prefix):
                drawn[row] = prefix[t]
        drawn = torch.where(t + 1 >= limits, torch.full_like(drawn, eos), drawn)
        drawn = torch.where(finished, torch.full_like(drawn, eos), drawn)
        scores += torch.where(finished, 0.0, log_probs.gather(1, drawn[:, None]).squeeze(1))
        words.append(drawn)
        if keep_attention and attention is not None:
            attentions.append(attention.float())
        finished |= drawn == eos
        if bool(finished.all()):
            break
        prev = drawn
    steps = torch.stack(words, dim=1).tolist()  # [R, T]
    stacked = torch.stack(attentions, dim=1) if attentions else None  # [R, T, S]
    src_lengths = src_mask.sum(1).tolist()
    results: list[list[Hypothesis]] = [[] for _ in range(B)]
    for row, seq in enumerate(steps):
        b = row // n
        length = seq.index(eos) + 1
        attn = stacked[row, :length, : src_lengths[b]] if stacked is not None else None
        score = float(scores[row]) / length_penalty(length, alpha)
        results[b].append(Hypothesis(seq[: length - 1], score, attn))
    return [sorted(hyps, key=lambda h: -h.score) for hyps in results]
