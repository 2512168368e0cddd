"""Decoding features: batch invariance, sampling, coverage, prefixes, ensembles, int8, word
alignments, unknown-word replacement and attention plots, through `Translator` and the CLI.

The trained reverse-task model ("3 1 4" -> "4 1 3") makes alignments checkable: a model that
reverses must attend from output word j to source word n - 1 - j.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch
from conftest import other_tokenizer

from nmt_cli.alignment import hard_alignment, replace_unknowns, word_of_each_piece
from nmt_cli.config import RNNModelConfig, TransformerModelConfig
from nmt_cli.decode.beam import beam_search, coverage_penalty
from nmt_cli.decode.sampling import reshape_distribution
from nmt_cli.errors import CheckpointError
from nmt_cli.models import build_model
from nmt_cli.models.uncached import Uncached
from nmt_cli.prepack import PackedLinear, prepack_linear
from nmt_cli.quantize import quantize_int8
from nmt_cli.translate import Translator

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
    search = dict(beam=4, bos=2, eos=3, alpha=0.6, max_len_a=1.0, max_len_b=5, n_best=2)

    def in_batches(size: int):
        out = []
        for i in range(0, len(sources), size):
            out += beam_search(model, *padded(sources[i : i + size]), **search)
        return out

    alone, sevens, all64 = in_batches(1), in_batches(7), in_batches(64)
    for a, b, c in zip(alone, sevens, all64, strict=True):
        assert [h.tokens for h in a] == [h.tokens for h in b] == [h.tokens for h in c]
        assert [h.score for h in a] == pytest.approx([h.score for h in c], abs=1e-4)


# --- sampling ---------------------------------------------------------------------------------


def test_top_k_and_top_p_keep_the_right_words() -> None:
    log_probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    kept = lambda logits: torch.isfinite(logits[0]).tolist()  # noqa: E731
    assert kept(reshape_distribution(log_probs, 1.0, 2, 1.0)) == [True, True, False, False]
    # nucleus 0.75: 0.5 alone is short of it, 0.5 + 0.3 reaches it
    assert kept(reshape_distribution(log_probs, 1.0, 0, 0.75)) == [True, True, False, False]
    assert kept(reshape_distribution(log_probs, 1.0, 0, 0.1)) == [True, False, False, False]
    # temperature 2: p_i ** (1/2), renormalised
    hot = reshape_distribution(log_probs, 2.0, 0, 1.0).softmax(1)
    want = log_probs.exp().sqrt() / log_probs.exp().sqrt().sum()
    torch.testing.assert_close(hot, want)


def test_sampling_is_seeded_and_reproducible(checkpoint: Path) -> None:
    lines = ["1 2 3 4 5", "9 8 7"] * 4

    def sample(seed: int) -> list[list[str]]:
        overrides = {"sampling": True, "n_best": 3, "temperature": 3.0, "seed": seed}
        translator = Translator.from_checkpoint(checkpoint, CPU, overrides)
        return [[text for text, _ in t.nbest] for t in translator.translate(lines)]

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)  # at temperature 3 the draws differ
    assert all(len(n) == 3 for n in sample(1))


def test_top_k_one_sampling_is_greedy(checkpoint: Path) -> None:
    lines = ["1 2 3 4 5", "9 8 7", "4 4 0 1"]
    sampled = Translator.from_checkpoint(checkpoint, CPU, {"sampling": True, "top_k": 1})
    assert [t.text for t in sampled.translate(lines)] == [reverse(line) for line in lines]


# --- coverage, prefixes, ensembles, int8 ------------------------------------------------------


def test_coverage_penalty_formula() -> None:
    coverage = torch.tensor([[0.5, 1.7, 0.25, 0.9]])
    mask = torch.tensor([[True, True, True, False]])
    want = 0.4 * (math.log(0.5) + math.log(1.0) + math.log(0.25))
    assert coverage_penalty(coverage, mask, 0.4).item() == pytest.approx(want)
    assert coverage_penalty(coverage, mask, 0.0).item() == 0.0


def test_coverage_penalty_keeps_the_task_solved(checkpoint: Path) -> None:
    translator = Translator.from_checkpoint(checkpoint, CPU, {"beam": 4, "coverage": 0.2})
    lines = ["1 2 3 4 5", "9 8 7", "4 4 0 1"]
    assert [t.text for t in translator.translate(lines)] == [reverse(line) for line in lines]


@pytest.mark.parametrize("overrides", [{"beam": 3}, {"beam": 1}, {"sampling": True, "top_k": 1}])
def test_a_prefix_is_forced_and_continued(checkpoint: Path, overrides: dict) -> None:
    translator = Translator.from_checkpoint(checkpoint, CPU, overrides)
    lines = ["1 2 3 4 5", "9 8 7", "6 6 2"]
    out = translator.translate(lines, prefixes=["5 4", "0", ""])
    assert out[0].text == "5 4 3 2 1"  # the prefix is the right start: the rest follows
    assert out[1].text.startswith("0 ")  # a wrong start is kept all the same
    assert out[2].text == "2 6 6"


def test_ensemble_of_one_model_twice_equals_the_model(checkpoint: Path, trained) -> None:
    lines = ["1 2 3 4 5", "9 8 7", "4 4 0 1 2 2"]
    single = Translator.from_checkpoint(checkpoint, CPU, {"beam": 3, "n_best": 2})
    double = Translator.from_checkpoint([checkpoint, checkpoint], CPU, {"beam": 3, "n_best": 2})
    for a, b in zip(single.translate(lines), double.translate(lines), strict=True):
        assert [t for t, _ in a.nbest] == [t for t, _ in b.nbest]
        assert [s for _, s in a.nbest] == pytest.approx([s for _, s in b.nbest], abs=1e-5)
    steps = sorted(trained.run_dir.glob("step-*.pt"))
    mixed = Translator.from_checkpoint([checkpoint, *steps], CPU)
    assert [t.text for t in mixed.translate(lines)] == [reverse(line) for line in lines]


def test_ensemble_needs_one_vocabulary(checkpoint: Path, tmp_path: Path) -> None:
    from nmt_cli.checkpoint import load_checkpoint, save_checkpoint, tokenizer_entry

    ckpt = load_checkpoint(checkpoint)
    other = tokenizer_entry(other_tokenizer(tmp_path), b"", joint=True)
    foreign = save_checkpoint(tmp_path / "other.pt", config=ckpt["config"],
                              model_state=ckpt["model_state"], tokenizer=other, step=1,
                              metrics={})  # fmt: skip
    with pytest.raises(CheckpointError, match="another vocabulary"):
        Translator.from_checkpoint([checkpoint, foreign], CPU)


def test_split_projection_computes_the_same_attention() -> None:
    model = random_model("transformer")
    src, mask = padded(random_sources(5, 50, seed=4))
    search = dict(beam=3, bos=2, eos=3, alpha=0.6, max_len_a=1.0, max_len_b=5)
    before = beam_search(model, src, mask, **search)
    for layer in model.decoder_layers:
        layer.cross_attn.split_projection()
    after = beam_search(model, src, mask, **search)
    assert [h[0].tokens for h in before] == [h[0].tokens for h in after]


@pytest.mark.parametrize("kind", ["transformer", "rnn"])
def test_int8_model_decodes(kind: str) -> None:
    model = quantize_int8(random_model(kind))
    linear = type(model.output)
    assert "quantized" in linear.__module__
    src, mask = padded(random_sources(4, 50, seed=5))
    hyps = beam_search(model, src, mask, beam=2, bos=2, eos=3, alpha=0.6, max_len_a=1, max_len_b=3)
    assert len(hyps) == 4 and all(h for h in hyps)


def test_int8_translator_still_solves_the_task(checkpoint: Path, corpus) -> None:
    translator = Translator.from_checkpoint(checkpoint, CPU, quantize="int8")
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
    search = dict(beam=3, bos=2, eos=3, alpha=0.6, max_len_a=1.0, max_len_b=5, n_best=3)
    for ours, theirs in zip(beam_search(model, src, mask, **search),
                            beam_search(packed, src, mask, **search), strict=True):  # fmt: skip
        assert [h.tokens for h in ours] == [h.tokens for h in theirs]
        assert [h.score for h in ours] == pytest.approx([h.score for h in theirs], abs=1e-4)


def test_fp32_translator_on_cpu_uses_prepacked_layers(checkpoint: Path) -> None:
    translator = Translator.from_checkpoint(checkpoint, CPU)
    assert isinstance(translator.model.output, PackedLinear)
    assert translator.translate(["1 2 3 4 5"])[0].text == "5 4 3 2 1"


# --- alignments, unknown words, plots ---------------------------------------------------------


def test_word_of_each_piece() -> None:
    assert word_of_each_piece(["▁The", "▁do", "g", "s", "▁bark", "."]) == [0, 1, 1, 1, 2, 2]
    assert word_of_each_piece(["ab", "▁c"]) == [0, 1]


def test_hard_alignment_groups_pieces_into_words() -> None:
    src = ["▁Der", "▁Hund", "e", "▁bellt"]  # 3 words
    out = ["▁The", "▁dog", "s", "▁bark"]
    attention = torch.tensor([
        [0.9, 0.05, 0.0, 0.05, 0.0],
        [0.0, 0.2, 0.7, 0.1, 0.0],
        [0.0, 0.6, 0.3, 0.1, 0.0],
        [0.1, 0.0, 0.0, 0.8, 0.1],
        [0.0, 0.0, 0.0, 0.0, 1.0],  # EOS row, left out
    ])  # fmt: skip
    assert hard_alignment(attention, src, out) == "0-0 1-1 2-2"


def test_replace_unknowns_copies_the_attended_source_word() -> None:
    attention = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.2, 0.7]])
    pieces = replace_unknowns(["▁Hello", "<unk>"], attention, ["▁Hallo", "▁Zürich", "X"],
                              ["Hallo", "ZürichX"], "<unk>")  # fmt: skip
    assert pieces == ["▁Hello", "▁ZürichX"]


def test_print_alignment_of_the_reverse_model_is_the_anti_diagonal(
    checkpoint: Path, run_nmt, tmp_path: Path
) -> None:
    lines = ["1 2 3 4 5", "9 8 7", "4 0 1 2"]  # distinct digits: one right alignment each
    src = tmp_path / "in.txt"
    src.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    plots = tmp_path / "plots"
    done = run_nmt(["translate", str(checkpoint), "-i", str(src), "--print-alignment",
                    "--attention-plot", str(plots), "--device", "cpu"])  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = done.stdout.splitlines()
    assert len(rows) == len(lines)
    for line, row in zip(lines, rows, strict=True):
        text, links = row.split("\t")
        assert text == reverse(line)
        n = len(line.split())
        assert links == " ".join(f"{i}-{n - 1 - i}" for i in range(n))
    assert sorted(p.name for p in plots.iterdir()) == ["000001.png", "000002.png", "000003.png"]


@pytest.mark.parametrize("kind", ["transformer", "rnn"])
def test_cached_decoding_equals_uncached(kind: str) -> None:
    model = random_model(kind)
    src, mask = padded(random_sources(12, 50, seed=6))
    search = dict(beam=4, bos=2, eos=3, alpha=0.6, max_len_a=1.0, max_len_b=5, n_best=4)
    cached = beam_search(model, src, mask, **search)
    uncached = beam_search(Uncached(model), src, mask, **search)
    for a, b in zip(cached, uncached, strict=True):
        assert [h.tokens for h in a] == [h.tokens for h in b]
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-4)
