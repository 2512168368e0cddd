"""The Neural Turing Machine: each addressing stage against hand-computed values, a gradient
check through a read/write step, and the model interface (step equals teacher forcing)."""

from __future__ import annotations

import math

import pytest
import torch

from nmt_cli.config import NTMModelConfig
from nmt_cli.models import build_model
from nmt_cli.models import ntm_memory as mem


def batch(*rows: list[float]) -> torch.Tensor:
    """One batch entry, one head: [1, 1, N] from a list."""
    return torch.tensor([rows], dtype=torch.float64)


def test_content_weights_are_a_softmax_of_scaled_cosine_similarity() -> None:
    memory = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]], dtype=torch.float64)
    key = torch.tensor([[[2.0, 0.0]]], dtype=torch.float64)  # cosine ignores the key's length
    beta = torch.tensor([[3.0]], dtype=torch.float64)
    similarity = [1.0, 0.0, 1 / math.sqrt(2)]
    expected = [math.exp(3 * s) for s in similarity]
    expected = [e / sum(expected) for e in expected]
    torch.testing.assert_close(mem.content_weights(memory, key, beta), batch(expected))


def test_zero_key_strength_spreads_the_weighting_evenly() -> None:
    memory = torch.randn(1, 4, 3, dtype=torch.float64)
    key = torch.randn(1, 1, 3, dtype=torch.float64)
    weights = mem.content_weights(memory, key, torch.zeros(1, 1, dtype=torch.float64))
    torch.testing.assert_close(weights, batch([0.25] * 4))


def test_interpolation_blends_content_and_previous_weights_by_the_gate() -> None:
    content, previous = batch([1.0, 0.0, 0.0]), batch([0.0, 0.5, 0.5])
    gate = torch.tensor([[0.25]], dtype=torch.float64)
    torch.testing.assert_close(
        mem.interpolate(content, previous, gate), batch([0.25, 0.375, 0.375])
    )


def test_circular_shift_moves_the_focus_and_wraps_around() -> None:
    forward = torch.tensor([[[0.0, 0.0, 1.0]]], dtype=torch.float64)  # offsets -1, 0, +1
    backward = torch.tensor([[[1.0, 0.0, 0.0]]], dtype=torch.float64)
    last, first = batch([0.0, 0.0, 0.0, 1.0]), batch([1.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(mem.circular_shift(last, forward), first)  # slot 3 -> slot 0
    torch.testing.assert_close(mem.circular_shift(first, backward), last)  # slot 0 -> slot 3
    torch.testing.assert_close(
        mem.circular_shift(batch([0.0, 1.0, 0.0, 0.0]), forward), batch([0.0, 0.0, 1.0, 0.0])
    )


def test_a_soft_shift_is_a_circular_convolution() -> None:
    weights = batch([0.5, 0.25, 0.0, 0.25])
    shift = torch.tensor([[[0.2, 0.5, 0.3]]], dtype=torch.float64)
    # w~(i) = 0.2 w(i + 1) + 0.5 w(i) + 0.3 w(i - 1), indices mod 4
    expected = [
        0.2 * 0.25 + 0.5 * 0.5 + 0.3 * 0.25,
        0.2 * 0.0 + 0.5 * 0.25 + 0.3 * 0.5,
        0.2 * 0.25 + 0.5 * 0.0 + 0.3 * 0.25,
        0.2 * 0.5 + 0.5 * 0.25 + 0.3 * 0.0,
    ]
    torch.testing.assert_close(mem.circular_shift(weights, shift), batch(expected))


def test_sharpening_raises_to_gamma_and_renormalises() -> None:
    gamma = torch.tensor([[2.0]], dtype=torch.float64)
    sharpened = mem.sharpen(batch([0.5, 0.25, 0.25]), gamma)
    torch.testing.assert_close(sharpened, batch([2 / 3, 1 / 6, 1 / 6]), atol=1e-7, rtol=0)
    unchanged = mem.sharpen(batch([0.5, 0.25, 0.25]), torch.ones(1, 1, dtype=torch.float64))
    torch.testing.assert_close(unchanged, batch([0.5, 0.25, 0.25]), atol=1e-7, rtol=0)


def test_write_erases_then_adds_and_read_takes_the_weighted_sum() -> None:
    memory = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]], dtype=torch.float64)
    weights = batch([1.0, 0.0])  # write slot 0 only
    erase = torch.tensor([[[1.0, 0.5]]], dtype=torch.float64)
    add = torch.tensor([[[10.0, 20.0]]], dtype=torch.float64)
    written = mem.write(memory, weights, erase, add)
    # slot 0: [1 * (1 - 1), 2 * (1 - 0.5)] + [10, 20]; slot 1 untouched
    torch.testing.assert_close(written, torch.tensor([[[10.0, 21.0], [3.0, 4.0]]]).double())
    read = mem.read(written, batch([0.25, 0.75]))
    torch.testing.assert_close(
        read, torch.tensor([[[0.25 * 10 + 0.75 * 3, 0.25 * 21 + 3.0]]]).double()
    )


