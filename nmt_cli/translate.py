"""Translate lines of text with a trained model.

`Translator` owns a model, its tokenizers and the decoding settings. Within each call it
sorts sentences by length and cuts token-budget batches, so little work is spent on
padding, then restores the input order. Empty lines translate to empty lines, so output
stays line-aligned with input.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch

from nmt_cli.checkpoint import load_checkpoint
from nmt_cli.config import Config, DecodeConfig, config_from_dict
from nmt_cli.data.batching import collate_sources
from nmt_cli.data.corpus import normalize
from nmt_cli.data.tokenizer import BOS, EOS, Tokenizer
from nmt_cli.decode.beam import beam_search
from nmt_cli.decode.greedy import greedy_search
from nmt_cli.errors import CheckpointError, ConfigError, DataError
from nmt_cli.models import build_model
from nmt_cli.runtime import autocast, resolve_precision


@dataclasses.dataclass
class Translation:
    text: str  # the best hypothesis, detokenised
    nbest: list[tuple[str, float]]  # (text, length-normalised score), best first
    src_pieces: list[str]  # source subwords (with the EOS the model saw)
    out_pieces: list[str]  # output subwords (with EOS)
    attention: torch.Tensor | None  # [len(out_pieces), len(src_pieces)]


class Translator:
    def __init__(
        self,
        model: torch.nn.Module,
        src_tokenizer: Tokenizer,
        tgt_tokenizer: Tokenizer,
        decode: DecodeConfig,
        *,
        max_input_tokens: int,
        device: torch.device,
        precision: str = "fp32",
    ) -> None:
        self.model = model
        self.src_tokenizer = src_tokenizer
        self.tgt_tokenizer = tgt_tokenizer
        self.decode = decode
        self.max_input_tokens = max_input_tokens
        self.device = device
        self.precision = resolve_precision(precision, device)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: torch.device,
        decode_overrides: dict | None = None,
        precision: str = "fp32",
    ) -> Translator:
        """Everything needed comes from the `.pt` file: config, tokenizers and weights."""
        ckpt = load_checkpoint(path)
        cfg = config_from_dict(ckpt["config"])
        src_tok = Tokenizer(ckpt["tokenizer"]["src_model"])
        tgt_tok = Tokenizer(ckpt["tokenizer"]["tgt_model"])
        model = build_model(
            cfg.model, src_tok.vocab_size, tgt_tok.vocab_size, ckpt["tokenizer"]["joint"]
        )
        try:
            model.load_state_dict(ckpt["model_state"])
        except RuntimeError as exc:
            raise CheckpointError(
                f"{path}: weights do not match its config ({str(exc).splitlines()[0]})"
            ) from None
        model.to(device).eval()
        decode = dataclasses.replace(cfg.decode, **(decode_overrides or {}))
        if not 1 <= decode.n_best <= decode.beam:
            raise ConfigError(
                f"--n-best {decode.n_best} needs 1 <= n-best <= beam (beam is {decode.beam}); "
                "raise --beam"
            )
        return cls(
            model,
            src_tok,
            tgt_tok,
            decode,
            max_input_tokens=cfg.model.max_len,
            device=device,
            precision=precision,
        )

    @classmethod
    def from_config(
        cls,
        cfg: Config,
        model: torch.nn.Module,
        src: Tokenizer,
        tgt: Tokenizer,
        device: torch.device,
    ) -> Translator:
        return cls(
            model,
            src,
            tgt,
            cfg.decode,
            max_input_tokens=cfg.model.max_len,
            device=device,
            precision=cfg.train.precision,
        )

    def translate(
        self,
        lines: list[str],
        *,
        first_line: int = 1,
        keep_attention: bool = False,
        on_progress: Callable[[int], None] | None = None,
    ) -> list[Translation]:
        """Translate `lines` (numbered from `first_line` in error messages), in order.

        `on_progress(n)` is called after each batch with the number of sentences it held.
        """
        ids = [self.src_tokenizer.encode(normalize(line)) for line in lines]
        for offset, seq in enumerate(ids):
            if len(seq) > self.max_input_tokens:
                raise DataError(
                    f"input line {first_line + offset} has {len(seq)} tokens, more than the "
                    f"model's limit of {self.max_input_tokens}; split the line into sentences"
                )
        results: list[Translation | None] = [None] * len(lines)
        nonempty = sorted((i for i, seq in enumerate(ids) if seq), key=lambda i: len(ids[i]))
        for i in range(len(lines)):
            if not ids[i]:
                results[i] = Translation("", [("", 0.0)], [], [], None)
        if on_progress is not None and len(nonempty) < len(lines):
            on_progress(len(lines) - len(nonempty))
        for batch in self._batches(nonempty, ids):
            for i, hyps in zip(
                batch, self._search([ids[i] for i in batch], keep_attention), strict=True
            ):
                results[i] = self._to_translation(ids[i], hyps)
            if on_progress is not None:
                on_progress(len(batch))
        return results  # type: ignore[return-value]

    def translate_stream(self, chunks: Iterable[list[str]]) -> Iterator[Translation]:
        """Translate chunk after chunk, yielding each chunk's results before reading the next."""
        line = 1
        for chunk in chunks:
            yield from self.translate(chunk, first_line=line)
            line += len(chunk)

    def _batches(self, order: list[int], ids: list[list[int]]) -> Iterator[list[int]]:
        """Cut length-sorted sentence indices into batches of about `batch_tokens` tokens."""
        batch: list[int] = []
        for i in order:
            if batch and (len(ids[i]) + 1) * (len(batch) + 1) > self.decode.batch_tokens:
                yield batch
                batch = []
            batch.append(i)
        if batch:
            yield batch

    @torch.no_grad()
    def _search(self, sources: list[list[int]], keep_attention: bool):
        src, src_mask = collate_sources(sources, self.device)
        d = self.decode
        with autocast(self.device, self.precision):
            if d.beam == 1:
                return greedy_search(
                    self.model,
                    src,
                    src_mask,
                    bos=BOS,
                    eos=EOS,
                    max_len_a=d.max_len_a,
                    max_len_b=d.max_len_b,
                )
            return beam_search(
                self.model,
                src,
                src_mask,
                beam=d.beam,
                bos=BOS,
                eos=EOS,
                alpha=d.alpha,
                max_len_a=d.max_len_a,
                max_len_b=d.max_len_b,
                n_best=d.n_best,
                keep_attention=keep_attention,
            )

    def _to_translation(self, src_ids: list[int], hyps) -> Translation:
        best = hyps[0]
        return Translation(
            text=self.tgt_tokenizer.decode(best.tokens),
            nbest=[(self.tgt_tokenizer.decode(h.tokens), h.score) for h in hyps],
            src_pieces=[*map(self.src_tokenizer.id_to_piece, src_ids), "</s>"],
            out_pieces=[*map(self.tgt_tokenizer.id_to_piece, best.tokens), "</s>"],
            attention=best.attention,
        )
