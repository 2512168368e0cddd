"""Write a Transformer checkpoint as a CTranslate2 model directory.

CTranslate2 is a C++ inference engine for Transformer translation models: fused kernels,
int8 weights and several translations in parallel make CPU decoding several times faster
than PyTorch (`bench/decode_speed.py` measures both). It cannot read our checkpoint, so we
fill its model specification (`ctranslate2.specs.TransformerSpec`) with our weights.
CTranslate2 would run a wrongly arranged model without complaint, so these must match
exactly:

- attention: our `MultiHeadAttention` keeps the query, key and value matrices in one
  [3D, D] projection. CTranslate2's self-attention takes that fused matrix as it is; its
  cross-attention takes the query rows alone and the key/value rows fused.
- positions: ours interleave sin and cos (PE(pos, 2i) = sin, PE(pos, 2i+1) = cos), while
  CTranslate2's built-in table puts all sines first and spaces frequencies differently, so we
  export our exact table, long enough for the longest input and output.
- layer norm epsilon (PyTorch's 1e-5, not CTranslate2's 1e-6), post- or pre-norm with the
  final stack norms only in pre-norm, embeddings scaled by sqrt(d_model), an output layer
  without bias; tied embeddings need nothing: CTranslate2 stores equal matrices once.
- special tokens: the vocabulary is the SentencePiece pieces in id order, decoding starts
  with our BOS and stops at our EOS, and the source gets the EOS the model was trained with.

Beside CTranslate2's `model.bin`, `config.json` and vocabulary, the directory holds both
SentencePiece models and `nmt_cli.json` (decoding settings, input limit, position table
size; `ct2_format.py`), so it alone is enough to translate (`ctranslate2.py`). It is written to a
temporary directory renamed into place at the end (`nmt_cli.owned_dirs`), so a failed export
never leaves a partial directory or destroys an earlier one, and only a directory holding
nothing but an earlier export (the files its `nmt_cli.json` lists) is ever replaced.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from nmt_cli.checkpoint import load_checkpoint
from nmt_cli.config import Config, DecodeConfig, config_from_dict
from nmt_cli.data.tokenizer import BOS, EOS, UNK, Tokenizer
from nmt_cli.errors import CheckpointError, ConfigError, DataError, first_line
from nmt_cli.inference.ct2_format import (
    DECODE_KEYS,
    FORMAT,
    FORMAT_VERSION,
    METADATA,
    SOURCE_SPM,
    TARGET_SPM,
    import_ctranslate2,
)
from nmt_cli.inference.torch_engine import load_model
from nmt_cli.models.transformer import (
    DecoderLayer,
    EncoderLayer,
    MultiHeadAttention,
    Transformer,
    sinusoidal_positions,
)
from nmt_cli.owned_dirs import DirKind, check_destination, made_files, replacing

# Weight types CTranslate2 can store; "none" keeps the checkpoint's float32 weights.
QUANTIZATIONS = (
    "none",
    "int8",
    "int8_float32",
    "int8_float16",
    "int8_bfloat16",
    "int16",
    "float16",
    "bfloat16",
    "float32",
)
# What an export written before nmt_cli.json listed its "files" holds (CTranslate2 names its
# vocabularies by version and by whether they are shared).
_LEGACY_FILES = (
    "model.bin",
    "config.json",
    "vocabulary.json",
    "shared_vocabulary.json",
    "source_vocabulary.json",
    "target_vocabulary.json",
    "vocabulary.txt",
    "shared_vocabulary.txt",
    "source_vocabulary.txt",
    "target_vocabulary.txt",
    SOURCE_SPM,
    TARGET_SPM,
)
EXPORT_DIR = DirKind("export", METADATA, FORMAT, lambda metadata: _LEGACY_FILES)


@dataclasses.dataclass
class ExportResult:
    out_dir: Path
    quantization: str
    size_bytes: int  # model.bin on disk
    src_vocab: int
    tgt_vocab: int
    max_positions: int  # rows of the position table: the most input or output positions
    decode: dict[str, Any]  # the decoding defaults stored with the model
    not_carried: dict[str, Any]  # the checkpoint's other decoding settings, set off default


def export_ctranslate2(
    checkpoint: str | Path, out: str | Path, *, quantization: str = "none"
) -> ExportResult:
    """Write `checkpoint` (a Transformer) as a CTranslate2 model directory `out`."""
    if quantization not in QUANTIZATIONS:
        raise ConfigError(
            f"--quantize {quantization} is not a CTranslate2 weight type; "
            f"choose one of {', '.join(QUANTIZATIONS)}"
        )
    out = check_destination(Path(out), EXPORT_DIR)  # before any work: one line if not ours
    ctranslate2 = import_ctranslate2()
    ckpt = load_checkpoint(checkpoint)
    cfg = config_from_dict(ckpt["config"])
    model, src_tok, tgt_tok = _load_transformer(checkpoint, ckpt, cfg)
    positions = position_table_size(cfg.model.max_len)
    spec = _build_spec(ctranslate2.specs, model, src_tok, tgt_tok, positions)
    try:
        spec.validate()
        spec.optimize(quantization=None if quantization == "none" else quantization)
    except ValueError as exc:  # a weight the spec lacks, or one of the wrong shape
        raise CheckpointError(
            f"{checkpoint}: CTranslate2 rejected the model ({first_line(exc, 160)}); "
            "export a checkpoint written by this nmt_cli version"
        ) from None
    decode, not_carried = _split_decode(cfg.decode)
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "source_spm": SOURCE_SPM,
        "target_spm": TARGET_SPM,
        "max_input_tokens": cfg.model.max_len,
        "tgt_lang": cfg.data.tgt_lang,
        "max_positions": positions,
        "quantization": quantization,
        "decode": decode,
        "checkpoint": {"path": str(checkpoint), "step": ckpt["step"]},
    }
    try:
        with replacing(out, EXPORT_DIR) as tmp:
            spec.save(str(tmp))
            (tmp / SOURCE_SPM).write_bytes(src_tok.model_bytes)
            (tmp / TARGET_SPM).write_bytes(tgt_tok.model_bytes)
            metadata["files"] = made_files(tmp, EXPORT_DIR)
            (tmp / METADATA).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise DataError(
            f"cannot write {out} ({exc.strerror or exc}); check its free space and permissions"
        ) from None
    return ExportResult(
        out_dir=out,
        quantization=quantization,
        size_bytes=(out / "model.bin").stat().st_size,
        src_vocab=src_tok.vocab_size,
        tgt_vocab=tgt_tok.vocab_size,
        max_positions=positions,
        decode=decode,
        not_carried=not_carried,
    )


def render_export(result: ExportResult, console: Console) -> None:
    """A short summary table on the stderr console."""
    table = Table(title=f"CTranslate2 model {result.out_dir}", show_header=False)
    table.add_row("weights", "float32" if result.quantization == "none" else result.quantization)
    table.add_row("model.bin", f"{result.size_bytes / 2**20:.1f} MiB")
    table.add_row("vocabulary", f"{result.src_vocab} source, {result.tgt_vocab} target pieces")
    table.add_row("positions", f"{result.max_positions}")
    table.add_row("decoding", ", ".join(f"{k} {v}" for k, v in result.decode.items()))
    if result.not_carried:
        table.add_row(
            "not carried",
            ", ".join(f"{k} {v}" for k, v in result.not_carried.items())
            + " (no CTranslate2 equivalent)",
        )
    console.print(table)


def position_table_size(max_len: int) -> int:
    """Rows of the exported position table. The encoder needs max_len + 1 (with EOS);
    outputs may be longer than inputs (a * |X| + b steps), so leave room for twice that."""
    return max(1024, 2 * max_len + 50)


# --- reading the checkpoint ----------------------------------------------------------------


def _load_transformer(
    path: str | Path, ckpt: dict[str, Any], cfg: Config
) -> tuple[Transformer, Tokenizer, Tokenizer]:
    if cfg.model.type != "transformer":
        raise CheckpointError(
            f"{path} holds a model.type {cfg.model.type} model; CTranslate2 export supports "
            "Transformer checkpoints only (translate this one with nmt translate)"
        )
    src_tok = Tokenizer(ckpt["tokenizer"]["src_model"], name=f"{path}: source tokenizer")
    tgt_tok = Tokenizer(ckpt["tokenizer"]["tgt_model"], name=f"{path}: target tokenizer")
    return load_model(path, ckpt, cfg, src_tok, tgt_tok), src_tok, tgt_tok


def _split_decode(decode: DecodeConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """The settings CTranslate2 reproduces, and the others that differ from their defaults
    (e.g. a coverage penalty): those cannot travel with the export."""
    default = DecodeConfig()
    carried = {key: getattr(decode, key) for key in DECODE_KEYS}
    others = {
        field.name: getattr(decode, field.name)
        for field in dataclasses.fields(decode)
        if field.name not in DECODE_KEYS
        and getattr(decode, field.name) != getattr(default, field.name)
    }
    return carried, others


# --- filling the CTranslate2 specification -------------------------------------------------


def _build_spec(specs, model: Transformer, src_tok: Tokenizer, tgt_tok: Tokenizer, positions: int):
    cfg = model.cfg
    pre_norm = cfg.norm == "pre"
    spec = specs.TransformerSpec(
        specs.TransformerEncoderSpec(cfg.enc_layers, cfg.heads, pre_norm=pre_norm),
        # alignment_heads=0: the returned attention averages all heads of the last layer,
        # as our `attention` does.
        specs.TransformerDecoderSpec(
            cfg.dec_layers, cfg.heads, pre_norm=pre_norm, alignment_layer=-1, alignment_heads=0
        ),
    )
    table = sinusoidal_positions(torch.arange(positions), cfg.d_model)  # [P, D]
    _set_embeddings(spec.encoder, model.src_embed, table)
    _set_embeddings(spec.decoder, model.tgt_embed, table)
    for layer_spec, layer in zip(spec.encoder.layer, model.encoder_layers, strict=True):
        _set_encoder_layer(layer_spec, layer)
    for layer_spec, layer in zip(spec.decoder.layer, model.decoder_layers, strict=True):
        _set_decoder_layer(layer_spec, layer)
    if pre_norm:
        _set_norm(spec.encoder.layer_norm, model.encoder_norm)
        _set_norm(spec.decoder.layer_norm, model.decoder_norm)
    spec.decoder.projection.weight = _array(model.output.weight)  # no bias

    spec.register_source_vocabulary([src_tok.id_to_piece(i) for i in range(src_tok.vocab_size)])
    spec.register_target_vocabulary([tgt_tok.id_to_piece(i) for i in range(tgt_tok.vocab_size)])
    config = spec.config
    config.unk_token = tgt_tok.id_to_piece(UNK)
    config.bos_token = config.decoder_start_token = tgt_tok.id_to_piece(BOS)
    config.eos_token = tgt_tok.id_to_piece(EOS)
    config.add_source_bos, config.add_source_eos = False, True  # the source ends with EOS
    config.layer_norm_epsilon = model.decoder_layers[0].ff_sub.norm.eps  # all norms alike
    return spec


def _set_embeddings(stack_spec, embedding: torch.nn.Embedding, table: torch.Tensor) -> None:
    """Token embeddings (CTranslate2 scales them by sqrt(D), as `_embed` does) + positions.
    The encoder spec holds a list of embeddings (for source factors); ours is the first."""
    embeddings = stack_spec.embeddings
    (embeddings[0] if isinstance(embeddings, list) else embeddings).weight = _array(
        embedding.weight
    )
    stack_spec.scale_embeddings = True
    stack_spec.position_encodings.encodings = _array(table)


def _set_encoder_layer(spec, layer: EncoderLayer) -> None:
    _set_self_attention(spec.self_attention, layer.self_attn)
    _set_norm(spec.self_attention.layer_norm, layer.attn_sub.norm)
    _set_feed_forward(spec.ffn, layer.ff)
    _set_norm(spec.ffn.layer_norm, layer.ff_sub.norm)


def _set_decoder_layer(spec, layer: DecoderLayer) -> None:
    _set_self_attention(spec.self_attention, layer.self_attn)
    _set_norm(spec.self_attention.layer_norm, layer.self_sub.norm)
    _set_cross_attention(spec.attention, layer.cross_attn)
    _set_norm(spec.attention.layer_norm, layer.cross_sub.norm)
    _set_feed_forward(spec.ffn, layer.ff)
    _set_norm(spec.ffn.layer_norm, layer.ff_sub.norm)


def _set_self_attention(spec, attn: MultiHeadAttention) -> None:
    """linear[0]: the fused [3D, D] q/k/v projection; linear[1]: the output projection."""
    _set_linear(spec.linear[0], attn.in_proj.weight, attn.in_proj.bias)
    _set_linear(spec.linear[1], attn.out_proj.weight, attn.out_proj.bias)


def _set_cross_attention(spec, attn: MultiHeadAttention) -> None:
    """linear[0]: query rows [D, D] (decoder side); linear[1]: key/value rows [2D, D]
    (encoder side); linear[2]: the output projection."""
    D = attn.d_model
    weight, bias = attn.in_proj.weight, attn.in_proj.bias
    _set_linear(spec.linear[0], weight[:D], bias[:D])
    _set_linear(spec.linear[1], weight[D:], bias[D:])
    _set_linear(spec.linear[2], attn.out_proj.weight, attn.out_proj.bias)


def _set_feed_forward(spec, ff: torch.nn.Sequential) -> None:
    """Our FFN is Linear, ReLU, Dropout, Linear (CTranslate2's default activation is ReLU)."""
    first, last = ff[0], ff[-1]
    _set_linear(spec.linear_0, first.weight, first.bias)
    _set_linear(spec.linear_1, last.weight, last.bias)


def _set_linear(spec, weight: torch.Tensor, bias: torch.Tensor) -> None:
    spec.weight, spec.bias = _array(weight), _array(bias)


def _set_norm(spec, norm: torch.nn.LayerNorm) -> None:
    spec.gamma, spec.beta = _array(norm.weight), _array(norm.bias)


def _array(tensor: torch.Tensor):
    """A float32 numpy copy (weights may be stored in another float type)."""
    return tensor.detach().to(torch.float32).numpy().copy()
