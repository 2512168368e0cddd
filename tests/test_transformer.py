"""The Transformer: incremental decoding with the key/value cache computes exactly what the
teacher-forced forward computes, in both norm arrangements, with tied and untied embeddings.
"""

from __future__ import annotations

import math

import pytest
import torch

from nmt_cli.config import TransformerModelConfig, config_from_dict
from nmt_cli.errors import ConfigError
from nmt_cli.models import build_model
from nmt_cli.models.transformer import sinusoidal_positions

V = 37
SRC_LENGTHS = [7, 3, 5]
T = 6


def make_model(norm: str = "pre", shared: bool = True, tie: bool = True) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = TransformerModelConfig(
        d_model=16, heads=4, ff_dim=32, enc_layers=2, dec_layers=3, norm=norm,
        dropout=0.3, attention_dropout=0.2, activation_dropout=0.1, tie_embeddings=tie,
    )  # fmt: skip
    return build_model(cfg, V, V + 5 * (not shared), shared_vocab=shared).eval()


def make_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    B, S = len(SRC_LENGTHS), max(SRC_LENGTHS)
    src = torch.randint(4, V, (B, S), generator=g)
    for b, n in enumerate(SRC_LENGTHS):
        src[b, n - 1] = 3
        src[b, n:] = 0
    tgt_in = torch.randint(4, V, (B, T), generator=g)
    tgt_in[:, 0] = 2
    tgt_in[1, 4:] = 0
    return src, src != 0, tgt_in


@pytest.mark.parametrize(("norm", "shared", "tie"),
                         [("pre", True, True), ("post", True, True), ("post", False, False),
                          ("pre", False, True)])  # fmt: skip
@torch.no_grad()
def test_step_equals_forward(norm: str, shared: bool, tie: bool) -> None:
    model = make_model(norm, shared, tie)
    src, src_mask, tgt_in = make_batch()
    expected = torch.log_softmax(model(src, src_mask, tgt_in).float(), dim=-1)

    state = model.init_state(model.encode(src, src_mask))
    stepped, weights = [], []
    for t in range(T):
        log_probs, state, attn = model.step(tgt_in[:, t], state)
        stepped.append(log_probs)
        weights.append(attn)
    torch.testing.assert_close(torch.stack(stepped, dim=1), expected, atol=1e-5, rtol=0)
    assert state.self_keys.shape[3] == T  # the cache grew one position per step

    attn_t = torch.stack(weights, dim=1)  # [B, T, S]
    torch.testing.assert_close(attn_t.sum(-1), torch.ones(len(SRC_LENGTHS), T))
    assert torch.all(attn_t.masked_select(~src_mask.unsqueeze(1).expand_as(attn_t)) == 0)


@torch.no_grad()
def test_beam_reorder_keeps_each_rows_cache() -> None:
    """Reordering mid-sentence, then stepping, equals stepping the selected rows alone."""
    model = make_model()
    src, src_mask, tgt_in = make_batch()
    state = model.init_state(model.encode(src, src_mask))
    for t in range(3):
        _, state, _ = model.step(tgt_in[:, t], state)
    index = torch.tensor([2, 2, 0])
    moved = state.reorder(index)
    got, _, _ = model.step(tgt_in[index, 3], moved)
    expected = torch.log_softmax(model(src[index], src_mask[index], tgt_in[index, :4]), -1)
    torch.testing.assert_close(got, expected[:, 3], atol=1e-5, rtol=0)


@torch.no_grad()
def test_padding_does_not_change_a_sentence() -> None:
    model = make_model()
    src, src_mask, tgt_in = make_batch()
    batched = torch.log_softmax(model(src, src_mask, tgt_in), dim=-1)
    n = SRC_LENGTHS[1]
    alone = torch.log_softmax(model(src[1:2, :n], src_mask[1:2, :n], tgt_in[1:2]), dim=-1)
    torch.testing.assert_close(batched[1:2], alone, atol=1e-5, rtol=0)


def test_decoder_is_causal() -> None:
    """Changing a later target word leaves the earlier positions' outputs unchanged."""
    model = make_model()
    src, src_mask, tgt_in = make_batch()
    changed = tgt_in.clone()
    changed[:, 4] = 5
    with torch.no_grad():
        a, b = model(src, src_mask, tgt_in), model(src, src_mask, changed)
    torch.testing.assert_close(a[:, :4], b[:, :4])
    assert not torch.allclose(a[:, 4:], b[:, 4:])


def test_tied_embeddings_are_one_matrix() -> None:
    model = make_model(shared=True, tie=True)
    assert model.src_embed.weight is model.tgt_embed.weight is model.output.weight
    untied = make_model(shared=False, tie=True)
    assert untied.src_embed.weight is not untied.tgt_embed.weight
    assert untied.tgt_embed.weight is untied.output.weight


def test_sinusoidal_positions_follow_the_formula() -> None:
    pe = sinusoidal_positions(torch.arange(5), 8)
    pos, i = 3, 2
    angle = pos / 10000 ** (2 * i / 8)
    assert pe[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
    assert pe[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_presets_and_validation() -> None:
    cfg = config_from_dict({"model": {"type": "transformer", "preset": "big", "dropout": 0.2}})
    assert (cfg.model.d_model, cfg.model.heads, cfg.model.ff_dim) == (1024, 16, 4096)
    assert cfg.model.dropout == 0.2  # the recipe's own key wins over the preset
    with pytest.raises(ConfigError, match="multiple of model.heads"):
        config_from_dict({"model": {"type": "transformer", "d_model": 30, "heads": 4}})
    with pytest.raises(ConfigError, match="unknown model.preset 'gnmt' for transformer"):
        config_from_dict({"model": {"type": "transformer", "preset": "gnmt"}})
