"""The PyTorch engine: our models and our search (`nmt_cli.decode`), on any device.

It loads a checkpoint (or several, an ensemble) and searches each batch with beam search or
sampling under the decoding settings. On a CPU in fp32 its linear layers are prepacked for
oneDNN, or made int8 on request (`cpu_linear.py`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from nmt_cli.checkpoint import load_checkpoint
from nmt_cli.checkpoint_checks import check_weights_fit
from nmt_cli.config import Config, DecodeConfig, config_from_dict, validate_decode
from nmt_cli.data.batching import collate_sources
from nmt_cli.data.tokenizer import BOS, EOS, UNK, Tokenizer
from nmt_cli.decode.beam import Hypothesis, beam_search
from nmt_cli.decode.sampling import sample_search
from nmt_cli.errors import CheckpointError, ConfigError
from nmt_cli.inference.alignment import replace_unknowns
from nmt_cli.inference.cpu_linear import can_prepack, prepack_linear, quantize_int8
from nmt_cli.inference.translator import Batch, Candidate, Translation, cut_batches
from nmt_cli.models import build_model, build_model_shapes
from nmt_cli.models.ensemble import Ensemble
from nmt_cli.models.ntm import MemoryTrace, NTMSeq2Seq
from nmt_cli.runtime import autocast, decoding_precision


class TorchEngine:
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
        target_lang: str = "",
    ) -> None:
        self.model = model
        self.src_tokenizer = src_tokenizer
        self.tgt_tokenizer = tgt_tokenizer
        self.decode = decode
        self.max_input_tokens = max_input_tokens
        self.target_lang = target_lang
        self.device = device
        lstm = any(isinstance(m, torch.nn.LSTM) for m in model.modules())
        self.precision = decoding_precision(precision, device, lstm=lstm)
        self.batch_tokens = decode.batch_tokens_on(device.type)
        self.replace_unk = replace_unk
        self.generator = torch.Generator().manual_seed(decode.seed)  # sampling draws

    @classmethod
    def from_checkpoints(
        cls,
        paths: Sequence[str | Path],
        device: torch.device,
        decode_overrides: dict | None = None,
        *,
        precision: str = "auto",
        quantize: str | None = None,
        replace_unk: bool = False,
    ) -> TorchEngine:
        """Everything needed comes from the `.pt` files: config, tokenizers and weights.

        Several paths make an ensemble; they must share the vocabulary, and the first one's
        decoding settings apply. `quantize="int8"` runs int8 linear layers (CPU only).
        """
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
        configs = [config_from_dict(ckpt["config"]) for ckpt in checkpoints]
        src_tok = Tokenizer(first["tokenizer"]["src_model"])
        tgt_tok = Tokenizer(first["tokenizer"]["tgt_model"])
        models = [
            load_model(path, ckpt, cfg, src_tok, tgt_tok)
            for path, ckpt, cfg in zip(paths, checkpoints, configs, strict=True)
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
        decode = dataclasses.replace(configs[0].decode, **(decode_overrides or {}))
        validate_decode(decode)
        return cls(
            model,
            src_tok,
            tgt_tok,
            decode,
            max_input_tokens=min(cfg.model.max_len for cfg in configs),
            device=device,
            precision=precision,
            replace_unk=replace_unk,
            target_lang=configs[0].data.tgt_lang,
        )

    @classmethod
    def in_training(
        cls,
        cfg: Config,
        model: torch.nn.Module,
        src: Tokenizer,
        tgt: Tokenizer,
        device: torch.device,
    ) -> TorchEngine:
        """The model being trained, with the run's decoding settings (for validation BLEU)."""
        return cls(
            model,
            src,
            tgt,
            cfg.decode,
            max_input_tokens=cfg.model.max_len,
            device=device,
            precision=cfg.train.precision,
            target_lang=cfg.data.tgt_lang,
        )

    def check_options(self, *, prefixes: bool) -> None:
        """Every option is ours to honour."""

    def batches(
        self, order: list[int], ids: list[list[int]], first_line: int
    ) -> Iterator[list[int]]:
        return cut_batches(order, ids, self.batch_tokens)

    def search(self, batches: Sequence[Batch]) -> Iterator[list[Translation]]:
        for batch in batches:
            keep_attention = batch.keep_attention or self.replace_unk
            hyps = self._search(batch.ids, batch.prefixes, keep_attention)
            translations = []
            for index, line, src_ids, sentence_hyps in zip(
                batch.indices, batch.lines, batch.ids, hyps, strict=True
            ):
                if not sentence_hyps:  # every score was NaN: no hypothesis could end
                    raise CheckpointError(
                        f"the model scores input line {batch.first_line + index} as NaN: its "
                        "weights are broken (did its training diverge?); translate with another "
                        "checkpoint"
                    )
                translations.append(self._to_translation(line, src_ids, sentence_hyps))
            yield translations

    @torch.inference_mode()
    def _search(
        self, sources: list[list[int]], prefixes: list[list[int]] | None, keep_attention: bool
    ) -> list[list[Hypothesis]]:
        src, src_mask = collate_sources(sources, self.device)
        with autocast(self.device, self.precision):
            if self.decode.sampling:
                return sample_search(
                    self.model,
                    src,
                    src_mask,
                    self.decode,
                    bos=BOS,
                    eos=EOS,
                    generator=self.generator,
                    prefixes=prefixes,
                    keep_attention=keep_attention,
                )
            return beam_search(
                self.model,
                src,
                src_mask,
                self.decode,
                bos=BOS,
                eos=EOS,
                prefixes=prefixes,
                keep_attention=keep_attention,
            )

    def _to_translation(self, line: str, src_ids: list[int], hyps: list[Hypothesis]) -> Translation:
        src_pieces = [*map(self.src_tokenizer.id_to_piece, src_ids), "</s>"]
        return Translation(src_pieces, [self._candidate(line, src_pieces, h) for h in hyps])

    def _candidate(self, line: str, src_pieces: list[str], hyp: Hypothesis) -> Candidate:
        out_pieces = [*map(self.tgt_tokenizer.id_to_piece, hyp.tokens), "</s>"]
        if self.replace_unk:
            if hyp.attention is None:
                raise ConfigError(
                    "--replace-unk copies the source word with the most attention, and this "
                    "model has no attention over the source; drop --replace-unk"
                )
            unk = self.tgt_tokenizer.id_to_piece(UNK)
            pieces = replace_unknowns(
                out_pieces[:-1], hyp.attention, src_pieces[:-1], line.split(), unk
            )
            text = self.tgt_tokenizer.decode_pieces(pieces)
        else:
            text = self.tgt_tokenizer.decode(hyp.tokens)
        return Candidate(text, hyp.score, out_pieces, hyp.attention)

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


def load_model(
    path: str | Path, ckpt: dict, cfg: Config, src_tok: Tokenizer, tgt_tok: Tokenizer
) -> torch.nn.Module:
    """The checkpoint's model (`cfg`: its config, parsed) with its weights, in eval mode;
    weights that do not fit the config are a one-line error naming the file."""
    args = (cfg.model, src_tok.vocab_size, tgt_tok.vocab_size, ckpt["tokenizer"]["joint"])
    check_weights_fit(Path(path), build_model_shapes(*args), ckpt["model_state"])
    model = build_model(*args)
    model.load_state_dict(ckpt["model_state"])
    return model.eval()