def test_gradients_through_one_write_and_read_match_finite_differences() -> None:
    torch.manual_seed(0)
    B, N, M = 2, 5, 3
    memory = torch.randn(B, N, M, dtype=torch.float64)
    previous = torch.softmax(torch.randn(B, 1, N, dtype=torch.float64), -1)

    def write_then_read(key, beta, gate, shift_logits, gamma, erase, add):
        shift = torch.softmax(shift_logits, -1)
        w = mem.address(memory, previous, key, beta, gate, shift, gamma)
        written = mem.write(memory, w, erase, add)
        r = mem.address(written, w, key, beta, gate, shift, gamma)
        return mem.read(written, r)

    inputs = (
        torch.randn(B, 1, M, dtype=torch.float64),  # key
        torch.rand(B, 1, dtype=torch.float64) + 0.5,  # beta
        torch.rand(B, 1, dtype=torch.float64),  # gate
        torch.randn(B, 1, 3, dtype=torch.float64),  # shift logits
        torch.rand(B, 1, dtype=torch.float64) + 1.0,  # gamma
        torch.rand(B, 1, M, dtype=torch.float64),  # erase
        torch.randn(B, 1, M, dtype=torch.float64),  # add
    )
    inputs = tuple(t.requires_grad_() for t in inputs)
    assert torch.autograd.gradcheck(write_then_read, inputs)


def _tiny_ntm(controller: str = "lstm") -> torch.nn.Module:
    cfg = NTMModelConfig(
        emb_dim=16, controller=controller, controller_dim=24, memory_slots=12, memory_width=6,
        read_heads=2, write_heads=1,
    )  # fmt: skip
    torch.manual_seed(0)
    return build_model(cfg, 20, 20, True).eval()


@pytest.mark.parametrize("controller", ["lstm", "feedforward"])
def test_stepping_equals_teacher_forcing_and_padding_changes_nothing(controller: str) -> None:
    model = _tiny_ntm(controller)
    src = torch.randint(4, 20, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.bool)
    src[1, 5:], mask[1, 5:] = 0, False
    tgt_in = torch.randint(4, 20, (3, 6))
    with torch.no_grad():
        forced = torch.log_softmax(model(src, mask, tgt_in), -1)
        state = model.init_state(model.encode(src, mask))
        stepped = []
        for t in range(tgt_in.size(1)):
            log_probs, state, attention = model.step(tgt_in[:, t], state)
            stepped.append(log_probs)
            assert attention is None  # the NTM reads memory, not the source
        torch.testing.assert_close(torch.stack(stepped, 1), forced)
        alone = torch.log_softmax(model(src[1:2, :5], mask[1:2, :5], tgt_in[1:2]), -1)
        torch.testing.assert_close(alone, forced[1:2])


def test_memory_trace_records_one_normalised_weighting_per_step() -> None:
    model = _tiny_ntm()
    with torch.no_grad():
        trace = model.memory_trace(torch.tensor([5, 6, 7, 3]), torch.tensor([2, 5, 6]))
    assert trace.write_weights.shape == (7, 1, 12) and trace.read_weights.shape == (7, 2, 12)
    assert trace.source_steps == 4
    torch.testing.assert_close(trace.read_weights.sum(-1), torch.ones(7, 2))
