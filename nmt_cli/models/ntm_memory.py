"""The Neural Turing Machine's memory: addressing, reading and writing (Graves et al. 2014, sec. 3).

Every operation is differentiable, so the controller learns where to look by gradient descent.
A head finds its weighting w_t over the N memory slots in four stages, each its own function:

1. content: compare a key with every slot, w^c (eq. 5),
2. interpolation: blend with the previous weighting through a gate g, w^g (eq. 7),
3. location: rotate w^g by a learned distribution over shifts, a circular convolution (eq. 8),
4. sharpening: raise to the power gamma >= 1 and renormalise, undoing the shift's blur (eq. 9).

Content addressing finds a stored item by what it holds; the location stages step from one
slot to the next, which is what lets a trained machine copy sequences longer than it has seen.
Weightings are [B, H, N]: batch, heads, slots.
"""

from __future__ import annotations

import torch

# Keeps the cosine similarity and the sharpening power finite when a row or weighting is zero.
EPS = 1e-8


def content_weights(memory: torch.Tensor, key: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """w^c_t(i) = softmax_i(beta_t K[k_t, M_t(i)]), K the cosine similarity (eqs. 5-6).

    memory [B, N, M], key [B, H, M], beta [B, H] (key strength >= 0) -> w^c [B, H, N].
    A large beta focuses on the single best-matching slot; beta = 0 spreads evenly.
    """
    unit_key = key / key.norm(dim=-1, keepdim=True).clamp_min(EPS)
    unit_rows = memory / memory.norm(dim=-1, keepdim=True).clamp_min(EPS)
    similarity = unit_key @ unit_rows.transpose(1, 2)  # [B, H, N]
    return torch.softmax(beta.unsqueeze(-1) * similarity, dim=-1)


def interpolate(content: torch.Tensor, previous: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """w^g_t = g_t w^c_t + (1 - g_t) w_{t-1} (eq. 7): g = 0 ignores the content lookup and
    keeps addressing by location from where the head was. content, previous [B, H, N],
    gate [B, H] in [0, 1]."""
    gate = gate.unsqueeze(-1)
    return gate * content + (1 - gate) * previous


def circular_shift(weights: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """w~_t(i) = sum_j w^g_t(j) s_t(i - j), indices modulo N (eq. 8).

    weights [B, H, N]; shift [B, H, 2k+1], a distribution over the offsets -k..k -> [B, H, N].
    Offset +1 moves the focus one slot forward; the last slot wraps around to the first.
    """
    k = (shift.shape[-1] - 1) // 2
    wrapped = torch.cat([weights[..., -k:], weights, weights[..., :k]], dim=-1) if k else weights
    windows = wrapped.unfold(-1, 2 * k + 1, 1)  # [B, H, N, 2k+1]: w(i - k), ..., w(i + k)
    # offset o reads w(i - o): the window's first entry pairs with offset +k, so flip s
    return (windows @ shift.flip(-1).unsqueeze(-1)).squeeze(-1)


def sharpen(weights: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """w_t(i) = w~_t(i)^gamma_t / sum_j w~_t(j)^gamma_t (eq. 9), gamma [B, H] >= 1.

    A soft shift blurs the weighting a little every step; sharpening keeps it focused.
    """
    powered = (weights + EPS) ** gamma.unsqueeze(-1)
    return powered / powered.sum(-1, keepdim=True)


def address(
    memory: torch.Tensor,
    previous: torch.Tensor,
    key: torch.Tensor,
    beta: torch.Tensor,
    gate: torch.Tensor,
    shift: torch.Tensor,
    gamma: torch.Tensor,
) -> torch.Tensor:
    """The four stages in order (the paper's figure 2) -> the new weighting [B, H, N]."""
    gated = interpolate(content_weights(memory, key, beta), previous, gate)
    return sharpen(circular_shift(gated, shift), gamma)


def read(memory: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """r_t = sum_i w_t(i) M_t(i) (eq. 2): memory [B, N, M], weights [B, H, N] -> [B, H, M]."""
    return weights @ memory


def write(
    memory: torch.Tensor, weights: torch.Tensor, erase: torch.Tensor, add: torch.Tensor
) -> torch.Tensor:
    """Erase then add (eqs. 3-4): M~(i) = M(i) [1 - w(i) e], then M(i) = M~(i) + w(i) a.

    memory [B, N, M], weights [B, H, N], erase [B, H, M] in [0, 1], add [B, H, M].
    With several write heads the erasures multiply and the additions sum, so the heads'
    order does not matter (sec. 3.2).
    """
    keep = torch.prod(1 - weights.unsqueeze(-1) * erase.unsqueeze(2), dim=1)  # [B, N, M]
    return memory * keep + weights.transpose(1, 2) @ add
