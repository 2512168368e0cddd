"""The CTranslate2 engine: a model directory written by `nmt export`.

Under the same driver (`translator.py`) as the PyTorch engine, so the same text
normalisation, SentencePiece model, input limit, empty-line handling and `Translation`
results, while the search runs in CTranslate2's C++ engine (fused kernels, optional int8
weights, `inter_threads` batches translated in parallel). It reproduces our beam search
(`nmt_cli.decode.beam`) except in three places:

1. Length penalty. CTranslate2 divides a finished hypothesis' log-probability by |Y|^lp,
   not by GNMT's lp(Y) = ((5 + |Y|) / 6)^alpha (Wu et al. 2016, eq. 14). We ask it for all
   `beam` finished hypotheses, multiply its normalisation back out and apply GNMT's, so the
   ranking is ours. CTranslate2's lp is alpha, or a tiny value when alpha is 0: at exactly 0
   it stops at the first finished best hypothesis instead of collecting `beam` of them as we
   do. One difference remains: when the search ends with more than `beam` finished
   hypotheses (several finish at the last step), CTranslate2 keeps the `beam` best under its
   own penalty before we rescore, so the tail of an n-best list can differ.
2. The length limit a * |X| + b. At the limit ours allows only EOS and counts its
   probability; CTranslate2 stops one step earlier without it. Outputs that reach the limit
   have the same words with beam 1, and may differ in beam search.
3. Arithmetic. Its kernels round differently (log-probabilities agree to ~1e-6), so exact
   ties can break the other way; int8 weights change scores more.

A minimum length and n-gram blocking are refused (`decode_settings`): CTranslate2 bans the
words before its softmax, which raises the probabilities of the others, so its scores and
beam differ from ours, which keep the model's probabilities (as fairseq does).

The limit is per sentence, while CTranslate2 takes one maximum length per call, so batches
hold sentences of one limit (sentences are sorted by length, so that costs little) and are
submitted asynchronously, which lets `inter_threads` workers translate them in parallel.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nmt_cli.config import DecodeConfig, validate_decode
from nmt_cli.data.tokenizer import EOS, Tokenizer
from nmt_cli.decode import length_penalty, max_output_length
from nmt_cli.errors import CheckpointError, ConfigError, first_line, show
from nmt_cli.inference.ct2_format import DECODE_KEYS, METADATA, import_ctranslate2, read_metadata
from nmt_cli.inference.translator import Batch, Candidate, Translation, cut_batches

# CTranslate2's length penalty when alpha is 0 (see the module docstring, point 1): small
# enough that its pre-selection ranks like raw log-probabilities, as ours does.
NEUTRAL_PENALTY = 1e-3


class CTranslate2Engine:
    def __init__(
        self,
        model_dir: str | Path,
        decode_overrides: dict | None = None,
        *,
        device: str = "cpu",
        compute_type: str = "default",
        inter_threads: int | None = None,
        intra_threads: int = 1,
    ) -> None:
        """Load an exported model. `decode_overrides` (beam, alpha, n_best, max_len_a,
        max_len_b, batch_tokens) replace the stored settings, as in
        `TorchEngine.from_checkpoints`. `compute_type` is CTranslate2's ("default": the
        exported weight type; "int8", "float32", ...). `inter_threads` batches run in
        parallel with `intra_threads` threads each: on a CPU, one thread per batch and one
        batch per core is fastest (`bench/decode_speed.py`), hence the defaults."""
        ctranslate2 = import_ctranslate2()
        model_dir = Path(model_dir)
        metadata = read_metadata(model_dir)
        self.src_tokenizer = Tokenizer.from_file(model_dir / metadata["source_spm"])
        self.tgt_tokenizer = Tokenizer.from_file(model_dir / metadata["target_spm"])
        self.decode = decode_settings(metadata["decode"], decode_overrides or {})
        self.max_input_tokens: int = metadata["max_input_tokens"]
        self.target_lang: str = metadata.get("tgt_lang", "")  # absent in early exports
        self.max_positions: int = metadata["max_positions"]
        self._eos_piece = self.tgt_tokenizer.id_to_piece(EOS)
        self._target_ids = {
            self.tgt_tokenizer.id_to_piece(i): i for i in range(self.tgt_tokenizer.vocab_size)
        }
        device_name, index = _device(device, ctranslate2.get_cuda_device_count())
        if inter_threads is None:
            inter_threads = _cores() if device_name == "cpu" else 1
        self.batch_tokens = self.decode.batch_tokens_on(device_name)
        try:
            self.engine = ctranslate2.Translator(
                str(model_dir),
                device=device_name,
                device_index=index,
                compute_type=compute_type,
                inter_threads=inter_threads,
                intra_threads=intra_threads,
            )
        except ValueError as exc:  # e.g. a compute type this machine does not support
            raise ConfigError(
                f"CTranslate2 cannot run {model_dir}: {first_line(exc, 160)}"
            ) from None
        except RuntimeError as exc:
            raise CheckpointError(
                f"{model_dir}: CTranslate2 cannot load it ({first_line(exc, 160)}); "
                "export it again with nmt export"
            ) from None

    def check_options(self, *, prefixes: bool) -> None:
        """CTranslate2 leaves a forced prefix's probability out of the score, so its choices
        would differ from ours."""
        if prefixes:
            raise ConfigError(
                "target prefixes have no exact CTranslate2 equivalent; "
                "translate with the PyTorch engine to force a prefix"
            )

    def batches(
        self, order: list[int], ids: list[list[int]], first_line: int
    ) -> Iterator[list[int]]:
        """Batches of about `batch_tokens` tokens, each of one length limit (CTranslate2 takes
        one maximum length per call)."""
        limits = self._limits(ids, order, first_line)
        return cut_batches(
            order, ids, self.batch_tokens, lambda first, i: limits[i] == limits[first]
        )

    def search(self, batches: Sequence[Batch]) -> Iterator[list[Translation]]:
        # Submit every batch before waiting for any, so the workers run them in parallel.
        jobs = [
            self._submit(batch.ids, self._limit(batch.ids[0]), batch.keep_attention)
            for batch in batches
        ]
        for batch, pending in zip(batches, jobs, strict=True):
            yield [
                self._to_translation(src_ids, job.result(), batch.keep_attention)
                for src_ids, job in zip(batch.ids, pending, strict=True)
            ]

    def _limits(self, ids: list[list[int]], order: list[int], first_line: int) -> dict[int, int]:
        """Each sentence's step limit a * |X| + b, computed as our beam search does."""
        if not order:
            return {}
        a, b = self.decode.max_len_a, self.decode.max_len_b
        # |X| with EOS, as the model sees it
        limits = {i: max_output_length(len(ids[i]) + 1, a, b) for i in order}
        longest = max(order, key=limits.__getitem__)
        if limits[longest] > self.max_positions:
            raise ConfigError(
                f"input line {first_line + longest} may produce {limits[longest]} tokens, more "
                f"than the {self.max_positions} positions the exported model holds; "
                "lower --max-len-a / --max-len-b"
            )
        return limits

    def _limit(self, src_ids: list[int]) -> int:
        """One sentence's step limit (a batch holds sentences of one limit)."""
        return self._limits([src_ids], [0], first_line=1)[0]

    def _submit(self, sources: list[list[int]], limit: int, keep_attention: bool) -> list[Any]:
        """Start translating one batch; `.result()` of each returned job waits for it."""
        pieces = [[self.src_tokenizer.id_to_piece(i) for i in seq] for seq in sources]
        if limit == 1:  # only EOS fits, and CTranslate2 needs room for one step: score it
            return self.engine.score_batch(pieces, [[] for _ in pieces], asynchronous=True)
        d = self.decode
        return self.engine.translate_batch(
            pieces,
            asynchronous=True,
            beam_size=d.beam,
            num_hypotheses=d.beam,  # every finished hypothesis, for our length penalty
            length_penalty=_engine_penalty(d.alpha),
            return_scores=True,
            return_end_token=True,
            return_attention=keep_attention,
            min_decoding_length=0,  # EOS may come first, as in ours
            max_decoding_length=limit - 1,  # ours spends the last step on EOS
            max_input_length=0,  # inputs were checked against the model's own limit
        )

    def _to_translation(self, src_ids: list[int], result: Any, keep_attention: bool) -> Translation:
        """Rescore CTranslate2's finished hypotheses with the GNMT penalty; keep n_best."""
        alpha = self.decode.alpha
        ranked = []
        for pieces, log_prob, attention in _finished(result, _engine_penalty(alpha)):
            words = pieces[:-1] if pieces[-1:] == [self._eos_piece] else pieces
            # Our length counts the EOS step, also where the limit stopped the search.
            ranked.append((log_prob / length_penalty(len(words) + 1, alpha), pieces, attention))
        ranked.sort(key=lambda h: -h[0])
        nbest = []
        for score, pieces, attention in ranked[: self.decode.n_best]:
            kept = keep_attention and attention is not None
            weights = _with_eos_column(attention, len(src_ids)) if kept else None
            # pieces: with EOS, unless the length limit came first (point 2 above)
            nbest.append(Candidate(self._detokenize(pieces), score, pieces, weights))
        src_pieces = [*map(self.src_tokenizer.id_to_piece, src_ids), self._eos_piece]
        return Translation(src_pieces, nbest)

    def _detokenize(self, pieces: list[str]) -> str:
        """Pieces -> text; `decode` drops the EOS."""
        return self.tgt_tokenizer.decode([self._target_ids[p] for p in pieces])


