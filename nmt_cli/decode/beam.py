"""Batched beam search with the GNMT length and coverage penalties.

All sentences of a batch advance together: the state holds N * K rows (N sentences still
running, K = beam size; one row per sentence at the first step, where every hypothesis is
the same empty one), and after each step the K best continuations of each sentence are kept
by reordering the state with `DecoderState.reorder`. A hypothesis that emits EOS is set
aside with the score (Wu et al. 2016, eq. 14)

    s(Y, X) = log P(Y | X) / lp(Y) + cp(X; Y)
    lp(Y) = ((5 + |Y|) / 6) ** alpha
    cp(X; Y) = beta * sum_i log(min(sum_j p_ij, 1))

where p_ij is the attention weight of output word j on source word i: the coverage penalty
favours translations that attend to every source word. A sentence is done when K hypotheses
have finished (fairseq's stopping rule) or its length limit a * |X| + b is reached, where only
EOS is allowed. Done sentences leave the batch at once, so the steps that remain cost only
what the unfinished sentences need, and a sentence's result never depends on its batch-mates.

A target prefix forces the first words of a sentence's output (the search continues from it).
A minimum length keeps EOS out until a sentence has enough words, and n-gram blocking rules
out a word that would repeat an n-gram (`constraints.py`); a forced prefix word beats both.

On a GPU the host must not wait for the device more than it has to: a step's kernels are
small, and a wait drains the queue the host would otherwise keep filled. A step waits once,
to learn which hypotheses ended (their scores and beams come in the same copy); the length
limits are read before the first step, finished hypotheses stay on the device until the
search ends, and the decoder state is told how the kept rows group into sentences instead
of finding out from the index.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from nmt_cli.config import DecodeConfig
from nmt_cli.data.batching import to_device
from nmt_cli.decode import Hypothesis, length_penalty, max_output_lengths, scaled_lengths
from nmt_cli.decode.constraints import ban_early_eos, ban_repeated_ngrams
from nmt_cli.errors import ConfigError
from nmt_cli.models.interface import Seq2Seq


def coverage_penalty(coverage: torch.Tensor, src_mask: torch.Tensor, beta: float) -> torch.Tensor:
    """coverage [R, S] (attention summed over output steps) -> cp [R], 0 where beta is 0."""
    if beta == 0.0:
        return coverage.new_zeros(coverage.size(0))
    capped = coverage.clamp(min=1e-10, max=1.0).log()
    return beta * capped.masked_fill(~src_mask, 0.0).sum(dim=1)


@dataclasses.dataclass
class _Running:
    """Per-row tensors of the sentences still searching: sentence-major, K rows each."""

    sentence: torch.Tensor  # [N] index of each running sentence in the input batch
    limit: torch.Tensor  # [N] its output length limit
    min_len: torch.Tensor  # [N] the words it must output before EOS
    src_mask: torch.Tensor  # [N*K, S]
    prefix: torch.Tensor  # [N, P] forced output words, -1 past each prefix's end
    scores: torch.Tensor  # [N, K] log-probabilities of the hypotheses
    history: torch.Tensor  # [N*K, t] words so far
    coverage: torch.Tensor | None  # [N*K, S] attention summed over steps, when needed
    attention: torch.Tensor | None  # [N*K, t, S] attention per step, when kept

    def select(self, sentences: torch.Tensor, rows: torch.Tensor) -> _Running:
        """Keep sentences `sentences` [N'] (running indices) and rows `rows` [N'*K]."""
        pick = lambda x: None if x is None else x.index_select(0, rows)  # noqa: E731
        return _Running(
            sentence=self.sentence[sentences],
            limit=self.limit[sentences],
            min_len=self.min_len[sentences],
            src_mask=self.src_mask.index_select(0, rows),
            prefix=self.prefix[sentences],
            scores=self.scores,  # replaced by the caller
            history=self.history.index_select(0, rows),
            coverage=pick(self.coverage),
            attention=pick(self.attention),
        )


def _prefix_tensor(prefixes: list[list[int]] | None, batch: int, device) -> torch.Tensor:
    width = max((len(p) for p in prefixes), default=0) if prefixes else 0
    out = torch.full((batch, width), -1, dtype=torch.long, device=device)
    for b, words in enumerate(prefixes or []):
        out[b, : len(words)] = torch.tensor(words, dtype=torch.long)
    return out


def _restrict(
    log_probs: torch.Tensor,
    run: _Running,
    t: int,
    G: int,
    eos: int,
    *,
    some_at_limit: bool,
    some_below_min: bool,
    no_repeat_ngram: int,
) -> None:
    """In place, on G rows per sentence: no EOS below the minimum length, no repeated
    n-gram, the prefix's word where one is forced (whatever those rules say), and only EOS
    at the length limit. `some_at_limit`, `some_below_min`: whether any running sentence is
    there, known to the host."""
    forced = None
    if t < run.prefix.size(1):
        forced = run.prefix[:, t].repeat_interleave(G).unsqueeze(1)  # [N*G, 1], -1: free
        has_prefix, words = forced >= 0, forced.clamp(min=0)
        kept = log_probs.gather(1, words)
    if some_below_min:
        ban_early_eos(log_probs, t, run.min_len.repeat_interleave(G), eos)
    if no_repeat_ngram:
        ban_repeated_ngrams(log_probs, run.history, no_repeat_ngram)
    if forced is not None:
        log_probs.masked_fill_(has_prefix, float("-inf"))
        log_probs.scatter_(1, words, torch.where(has_prefix, kept, log_probs.gather(1, words)))
    if some_at_limit:
        at_limit = (t + 1 >= run.limit).repeat_interleave(G)  # [N*G]
        eos_scores = log_probs[:, eos].clone()
        log_probs.masked_fill_(at_limit.unsqueeze(1), float("-inf"))
        log_probs[:, eos] = torch.where(at_limit, eos_scores, log_probs[:, eos])


@dataclasses.dataclass
class _Finished:
    """A hypothesis that ended in EOS, still on the device (read once, when the search ends)."""

    sentence: int
    history: torch.Tensor  # [t] its words
    score: float
    coverage: torch.Tensor | None  # [] its coverage penalty, when used
    attention: torch.Tensor | None  # [t + 1, S_b]


# Words per block in `best_continuations`: the fastest of 32-256 on Multi30k's 8k vocabulary.
BLOCK = 64


def best_continuations(
    log_probs: torch.Tensor, scores: torch.Tensor, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The `width` best scores[n, g] + log_probs[n * G + g, w] of each sentence n, best first,
    with their indices g * V + w: log_probs [N * G, V], scores [N, G] -> two [N, width].

    The same as a top-k over all G * V sums, without writing them: the vocabulary is cut
    into blocks of BLOCK words and only the words of the `width` blocks with the best
    maxima are ranked. Every one of the `width` best sums lies in a block whose maximum is
    at least as good as it, and at most `width` blocks hold one, so those blocks are among
    the `width` best. One read of log_probs (the block maxima) replaces writing and reading
    all N * G * V sums: a step's top-k took 0.74 instead of 2.84 ms (450 rows, V = 8,000,
    2 cores). Ties may come out in another order than a full top-k's (whose order is
    unspecified too).
    """
    (N, G), V = scores.shape, log_probs.size(1)
    blocks = -(-V // BLOCK)
    whole = V // BLOCK * BLOCK
    block_max = log_probs[:, :whole].view(N * G, V // BLOCK, BLOCK).amax(-1)  # [N*G, blocks]
    if whole < V:
        block_max = torch.cat([block_max, log_probs[:, whole:].amax(-1, keepdim=True)], dim=1)
    block_best = (block_max + scores.view(N * G, 1)).view(N, G * blocks)
    chosen = block_best.topk(min(width, G * blocks), dim=1).indices  # [N, C]
    hypothesis = chosen // blocks  # g of each chosen block
    row = hypothesis + torch.arange(N, device=scores.device).unsqueeze(1) * G  # [N, C]
    words = (chosen % blocks).unsqueeze(2) * BLOCK + torch.arange(BLOCK, device=scores.device)
    past_end = words >= V  # the last block's columns beyond the vocabulary
    words = words.clamp(max=V - 1)  # [N, C, BLOCK]
    sums = log_probs.reshape(-1)[row.unsqueeze(2) * V + words] + scores.view(-1)[row].unsqueeze(2)
    sums = sums.masked_fill_(past_end, float("-inf")).view(N, -1)
    top_scores, position = sums.topk(width, dim=1)
    words = words.view(N, -1).gather(1, position)
    hypothesis = hypothesis.repeat_interleave(BLOCK, dim=1).gather(1, position)
    return top_scores, hypothesis * V + words


@torch.inference_mode()
def beam_search(
    model: Seq2Seq,
    src: torch.Tensor,
    src_mask: torch.Tensor,
    settings: DecodeConfig,
    *,
    bos: int,
    eos: int,
    prefixes: list[list[int]] | None = None,
    keep_attention: bool = False,
) -> list[list[Hypothesis]]:
    """src [B, S] -> per sentence, its `settings.n_best` hypotheses, best first.

    Of `settings`: beam, alpha, coverage (beta), n_best, the length limit a * |X| + b, the
    minimum length and n-gram blocking (`constraints.py`).
    `prefixes[b]` (word ids, no BOS) starts sentence b's output.
    """
    B, K, device = src.size(0), settings.beam, src.device
    alpha, coverage, n_best = settings.alpha, settings.coverage, settings.n_best
    prefix = _prefix_tensor(prefixes, B, device)
    limits = max_output_lengths(src_mask, settings.max_len_a, settings.max_len_b)
    limits = torch.maximum(limits, (prefix >= 0).sum(1) + 1)  # room for the prefix and EOS
    min_lens = scaled_lengths(src_mask, settings.min_len_a, settings.min_len_b)  # words
    min_lens = torch.minimum(min_lens, limits - 1)  # the limit's EOS comes first
    per_sentence = torch.stack([limits, src_mask.sum(1), min_lens]).tolist()
    limits_of, src_lengths, min_lens_of = per_sentence
    longest_min = max(min_lens_of)
    state = model.init_state(model.encode(src, src_mask))  # one row per sentence
    S = src.size(1)
    run = _Running(
        sentence=torch.arange(B, device=device),
        limit=limits,
        min_len=min_lens,
        src_mask=src_mask,
        prefix=prefix,
        scores=torch.zeros(B, 1, device=device),
        history=torch.empty((B, 0), dtype=torch.long, device=device),
        coverage=torch.zeros(B, S, device=device) if coverage else None,
        attention=torch.empty(B, 0, S, device=device) if keep_attention else None,
    )
    running = list(range(B))  # the host's copy of run.sentence
    prev = torch.full((B,), bos, dtype=torch.long, device=device)
    finished: list[list[_Finished]] = [[] for _ in range(B)]

    for t in range(max(limits_of)):
        log_probs, state, attention = model.step(prev, state)  # [N*G, V]
        log_probs = log_probs.float()
        (N, G), V = run.scores.shape, log_probs.size(1)  # G hypotheses per sentence: 1, then K
        if attention is None:  # a model without source attention (the NTM): nothing to keep
            if run.coverage is not None:
                raise ConfigError(
                    "the coverage penalty needs attention over the source, which this model "
                    "does not have; drop --coverage"
                )
            run.attention = None
        if run.coverage is not None:
            run.coverage = run.coverage + attention.float()
        if run.attention is not None:
            run.attention = torch.cat([run.attention, attention.float().unsqueeze(1)], dim=1)
        _restrict(
            log_probs,
            run,
            t,
            G,
            eos,
            some_at_limit=any(t + 1 >= limits_of[b] for b in running),
            some_below_min=t < longest_min and any(t < min_lens_of[b] for b in running),
            no_repeat_ngram=settings.no_repeat_ngram,
        )
        width = min(2 * K, G * V)  # 2K, but a toy vocabulary may have fewer words
        top_scores, top_index = best_continuations(log_probs, run.scores, width)  # [N, width]
        top_beam, top_word = top_index // V, top_index % V
        is_eos = top_word == eos

        # EOS hypotheses that rank within the top K end here, with their final scores.
        K_ = min(K, width)
        ends = is_eos[:, :K_] & torch.isfinite(top_scores[:, :K_])
        end_rows = torch.arange(N, device=device).unsqueeze(1) * G + top_beam[:, :K_]  # [N, K_]
        end_scores = top_scores[:, :K_] / length_penalty(t + 1, alpha)
        # The step's one wait for the device: which hypotheses ended, and their scores.
        ended = torch.cat([ends.float(), end_scores, end_rows.float()], dim=1).tolist()
        for b, row_values in zip(running, ended, strict=True):
            for j in (j for j in range(K_) if row_values[j]):
                row = int(row_values[2 * K_ + j])
                cp = None
                if run.coverage is not None:
                    cp = coverage_penalty(
                        run.coverage[row : row + 1], run.src_mask[row : row + 1], coverage
                    )[0]
                attn = None
                if run.attention is not None:
                    attn = run.attention[row, :, : src_lengths[b]].clone()  # [t+1, S_b]
                finished[b].append(
                    _Finished(b, run.history[row].clone(), row_values[K_ + j], cp, attn)
                )
        done = [t + 1 >= limits_of[b] or len(finished[b]) >= K for b in running]
        if all(done):
            break

        # Keep the K best non-EOS continuations of each running sentence: rank EOS last.
        rank = is_eos.long() * width + torch.arange(width, device=device)
        keep = rank.topk(K_, dim=1, largest=False).indices  # [N, K]
        offsets = torch.arange(N, device=device).unsqueeze(1) * G
        rows = offsets + top_beam.gather(1, keep)
        words = top_word.gather(1, keep)
        new_scores = top_scores.gather(1, keep)
        kept = None  # all sentences go on
        if any(done):
            kept_list = [n for n in range(N) if not done[n]]
            running = [running[n] for n in kept_list]
            kept = to_device(np.array(kept_list, dtype=np.int64), device)  # no wait
            rows, words, new_scores = rows[kept], words[kept], new_scores[kept]
        rows, words = rows.view(-1), words.view(-1)
        next_run = run.select(torch.arange(N, device=device) if kept is None else kept, rows)
        next_run.scores = new_scores
        next_run.history = torch.cat([next_run.history, words.unsqueeze(1)], dim=1)
        state = state.reorder(rows, rows_per_sentence=K_, sentences=kept)
        run, prev = next_run, words

    return _read_back(finished, n_best)


def _read_back(finished: list[list[_Finished]], n_best: int) -> list[list[Hypothesis]]:
    """The finished hypotheses as `Hypothesis`es, best first: their words and coverage
    penalties come from the device in one copy."""
    ended = [f for hyps in finished for f in hyps]
    if not ended:
        return [[] for _ in finished]
    histories = [f.history for f in ended]
    penalties = [f.coverage for f in ended if f.coverage is not None]
    words = torch.nn.utils.rnn.pad_sequence(histories, batch_first=True)
    words_of, cp_of = words.tolist(), torch.stack(penalties).tolist() if penalties else []
    results: list[list[Hypothesis]] = [[] for _ in finished]
    for i, f in enumerate(ended):
        score = f.score + (cp_of[i] if cp_of else 0.0)
        results[f.sentence].append(Hypothesis(words_of[i][: len(f.history)], score, f.attention))
    return [sorted(hyps, key=lambda h: -h.score)[:n_best] for hyps in results]
