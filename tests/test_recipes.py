"""The shipped recipes parse, and the WMT ones match the papers they cite."""

from __future__ import annotations

from pathlib import Path

import pytest

from nmt_cli.config import load_config
from nmt_cli.models import build_model_shapes

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.stem)
def test_recipe_parses(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.data.train and cfg.data.valid and cfg.data.test


def _parameters(path: Path) -> int:
    cfg = load_config(path)
    vocab = cfg.tokenizer.vocab_size
    model = build_model_shapes(cfg.model, vocab, vocab, cfg.tokenizer.joint)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("name", "paper_millions"), [("base", 65), ("big", 213)])
def test_wmt14_transformer_recipes_follow_the_paper(name: str, paper_millions: int) -> None:
    path = RECIPES / f"wmt14-en-de-transformer-{name}.yaml"
    cfg = load_config(path)
    assert _parameters(path) == pytest.approx(paper_millions * 1e6, rel=0.05)
    assert cfg.train.batch_tokens * cfg.train.accum_steps == 25_000
    # GPU geometry: one 25k-token micro-batch per GPU, bf16, compiled in static shapes
    assert cfg.train.accum_steps == 1 and cfg.train.precision == "bf16"
    assert cfg.train.compile and cfg.train.static_shapes
    assert cfg.train.warmup_steps == 4000 and cfg.train.label_smoothing == 0.1
    assert (cfg.decode.beam, cfg.decode.alpha) == (4, 0.6)
    assert cfg.train.keep_last == 5  # the last 5 checkpoints, for nmt average
    assert [s.hf for s in cfg.data.train] == ["wmt/wmt14"]


def test_wmt14_gnmt_recipe_is_the_deep_residual_lstm() -> None:
    cfg = load_config(RECIPES / "wmt14-en-de-gnmt.yaml")
    m = cfg.model
    assert (m.type, m.enc_layers, m.dec_layers, m.hidden_dim) == ("rnn", 8, 8, 1024)
    assert (m.bidirectional, m.residual_from) == ("bottom", 3)
