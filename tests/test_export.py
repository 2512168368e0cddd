"""`nmt export --format ctranslate2`: CTranslate2 computes what our Transformer computes.

Random-weight models in every arrangement (pre/post-norm, tied/untied, joint/separate
vocabularies) give CTranslate2 the same per-word log-probabilities as PyTorch; a model trained
on the reverse task translates the same through the CTranslate2 engine as through our
PyTorch engine. Exports that cannot be right are refused and leave nothing behind.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from nmt_cli.checkpoint import save_checkpoint, tokenizer_entry
from nmt_cli.cli import app
from nmt_cli.config import config_from_dict, config_to_dict
from nmt_cli.data.batching import collate_sources
from nmt_cli.data.shards import load_tokenizers
from nmt_cli.data.tokenizer import BOS, EOS
from nmt_cli.errors import CheckpointError, ConfigError, DataError
from nmt_cli.models import build_model
from tests.test_alignment import assert_nbest_alignments_fit

ctranslate2 = pytest.importorskip("ctranslate2")

from nmt_cli.inference.ctranslate2 import CTranslate2Engine  # noqa: E402
from nmt_cli.inference.engines import load_translator  # noqa: E402
from nmt_cli.inference.export import export_ctranslate2  # noqa: E402
from nmt_cli.inference.translator import Translator  # noqa: E402

TRANSFORMER = {"type": "transformer", "d_model": 32, "heads": 4, "ff_dim": 64, "enc_layers": 2,
               "dec_layers": 2, "norm": "pre", "dropout": 0.0, "max_len": 40}  # fmt: skip


def nmt(*args: str | Path):
    """Run the CLI in-process; an exception escaping the command would be a bug."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"unhandled {result.exception!r}"
    )
    return result


def random_checkpoint(
    path: Path, data_dir: Path, model: dict, joint: bool = True
) -> torch.nn.Module:
    """A checkpoint of random weights; norms and biases moved off their initial 1 and 0 so
    that a misplaced one shows."""
    tok, _ = load_tokenizers(data_dir)
    cfg = config_from_dict({"model": model})
    torch.manual_seed(0)
    net = build_model(cfg.model, tok.vocab_size, tok.vocab_size, shared_vocab=joint).eval()
    with torch.no_grad():
        for name, param in net.named_parameters():
            if "norm" in name or "bias" in name:
                param.add_(0.3 * torch.randn_like(param))
    entry = tokenizer_entry(tok.model_bytes, tok.model_bytes, joint=joint)
    save_checkpoint(path, config=config_to_dict(cfg), model_state=net.state_dict(),
                    tokenizer=entry, step=1, metrics={})  # fmt: skip
    return net


@pytest.fixture(scope="module")
def trained_transformer(make_recipe, reverse_data: Path, tmp_path_factory) -> Path:
    """best.pt of a small Transformer that solves most of the reverse task (~30 s)."""
    from nmt_cli.train import train

    raw = make_recipe(train={"max_steps": 1000, "valid_every": 1000, "warmup_steps": 50})
    raw["model"] = dict(TRANSFORMER)
    run = tmp_path_factory.mktemp("ct2-run") / "run"
    train(config_from_dict(raw), reverse_data, run, device="cpu", show_progress=False)
    return run / "best.pt"


@pytest.fixture(scope="module")
def exported(trained_transformer: Path, run_nmt, tmp_path_factory) -> Path:
    """The trained model exported through the real `nmt export` command."""
    out = tmp_path_factory.mktemp("ct2-export") / "model"
    done = run_nmt(["export", str(trained_transformer), "--format", "ctranslate2",
                    "--out", str(out)])  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "CTranslate2 model" in done.stderr and done.stdout == ""
    return out


# --- the exported weights compute what ours compute ------------------------------------------


@pytest.mark.parametrize(("norm", "tie", "joint"),
                         [("post", True, True), ("pre", True, True), ("post", False, False),
                          ("pre", True, False)])  # fmt: skip
