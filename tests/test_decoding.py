"""Decoding features: batch invariance, coverage, prefixes, ensembles, and a cached step equal
to an uncached one, through the search functions and `Translator`. (Sampling, the CPU linear
layers and alignments have files of their own.)
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch
from conftest import other_tokenizer

from nmt_cli.config import DecodeConfig, RNNModelConfig, TransformerModelConfig
from nmt_cli.decode.beam import beam_search, coverage_penalty
from nmt_cli.errors import CheckpointError
from nmt_cli.inference.cpu_linear import prepack_linear
from nmt_cli.inference.engines import load_translator
from nmt_cli.models import build_model
from nmt_cli.models.uncached import Uncached

CPU = torch.device("cpu")


def reverse(line: str) -> str:
    return " ".join(reversed(line.split()))


def random_sources(n: int, vocab: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(4, vocab) for _ in range(rng.randint(1, 12))] + [3] for _ in range(n)]


def padded(sources: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    S = max(map(len, sources))
    src = torch.tensor([s + [0] * (S - len(s)) for s in sources])
    return src, src != 0


def random_model(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "transformer":
        cfg = TransformerModelConfig(d_model=32, heads=4, ff_dim=64, enc_layers=2, dec_layers=2)
    else:
        cfg = RNNModelConfig(emb_dim=16, hidden_dim=32, enc_layers=1, dec_layers=1)
    return build_model(cfg, 50, 50, shared_vocab=True).eval()


# --- batch invariance -------------------------------------------------------------------------


@pytest.mark.parametrize("prepacked", [False, True])
@pytest.mark.parametrize("kind", ["transformer", "rnn"])
def test_a_sentence_translates_alike_in_batches_of_1_7_and_64(kind: str, prepacked: bool) -> None:
    model = prepack_linear(random_model(kind)) if prepacked else random_model(kind)
    sources = random_sources(64, 50, seed=3)
    settings = DecodeConfig(beam=4, alpha=0.6, max_len_a=1.0, max_len_b=5, n_best=2)

    def in_batches(size: int):
        out = []
        for i in range(0, len(sources), size):
            out += beam_search(model, *padded(sources[i : i + size]), settings, bos=2, eos=3)
        return out

    alone, sevens, all64 = in_batches(1), in_batches(7), in_batches(64)
    for a, b, c in zip(alone, sevens, all64, strict=True):
        assert [h.tokens for h in a] == [h.tokens for h in b] == [h.tokens for h in c]
        assert [h.score for h in a] == pytest.approx([h.score for h in c], abs=1e-4)


# --- coverage, prefixes, ensembles -------------------------------------------------------------


def test_coverage_penalty_formula() -> None:
    coverage = torch.tensor([[0.5, 1.7, 0.25, 0.9]])
    mask = torch.tensor([[True, True, True, False]])
    want = 0.4 * (math.log(0.5) + math.log(1.0) + math.log(0.25))
    assert coverage_penalty(coverage, mask, 0.4).item() == pytest.approx(want)
    assert coverage_penalty(coverage, mask, 0.0).item() == 0.0


def test_coverage_penalty_keeps_the_task_solved(checkpoint: Path) -> None:
    translator = load_translator(checkpoint, CPU, {"beam": 4, "coverage": 0.2})
    lines = ["1 2 3 4 5", "9 8 7", "4 4 0 1"]
    assert [t.text for t in translator.translate(lines)] == [reverse(line) for line in lines]


@pytest.mark.parametrize("overrides", [{"beam": 3}, {"beam": 1}, {"sampling": True, "top_k": 1}])
def test_a_prefix_is_forced_and_continued(checkpoint: Path, overrides: dict) -> None:
    translator = load_translator(checkpoint, CPU, overrides)
    lines = ["1 2 3 4 5", "9 8 7", "6 6 2"]
    out = translator.translate(lines, prefixes=["5 4", "0", ""])
    assert out[0].text == "5 4 3 2 1"  # the prefix is the right start: the rest follows
    assert out[1].text.startswith("0 ")  # a wrong start is kept all the same
    assert out[2].text == "2 6 6"


def test_ensemble_of_one_model_twice_equals_the_model(checkpoint: Path, trained) -> None:
    lines = ["1 2 3 4 5", "9 8 7", "4 4 0 1 2 2"]
    single = load_translator(checkpoint, CPU, {"beam": 3, "n_best": 2})
    double = load_translator([checkpoint, checkpoint], CPU, {"beam": 3, "n_best": 2})
    for a, b in zip(single.translate(lines), double.translate(lines), strict=True):
        assert [c.text for c in a.nbest] == [c.text for c in b.nbest]
        assert [c.score for c in a.nbest] == pytest.approx([c.score for c in b.nbest], abs=1e-5)
    steps = sorted(trained.run_dir.glob("step-*.pt"))
    mixed = load_translator([checkpoint, *steps], CPU)
    assert [t.text for t in mixed.translate(lines)] == [reverse(line) for line in lines]


def test_ensemble_needs_one_vocabulary(checkpoint: Path, tmp_path: Path) -> None:
    from nmt_cli.checkpoint import load_checkpoint, save_checkpoint, tokenizer_entry

    ckpt = load_checkpoint(checkpoint)
    other = tokenizer_entry(other_tokenizer(tmp_path), b"", joint=True)
    foreign = save_checkpoint(tmp_path / "other.pt", config=ckpt["config"],
                              model_state=ckpt["model_state"], tokenizer=other, step=1,
                              metrics={})  # fmt: skip
    with pytest.raises(CheckpointError, match="another vocabulary"):
        load_translator([checkpoint, foreign], CPU)


@pytest.mark.parametrize("kind", ["transformer", "rnn"])
def test_cached_decoding_equals_uncached(kind: str) -> None:
    model = random_model(kind)
    src, mask = padded(random_sources(12, 50, seed=6))
    settings = DecodeConfig(beam=4, alpha=0.6, max_len_a=1.0, max_len_b=5, n_best=4)
    cached = beam_search(model, src, mask, settings, bos=2, eos=3)
    uncached = beam_search(Uncached(model), src, mask, settings, bos=2, eos=3)
    for a, b in zip(cached, uncached, strict=True):
        assert [h.tokens for h in a] == [h.tokens for h in b]
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-4)
