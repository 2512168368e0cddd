"""Scripted-probability search tests: a fake model whose next-word distribution is a table.

The fake implements only the decoding interface (`encode`, `init_state`, `step`), so these
tests also check that greedy and beam search need nothing else. Every expected token and
score below is computed by hand from the tables.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from nmt_cli.config import DecodeConfig
from nmt_cli.decode import Hypothesis, max_output_length, max_output_lengths
from nmt_cli.decode.beam import BLOCK, beam_search, best_continuations, length_penalty
from nmt_cli.decode.constraints import ban_repeated_ngrams
from nmt_cli.decode.sampling import sample_search
from nmt_cli.models.interface import DecoderState

PAD, UNK, BOS, EOS, A, B, C = range(7)
V = 7
FLOOR = 1e-9  # probability of anything a script does not mention (a real softmax is never 0)

Script = dict[tuple[int, ...], dict[int, float]]

# Greedy takes A (0.6) and must then end with EOS (0.4): p = 0.24. The better translation
# starts with the locally worse B (0.4) and ends at once (0.9): p = 0.36.
GREEDY_TRAP: Script = {
    (): {A: 0.6, B: 0.4},
    (A,): {EOS: 0.4, B: 0.3, C: 0.3},
    (B,): {EOS: 0.9, C: 0.1},
}

# A short hypothesis "A" (p = 0.55, |Y| = 2 with EOS) against a long one "B B B" (p = 0.45,
# |Y| = 4): raw log-probability prefers the short one, a strong length penalty the long one.
SHORT_VS_LONG: Script = {
    (): {A: 0.55, B: 0.45},
    (A,): {EOS: 1.0},
    (B,): {B: 1.0},
    (B, B): {B: 1.0},
    (B, B, B): {EOS: 1.0},
}

# Never ends by itself: only the length limit stops it. Three words, so that a beam of three
# never needs one of the words tied at FLOOR, whose order `topk` leaves unspecified.
ENDLESS: Script = {}


def endless(prefix: tuple[int, ...]) -> dict[int, float]:
    return {A: 0.7, B: 0.2, C: 0.1}


# "A A" (p = 0.42) narrowly beats "B" (0.4); with the word A blocked from repeating (1-grams),
# "A" must end at once (0.18), and "B" wins.
REPEATS_A_WORD: Script = {
    (): {A: 0.6, B: 0.4},
    (A,): {A: 0.7, EOS: 0.3},
    (A, A): {EOS: 1.0},
    (B,): {EOS: 1.0},
}

# "A B A B" (p = 0.81) repeats the bigram "A B": blocked, the search takes "A B" (0.1) over
# "A B A C" (0.09). Trigram blocking does not touch it (no trigram repeats).
REPEATS_A_BIGRAM: Script = {
    (): {A: 1.0},
    (A,): {B: 1.0},
    (A, B): {A: 0.9, EOS: 0.1},
    (A, B, A): {B: 0.9, C: 0.1},
    (A, B, A, B): {EOS: 1.0},
    (A, B, A, C): {EOS: 1.0},
}

SCRIPTS = [GREEDY_TRAP, SHORT_VS_LONG, ENDLESS, REPEATS_A_WORD, REPEATS_A_BIGRAM]


def distribution(script_id: int, prefix: tuple[int, ...]) -> dict[int, float]:
    if SCRIPTS[script_id] is ENDLESS:
        return endless(prefix)
    return SCRIPTS[script_id].get(prefix, {})


@dataclasses.dataclass
class ScriptState(DecoderState):
    script: torch.Tensor  # [B] which table drives this sentence
    prefix: torch.Tensor  # [B, t] tokens emitted so far (BOS excluded)


class ScriptedModel(nn.Module):
    """Source token 4 + k selects SCRIPTS[k]; the rest of the source only sets its length."""

    def __init__(self) -> None:
        super().__init__()
        self.steps = 0

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
        return src[:, 0] - A  # [B] script index

    def init_state(self, memory: torch.Tensor) -> ScriptState:
        return ScriptState(script=memory, prefix=memory.new_zeros(memory.size(0), 0))

    def step(self, prev: torch.Tensor, state: ScriptState):
        self.steps += 1
        prefix = state.prefix
        if prefix.size(1) > 0 or not bool((prev == BOS).all()):
            prefix = torch.cat([prefix, prev.unsqueeze(1)], dim=1)
        log_probs = torch.full((prev.size(0), V), math.log(FLOOR))
        for row, (script, tokens) in enumerate(
            zip(state.script.tolist(), prefix.tolist(), strict=True)
        ):
            for token, p in distribution(script, tuple(tokens)).items():
                log_probs[row, token] = math.log(p)
        return log_probs, dataclasses.replace(state, prefix=prefix), None


def source(script_id: int, length: int, pad_to: int | None = None) -> list[int]:
    ids = [A + script_id] + [C] * (length - 2) + [EOS]
    return ids + [PAD] * ((pad_to or length) - length)


def batch(*rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    src = torch.tensor(rows)
    return src, src != PAD


def beam(
    src,
    mask,
    *,
    k: int,
    alpha: float = 0.0,
    a: float = 0.0,
    b: int = 10,
    n_best: int = 1,
    **constraints,
):
    settings = DecodeConfig(
        beam=k, alpha=alpha, max_len_a=a, max_len_b=b, n_best=n_best, **constraints
    )
    return beam_search(ScriptedModel(), src, mask, settings, bos=BOS, eos=EOS)


def greedy(src, mask, *, a: float = 0.0, b: int = 10):
    """Greedy search is beam search with one beam."""
    return beam(src, mask, k=1, a=a, b=b)


def test_greedy_takes_the_locally_best_word() -> None:
    (hyps,) = greedy(*batch(source(0, 3)))
    assert [h.tokens for h in hyps] == [[A]]
    assert hyps[0].score == pytest.approx(math.log(0.6 * 0.4))


@pytest.mark.parametrize("k", [2, 3, 4])
def test_beam_finds_the_globally_best_translation(k: int) -> None:
    (hyps,) = beam(*batch(source(0, 3)), k=k, n_best=2)
    assert [h.tokens for h in hyps] == [[B], [A]]
    assert hyps[0].score == pytest.approx(math.log(0.4 * 0.9), abs=1e-6)
    assert hyps[1].score == pytest.approx(math.log(0.6 * 0.4), abs=1e-6)


def test_beam_one_is_greedy() -> None:
    (hyps,) = beam(*batch(source(0, 3)), k=1)
    assert hyps[0].tokens == [A]
    assert hyps[0].score == pytest.approx(math.log(0.24), abs=1e-6)


def test_n_best_is_sorted_best_first() -> None:
    (hyps,) = beam(*batch(source(0, 3)), k=4, n_best=4)
    assert len(hyps) == 4
    scores = [h.score for h in hyps]
    assert scores == sorted(scores, reverse=True)
    assert [h.tokens for h in hyps[:2]] == [[B], [A]]
    # Next come A B and A C (p = 0.6 * 0.3 each, then forced to junk): far behind.
    assert all(s < math.log(0.24) for s in scores[2:])


def test_length_penalty_formula() -> None:
    assert length_penalty(1, 0.0) == 1.0
    assert length_penalty(7, 1.0) == pytest.approx(2.0)
    assert length_penalty(4, 0.6) == pytest.approx(1.5**0.6)


@pytest.mark.parametrize(
    ("alpha", "winner"), [(0.0, [A]), (0.6, [A]), (1.0, [A]), (2.0, [B, B, B])]
)
def test_length_penalty_changes_the_winner(alpha: float, winner: list[int]) -> None:
    (hyps,) = beam(*batch(source(1, 3)), k=2, alpha=alpha, n_best=2)
    short = math.log(0.55) / length_penalty(2, alpha)  # "A" + EOS
    long = math.log(0.45) / length_penalty(4, alpha)  # "B B B" + EOS
    assert (short > long) == (winner == [A])
    assert hyps[0].tokens == winner
    by_tokens = {tuple(h.tokens): h.score for h in hyps}
    assert by_tokens == {(A,): pytest.approx(short), (B, B, B): pytest.approx(long)}


@pytest.mark.parametrize(("src_len", "a", "b"), [(3, 0.0, 4), (3, 1.0, 1), (5, 0.5, 2)])
def test_max_length_forces_eos(src_len: int, a: float, b: int) -> None:
    limit = int(a * src_len + b)  # steps, EOS included
    src, mask = batch(source(2, src_len))
    (best,) = beam(src, mask, k=2, a=a, b=b)[0]
    assert best.tokens == [A] * (limit - 1)
    assert best.score == pytest.approx((limit - 1) * math.log(0.7) + math.log(FLOOR), abs=1e-4)
    (g,) = greedy(src, mask, a=a, b=b)[0]
    assert g.tokens == [A] * (limit - 1)
    (all_hyps) = beam(src, mask, k=3, a=a, b=b, n_best=3)[0]
    assert all(len(h.tokens) == limit - 1 for h in all_hyps)


def test_max_length_is_at_least_one_step() -> None:
    (hyps,) = beam(*batch(source(2, 3)), k=2, a=0.0, b=0)
    assert hyps[0].tokens == []
    (g,) = greedy(*batch(source(2, 3)), a=0.0, b=0)[0]
    assert g.tokens == []


@pytest.mark.parametrize("k", [1, 2, 3])
def test_batched_beam_equals_one_at_a_time(k: int) -> None:
    rows = [source(0, 2), source(2, 5), source(1, 3)]
    S = max(len(r) for r in rows)
    together = beam(
        *batch(*(r + [PAD] * (S - len(r)) for r in rows)), k=k, a=1.0, b=2, alpha=0.6, n_best=k
    )
    alone = [beam(*batch(r), k=k, a=1.0, b=2, alpha=0.6, n_best=k)[0] for r in rows]
    for got, want in zip(together, alone, strict=True):
        assert [h.tokens for h in got] == [h.tokens for h in want]
        assert [h.score for h in got] == pytest.approx([h.score for h in want], abs=1e-6)
    # The long sentence's limit (1 * 5 + 2 = 7 steps) is its own, not the batch's shortest.
    assert together[1][0].tokens == [A] * 6


def test_batched_greedy_equals_one_at_a_time() -> None:
    rows = [source(0, 2), source(2, 5), source(1, 3)]
    S = max(len(r) for r in rows)
    together = greedy(*batch(*(r + [PAD] * (S - len(r)) for r in rows)), a=1.0, b=2)
    alone = [greedy(*batch(r), a=1.0, b=2)[0] for r in rows]
    for got, want in zip(together, alone, strict=True):
        assert got[0].tokens == want[0].tokens
        assert got[0].score == pytest.approx(want[0].score, abs=1e-6)


@pytest.mark.parametrize(
    ("hypotheses", "vocab"),
    [(1, 8000), (5, 8000), (5, 3 * BLOCK + 7), (4, BLOCK - 3), (3, 5)],
)
def test_best_continuations_equal_a_full_top_k(hypotheses: int, vocab: int) -> None:
    """The block-wise ranking finds what a top-k over every sum finds, vocabulary tails and
    words ruled out (-inf, as the length limit and prefixes do) included."""
    generator = torch.Generator().manual_seed(vocab + hypotheses)
    N, width = 6, min(10, hypotheses * vocab)
    log_probs = torch.randn(N * hypotheses, vocab, generator=generator).log_softmax(-1)
    log_probs[0, 1:] = float("-inf")  # one row that may only end
    scores = torch.randn(N, hypotheses, generator=generator)
    want = (scores.view(-1, 1) + log_probs).view(N, -1).topk(width, dim=1)
    got_scores, got_index = best_continuations(log_probs, scores, width)
    assert torch.equal(got_scores, want.values)
    finite = torch.isfinite(want.values)  # the order of tied -inf candidates is arbitrary
    assert torch.equal(got_index[finite], want.indices[finite])


def test_one_sentences_limit_equals_the_batched_rule() -> None:
    """The CTranslate2 engine's per-sentence limit (no torch) is the beam search's, also where
    a * |X| + b falls near an integer."""
    lengths = torch.arange(0, 300)
    mask = torch.arange(300) < lengths.unsqueeze(1)
    for a, b in ((1.5, 10), (1.1, 5), (1.2, 0), (0.0, 16), (2.05, 3), (1 / 3, 7)):
        batched = max_output_lengths(mask, a, b).tolist()
        assert [max_output_length(int(n), a, b) for n in lengths] == batched


@pytest.mark.parametrize("k", [2, 3])  # greedy search, committed to "A", cannot turn back
@pytest.mark.parametrize(
    ("min_len", "winner"), [(0, [A]), (1, [A]), (2, [B, B, B]), (3, [B, B, B])]
)
def test_min_length_changes_the_winner(k: int, min_len: int, winner: list[int]) -> None:
    """ "A" (0.55) beats "B B B" (0.45) until one word is too short."""
    (hyps,) = beam(*batch(source(1, 3)), k=k, min_len_b=min_len)
    assert hyps[0].tokens == winner
    p = 0.55 if winner == [A] else 0.45
    assert hyps[0].score == pytest.approx(math.log(p), abs=1e-6)


@pytest.mark.parametrize(("a", "winner"), [(0.5, [A]), (0.67, [B, B, B])])
def test_min_length_grows_with_the_source(a: float, winner: list[int]) -> None:
    """|X| = 3 (with EOS): 0.5 * 3 = 1.5 allows one word, 0.67 * 3 = 2.01 needs two."""
    (hyps,) = beam(*batch(source(1, 3)), k=2, min_len_a=a)
    assert hyps[0].tokens == winner


def test_the_length_limit_wins_over_the_minimum() -> None:
    """A minimum beyond the limit cannot be met: the output ends at the limit, with EOS."""
    (hyps,) = beam(*batch(source(2, 3)), k=2, a=0.0, b=4, min_len_b=10)
    assert hyps[0].tokens == [A, A, A]


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize(("n", "winner"), [(0, [A, A]), (1, [B]), (2, [A, A]), (3, [A, A])])
def test_no_repeat_unigram_changes_the_winner(k: int, n: int, winner: list[int]) -> None:
    (hyps,) = beam(*batch(source(3, 3)), k=k, no_repeat_ngram=n)
    assert hyps[0].tokens == winner
    p = {(A, A): 0.42, (B,): 0.4}[tuple(winner)]
    assert hyps[0].score == pytest.approx(math.log(p), abs=1e-6)


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize(("n", "winner"), [(0, [A, B, A, B]), (2, [A, B]), (3, [A, B, A, B])])
def test_no_repeat_bigram_changes_the_winner(k: int, n: int, winner: list[int]) -> None:
    (hyps,) = beam(*batch(source(4, 3)), k=k, no_repeat_ngram=n)
    assert hyps[0].tokens == winner
    p = {(A, B, A, B): 0.81, (A, B): 0.1}[tuple(winner)]
    assert hyps[0].score == pytest.approx(math.log(p), abs=1e-6)


def test_greedy_search_blocks_as_it_goes() -> None:
    """One beam commits to "A B A" and, with "A B" blocked, must go on with C."""
    (hyps,) = beam(*batch(source(4, 3)), k=1, no_repeat_ngram=2)
    assert hyps[0].tokens == [A, B, A, C]
    assert hyps[0].score == pytest.approx(math.log(0.9 * 0.1), abs=1e-6)


def test_constraints_apply_per_sentence_in_a_batch() -> None:
    """Batched with other sentences, each gets its own minimum (a * |X|) and blocking."""
    rows = [source(1, 3), source(4, 3), source(1, 6)]
    S = max(len(r) for r in rows)
    padded = batch(*(r + [PAD] * (S - len(r)) for r in rows))
    for n in (2, 3):
        together = beam(*padded, k=2, min_len_a=0.5, no_repeat_ngram=n)
        alone = [beam(*batch(r), k=2, min_len_a=0.5, no_repeat_ngram=n)[0] for r in rows]
        assert [h[0].tokens for h in together] == [h[0].tokens for h in alone]
    # |X| 3 -> at least 1 word: "A"; no trigram repeats; |X| 6 -> at least 3 words: "B B B"
    assert [h[0].tokens for h in together] == [[A], [A, B, A, B], [B, B, B]]


def repeats_by_brute_force(history: list[int], n: int, vocab: int) -> list[bool]:
    """Which next words would repeat an n-gram of `history`, by comparing every n-gram."""
    seen = {tuple(history[i : i + n]) for i in range(len(history) - n + 1)}
    return [tuple([*history[len(history) - n + 1 :], w]) in seen for w in range(vocab)]


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_ngram_blocking_equals_brute_force(n: int) -> None:
    generator = torch.Generator().manual_seed(n)
    history = torch.randint(0, 4, (12, 9), generator=generator)  # few words: many repeats
    log_probs = torch.zeros(12, 6)
    ban_repeated_ngrams(log_probs, history, n)
    for row in range(12):
        want = repeats_by_brute_force(history[row].tolist(), n, 6)
        assert torch.isinf(log_probs[row]).tolist() == want


def test_ngram_blocking_waits_for_a_whole_ngram() -> None:
    log_probs = torch.zeros(1, 5)
    ban_repeated_ngrams(log_probs, torch.tensor([[1, 1]]), 3)
    assert torch.isfinite(log_probs).all()


def sample(script: int, n: int, **constraints) -> list[Hypothesis]:
    settings = DecodeConfig(sampling=True, n_best=n, alpha=0.0, max_len_b=6, **constraints)
    src, mask = batch(source(script, 3))
    generator = torch.Generator().manual_seed(0)
    model = ScriptedModel()
    return sample_search(model, src, mask, settings, bos=BOS, eos=EOS, generator=generator)[0]


def test_sampling_keeps_the_constraints_and_scores_with_the_model() -> None:
    free = sample(3, 60)
    assert [A, A] in [h.tokens for h in free]
    blocked = sample(3, 60, no_repeat_ngram=1)
    assert {tuple(h.tokens) for h in blocked} == {(A,), (B,)}
    for h in blocked:  # the unchanged model's probability: A then EOS is 0.6 * 0.3
        assert h.score == pytest.approx(math.log(0.6 * 0.3 if h.tokens == [A] else 0.4))
    assert all(len(h.tokens) >= 2 for h in sample(0, 60, min_len_b=2))
