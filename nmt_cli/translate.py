"""Translate lines of text with a trained model (or an ensemble of them).

`Translator` owns a model, its tokenizers and the decoding settings. Within each call it
sorts sentences by length and cuts token-budget batches, so little work is spent on
padding, then restores the input order. Search never lets a sentence's batch-mates change
its result, so the order of the input does not matter. Empty lines translate to empty
lines, so output stays line-aligned with input.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import torch

from nmt_cli.alignment import replace_unknowns
from nmt_cli.checkpoint import load_checkpoint
from nmt_cli.checkpoint_checks import check_weights_fit
from nmt_cli.config import Config, DecodeConfig, config_from_dict, validate_decode
from nmt_cli.data.batching import collate_sources
from nmt_cli.data.corpus import normalize
from nmt_cli.data.tokenizer import BOS, EOS, UNK, Tokenizer
from nmt_cli.decode.beam import beam_search
from nmt_cli.decode.sampling import sample_search
from nmt_cli.errors import CheckpointError, ConfigError, DataError
from nmt_cli.models import build_model, build_model_shapes
from nmt_cli.models.ensemble import Ensemble
from nmt_cli.models.ntm import MemoryTrace, NTMSeq2Seq
from nmt_cli.prepack import can_prepack, prepack_linear
from nmt_cli.quantize import quantize_int8
from nmt_cli.runtime import autocast, decoding_precision


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
        precision: str = "auto",
        replace_unk: bool = False,
    ) -> None:
        self.model = model
        self.src_tokenizer = src_tokenizer
        self.tgt_tokenizer = tgt_tokenizer
        self.decode = decode
        self.max_input_tokens = max_input_tokens
        self.device = device
        lstm = any(isinstance(m, torch.nn.LSTM) for m in model.modules())
        self.precision = decoding_precision(precision, device, lstm=lstm)
        self.batch_tokens = decode.batch_tokens_on(device.type)
        self.replace_unk = replace_unk
        self.generator = torch.Generator().manual_seed(decode.seed)  # sampling draws

    @classmethod
    def from_checkpoint(
        cls,
        paths: str | Path | Sequence[str | Path],
        device: torch.device,
        decode_overrides: dict | None = None,
        *,
        precision: str = "auto",
        quantize: str | None = None,
        replace_unk: bool = False,
    ) -> Translator:
        """Everything needed comes from the `.pt` files: config, tokenizers and weights.

        Several paths make an ensemble; they must share the vocabulary, and the first one's
        decoding settings apply. `quantize="int8"` runs int8 linear layers (CPU only).
        """
        paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
        checkpoints = [load_checkpoint(path) for path in paths]
        first = checkpoints[0]
        for path, ckpt in zip(paths[1:], checkpoints[1:], strict=True):
            if (ckpt["tokenizer"]["src_sha256"], ckpt["tokenizer"]["tgt_sha256"]) != (
                first["tokenizer"]["src_sha256"],
                first["tokenizer"]["tgt_sha256"],
            ):
                raise CheckpointError(
                    f"{path} has another vocabulary than {paths[0]}; an ensemble needs "
                    "checkpoints trained on the same preprocessed data"
                )
        cfg = config_from_dict(first["config"])
        src_tok = Tokenizer(first["tokenizer"]["src_model"])
        tgt_tok = Tokenizer(first["tokenizer"]["tgt_model"])
        models = [
            _load_model(path, ckpt, src_tok, tgt_tok)
            for path, ckpt in zip(paths, checkpoints, strict=True)
        ]
        model = models[0] if len(models) == 1 else Ensemble(models)
        if quantize is not None:
            if quantize != "int8" or device.type != "cpu":
                raise ConfigError(
                    f"--quantize {quantize} on {device.type}: only int8 on the CPU is supported; "
                    "use --dtype bf16 or fp16 on a GPU"
                )
            model = quantize_int8(model)
        elif (
            device.type == "cpu"
            and decoding_precision(precision, device) == "fp32"
            and can_prepack()
        ):
            model = prepack_linear(model)
        model.to(device).eval()
        decode = dataclasses.replace(cfg.decode, **(decode_overrides or {}))
        validate_decode(decode)
        return cls(
            model,
            src_tok,
            tgt_tok,
            decode,
            max_input_tokens=min(config_from_dict(c["config"]).model.max_len for c in checkpoints),
            device=device,
            precision=precision,
            replace_unk=replace_unk,
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
        prefixes: list[str] | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> list[Translation]:
        """Translate `lines` (numbered from `first_line` in error messages), in order.

        `prefixes[i]` (target text) forces the start of line i's translation.
        `on_progress(n)` is called after each batch with the number of sentences it held.
        """
        lines = [normalize(line) for line in lines]
        ids = encode_sources(self.src_tokenizer, lines, first_line, self.max_input_tokens)
        forced = [self.tgt_tokenizer.encode(normalize(p)) for p in prefixes] if prefixes else None
        results: list[Translation | None] = [None] * len(lines)
        nonempty = sorted((i for i, seq in enumerate(ids) if seq), key=lambda i: len(ids[i]))
        for i in range(len(lines)):
            if not ids[i]:
                results[i] = Translation("", [("", 0.0)], [], [], None)
        if on_progress is not None and len(nonempty) < len(lines):
            on_progress(len(lines) - len(nonempty))
        keep_attention = keep_attention or self.replace_unk
        for batch in self._batches(nonempty, ids):
            batch_prefixes = [forced[i] for i in batch] if forced else None
            hyps = self._search([ids[i] for i in batch], batch_prefixes, keep_attention)
            for i, sentence_hyps in zip(batch, hyps, strict=True):
                if not sentence_hyps:  # every score was NaN: no hypothesis could end
                    raise CheckpointError(
                        f"the model scores input line {first_line + i} as NaN: its weights "
                        "are broken (did its training diverge?); translate with another checkpoint"
                    )
                results[i] = self._to_translation(lines[i], ids[i], sentence_hyps)
            if on_progress is not None:
                on_progress(len(batch))
        return results  # type: ignore[return-value]

    def translate_stream(
        self,
        chunks: Iterable[list[str]],
        *,
        prefixes: Iterator[str] | None = None,
        keep_attention: bool = False,
    ) -> Iterator[Translation]:
        """Translate chunk after chunk, yielding each chunk's results before reading the next.

        `prefixes` yields one target prefix per input line.
        """
        line = 1
        for chunk in chunks:
            chunk_prefixes = None
            if prefixes is not None:
                chunk_prefixes = [next(prefixes, None) for _ in chunk]
                if None in chunk_prefixes:
                    have = line - 1 + chunk_prefixes.index(None)
                    raise DataError(
                        f"the prefix file has fewer lines ({have}) than the input; "
                        "give one prefix line per input line"
                    )
            yield from self.translate(
                chunk, first_line=line, prefixes=chunk_prefixes, keep_attention=keep_attention
            )
            line += len(chunk)

    def _batches(self, order: list[int], ids: list[list[int]]) -> Iterator[list[int]]:
        """Cut length-sorted sentence indices into batches of about `batch_tokens` tokens."""
        batch: list[int] = []
        for i in order:
            if batch and (len(ids[i]) + 1) * (len(batch) + 1) > self.batch_tokens:
                yield batch
                batch = []
            batch.append(i)
        if batch:
            yield batch

    @torch.inference_mode()
    def _search(
        self, sources: list[list[int]], prefixes: list[list[int]] | None, keep_attention: bool
    ):
        src, src_mask = collate_sources(sources, self.device)
        d = self.decode
        common = dict(
            bos=BOS, eos=EOS, alpha=d.alpha, max_len_a=d.max_len_a, max_len_b=d.max_len_b,
            prefixes=prefixes, keep_attention=keep_attention,
        )  # fmt: skip
        with autocast(self.device, self.precision):
            if d.sampling:
                return sample_search(
                    self.model, src, src_mask, samples=d.n_best, temperature=d.temperature,
                    top_k=d.top_k, top_p=d.top_p, generator=self.generator, **common,
                )  # fmt: skip
            return beam_search(
                self.model, src, src_mask, beam=d.beam, n_best=d.n_best, coverage=d.coverage,
                **common,
            )  # fmt: skip

    def _to_translation(self, line: str, src_ids: list[int], hyps) -> Translation:
        best = hyps[0]
        src_pieces = [*map(self.src_tokenizer.id_to_piece, src_ids), "</s>"]
        out_pieces = [*map(self.tgt_tokenizer.id_to_piece, best.tokens), "</s>"]
        if self.replace_unk:
            if best.attention is None:
                raise ConfigError(
                    "--replace-unk copies the source word with the most attention, and this "
                    "model has no attention over the source; drop --replace-unk"
                )
            unk = self.tgt_tokenizer.id_to_piece(UNK)
            pieces = replace_unknowns(
                out_pieces[:-1], best.attention, src_pieces[:-1], line.split(), unk
            )
            text = self.tgt_tokenizer.decode_pieces(pieces)
        else:
            text = self.tgt_tokenizer.decode(best.tokens)
        return Translation(
            text=text,
            nbest=[(self.tgt_tokenizer.decode(h.tokens), h.score) for h in hyps],
            src_pieces=src_pieces,
            out_pieces=out_pieces,
            attention=best.attention,
        )

    def memory_trace(self, result: Translation) -> MemoryTrace:
        """Replay one translation through an NTM, recording where it wrote and read."""
        if not isinstance(self.model, NTMSeq2Seq):
            raise ConfigError(
                "--memory-plot draws a Neural Turing Machine's memory weightings; give one "
                "checkpoint of model.type ntm"
            )
        src = [self.src_tokenizer.piece_to_id(p) for p in result.src_pieces]
        tgt_in = [BOS] + [self.tgt_tokenizer.piece_to_id(p) for p in result.out_pieces[:-1]]
        with torch.inference_mode():
            return self.model.memory_trace(
                torch.tensor(src, device=self.device), torch.tensor(tgt_in, device=self.device)
            )


def encode_sources(
    tokenizer: Tokenizer, lines: list[str], first_line: int, max_tokens: int
) -> list[list[int]]:
    """Subword ids of normalised lines; a line over the model's input limit is an error."""
    ids = [tokenizer.encode(line) for line in lines]
    for offset, seq in enumerate(ids):
        if len(seq) > max_tokens:
            raise DataError(
                f"input line {first_line + offset} has {len(seq)} tokens, more than the "
                f"model's limit of {max_tokens}; split the line into sentences"
            )
    return ids


def _load_model(
    path: str | Path, ckpt: dict, src_tok: Tokenizer, tgt_tok: Tokenizer
) -> torch.nn.Module:
    cfg = config_from_dict(ckpt["config"])
    args = (cfg.model, src_tok.vocab_size, tgt_tok.vocab_size, ckpt["tokenizer"]["joint"])
    check_weights_fit(Path(path), build_model_shapes(*args), ckpt["model_state"])
    model = build_model(*args)
    model.load_state_dict(ckpt["model_state"])
    return model.eval()