def _finished(result: Any, penalty: float) -> list[tuple[list[str], float, list | None]]:
    """(pieces, log-probability, attention) of each finished hypothesis of one sentence.

    A translation result's scores are log P / |Y|^penalty (|Y| with the EOS we asked it to
    return); a scoring result holds the log-probability of EOS alone (the `limit == 1` case).
    """
    if hasattr(result, "log_probs"):
        return [(list(result.tokens), sum(result.log_probs), None)]
    attentions = result.attention or [None] * len(result.hypotheses)
    return [
        (pieces, score * len(pieces) ** penalty, attention)
        for pieces, score, attention in zip(
            result.hypotheses, result.scores, attentions, strict=True
        )
    ]


def _with_eos_column(rows: list[list[float]], n_src: int) -> np.ndarray:
    """CTranslate2 leaves out the attention on the source EOS it appended (and pads to the
    batch's longest source): [T, S_max] -> [T, n_src + 1], as our `attention` is. Each row
    sums to 1 over the real positions, so the EOS weight is what the others leave."""
    weights = np.asarray(rows, dtype=np.float32)[:, :n_src]
    eos = np.clip(1 - weights.sum(1, keepdims=True), 0, None)
    return np.concatenate([weights, eos], axis=1)


def decode_settings(stored: dict[str, Any], overrides: dict[str, Any]) -> DecodeConfig:
    """The stored decoding settings with `overrides` applied. A setting CTranslate2 cannot
    reproduce (any DecodeConfig field beyond DECODE_KEYS) must keep its default."""
    default = DecodeConfig()
    try:
        decode = dataclasses.replace(default, **{**stored, **overrides})
    except TypeError:  # a setting this nmt_cli does not know
        raise CheckpointError(
            f"{METADATA} stores decoding settings this nmt_cli does not know "
            f"({', '.join(sorted(stored))}); export the model again"
        ) from None
    for field in dataclasses.fields(DecodeConfig):
        value = getattr(decode, field.name)
        if field.name not in DECODE_KEYS and value != getattr(default, field.name):
            raise ConfigError(
                f"decode.{field.name} {show(value)} has no CTranslate2 equivalent; leave it unset, "
                "or translate with the PyTorch engine"
            )
    validate_decode(decode)
    return decode


def _engine_penalty(alpha: float) -> float:
    return alpha if alpha != 0 else NEUTRAL_PENALTY


def _device(device: str, cuda_devices: int) -> tuple[str, int]:
    """Our device names (cpu, cuda, cuda:N, auto) as CTranslate2's (device, index)."""
    name, _, index = device.partition(":")
    if name not in ("cpu", "cuda", "auto") or (index and not index.isdigit()):
        raise ConfigError(f"--device {device} is not one of cpu, cuda, cuda:N, auto")
    if name == "auto":
        name = "cuda" if cuda_devices else "cpu"
    return name, int(index or 0)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
