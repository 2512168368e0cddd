"""`nmt score`: the model's log-probability of given translations (forced decoding).

Corpus filtering, reranking n-best lists and checking a reference against a model all need
log P(y | x) of a pair that the model did not produce (fairseq's `--score-reference`,
`marian-scorer`, `sockeye-score`). One teacher-forced pass gives every target subword's
log-probability, and EOS's, at once: the sum is the pair's score, or with `normalize` that
sum divided by the GNMT length penalty lp(|y| + 1), the score beam search ranks hypotheses by
(its coverage penalty aside), so that `nmt translate --n-best` prints the same figure for
its own outputs.

Pairs are normalised and encoded as `nmt translate` does, sorted by length into batches of
about `batch_tokens` tokens, and returned in input order; `score_stream` goes chunk by chunk,
so a corpus of any size streams through in bounded memory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import torch

from nmt_cli.data.batching import collate_padded, pad_rows
from nmt_cli.data.corpus import normalize
from nmt_cli.decode import length_penalty
from nmt_cli.inference.torch_engine import TorchEngine
from nmt_cli.inference.translator import cut_batches, encode_lines
from nmt_cli.runtime import autocast, resolve_device, set_threads


@dataclasses.dataclass
class PairScore:
    score: float  # the sum of token_scores, or divided by lp(|tokens|) when normalised
    tokens: list[str]  # the target's subwords, then EOS
    token_scores: list[float]  # log P(token | the tokens before it, source), one per token


class Scorer:
    """Scores pairs with the model of a `TorchEngine` (one checkpoint, or an ensemble)."""

    def __init__(self, engine: TorchEngine, normalize: bool = False) -> None:
        self.engine = engine
        self.normalize = normalize

    def score(self, sources: list[str], targets: list[str], first_line: int = 1) -> list[PairScore]:
        """Score pair i = (sources[i], targets[i]), numbered from `first_line` in errors."""
        engine, limit = self.engine, self.engine.max_input_tokens
        sources, targets = [normalize(s) for s in sources], [normalize(t) for t in targets]
        src_ids = encode_lines(engine.src_tokenizer, sources, first_line, limit, "source")
        tgt_ids = encode_lines(engine.tgt_tokenizer, targets, first_line, limit, "target")
        return self.score_ids(src_ids, tgt_ids)

    def score_ids(self, src_ids: list[list[int]], tgt_ids: list[list[int]]) -> list[PairScore]:
        """Score pairs of subword ids (without EOS), as `score` does once it has encoded
        them: a target whose subwords are not SentencePiece's own spelling of its text
        (which a search may output) is scored as it is."""
        longer = [s if len(s) >= len(t) else t for s, t in zip(src_ids, tgt_ids, strict=True)]
        order = sorted(range(len(src_ids)), key=lambda i: (len(src_ids[i]), len(tgt_ids[i])))
        results: list[PairScore | None] = [None] * len(src_ids)
        for batch in cut_batches(order, longer, self.engine.batch_tokens):
            scores = self._score_batch([src_ids[i] for i in batch], [tgt_ids[i] for i in batch])
            for i, token_scores in zip(batch, scores, strict=True):
                results[i] = self._pair_score(tgt_ids[i], token_scores)
        return results  # type: ignore[return-value]

    def score_stream(self, chunks: Iterable[tuple[list[str], list[str]]]) -> Iterator[PairScore]:
        """Score chunk after chunk of (sources, targets), yielding each chunk's scores before
        reading the next."""
        line = 1
        for sources, targets in chunks:
            yield from self.score(sources, targets, first_line=line)
            line += len(sources)

    @torch.inference_mode()
    def _score_batch(self, sources: list[list[int]], targets: list[list[int]]) -> list[list[float]]:
        """Each pair's log-probabilities of its target subwords and EOS, in one forward pass."""
        engine = self.engine
        src, src_mask, tgt_in, tgt_out = collate_padded(
            *pad_rows(sources), *pad_rows(targets), engine.device
        )
        with autocast(engine.device, engine.precision):
            logits = engine.model(src, src_mask, tgt_in)  # [B, T, V]
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        picked = log_probs.gather(2, tgt_out.unsqueeze(2)).squeeze(2)  # [B, T]
        rows = picked.tolist()
        return [row[: len(target) + 1] for row, target in zip(rows, targets, strict=True)]

    def _pair_score(self, target: list[int], token_scores: list[float]) -> PairScore:
        tokenizer = self.engine.tgt_tokenizer
        tokens = [*map(tokenizer.id_to_piece, target), tokenizer.id_to_piece(tokenizer.eos_id)]
        total = sum(token_scores)
        if self.normalize:
            total /= length_penalty(len(tokens), self.engine.decode.alpha)
        return PairScore(total, tokens, token_scores)


def load_scorer(
    checkpoints: Sequence[str | Path],
    device: str = "auto",
    decode_overrides: dict | None = None,
    *,
    normalize: bool = False,
    precision: str = "auto",
    quantize: str | None = None,
    threads: int | None = None,
) -> Scorer:
    """A scorer over checkpoints (several: an ensemble), loaded as `nmt translate` loads them;
    `decode_overrides` may set alpha (the length penalty) and batch_tokens."""
    if threads is not None:
        set_threads(threads)
    engine = TorchEngine.from_checkpoints(
        list(checkpoints),
        resolve_device(device),
        decode_overrides,
        precision=precision,
        quantize=quantize,
    )
    return Scorer(engine, normalize=normalize)