@torch.no_grad()
def test_word_log_probs_equal_ours(norm: str, tie: bool, joint: bool, reverse_data: Path,
                                   tmp_path: Path) -> None:  # fmt: skip
    """Teacher-forced log P(y_t | y_<t, x) of every target word and the EOS, on sources and
    targets up to 60 positions (deep into the exported position table)."""
    model = {**TRANSFORMER, "norm": norm, "tie_embeddings": tie}
    net = random_checkpoint(tmp_path / "m.pt", reverse_data, model, joint)
    export_ctranslate2(tmp_path / "m.pt", tmp_path / "ct2")
    engine = ctranslate2.Translator(str(tmp_path / "ct2"), intra_threads=1)
    tok, _ = load_tokenizers(reverse_data)
    rng = random.Random(1)
    pairs = [([rng.randrange(4, tok.vocab_size) for _ in range(rng.randint(1, 40))],
              [rng.randrange(4, tok.vocab_size) for _ in range(rng.randint(0, 60))])
             for _ in range(6)]  # fmt: skip
    pieces = lambda ids: [tok.id_to_piece(i) for i in ids]  # noqa: E731
    scored = engine.score_batch([pieces(s) for s, _ in pairs], [pieces(t) for _, t in pairs])
    for (src_ids, tgt_ids), result in zip(pairs, scored, strict=True):
        src, src_mask = collate_sources([src_ids], torch.device("cpu"))  # src + EOS
        log_probs = torch.log_softmax(net(src, src_mask, torch.tensor([[BOS, *tgt_ids]])), -1)
        ours = log_probs[0].gather(1, torch.tensor([*tgt_ids, EOS]).unsqueeze(1)).squeeze(1)
        assert result.tokens[-1] == "</s>"
        torch.testing.assert_close(torch.tensor(result.log_probs), ours, atol=2e-5, rtol=0)


def test_greedy_words_equal_ours_on_random_weights(reverse_data: Path, tmp_path: Path) -> None:
    """Untrained models run into the length limit: the words still agree."""
    random_checkpoint(tmp_path / "m.pt", reverse_data, {**TRANSFORMER, "norm": "post"})
    export_ctranslate2(tmp_path / "m.pt", tmp_path / "ct2")
    lines = [" ".join(random.Random(i).choices("0123456789", k=i % 9 + 1)) for i in range(20)]
    settings = {"beam": 1, "alpha": 0.0}
    ours = load_translator(tmp_path / "m.pt", torch.device("cpu"), settings)
    ct2 = Translator(CTranslate2Engine(tmp_path / "ct2", settings))
    assert [t.text for t in ct2.translate(lines)] == [t.text for t in ours.translate(lines)]


# --- the trained model translates alike ------------------------------------------------------


