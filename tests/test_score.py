"""`nmt score`: the model's log-probability of given pairs equals the score beam search gives
the same output, for every model family, an ensemble and both precisions; it streams, and its
input errors are one line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from nmt_cli.checkpoint import save_checkpoint, tokenizer_entry
from nmt_cli.config import config_from_dict, config_to_dict
from nmt_cli.data.shards import load_tokenizers
from nmt_cli.inference.engines import load_translator
from nmt_cli.inference.scorer import load_scorer
from nmt_cli.models import build_model

CPU = torch.device("cpu")
LINES = ["1 2 3 4 5", "9 8 7", "4 4 0 1 2 2", "5", "3 1 4 1 5 9 2 6"]
FAMILIES = {
    "transformer": {
        "type": "transformer",
        "d_model": 32,
        "heads": 4,
        "ff_dim": 64,
        "enc_layers": 2,
        "dec_layers": 2,
        "norm": "pre",
        "max_len": 40,
    },
    "ntm": {
        "type": "ntm",
        "emb_dim": 16,
        "controller_dim": 32,
        "memory_slots": 16,
        "memory_width": 8,
        "max_len": 40,
    },
}


@pytest.fixture(scope="module")
def family_checkpoints(reverse_data: Path, checkpoint: Path, tmp_path_factory) -> dict[str, Path]:
    """The trained RNN, and a Transformer and an NTM of random weights (search and scoring
    must agree on any weights) with the same vocabulary."""
    tok, _ = load_tokenizers(reverse_data)
    paths = {"rnn": checkpoint}
    for name, model in FAMILIES.items():
        cfg = config_from_dict({"model": model, "decode": {"max_len_a": 1.0, "max_len_b": 4}})
        torch.manual_seed(0)
        net = build_model(cfg.model, tok.vocab_size, tok.vocab_size, shared_vocab=True)
        paths[name] = tmp_path_factory.mktemp(name) / "random.pt"
        save_checkpoint(
            paths[name],
            config=config_to_dict(cfg),
            model_state=net.state_dict(),
            tokenizer=tokenizer_entry(tok.model_bytes, tok.model_bytes, joint=True),
            step=1,
            metrics={},
        )
    return paths


def nbest_pairs(checkpoints, **settings) -> tuple[list, list, list[float]]:
    """Every n-best hypothesis of LINES as (source ids, output ids, score): ids, because a
    search's output subwords need not be how SentencePiece spells their text."""
    translator = load_translator(checkpoints, CPU, {"beam": 3, "n_best": 3, **settings})
    src_tok, tgt_tok = translator.engine.src_tokenizer, translator.engine.tgt_tokenizer
    sources, outputs, scores = [], [], []
    for line, translation in zip(LINES, translator.translate(LINES), strict=True):
        for candidate in translation.nbest:
            sources.append(src_tok.encode(line))
            outputs.append([tgt_tok.piece_to_id(p) for p in candidate.out_pieces[:-1]])
            scores.append(candidate.score)
    return sources, outputs, scores


@pytest.mark.parametrize("family", ["rnn", "transformer", "ntm"])
def test_normalised_scores_equal_the_nbest_scores(family: str, family_checkpoints) -> None:
    path = family_checkpoints[family]
    sources, outputs, want = nbest_pairs(path)
    got = load_scorer([path], "cpu", normalize=True).score_ids(sources, outputs)
    assert [g.score for g in got] == pytest.approx(want, abs=1e-4)
    raw = load_scorer([path], "cpu").score_ids(sources, outputs)
    for pair, normalised in zip(raw, got, strict=True):
        assert pair.score == pytest.approx(sum(pair.token_scores))
        assert pair.tokens[-1] == "</s>" and len(pair.tokens) == len(pair.token_scores)
        assert pair.score <= normalised.score <= 0  # lp >= 1 shrinks a negative score


def test_an_ensemble_scores_as_it_searches(family_checkpoints, trained) -> None:
    members = [family_checkpoints["rnn"], *sorted(trained.run_dir.glob("step-*.pt"))]
    sources, outputs, want = nbest_pairs(members)
    got = load_scorer(members, "cpu", normalize=True).score_ids(sources, outputs)
    assert [g.score for g in got] == pytest.approx(want, abs=1e-4)


