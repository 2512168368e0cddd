"""Typed configuration: one frozen dataclass per recipe section.

A recipe is YAML with the sections `data`, `tokenizer`, `model`, `train` and `decode`.
`--set section.key=value` overrides any leaf. Unknown keys are an error that names the
nearest valid key, because a silently ignored typo (`dropuot: 0.3`) wastes a training run.
The `model` section is chosen by `model.type`, so each family keeps its own flat fields.
Every number declares its allowed range next to its field (`nmt_cli.ranges.bounded`).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nmt_cli.errors import ConfigError, show
from nmt_cli.ranges import (
    BATCH_TOKENS,
    DIM,
    DROPOUT,
    LAYERS,
    NON_NEGATIVE,
    SEED,
    STEPS,
    TOKENS,
    Range,
    bounded,
    check_ranges,
)


@dataclass(frozen=True)
class SourceConfig:
    """One corpus: parallel files, a two-column TSV, a Hugging Face dataset, or a generated task.

    Exactly one of `src`+`tgt`, `tsv`, `hf` or `task` is set. `hf` is a hub name (with
    `hf_config` and `hf_split`) or a local parquet file, arrow file or `save_to_disk` directory.
    Rows carry the WMT `translation` dict unless `src_column` and `tgt_column` name two text
    columns. `task` generates `size` pairs of an NTM algorithmic task from `seed` (see
    `nmt_cli.data.algorithmic`): sequence lengths are drawn from `lengths`, repeat counts from
    `repeats` and associative-recall item counts from `items` (inclusive [lo, hi] ranges).
    """

    src: str | None = None
    tgt: str | None = None
    tsv: str | None = None
    hf: str | None = None
    hf_config: str | None = None
    hf_split: str = "train"
    src_column: str | None = None
    tgt_column: str | None = None
    task: str | None = None  # copy | repeat_copy | associative_recall
    size: int = bounded(0, Range(0, 100_000_000))
    seed: int = bounded(1, SEED)
    lengths: tuple[int, int] = bounded((1, 20), TOKENS)
    repeats: tuple[int, int] = bounded((1, 10), Range(1, 10_000))
    items: tuple[int, int] = bounded((2, 6), Range(2, 10_000))


@dataclass(frozen=True)
class CleanConfig:
    """Training-pair filters (Moses `clean-corpus-n` habits); valid and test are never filtered."""

    max_words: int = bounded(250, TOKENS)
    # subwords per side, checked once the tokenizer exists: one long "word" can be thousands
    max_tokens: int = bounded(250, TOKENS)
    max_ratio: float = bounded(3.0, Range(1, math.inf, hi_open=True))


@dataclass(frozen=True)
class DataConfig:
    """The corpora of each split. Relative `src`, `tgt` and `tsv` paths are read from `root`
    (default: the working directory), so one `--set data.root=DIR` points a recipe at
    wherever its files were downloaded."""

    root: str = ""
    src_lang: str = "src"
    tgt_lang: str = "tgt"
    train: tuple[SourceConfig, ...] = ()
    valid: tuple[SourceConfig, ...] = ()
    test: tuple[SourceConfig, ...] = ()
    clean: CleanConfig = field(default_factory=CleanConfig)


@dataclass(frozen=True)
class TokenizerConfig:
    """SentencePiece training options; `sample_size` bounds the sentences it trains on.

    `reuse` names a checkpoint (.pt) or a data dir whose SentencePiece model(s) to take
    instead of training one: the vocabulary a model fine-tuned from that checkpoint needs
    (`nmt train --init-from`). The other options are then that tokenizer's, and the data
    dir's manifest records them in place of the recipe's.
    """

    model_type: str = "unigram"  # unigram | bpe | char | word (whitespace-separated words)
    vocab_size: int = bounded(8000, Range(8, 1_000_000))
    joint: bool = True
    sample_size: int = bounded(1_000_000, Range(1, 2**31 - 1))  # SentencePiece's int32
    character_coverage: float = bounded(1.0, Range(0, 1, lo_open=True))
    reuse: str = ""  # a checkpoint or data dir whose tokenizer to take instead of training


@dataclass(frozen=True)
class RNNModelConfig:
    """The attention seq2seq (Luong et al. 2015; GNMT, Wu et al. 2016).

    Every encoder layer outputs `hidden_dim` features; a bidirectional layer runs two
    directions of `hidden_dim // 2` and concatenates them. `residual_from: k` adds each
    layer's input to its output for layers k, k+1, ... (1-based; 0 turns residuals off).
    """

    type: str = "rnn"
    preset: str | None = None
    emb_dim: int = bounded(256, DIM)
    hidden_dim: int = bounded(256, DIM)
    enc_layers: int = bounded(1, LAYERS)
    dec_layers: int = bounded(1, LAYERS)
    bidirectional: str = "all"  # all | bottom | none
    residual_from: int = bounded(0, Range(0, LAYERS.hi))
    attention: str = "general"  # dot | general | concat | none (no attention)
    input_feeding: bool = True
    dropout: float = bounded(0.3, DROPOUT)
    tie_embeddings: bool = True
    max_len: int = bounded(256, TOKENS)


@dataclass(frozen=True)
class TransformerModelConfig:
    """The Transformer (Vaswani et al. 2017). The defaults are the paper's base model.

    `norm: post` normalises after each residual addition, as in the paper; `pre` normalises
    each block's input (Xiong et al. 2020), which trains stably without a long warm-up.
    Source, target and output embeddings are one matrix when the vocabulary is joint and
    `tie_embeddings` is set; otherwise only the target embedding and output layer are tied.
    """

    type: str = "transformer"
    preset: str | None = None
    d_model: int = bounded(512, DIM)
    heads: int = bounded(8, Range(1, 1024))
    ff_dim: int = bounded(2048, DIM)
    enc_layers: int = bounded(6, LAYERS)
    dec_layers: int = bounded(6, LAYERS)
    norm: str = "post"  # post | pre
    dropout: float = bounded(0.1, DROPOUT)
    attention_dropout: float = bounded(0.0, DROPOUT)
    activation_dropout: float = bounded(0.0, DROPOUT)
    tie_embeddings: bool = True
    max_len: int = bounded(256, TOKENS)


@dataclass(frozen=True)
class NTMModelConfig:
    """The Neural Turing Machine as a seq2seq (Graves et al. 2014).

    An LSTM (or feed-forward) controller reads the source, writing to an N x M memory
    (`memory_slots` x `memory_width`), then a delimiter, then emits the target reading from
    memory. Heads shift their focus by at most `max_shift` slots per step. Controller outputs
    are clipped to [-clip, clip] (Collier & Beel 2018 found this decisive for stability).
    """

    type: str = "ntm"
    preset: str | None = None
    emb_dim: int = bounded(64, DIM)
    controller: str = "lstm"  # lstm | feedforward
    controller_dim: int = bounded(100, DIM)
    memory_slots: int = bounded(128, Range(1, 16_384))
    memory_width: int = bounded(20, Range(1, 4096))
    read_heads: int = bounded(1, LAYERS)
    write_heads: int = bounded(1, LAYERS)
    max_shift: int = bounded(1, Range(0, 8192))  # and below memory_slots / 2
    clip: float = bounded(20.0, Range(0, 1e6, lo_open=True))
    dropout: float = bounded(0.0, DROPOUT)
    tie_embeddings: bool = True
    max_len: int = bounded(256, TOKENS)


# Named model sizes per family; a recipe's own keys override the preset's.
MODEL_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "rnn": {
        # GNMT (Wu et al. 2016, sec. 3): deep LSTM stacks, only the bottom encoder layer is
        # bidirectional, residual connections from the third layer up, additive attention.
        "gnmt": {
            "enc_layers": 8,
            "dec_layers": 8,
            "bidirectional": "bottom",
            "residual_from": 3,
            "attention": "concat",
        },
    },
    "transformer": {
        # A size that trains in minutes on a CPU (`bench/train_speed.py`'s model).
        "small": {"d_model": 256, "heads": 4, "ff_dim": 1024, "enc_layers": 3, "dec_layers": 3},
        # Vaswani et al. 2017, table 3.
        "base": {
            "d_model": 512,
            "heads": 8,
            "ff_dim": 2048,
            "enc_layers": 6,
            "dec_layers": 6,
            "dropout": 0.1,
        },
        "big": {
            "d_model": 1024,
            "heads": 16,
            "ff_dim": 4096,
            "enc_layers": 6,
            "dec_layers": 6,
            "dropout": 0.3,
        },
    },
    "ntm": {},
}

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
FREEZABLE_PARTS = ("embeddings", "encoder")  # train.freeze: see nmt_cli/finetune.py

ModelConfig = RNNModelConfig | TransformerModelConfig | NTMModelConfig
MODEL_CONFIGS: dict[str, type] = {
    "rnn": RNNModelConfig,
    "transformer": TransformerModelConfig,
    "ntm": NTMModelConfig,
}


@dataclass(frozen=True)
class TrainConfig:
    seed: int = bounded(1, SEED)
    # Fine-tuning: a new run starts from this checkpoint's weights (`nmt train --init-from`),
    # with a fresh optimizer, schedule and data position unless `keep_optimizer`; the parts
    # named in `freeze` (embeddings, encoder) keep their weights. See nmt_cli/finetune.py.
    init_from: str = ""
    keep_optimizer: bool = False
    freeze: tuple[str, ...] = ()
    batch_tokens: int = bounded(4096, BATCH_TOKENS)  # per process and micro-batch; an update
    accum_steps: int = bounded(1, Range(1, 10_000))  # sees batch_tokens x accum_steps x processes
    max_steps: int = bounded(100_000, Range(1, STEPS.hi))
    max_epochs: int = bounded(0, STEPS)  # stop after this many passes over the data; 0: no limit
    # stop (and checkpoint) after this much training time; 0: no limit
    max_seconds: float = bounded(0.0, NON_NEGATIVE)
    # 0 freezes the weights; one too large diverges, which `max_bad_updates` stops
    lr: float = bounded(1e-3, NON_NEGATIVE)
    betas: tuple[float, float] = bounded((0.9, 0.999), Range(0, 1, hi_open=True))
    # AdamW's decoupled weight decay (Loshchilov & Hutter 2019); 0: plain Adam
    weight_decay: float = bounded(0.0, Range(0, 10))
    warmup_steps: int = bounded(500, STEPS)
    decay: str = "inverse_sqrt"  # inverse_sqrt | linear | constant
    label_smoothing: float = bounded(0.1, DROPOUT)
    clip_norm: float = bounded(1.0, NON_NEGATIVE)  # 0: no clipping
    # 0: never validate (last.pt is still written at the end)
    valid_every: int = bounded(1000, STEPS)
    log_every: int = bounded(50, Range(1, STEPS.hi))
    keep_last: int = bounded(3, STEPS)
    patience: int = bounded(10, STEPS)
    best_metric: str = "bleu"  # bleu | loss: the validation figure that picks best.pt
    # sacreBLEU's tokenizer for validation BLEU; "": its choice for data.tgt_lang (zh for
    # Chinese, ja-mecab, ko-mecab, else 13a)
    bleu_tokenize: str = ""
    precision: str = "fp32"  # auto | fp32 | bf16 | fp16 (auto: bf16 where native)
    threads: int = bounded(0, Range(0, 4096))  # 0: leave torch's default
    # stop after this many non-finite losses in a row
    max_bad_updates: int = bounded(10, Range(1, STEPS.hi))
    compile: bool = False  # torch.compile the model and loss for training
    # pad batches to a few fixed shapes (see data/batching.py), so a compiled step is
    # compiled once per shape; costs ~10-20% padding, so for compiled (GPU) training only
    static_shapes: bool = False
    tensorboard: bool = False  # also log to RUN/tensorboard (pip install tensorboard)
    # Multi-process runs: seconds a process waits for the others in a collective before it
    # gives up (a dead process is noticed at once; this bounds the wait for a hung one). Rank
    # 0 validates alone while the others wait, so it must exceed a validation.
    collective_timeout: float = bounded(3600.0, Range(0, 1e7, lo_open=True))  # 1e7: 116 days


@dataclass(frozen=True)
class DecodeConfig:
    """Decoding settings shared by validation, `nmt translate` and `nmt eval`."""

    beam: int = bounded(5, Range(1, 1000))
    alpha: float = bounded(0.6, Range(0, 10))
    max_len_a: float = bounded(1.5, Range(0, 100))  # output length limit a * |source| + b
    max_len_b: int = bounded(10, Range(0, TOKENS.hi))
    # at least a * |source| + b output words before EOS (the max limit wins where they meet)
    min_len_a: float = bounded(0.0, Range(0, 100))
    min_len_b: int = bounded(0, Range(0, TOKENS.hi))
    no_repeat_ngram: int = bounded(0, Range(0, TOKENS.hi))  # no n-gram of this size twice; 0: off
    n_best: int = bounded(1, Range(1, 1000))  # hypotheses (or samples) kept per sentence
    # source tokens per decoding batch: bounds the [rows, V] step tensors; 0: 1,500 on a CPU,
    # 16,000 on a GPU (whose steps cost about the same for 200 rows or 2,000)
    batch_tokens: int = bounded(0, Range(0, BATCH_TOKENS.hi))
    coverage: float = bounded(0.0, Range(0, 100))  # GNMT coverage penalty weight beta (0 = off)
    sampling: bool = False  # draw words at random instead of beam search
    temperature: float = bounded(1.0, Range(0, 1000, lo_open=True))
    top_k: int = bounded(0, Range(0, 1_000_000))  # sample among the k most probable words (0: all)
    # ... or among the smallest set holding this much probability
    top_p: float = bounded(1.0, Range(0, 1, lo_open=True))
    seed: int = bounded(1, SEED)  # of the sampling draws

    def batch_tokens_on(self, device_type: str) -> int:
        """`batch_tokens`, with 0 (the default) sized for the device."""
        return self.batch_tokens or (16_000 if device_type == "cuda" else 1_500)


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=RNNModelConfig)  # chosen by model.type
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML recipe (or start from defaults), apply `a.b=value` overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"recipe not found: {path}; pass the path of a YAML recipe")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError, ValueError) as exc:  # ValueError: an int
            first_line = str(exc).splitlines()[0]  # of more than 4,300 digits
            raise ConfigError(f"recipe {path} is not valid YAML ({first_line}); fix it") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"recipe {path} must be a mapping of sections; see recipes/")
    for item in overrides:
        apply_override(raw, item)
    return config_from_dict(raw)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set one `section.key=value` in a raw recipe dict; the value is parsed as YAML."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {show(item)} is not of the form section.key=value")
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {show(item)}: {show(part)} is not a section")
    try:
        node[leaf] = yaml.safe_load(value)
    except (yaml.YAMLError, ValueError) as exc:
        first_line = str(exc).splitlines()[0]
        raise ConfigError(
            f"--set {show(item)}: the value is not valid YAML ({first_line})"
        ) from None


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Build a validated `Config` from plain containers (a recipe, or a checkpoint's config)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {show(raw)}")
    raw = dict(raw)
    model_raw = raw.pop("model", None) or {}
    if not isinstance(model_raw, dict):
        raise ConfigError(f"model must be a mapping, got {show(model_raw)}")
    model_type = model_raw.get("type", "rnn")
    if not isinstance(model_type, str) or model_type not in MODEL_CONFIGS:
        raise ConfigError(
            f"unknown model.type {show(model_type)}; choose one of {', '.join(MODEL_CONFIGS)}"
        )
    preset = model_raw.get("preset")
    if preset is not None:
        presets = MODEL_PRESETS[model_type]
        if not isinstance(preset, str) or preset not in presets:
            names = f"choose one of {', '.join(presets)}" if presets else "it has none"
            raise ConfigError(f"unknown model.preset {show(preset)} for {model_type}; {names}")
        model_raw = {**presets[preset], **model_raw}
    base = _build(Config, {k: v for k, v in raw.items()}, "", skip={"model"})
    model = _build(MODEL_CONFIGS[model_type], model_raw, "model.")
    cfg = dataclasses.replace(base, model=model)
    validate(cfg)
    return cfg


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain containers (dicts, lists, scalars) that `torch.load(weights_only=True)` accepts."""
    return _plain(dataclasses.asdict(cfg))


