"""The RNN family: incremental decoding computes exactly what teacher forcing computes.

Decoding drives the model one `step` at a time while training calls `forward` on whole
sequences; if the two ever disagreed, a model would be trained for one computation and
decoded with another. Every variant is checked on a batch with padded sources.
"""

from __future__ import annotations

import pytest
import torch

from nmt_cli.config import RNNModelConfig
from nmt_cli.models import build_model

V = 37  # vocabulary: 0 pad, 1 unk, 2 bos, 3 eos, then words
SRC_LENGTHS = [7, 3, 5]  # padded to 7
T = 6

VARIANTS = [
    # (attention, input_feeding, bidirectional, layers, residual_from)
    (attention, feeding, bidi, 1, 0)
    for attention in ("dot", "general", "concat")
    for feeding in (True, False)
    for bidi in ("all", "bottom", "none")
] + [
    ("dot", True, "bottom", 3, 2),
    ("general", False, "all", 3, 2),
    ("concat", True, "bottom", 3, 2),
    ("concat", False, "none", 3, 2),
]


def make_model(
    attention: str, feeding: bool, bidi: str, layers: int, residual_from: int, tie: bool = True
) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = RNNModelConfig(
        emb_dim=12,
        hidden_dim=16,
        enc_layers=layers,
        dec_layers=layers,
        bidirectional=bidi,
        residual_from=residual_from,
        attention=attention,
        input_feeding=feeding,
        dropout=0.3,
        tie_embeddings=tie,
    )
    return build_model(cfg, V, V, shared_vocab=True).eval()


def make_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    B, S = len(SRC_LENGTHS), max(SRC_LENGTHS)
    src = torch.randint(4, V, (B, S), generator=g)
    for b, n in enumerate(SRC_LENGTHS):
        src[b, n - 1] = 3  # EOS ends every source, as `collate` does
        src[b, n:] = 0
    tgt_in = torch.randint(4, V, (B, T), generator=g)
    tgt_in[:, 0] = 2  # BOS
    tgt_in[1, 4:] = 0  # a shorter, padded target too
    return src, src != 0, tgt_in


@pytest.mark.parametrize(("attention", "feeding", "bidi", "layers", "residual_from"), VARIANTS)
@torch.no_grad()
def test_step_equals_forward(attention, feeding, bidi, layers, residual_from) -> None:
    model = make_model(attention, feeding, bidi, layers, residual_from)
    src, src_mask, tgt_in = make_batch()

    expected = torch.log_softmax(model(src, src_mask, tgt_in).float(), dim=-1)  # [B, T, V]

    state = model.init_state(model.encode(src, src_mask))
    stepped, weights = [], []
    for t in range(T):
        log_probs, state, attn = model.step(tgt_in[:, t], state)
        stepped.append(log_probs)
        weights.append(attn)
    stepped_t = torch.stack(stepped, dim=1)  # [B, T, V]
    torch.testing.assert_close(stepped_t, expected, atol=1e-5, rtol=0)

    # log-probs are normalised
    torch.testing.assert_close(stepped_t.exp().sum(-1), torch.ones(len(SRC_LENGTHS), T))

    attn_t = torch.stack(weights, dim=1)  # [B, T, S]
    assert attn_t.shape == (len(SRC_LENGTHS), T, max(SRC_LENGTHS))
    torch.testing.assert_close(attn_t.sum(-1), torch.ones(len(SRC_LENGTHS), T))
    assert torch.all(attn_t.masked_select(~src_mask.unsqueeze(1).expand_as(attn_t)) == 0)
    assert torch.all(attn_t.masked_select(src_mask.unsqueeze(1).expand_as(attn_t)) > 0)


@torch.no_grad()
def test_untied_embeddings_step_equals_forward() -> None:
    model = make_model("general", True, "all", 2, 2, tie=False)
    src, src_mask, tgt_in = make_batch()
    expected = torch.log_softmax(model(src, src_mask, tgt_in).float(), dim=-1)
    state = model.init_state(model.encode(src, src_mask))
    for t in range(T):
        log_probs, state, _ = model.step(tgt_in[:, t], state)
        torch.testing.assert_close(log_probs, expected[:, t], atol=1e-5, rtol=0)


@torch.no_grad()
def test_padding_does_not_change_a_sentence() -> None:
    """A sentence batched with a longer one decodes exactly as it does alone."""
    model = make_model("concat", True, "bottom", 3, 2)
    src, src_mask, tgt_in = make_batch()
    batched = torch.log_softmax(model(src, src_mask, tgt_in), dim=-1)
    n = SRC_LENGTHS[1]
    alone = torch.log_softmax(model(src[1:2, :n], src_mask[1:2, :n], tgt_in[1:2]), dim=-1)
    torch.testing.assert_close(batched[1:2], alone, atol=1e-5, rtol=0)


def test_state_reorder_selects_rows() -> None:
    model = make_model("dot", True, "all", 2, 0)
    src, src_mask, _ = make_batch()
    with torch.no_grad():
        state = model.init_state(model.encode(src, src_mask))
    index = torch.tensor([2, 2, 0])
    moved = state.reorder(index)
    assert type(moved) is type(state)
    for name in ("hidden", "cell", "feed", "states", "keys", "mask"):
        assert torch.equal(getattr(moved, name), getattr(state, name)[index])


def test_training_mode_uses_dropout() -> None:
    """Sanity check that the eval-mode comparison above is meaningful: dropout is active."""
    model = make_model("general", True, "all", 1, 0).train()
    src, src_mask, tgt_in = make_batch()
    torch.manual_seed(0)
    a = model(src, src_mask, tgt_in)
    b = model(src, src_mask, tgt_in)
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("bidi", ["none", "all"])
@torch.no_grad()
def test_without_attention_the_decoder_sees_only_the_last_encoder_state(bidi: str) -> None:
    """`attention: none` (the NTM's baseline): stepping equals forcing, no attention comes
    back, and padding after a sentence changes nothing."""
    model = make_model("none", False, bidi, 2, 0)
    src, src_mask, tgt_in = make_batch()
    expected = torch.log_softmax(model(src, src_mask, tgt_in).float(), dim=-1)
    state = model.init_state(model.encode(src, src_mask))
    for t in range(T):
        log_probs, state, attn = model.step(tgt_in[:, t], state)
        assert attn is None
        torch.testing.assert_close(log_probs, expected[:, t], atol=1e-5, rtol=0)
    n = SRC_LENGTHS[1]
    alone = torch.log_softmax(model(src[1:2, :n], src_mask[1:2, :n], tgt_in[1:2]), dim=-1)
    torch.testing.assert_close(alone, expected[1:2], atol=1e-5, rtol=0)