def test_export_directory_is_self_contained(exported: Path) -> None:
    names = {p.name for p in exported.iterdir()}
    assert {"model.bin", "config.json", "nmt_cli.json", "source.spm", "target.spm"} <= names
    assert not [p for p in exported.parent.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("settings", [{"beam": 1, "alpha": 0.0}, {"beam": 3, "alpha": 0.0},
                                      {"beam": 4, "alpha": 0.6}])  # fmt: skip
def test_translations_equal_ours(settings: dict, trained_transformer: Path, exported: Path,
                                 corpus) -> None:  # fmt: skip
    """Same best translation and score (GNMT length penalty included) as our beam search;
    with alpha 0 the whole n-best list agrees (see inference/ctranslate2.py's docstring for why only
    then)."""
    n_best = settings["beam"] if settings["alpha"] == 0 else 1
    settings = {**settings, "n_best": n_best}
    lines = [src for src, _ in corpus.test] + ["", "  3\t1\u00a04 ", "1 2 3 4 5 6 7 8 9"]
    ours = load_translator(trained_transformer, torch.device("cpu"), settings)
    ct2 = Translator(CTranslate2Engine(exported, settings, inter_threads=2))
    progress: list[int] = []
    expected, got = ours.translate(lines), ct2.translate(lines, on_progress=progress.append)
    assert sum(progress) == len(lines)
    assert [t.text for t in got] == [t.text for t in expected]
    for mine, theirs in zip(got, expected, strict=True):
        assert [c.text for c in mine.nbest] == [c.text for c in theirs.nbest]
        for a, b in zip(
            (c.score for c in mine.nbest), (c.score for c in theirs.nbest), strict=True
        ):
            assert a == pytest.approx(b, abs=1e-4)
    # A sanity check that the comparison ran on a trained model: 39-49 of the 50 are solved,
    # depending on the seed (and on rounding in Adam and the loss); an untrained model solves
    # none.
    solved = sum(t.text == ref for t, (_, ref) in zip(got, corpus.test, strict=False))
    assert solved >= 0.7 * len(corpus.test)


@pytest.mark.parametrize(
    ("setting", "value"), [("min_len_b", 3), ("min_len_a", 1.0), ("no_repeat_ngram", 2)]
)
def test_min_length_and_ngram_blocking_are_refused(
    setting: str, value: float, exported: Path, run_nmt
) -> None:
    """CTranslate2 bans words before its softmax, so the others' probabilities grow and its
    beam ranks differently from ours (which keeps the model's probabilities, as fairseq does,
    so that `nmt score` gives the n-best scores): one line says so."""
    with pytest.raises(ConfigError, match=f"decode.{setting} .* has no CTranslate2 equivalent"):
        CTranslate2Engine(exported, {setting: value})
    option = "--" + setting.replace("_", "-")
    done = run_nmt(["translate", str(exported), "--engine", "ctranslate2", option, str(value)])
    assert done.returncode == 1
    assert f"decode.{setting}" in done.stderr and "Traceback" not in done.stderr


def test_attention_equals_ours(trained_transformer: Path, exported: Path, corpus) -> None:
    settings = {"beam": 1, "alpha": 0.0}
    lines = [src for src, _ in corpus.test[:10]]
    ours = load_translator(trained_transformer, torch.device("cpu"), settings)
    ct2 = Translator(CTranslate2Engine(exported, settings))
    for mine, theirs in zip(ct2.translate(lines, keep_attention=True),
                            ours.translate(lines, keep_attention=True), strict=True):  # fmt: skip
        assert mine.src_pieces == theirs.src_pieces and mine.out_pieces == theirs.out_pieces
        assert mine.attention.shape == (len(mine.out_pieces), len(mine.src_pieces))
        torch.testing.assert_close(
            torch.as_tensor(mine.attention), theirs.attention, atol=1e-4, rtol=0
        )


def test_a_limit_of_one_step_gives_empty_lines(trained_transformer: Path, exported: Path,
                                               corpus) -> None:  # fmt: skip
    """With a * |X| + b = 1 only EOS fits; CTranslate2 cannot decode 0 steps, so the EOS is
    scored instead, with our length penalty."""
    settings = {"beam": 2, "alpha": 0.6, "max_len_a": 0.0, "max_len_b": 1}
    lines = [src for src, _ in corpus.test[:5]]
    ours = load_translator(trained_transformer, torch.device("cpu"), settings)
    got = Translator(CTranslate2Engine(exported, settings)).translate(lines)
    assert [t.text for t in got] == [""] * 5
    for mine, theirs in zip(got, ours.translate(lines), strict=True):
        assert mine.nbest[0].score == pytest.approx(theirs.nbest[0].score, abs=1e-4)


def test_int8_export_translates(trained_transformer: Path, exported: Path, corpus,
                                tmp_path: Path) -> None:  # fmt: skip
    result = export_ctranslate2(trained_transformer, tmp_path / "int8", quantization="int8")
    assert result.size_bytes < (exported / "model.bin").stat().st_size
    lines = [src for src, _ in corpus.test]
    got = Translator(CTranslate2Engine(tmp_path / "int8", {"beam": 2})).translate(lines)
    assert len(got) == len(lines) and all(t.text for t in got)


def test_translator_input_errors(exported: Path) -> None:
    ct2 = Translator(CTranslate2Engine(exported, {"beam": 2}))
    with pytest.raises(DataError, match="input line 2 has 60 tokens, more than the model's limit"):
        ct2.translate(["1 2", " ".join("1" * 60)])
    with pytest.raises(ConfigError, match="more than the 1024 positions"):
        ct2 = Translator(CTranslate2Engine(exported, {"max_len_b": 2000}))
        ct2.translate(["1 2 3 4 5 6 7 8 9 0"])
    with pytest.raises(ConfigError, match="n-best 3 with beam 2: beam search needs"):
        Translator(CTranslate2Engine(exported, {"beam": 2, "n_best": 3}))
    with pytest.raises(CheckpointError, match="not a CTranslate2 model written by nmt export"):
        Translator(CTranslate2Engine(exported.parent))
    with pytest.raises(ConfigError, match="target prefixes have no exact CTranslate2"):
        ct2.translate(["1 2"], prefixes=["2"])


def test_stream_translates_chunk_by_chunk(exported: Path) -> None:
    ct2 = Translator(CTranslate2Engine(exported, {"beam": 2}))
    chunks = [["1 2 3"], ["", "4 5"]]
    streamed = [t.text for t in ct2.translate_stream(chunks)]
    assert streamed == [t.text for t in ct2.translate(["1 2 3", "", "4 5"])]
    with pytest.raises(DataError, match="input line 3 has 60 tokens"):
        list(ct2.translate_stream([["1"], ["2", " ".join("1" * 60)]]))


# --- what is refused, and what a failure leaves ----------------------------------------------


def test_rnn_checkpoint_is_refused(reverse_data: Path, tmp_path: Path, run_nmt) -> None:
    rnn = {"type": "rnn", "emb_dim": 16, "hidden_dim": 16, "max_len": 40}
    random_checkpoint(tmp_path / "rnn.pt", reverse_data, rnn)
    out = tmp_path / "out"
    done = run_nmt(["export", str(tmp_path / "rnn.pt"), "--format", "ctranslate2",
                    "--out", str(out)])  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "model.type rnn" in lines[0] and "Transformer checkpoints only" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rnn.pt"]


def test_failed_export_keeps_the_earlier_one(trained_transformer: Path, tmp_path: Path,
                                             monkeypatch) -> None:  # fmt: skip
    out = tmp_path / "model"
    export_ctranslate2(trained_transformer, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def disk_full(self, directory: str) -> None:
        (Path(directory) / "model.bin").write_bytes(b"half a model")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ctranslate2.specs.TransformerSpec, "save", disk_full)
    r = nmt("export", trained_transformer, "--out", out, "--quantize", "int8")
    assert r.exit_code == 1 and r.stderr.startswith("error: cannot write")
    assert "No space left on device" in r.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_refusals_leave_the_destination_alone(trained_transformer: Path, tmp_path: Path) -> None:
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("...", encoding="utf-8")
    r = nmt("export", trained_transformer, "--out", precious)
    assert r.exit_code == 1 and "refusing to replace it" in r.stderr
    assert [p.name for p in precious.iterdir()] == ["chapter1.tex"]

    r = nmt("export", trained_transformer, "--out", tmp_path / "m", "--quantize", "int4")
    assert r.exit_code == 1 and "--quantize int4 is not a CTranslate2 weight type" in r.stderr
    r = nmt("export", trained_transformer, "--out", tmp_path / "m", "--format", "onnx")
    assert r.exit_code == 1 and "--format onnx is unknown" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis"]


def test_cli_engine_ctranslate2_equals_the_torch_engine(
    trained_transformer: Path, exported: Path, corpus, run_nmt, tmp_path: Path
) -> None:
    src = tmp_path / "test.src"
    src.write_text("".join(s + "\n" for s, _ in corpus.test), encoding="utf-8")
    common = ["-i", str(src), "--beam", "3", "--device", "cpu"]
    ours = run_nmt(["translate", str(trained_transformer), *common])
    theirs = run_nmt(["translate", str(exported), "--engine", "ctranslate2", "--threads", "2",
                      "--print-alignment", *common])  # fmt: skip
    assert ours.returncode == theirs.returncode == 0, theirs.stderr
    assert [row.split("\t")[0] for row in theirs.stdout.splitlines()] == ours.stdout.splitlines()
    refused = run_nmt(["translate", str(exported), "--engine", "ctranslate2", "--replace-unk",
                       *common])  # fmt: skip
    assert refused.returncode == 1 and "--engine torch" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_each_nbest_hypothesis_has_its_own_alignment_on_both_engines(
    trained_transformer: Path, exported: Path, corpus, run_nmt, tmp_path: Path
) -> None:
    sources = [s for s, _ in corpus.test[:12]]
    src = tmp_path / "test.src"
    src.write_text("".join(s + "\n" for s in sources), encoding="utf-8")
    common = ["-i", str(src), "--beam", "4", "--n-best", "4", "--print-alignment"]
    for model, engine in ((trained_transformer, "torch"), (exported, "ctranslate2")):
        done = run_nmt(["translate", str(model), "--engine", engine, "--device", "cpu", *common])
        assert done.returncode == 0, done.stderr
        assert_nbest_alignments_fit(done.stdout, sources, 4)


def test_the_ctranslate2_engine_runs_without_torch(exported: Path) -> None:
    """`nmt translate --engine ctranslate2` never imports torch: it starts in a second less."""
    code = (
        "import sys; from nmt_cli.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(any(m.split('.')[0] == 'torch' for m in sys.modules), file=sys.stderr)"
    )
    args = ["translate", str(exported), "--engine", "ctranslate2", "--print-alignment"]
    done = subprocess.run([sys.executable, "-c", code, *args], input="1 2 3\n",
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.stdout.count("\n") == 1 and "\t" in done.stdout, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "False"


def test_eval_scores_an_export_as_it_scores_the_checkpoint(
    trained_transformer: Path, exported: Path, corpus, tmp_path: Path
) -> None:
    """`nmt eval --engine ctranslate2` (in this interpreter: the CLI is a thin shell)."""
    src, ref = tmp_path / "test.src", tmp_path / "test.ref"
    src.write_text("".join(s + "\n" for s, _ in corpus.test), encoding="utf-8")
    ref.write_text("".join(t + "\n" for _, t in corpus.test), encoding="utf-8")
    common = ["--src", str(src), "--ref", str(ref), "--beam", "3", "--device", "cpu", "--json"]
    runner = CliRunner()
    ours = runner.invoke(app, ["eval", str(trained_transformer), *common])
    theirs = runner.invoke(app, ["eval", str(exported), "--engine", "ctranslate2", "--quantize",
                                 "int8", "--threads", "2", *common])  # fmt: skip
    assert ours.exit_code == theirs.exit_code == 0, theirs.stderr
    ours, theirs = json.loads(ours.stdout), json.loads(theirs.stdout)
    assert theirs["sentences"] == ours["sentences"] == len(corpus.test)
    assert theirs["bleu"] > 50  # int8 weights round the small model's scores: most survive
    exact = runner.invoke(app, ["eval", str(exported), "--engine", "ctranslate2", *common])
    assert json.loads(exact.stdout)["bleu"] == ours["bleu"]
    refused = runner.invoke(app, ["eval", str(exported), "--engine", "ctranslate2", "--dtype",
                                  "bf16", *common])  # fmt: skip
    assert refused.exit_code == 1 and "--engine torch" in refused.stderr
