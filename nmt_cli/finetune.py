"""Fine-tuning: a new run that starts from a trained model's weights.

`nmt train RECIPE --data D --out RUN --init-from CKPT` (`train.init_from`) trains the
recipe's model on D starting from CKPT's weights, with a fresh optimizer, learning-rate
schedule and data position (OpenNMT-py's `-reset_optim all`, fairseq's `--reset-optimizer
--reset-dataloader --reset-lr-scheduler`): domain adaptation, or a model grown on more data.
`train.keep_optimizer` also takes CKPT's Adam moments; `train.freeze` keeps the embeddings
or the encoder as they were, which guards a small in-domain set against over-fitting.

The weights only fit where the architecture and the vocabulary are CKPT's: D must be
preprocessed with CKPT's tokenizer (`tokenizer.reuse: CKPT`), and the recipe's model
section may differ from CKPT's only in what no weight depends on (dropout, max_len). Each
mismatch is one line naming the difference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from nmt_cli.config import Config, config_from_dict, config_to_dict
from nmt_cli.errors import CheckpointError, ConfigError, show

# Model settings a fine-tuning run may change: no weight's shape or meaning depends on them.
FREE_MODEL_KEYS = frozenset(
    {"preset", "dropout", "attention_dropout", "activation_dropout", "max_len"}
)

# The weights each `train.freeze` part holds, by model family: state-dict name prefixes.
# A tied output layer is the target embedding, so freezing the embeddings freezes it too.
FREEZABLE: dict[str, dict[str, tuple[str, ...]]] = {
    "embeddings": {
        "rnn": ("src_embed.", "tgt_embed."),
        "transformer": ("src_embed.", "tgt_embed."),
        "ntm": ("src_embed.", "tgt_embed."),
    },
    "encoder": {
        "rnn": ("encoder.",),
        "transformer": ("encoder_layers.", "encoder_norm."),
        # the NTM's one controller reads the source and writes the target: no encoder
    },
}


def check_compatible(
    path: Path, ckpt: dict[str, Any], cfg: Config, tokenizer: dict[str, Any]
) -> None:
    """Refuse, in one line, a checkpoint whose weights cannot start this run: another
    vocabulary than the data's (`tokenizer`: the data's checkpoint entry) or another
    architecture than the recipe's."""
    stored = ckpt["tokenizer"]
    for side, label in (("src", "source"), ("tgt", "target")):
        if stored[f"{side}_sha256"] != tokenizer[f"{side}_sha256"]:
            raise ConfigError(
                f"--init-from {path} was trained with another {label} vocabulary than --data "
                f"holds; preprocess the data with tokenizer.reuse: {path}"
            )
    old = config_to_dict(config_from_dict(ckpt["config"]))["model"]
    new = config_to_dict(cfg)["model"]
    differing = [
        f"model.{key}: {show(old.get(key))} in the checkpoint, {show(new.get(key))} in the recipe"
        for key in sorted(old.keys() | new.keys())
        if key not in FREE_MODEL_KEYS and old.get(key) != new.get(key)
    ]
    if differing:
        raise ConfigError(
            f"--init-from {path} has another architecture ({'; '.join(differing[:3])}); "
            "give the recipe the checkpoint's model section"
        )


def freeze(model: torch.nn.Module, family: str, parts: tuple[str, ...]) -> int:
    """Stop gradients to the weights of `parts`; return how many weights that holds."""
    frozen = 0
    for part in parts:
        prefixes = FREEZABLE[part].get(family)
        if prefixes is None:
            raise ConfigError(
                f"train.freeze: a {family} model has no {part}; freeze one of "
                f"{', '.join(p for p, by_family in FREEZABLE.items() if family in by_family)}"
            )
        for name, weight in model.named_parameters(remove_duplicate=False):
            if name.startswith(prefixes) and weight.requires_grad:
                weight.requires_grad_(False)
                frozen += weight.numel()
    return frozen


def origin(path: Path, ckpt: dict[str, Any]) -> dict[str, Any]:
    """What a fine-tuned checkpoint records of the one it started from."""
    return {"path": str(path), "step": ckpt["step"], "created_at": ckpt.get("created_at", "")}


def optimizer_state(path: Path, ckpt: dict[str, Any]) -> dict[str, Any]:
    """The optimizer state `train.keep_optimizer` takes from the checkpoint."""
    state = ckpt.get("train_state")
    if state is None:
        raise CheckpointError(
            f"--init-from {path} holds no optimizer state (an averaged or exported file); "
            "drop train.keep_optimizer, or start from a checkpoint nmt train wrote"
        )
    return state["optimizer"]