def config_to_yaml(cfg: Config) -> str:
    """The resolved config as a recipe: `load_config` reads it back to an equal `Config`."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True)


def validate(cfg: Config) -> None:
    """Check value ranges and choices that the types alone cannot express."""
    check_ranges(cfg)
    choices = {
        "tokenizer.model_type": (cfg.tokenizer.model_type, ("unigram", "bpe", "char", "word")),
        "train.decay": (cfg.train.decay, ("inverse_sqrt", "linear", "constant")),
        "train.best_metric": (cfg.train.best_metric, ("bleu", "loss")),
        "train.precision": (cfg.train.precision, PRECISIONS),
    }
    if cfg.train.keep_optimizer and not cfg.train.init_from:
        raise ConfigError(
            "train.keep_optimizer takes the optimizer state of train.init_from; "
            "give the checkpoint with --init-from"
        )
    for i, part in enumerate(cfg.train.freeze):
        choices[f"train.freeze[{i}]"] = (part, FREEZABLE_PARTS)
    if cfg.train.bleu_tokenize:
        from sacrebleu.metrics import BLEU  # only then: a plain recipe loads without it

        choices["train.bleu_tokenize"] = (cfg.train.bleu_tokenize, tuple(BLEU.TOKENIZERS))
    if isinstance(cfg.model, RNNModelConfig):
        choices["model.bidirectional"] = (cfg.model.bidirectional, ("all", "bottom", "none"))
        choices["model.attention"] = (cfg.model.attention, ("dot", "general", "concat", "none"))
        if cfg.model.bidirectional != "none" and cfg.model.hidden_dim % 2:
            raise ConfigError("model.hidden_dim must be even for a bidirectional encoder")
        if cfg.model.residual_from == 1 and cfg.model.emb_dim != cfg.model.hidden_dim:
            raise ConfigError(
                "model.residual_from: 1 adds the embeddings to layer 1's output, so model.emb_dim "
                "must equal model.hidden_dim; use residual_from >= 2"
            )
    if isinstance(cfg.model, TransformerModelConfig):
        choices["model.norm"] = (cfg.model.norm, ("post", "pre"))
        if cfg.model.d_model % cfg.model.heads:
            raise ConfigError("model.d_model must be a multiple of model.heads")
    if isinstance(cfg.model, NTMModelConfig):
        choices["model.controller"] = (cfg.model.controller, ("lstm", "feedforward"))
        if cfg.model.max_shift >= cfg.model.memory_slots // 2:
            raise ConfigError("model.max_shift must be below model.memory_slots / 2")
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{key}: {show(value)} is not one of {', '.join(allowed)}")
    validate_decode(cfg.decode)


def validate_decode(d: DecodeConfig) -> None:
    """Also run on the settings `nmt translate` / `nmt eval` options and an exported model's
    metadata override, which no recipe parser has type-checked."""
    hints = _type_hints(DecodeConfig)
    for f in dataclasses.fields(DecodeConfig):
        _coerce(hints[f.name], getattr(d, f.name), f"decode.{f.name}")
    check_ranges(d, "decode.")
    if d.n_best > d.beam and not d.sampling:
        raise ConfigError(
            f"n-best {d.n_best} with beam {d.beam}: beam search needs 1 <= n-best <= beam; "
            "raise the beam (--beam, decode.beam)"
        )


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    """A dataclass's field types, resolved once: resolving evaluates every annotation string,
    which made reading a config most of the cost of loading a small checkpoint."""
    return typing.get_type_hints(cls)


def _build(cls: type, raw: Any, prefix: str, skip: set[str] = frozenset()) -> Any:
    """Turn a dict into dataclass `cls`, recursing into nested dataclasses and tuples of them."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'recipe'} must be a mapping, got {show(raw)}")
    hints = _type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key in skip:
            continue
        if key not in names:
            near = difflib.get_close_matches(key[:100], names, n=1) if isinstance(key, str) else []
            hint = (
                f"; did you mean {prefix}{near[0]}?"
                if near
                else f"; valid keys: {', '.join(names)}"
            )
            shown = (
                key if isinstance(key, str) and len(key) <= 100 and key.isprintable() else show(key)
            )
            raise ConfigError(f"unknown recipe key {prefix}{shown}{hint}")
        kwargs[key] = _coerce(hints[key], value, f"{prefix}{key}")
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, name: str) -> Any:
    """Check a YAML value against a field's type hint, converting where YAML is loose."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, name)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, name + ".")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{name}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{name} needs {len(args)} values, got {len(value)}")
        return tuple(
            _coerce(a, v, f"{name}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True))
        )
    if hint is Any:
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:  # an int beyond 1.8e308
            raise ConfigError(f"{name} must be a finite float, got {show(value)}") from None
    if hint is float and isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads "1e-3" as a string
        except ValueError:
            pass
    if hint in (int, str, bool, float) and not (
        isinstance(value, hint) and not (hint is int and isinstance(value, bool))
    ):
        raise ConfigError(f"{name} must be {hint.__name__}, got {show(value)}")
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