@pytest.mark.parametrize("family", ["rnn", "transformer"])
def test_bf16_scores_are_close_to_fp32(family: str, family_checkpoints) -> None:
    path = family_checkpoints[family]
    sources, outputs, _ = nbest_pairs(path)
    fp32 = load_scorer([path], "cpu", precision="fp32").score_ids(sources, outputs)
    bf16 = load_scorer([path], "cpu", precision="bf16").score_ids(sources, outputs)
    for a, b in zip(fp32, bf16, strict=True):
        assert b.score == pytest.approx(a.score, rel=0.05, abs=0.05)


def test_a_better_translation_scores_higher(checkpoint: Path) -> None:
    """The trained model reverses digits: the right output beats a wrong one by far."""
    scorer = load_scorer([checkpoint], "cpu")
    right, wrong = scorer.score(["1 2 3", "1 2 3"], ["3 2 1", "1 2 3"])
    assert right.score > -0.5 and wrong.score < right.score - 5


def test_streamed_chunks_score_as_one_call(checkpoint: Path) -> None:
    scorer = load_scorer([checkpoint], "cpu", {"batch_tokens": 20})
    targets = [" ".join(reversed(line.split())) for line in LINES]
    whole = scorer.score(LINES, targets)
    chunks = [(LINES[:2], targets[:2]), (LINES[2:], targets[2:])]
    streamed = list(scorer.score_stream(chunks))
    assert [s.score for s in streamed] == pytest.approx([w.score for w in whole], abs=1e-5)


def test_cli_scores_stdin_as_tsv_and_json(checkpoint: Path, run_nmt, tmp_path: Path) -> None:
    tgt = tmp_path / "tgt.txt"
    tgt.write_text("3 2 1\n\n5 4\n")
    src = b"1 2 3\n\n4 5\n"
    done = run_nmt(
        ["score", str(checkpoint), "--src", "-", "--tgt", str(tgt), "--per-token"], stdin=src
    )
    assert done.returncode == 0, done.stderr
    rows = [line.split("\t") for line in done.stdout.splitlines()]
    assert len(rows) == 3  # the empty pair too: the model's probability of EOS alone
    for total, tokens in rows:
        assert float(total) == pytest.approx(sum(map(float, tokens.split())), abs=1e-3)
    assert "scored 3 pairs" in done.stderr
    as_json = run_nmt(
        ["score", str(checkpoint), "--src", "-", "--tgt", str(tgt), "--json", "--quiet"], stdin=src
    )
    records = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [r["line"] for r in records] == [1, 2, 3] and as_json.stderr == ""
    assert [r["score"] for r in records] == pytest.approx([float(r[0]) for r in rows], abs=1e-4)


def test_cli_score_equals_what_translate_prints(checkpoint: Path, run_nmt, tmp_path) -> None:
    src = tmp_path / "src.txt"
    src.write_text("".join(line + "\n" for line in LINES))
    nbest = run_nmt(["translate", str(checkpoint), "-i", str(src), "--n-best", "3", "--beam", "3"])
    rows = [line.split("\t") for line in nbest.stdout.splitlines()]
    (tmp_path / "s").write_text("".join(LINES[int(i)] + "\n" for i, _, _ in rows))
    (tmp_path / "t").write_text("".join(text + "\n" for _, _, text in rows))
    done = run_nmt(
        [
            "score",
            str(checkpoint),
            "--src",
            str(tmp_path / "s"),
            "--tgt",
            str(tmp_path / "t"),
            "--normalize",
        ]
    )
    assert done.returncode == 0, done.stderr
    got = [float(line) for line in done.stdout.splitlines()]
    assert got == pytest.approx([float(score) for _, score, _ in rows], abs=2e-4)


@pytest.mark.parametrize(
    ("src", "tgt", "message"),
    [
        ("1 2\n3 4\n", "2 1\n", r"tgt.txt has 1 lines and \S+src.txt more; give line-aligned"),
        ("1 2\n", "2 1\n4 3\n", r"tgt.txt has more lines than \S+src.txt \(1\); give line-"),
        ("1 2\n", "2 1 " * 50 + "\n", r"target line 1 has 100 tokens, more than the model's"),
    ],
)
def test_input_errors_are_one_line(src, tgt, message, checkpoint, run_nmt, tmp_path) -> None:
    (tmp_path / "src.txt").write_text(src)
    (tmp_path / "tgt.txt").write_text(tgt)
    done = run_nmt(
        [
            "score",
            str(checkpoint),
            "--src",
            str(tmp_path / "src.txt"),
            "--tgt",
            str(tmp_path / "tgt.txt"),
        ]
    )
    assert done.returncode == 1
    assert re.search(message, done.stderr) and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
