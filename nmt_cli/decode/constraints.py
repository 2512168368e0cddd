"""Words a search may not choose next: EOS before a minimum length, and a word that would
repeat an n-gram.

Both act on a step's log-probabilities [R, V] by setting the ruled-out words to -inf, so beam
search and sampling share them. A minimum length a * |X| + b (fairseq's `--min-len`, with
the a * |X| of its max-len rule) stops a model from ending too soon; n-gram blocking (Paulus
et al. 2018; fairseq's `--no-repeat-ngram-size`) stops the degenerate "a a a ..." loops a
weak or out-of-domain model falls into.
"""

from __future__ import annotations

import torch


def ban_early_eos(log_probs: torch.Tensor, step: int, min_lengths: torch.Tensor, eos: int) -> None:
    """In place: rows whose output, `step` words so far, is shorter than its minimum
    (`min_lengths` [R]) may not end."""
    too_short = step < min_lengths  # [R]
    log_probs[:, eos] = log_probs[:, eos].masked_fill(too_short, float("-inf"))


def ban_repeated_ngrams(log_probs: torch.Tensor, history: torch.Tensor, n: int) -> None:
    """In place: the words that would complete an n-gram already in a row's output.

    history [R, t] holds each row's words so far. An n-gram repeats when its first n - 1
    words are the last n - 1 of the history: its last word is banned. Everything stays on
    the device (no wait for it): a scatter marks the banned words of each row.
    """
    R, t = history.shape
    if n < 1 or t < n:  # no whole n-gram yet
        return
    grams = history.unfold(1, n, 1)  # [R, t - n + 1, n] every n-gram so far
    if n == 1:
        starts_like_now = torch.ones(grams.shape[:2], dtype=torch.bool, device=history.device)
    else:
        tail = history[:, t - n + 1 :]  # [R, n - 1]
        starts_like_now = (grams[:, :, :-1] == tail.unsqueeze(1)).all(dim=2)  # [R, t - n + 1]
    banned = torch.zeros_like(log_probs, dtype=torch.uint8)
    banned.scatter_reduce_(1, grams[:, :, -1], starts_like_now.to(torch.uint8), reduce="amax")
    log_probs.masked_fill_(banned.bool(), float("-inf"))
