"""Model FLOPs of Transformer training: the numerator of model FLOPs utilisation (MFU).

MFU (Chowdhery et al. 2022, appendix B) divides the FLOPs the model itself needs by what
the accelerator could do in the time taken, so padding, recomputation, element-wise work
and idle time all count against the implementation, not for it. Counted here: every
matrix product of the model for the real (unpadded) positions, two FLOPs per multiply-add,
and the backward pass twice the forward (gradients for the inputs and for the weights).
Attention is counted over all key positions, the causal half a kernel may skip included,
as PaLM's and nanoGPT's formulas do. Embedding lookups, softmax, layer norm, the loss and
the optimizer are not counted. `tests/test_flops.py` checks the count against PyTorch's
FLOP counter on a real training step.
"""

from __future__ import annotations

import numpy as np

from nmt_cli.config import TransformerModelConfig

TRAINING_PASSES = 3  # forward, and backward at twice the forward's cost


def transformer_forward_macs(
    cfg: TransformerModelConfig,
    tgt_vocab: int,
    src_positions: np.ndarray,
    tgt_positions: np.ndarray,
) -> float:
    """Multiply-adds of the teacher-forced forward pass over sentence pairs of the given
    numbers of positions (source tokens + EOS, BOS + target tokens)."""
    d, f = cfg.d_model, cfg.ff_dim
    S = np.asarray(src_positions, dtype=np.float64)
    T = np.asarray(tgt_positions, dtype=np.float64)
    projections = 4 * d * d  # query, key, value and output projections of one attention
    feed_forward = 2 * d * f
    encoder_layer = S * (projections + feed_forward) + 2 * S * S * d  # q k^T and weights x v
    decoder_layer = (
        T * (projections + feed_forward)  # self-attention and feed-forward
        + T * 2 * d * d  # cross-attention query and output projections
        + S * 2 * d * d  # cross-attention keys and values of the encoder states
        + 2 * T * T * d  # self-attention scores and sums
        + 2 * T * S * d  # cross-attention scores and sums
    )
    output_layer = T * d * tgt_vocab
    total = cfg.enc_layers * encoder_layer + cfg.dec_layers * decoder_layer + output_layer
    return float(total.sum())


def transformer_training_flops(
    cfg: TransformerModelConfig,
    tgt_vocab: int,
    src_positions: np.ndarray,
    tgt_positions: np.ndarray,
) -> float:
    """FLOPs of one forward and backward pass over the given sentence pairs."""
    macs = transformer_forward_macs(cfg, tgt_vocab, src_positions, tgt_positions)
    return 2 * TRAINING_PASSES * macs
