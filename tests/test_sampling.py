"""Sampling: the reshaped distribution keeps the right words, draws are seeded, and top-k 1
is greedy search."""

from __future__ import annotations

from pathlib import Path

import torch
from test_decoding import CPU, reverse

from nmt_cli.decode.sampling import reshape_distribution
from nmt_cli.inference.engines import load_translator


def test_top_k_and_top_p_keep_the_right_words() -> None:
    log_probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    kept = lambda logits: torch.isfinite(logits[0]).tolist()  # noqa: E731
    assert kept(reshape_distribution(log_probs, 1.0, 2, 1.0)) == [True, True, False, False]
    # nucleus 0.75: 0.5 alone is short of it, 0.5 + 0.3 reaches it
    assert kept(reshape_distribution(log_probs, 1.0, 0, 0.75)) == [True, True, False, False]
    assert kept(reshape_distribution(log_probs, 1.0, 0, 0.1)) == [True, False, False, False]
    # temperature 2: p_i ** (1/2), renormalised
    hot = reshape_distribution(log_probs, 2.0, 0, 1.0).softmax(1)
    want = log_probs.exp().sqrt() / log_probs.exp().sqrt().sum()
    torch.testing.assert_close(hot, want)


def test_sampling_is_seeded_and_reproducible(checkpoint: Path) -> None:
    lines = ["1 2 3 4 5", "9 8 7"] * 4

    def sample(seed: int) -> list[list[str]]:
        overrides = {"sampling": True, "n_best": 3, "temperature": 3.0, "seed": seed}
        translator = load_translator(checkpoint, CPU, overrides)
        return [[c.text for c in t.nbest] for t in translator.translate(lines)]

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)  # at temperature 3 the draws differ
    assert all(len(n) == 3 for n in sample(1))


def test_top_k_one_sampling_is_greedy(checkpoint: Path) -> None:
    lines = ["1 2 3 4 5", "9 8 7", "4 4 0 1"]
    sampled = load_translator(checkpoint, CPU, {"sampling": True, "top_k": 1})
    assert [t.text for t in sampled.translate(lines)] == [reverse(line) for line in lines]
