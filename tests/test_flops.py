"""The MFU numerator: the analytic Transformer FLOP count against PyTorch's own counter."""

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from nmt_cli.config import TransformerModelConfig
from nmt_cli.data.tokenizer import BOS, EOS
from nmt_cli.loss import TokenLoss
from nmt_cli.models.flops import transformer_training_flops
from nmt_cli.models.transformer import build_transformer


@pytest.mark.parametrize("shared_vocab", [True, False])
def test_training_flops_match_pytorchs_counter(shared_vocab):
    cfg = TransformerModelConfig(d_model=32, heads=4, ff_dim=48, enc_layers=2, dec_layers=3)
    vocab, batch, src_len, tgt_len = 40, 3, 7, 5
    model = build_transformer(cfg, vocab, vocab, shared_vocab)
    torch.manual_seed(0)
    words = torch.randint(4, vocab, (batch, src_len + tgt_len))
    src = torch.cat([words[:, :src_len], torch.full((batch, 1), EOS)], dim=1)  # no padding
    tgt_in = torch.cat([torch.full((batch, 1), BOS), words[:, src_len:]], dim=1)
    tgt_out = torch.cat([words[:, src_len:], torch.full((batch, 1), EOS)], dim=1)
    with FlopCounterMode(display=False) as counter:
        loss = TokenLoss(model, label_smoothing=0.1, device=torch.device("cpu"), precision="fp32")
        loss(src, src != 0, tgt_in, tgt_out).backward()
    expected = transformer_training_flops(
        cfg, vocab, np.full(batch, src_len + 1), np.full(batch, tgt_len + 1)
    )
    assert counter.get_total_flops() == expected


def test_flops_grow_with_the_square_of_the_length_only_in_attention():
    cfg = TransformerModelConfig()
    one = transformer_training_flops(cfg, 8000, np.array([20]), np.array([20]))
    two = transformer_training_flops(cfg, 8000, np.array([40]), np.array([40]))
    assert 2 * one < two < 2.2 * one  # base model: attention is a few percent at 20 words
