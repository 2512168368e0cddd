"""Training and decoding as a GPU wants them: a loss that never holds the whole fp32 [tokens
x vocabulary] tensor, batches of a few fixed shapes cut once per run, an ordinary update that
never waits for the device, and a beam search that waits once per step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from nmt_cli import loss as loss_module
from nmt_cli.config import DecodeConfig, TransformerModelConfig, config_from_dict
from nmt_cli.data.batching import bucket_width, collate, plan_batches
from nmt_cli.decode.beam import beam_search
from nmt_cli.loss import smoothed_cross_entropy
from nmt_cli.models import build_model
from nmt_cli.trainer import Trainer

PAD_ID = 1


def _logits_and_targets(rows: int, vocab: int, dtype: torch.dtype = torch.float32):
    generator = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(rows, vocab, generator=generator)).to(dtype).requires_grad_()
    target = torch.randint(0, vocab, (rows,), generator=generator)
    target[::5] = PAD_ID  # padding positions count for nothing
    return logits, target


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("chunk_rows", [1, 7, 64, 10_000])
def test_chunked_loss_and_gradient_equal_pytorchs(smoothing, chunk_rows, monkeypatch) -> None:
    vocab = 301
    monkeypatch.setitem(loss_module.CHUNK_ELEMENTS, "cpu", chunk_rows * vocab)
    logits, target = _logits_and_targets(200, vocab)
    ref = F.cross_entropy(logits, target, ignore_index=PAD_ID, label_smoothing=smoothing,
                          reduction="sum")  # fmt: skip
    (ref_grad,) = torch.autograd.grad(0.37 * ref, logits)
    ours = smoothed_cross_entropy(logits, target, smoothing=smoothing, ignore_index=PAD_ID)
    (grad,) = torch.autograd.grad(0.37 * ours, logits)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
    assert (grad - ref_grad).abs().max().item() < 1e-5


def test_bf16_logits_keep_their_dtype_and_the_fp32_loss() -> None:
    logits, target = _logits_and_targets(64, 97, torch.bfloat16)
    ref = F.cross_entropy(logits.float(), target, ignore_index=PAD_ID, label_smoothing=0.1,
                          reduction="sum")  # fmt: skip
    ours = smoothed_cross_entropy(logits, target, smoothing=0.1, ignore_index=PAD_ID)
    (grad,) = torch.autograd.grad(ours, logits)
    assert ours.dtype == torch.float32 and grad.dtype == torch.bfloat16
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)


def test_the_loss_compiles_into_one_graph() -> None:
    logits, target = _logits_and_targets(50, 40)
    compiled = torch.compile(
        lambda x, t: smoothed_cross_entropy(x, t, smoothing=0.1, ignore_index=PAD_ID),
        fullgraph=True, dynamic=False,
    )  # fmt: skip
    (grad,) = torch.autograd.grad(compiled(logits, target), logits)
    ref = F.cross_entropy(logits, target, ignore_index=PAD_ID, label_smoothing=0.1,
                          reduction="sum")  # fmt: skip
    (ref_grad,) = torch.autograd.grad(ref, logits)
    assert (grad - ref_grad).abs().max().item() < 1e-5


def test_bucket_widths_are_few_and_pad_by_at_most_a_quarter() -> None:
    lengths = np.arange(1, 257)
    widths = bucket_width(lengths)
    assert (widths >= lengths).all() and (widths % 8 == 0).all()
    assert (widths <= np.maximum(8 * np.ceil(lengths / 8), 1.25 * lengths)).all()
    assert len(set(widths.tolist())) == 16


def wmt_like_lengths(pairs: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Subword lengths shaped like WMT14 En-De's: mean ~27, a long tail to 250."""
    rng = np.random.default_rng(seed)
    src = np.clip(rng.lognormal(3.1, 0.6, pairs), 1, 250).astype(np.int64)
    tgt = np.clip(src * rng.normal(1.05, 0.15, pairs), 1, 250).astype(np.int64)
    return src, tgt


