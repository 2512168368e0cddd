"""The CPU linear layers decoding uses (`nmt_cli/inference/cpu_linear.py`): int8 and
oneDNN-prepacked layers decode as the model does, and the Transformer's split projection
computes the same attention."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_decoding import CPU, padded, random_model, random_sources

from nmt_cli.config import DecodeConfig
from nmt_cli.decode.beam import beam_search
from nmt_cli.inference.cpu_linear import PackedLinear, prepack_linear, quantize_int8
from nmt_cli.inference.engines import load_translator


def test_split_projection_computes_the_same_attention() -> None:
    model = random_model("transformer")
    src, mask = padded(random_sources(5, 50, seed=4))
    settings = DecodeConfig(beam=3, alpha=0.6, max_len_a=1.0, max_len_b=5)
    before = beam_search(model, src, mask, settings, bos=2, eos=3)
    for layer in model.decoder_layers:
        layer.cross_attn.split_projection()
    after = beam_search(model, src, mask, settings, bos=2, eos=3)
    assert [h[0].tokens for h in before] == [h[0].tokens for h in after]


@pytest.mark.parametrize("kind", ["transformer", "rnn"])
def test_int8_model_decodes(kind: str) -> None:
    model = quantize_int8(random_model(kind))
    linear = type(model.output)
    assert "quantized" in linear.__module__
    src, mask = padded(random_sources(4, 50, seed=5))
    settings = DecodeConfig(beam=2, alpha=0.6, max_len_a=1, max_len_b=3)
    hyps = beam_search(model, src, mask, settings, bos=2, eos=3)
    assert len(hyps) == 4 and all(h for h in hyps)


def test_int8_translator_still_solves_the_task(checkpoint: Path, corpus) -> None:
    translator = load_translator(checkpoint, CPU, quantize="int8")
    sources = [s for s, _ in corpus.test]
    outputs = [t.text for t in translator.translate(sources)]
    correct = sum(out == tgt for out, (_, tgt) in zip(outputs, corpus.test, strict=True))
    assert correct / len(sources) >= 0.9


@pytest.mark.parametrize("kind", ["transformer", "rnn"])
def test_prepacked_model_decodes_as_the_model(kind: str) -> None:
    model = random_model(kind)
    packed = prepack_linear(model)
    assert not any(isinstance(m, torch.nn.Linear) for m in packed.modules())
    assert any(isinstance(m, torch.nn.Linear) for m in model.modules())  # the original is kept
    src, mask = padded(random_sources(6, 50, seed=6))
    settings = DecodeConfig(beam=3, alpha=0.6, max_len_a=1.0, max_len_b=5, n_best=3)
    expected = beam_search(model, src, mask, settings, bos=2, eos=3)
    got = beam_search(packed, src, mask, settings, bos=2, eos=3)
    for ours, theirs in zip(expected, got, strict=True):
        assert [h.tokens for h in ours] == [h.tokens for h in theirs]
        assert [h.score for h in ours] == pytest.approx([h.score for h in theirs], abs=1e-4)


def test_fp32_translator_on_cpu_uses_prepacked_layers(checkpoint: Path) -> None:
    translator = load_translator(checkpoint, CPU)
    assert isinstance(translator.engine.model.output, PackedLinear)
    assert translator.translate(["1 2 3 4 5"])[0].text == "5 4 3 2 1"