@pytest.mark.parametrize("batch_tokens", [6250, 25000])
def test_static_plan_has_a_few_shapes_and_keeps_every_pair(batch_tokens) -> None:
    src, tgt = wmt_like_lengths(200_000)
    static = plan_batches(src, tgt, batch_tokens, max_len=200, static_shapes=True)
    exact, _ = plan_batches(src, tgt, batch_tokens, max_len=200).epoch(1, 0)
    widths = set(static.widths.tolist())
    assert len(static.shapes()) <= 2 * len(widths) <= 2 * 16
    exact_shapes = {(len(b), src[b].max() + 1, tgt[b].max() + 1) for b in exact}
    assert len(exact_shapes) > 3 * len(static.shapes())  # each padded to its own longest
    for epoch in (0, 1):  # every epoch deals the pairs anew into batches of the same shapes
        batches, _ = static.epoch(1, epoch)
        kept = np.concatenate(batches)
        assert sorted(kept.tolist()) == np.flatnonzero((src <= 200) & (tgt <= 200)).tolist()
        shapes = {(len(b), int(w)) for b, w in zip(batches, static.widths, strict=True)}
        assert shapes == static.shapes()
    for batch, width in zip(batches, static.widths, strict=True):
        longest = np.maximum(src[batch], tgt[batch]) + 1
        assert longest.max() <= width and (len(batch) == 1 or len(batch) * width <= batch_tokens)
        assert (bucket_width(longest) == width).all()  # one width per batch


def test_an_epoch_is_a_pure_function_of_seed_and_epoch() -> None:
    src, tgt = wmt_like_lengths(5000)
    plan = plan_batches(src, tgt, 4000, static_shapes=True)
    (first, first_order), (second, second_order) = plan.epoch(1, 0), plan.epoch(1, 1)
    assert sorted(first_order) == sorted(second_order) == list(range(len(plan)))
    assert first_order.tolist() != second_order.tolist()
    assert not all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    again, again_order = plan.epoch(1, 0)
    assert again_order.tolist() == first_order.tolist()
    assert all(np.array_equal(a, b) for a, b in zip(again, first, strict=True))


class CountSyncs(TorchFunctionMode):
    """Counts the calls that make the host wait for a GPU (they copy a device value to it)."""

    WAITS = {"item", "tolist", "cpu", "numpy", "nonzero", "__bool__", "__float__", "__int__"}

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        name = getattr(func, "__name__", "")
        if name in self.WAITS:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("clip_norm", [0.0, 1.0])
def test_an_ordinary_update_never_waits_for_the_device(
    clip_norm, make_recipe, reverse_data: Path, tmp_path: Path
) -> None:
    raw = make_recipe(train={"clip_norm": clip_norm, "precision": "fp32"})
    raw["model"] = {"type": "transformer", "d_model": 32, "heads": 2, "ff_dim": 64,
                    "enc_layers": 1, "dec_layers": 1, "max_len": 40}  # fmt: skip
    trainer = Trainer(config_from_dict(raw), reverse_data, tmp_path, torch.device("cpu"))
    batches = trainer.epoch_batches()
    trainer.update(batches[:1])  # the first creates the optimizer's state
    with CountSyncs() as counted:
        for b in range(1, 4):
            trainer.update(batches[b : b + 1])
    assert counted.calls == []
    assert trainer.updater.report().loss > 0  # the one wait, at a logging step


@pytest.mark.parametrize("prefixes", [None, [[5, 6], [], [7], [], [], []]])
def test_beam_search_waits_once_per_step(prefixes) -> None:
    """Sentences of different lengths, some finishing early, some forced to start with a
    prefix: one wait per step, and two more (the limits before, the words after)."""
    torch.manual_seed(0)
    config = TransformerModelConfig(d_model=32, heads=2, ff_dim=64, enc_layers=1,
                                    dec_layers=1, dropout=0.0, max_len=40)  # fmt: skip
    model = build_model(config, 30, 30, True).eval()
    sources = [[4 + (i * j) % 25 for j in range(3 + 2 * i)] for i in range(6)]
    src, src_mask, _, _ = collate([(s, s) for s in sources], torch.device("cpu"))
    steps = []
    real_step = model.step
    model.step = lambda *args: steps.append(1) or real_step(*args)
    with CountSyncs() as counted:
        settings = DecodeConfig(beam=4, alpha=0.6, max_len_a=1.0, max_len_b=3, n_best=2,
                                coverage=0.2)  # fmt: skip
        results = beam_search(model, src, src_mask, settings, bos=2, eos=3, prefixes=prefixes,
                              keep_attention=True)  # fmt: skip
    assert len(counted.calls) <= len(steps) + 3, counted.calls
    assert all(len(hyps) == 2 and hyps[0].score >= hyps[1].score for hyps in results)
    if prefixes:
        assert results[0][0].tokens[:2] == [5, 6] and results[2][0].tokens[:1] == [7]
