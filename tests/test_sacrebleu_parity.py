"""`nmt eval` passes sacreBLEU's options through: every figure equals sacreBLEU's Python API
on the same files, option by option (several references, tokenizers and the language-pair
default, lowercase, metric choice, chrF++, confidence intervals, paired tests)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sacrebleu.metrics import BLEU, CHRF, TER
from sacrebleu.significance import PairedTest
from typer.testing import CliRunner

from nmt_cli.cli import app
from nmt_cli.config import config_from_dict
from nmt_cli.errors import ConfigError
from nmt_cli.evaluate import validation_bleu
from tests.test_bad_input import assert_one_line_error

HYP = [
    "a man in an orange hat is staring at something .",
    "two dogs play in the snow",
    "A woman sells vegetables at a market.",
    "children are jumping into a pool",
    "the boy rides a red bike down the street",
]
REF_A = [
    "A man in an orange hat starring at something.",
    "Two dogs are playing in the snow.",
    "a woman is selling vegetables at the market .",
    "Kids jump into a swimming pool.",
    "A boy rides his red bicycle down the street.",
]
REF_B = [
    "A man wearing an orange hat looks at something.",
    "Two dogs play in snow.",
    "A woman sells vegetables at a market.",
    "Children jump into the pool.",
    "The boy is riding a red bike on the street.",
]
BASE = [
    "man hat orange",
    "dogs snow",
    "A woman sells at a market.",
    "children pool",
    "boy bike street",
]
ZH_HYP = ["我喜欢吃苹果。", "今天天气很好。", "他在北京工作。"]
ZH_REF = ["我喜欢吃苹果和香蕉。", "今天的天气很好。", "他在北京工作。"]


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    texts = {"hyp": HYP, "a": REF_A, "b": REF_B, "base": BASE, "zh_hyp": ZH_HYP, "zh": ZH_REF}
    paths = {}
    for name, lines in texts.items():
        paths[name] = tmp_path / f"{name}.txt"
        paths[name].write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return paths


def nmt_eval(*args: str | Path) -> dict:
    done = CliRunner().invoke(app, ["eval", *map(str, args), "--json"], catch_exceptions=False)
    assert done.exit_code == 0, done.stderr
    return json.loads(done.stdout)


def test_several_references_score_as_sacrebleu_does(files) -> None:
    both = nmt_eval("--hyp", files["hyp"], "--ref", files["a"], "-r", files["b"])
    refs = [REF_A, REF_B]
    assert both["bleu"] == BLEU().corpus_score(HYP, refs).score
    assert both["chrf"] == CHRF().corpus_score(HYP, refs).score
    assert both["ter"] == TER().corpus_score(HYP, refs).score
    assert all(sig.startswith("nrefs:2|") for sig in both["signature"].values())
    one = nmt_eval("--hyp", files["hyp"], "--ref", files["a"])
    assert one["bleu"] == BLEU().corpus_score(HYP, [REF_A]).score != both["bleu"]


def test_the_same_file_as_both_references_is_still_two(files) -> None:
    twice = nmt_eval("--hyp", files["a"], "-r", files["a"], "-r", files["a"])
    assert twice["bleu"] == pytest.approx(100.0) and twice["signature"]["bleu"].startswith(
        "nrefs:2|"
    )


@pytest.mark.parametrize("tokenize", ["13a", "intl", "zh", "char", "none"])
def test_each_tokenizer_equals_sacrebleu(files, tokenize: str) -> None:
    for hyp, ref, hyp_lines, ref_lines in (
        (files["hyp"], files["a"], HYP, REF_A),
        (files["zh_hyp"], files["zh"], ZH_HYP, ZH_REF),
    ):
        got = nmt_eval("--hyp", hyp, "--ref", ref, "--tokenize", tokenize, "-m", "bleu")
        expected = BLEU(tokenize=tokenize).corpus_score(hyp_lines, [ref_lines])
        assert got["bleu"] == expected.score
        assert f"tok:{tokenize}|" in got["signature"]["bleu"]


def test_the_language_pair_picks_the_tokenizer_sacrebleu_picks(files) -> None:
    plain = nmt_eval("--hyp", files["zh_hyp"], "--ref", files["zh"], "-m", "bleu")
    zh = nmt_eval("--hyp", files["zh_hyp"], "--ref", files["zh"], "-m", "bleu", "-l", "en-zh")
    assert plain["bleu"] == BLEU().corpus_score(ZH_HYP, [ZH_REF]).score
    assert zh["bleu"] == BLEU(trg_lang="zh").corpus_score(ZH_HYP, [ZH_REF]).score
    assert "tok:zh|" in zh["signature"]["bleu"] and zh["bleu"] > plain["bleu"] + 20


def test_lowercase_and_chrf_plus_plus_equal_sacrebleu(files) -> None:
    got = nmt_eval("--hyp", files["hyp"], "--ref", files["a"], "-lc", "-cw", "2")
    assert got["bleu"] == BLEU(lowercase=True).corpus_score(HYP, [REF_A]).score
    assert got["chrf"] == CHRF(word_order=2).corpus_score(HYP, [REF_A]).score
    assert "case:lc" in got["signature"]["bleu"] and "nw:2" in got["signature"]["chrf"]


def test_only_the_metrics_asked_for(files) -> None:
    got = nmt_eval("--hyp", files["hyp"], "--ref", files["a"], "-m", "ter", "-m", "chrf")
    assert set(got["signature"]) == {"ter", "chrf"} and "bleu" not in got


def test_confidence_intervals_equal_sacrebleu(files) -> None:
    got = nmt_eval(
        "--hyp", files["hyp"], "--ref", files["a"], "--confidence", "--confidence-n", "200"
    )
    for key, metric in (("bleu", BLEU()), ("chrf", CHRF()), ("ter", TER())):
        expected = metric.corpus_score(HYP, [REF_A], n_bootstrap=200)
        assert (got[key], got["mean"][key], got["ci"][key]) == pytest.approx(
            (expected.score, expected._mean, expected._ci)
        )
        assert "bs:200|" in got["signature"][key]


@pytest.mark.parametrize(("flag", "test_type"), [("--paired-bs", "bs"), ("--paired-ar", "ar")])
def test_paired_tests_equal_sacrebleu(files, flag: str, test_type: str) -> None:
    got = nmt_eval(
        "--hyp", files["hyp"], "--ref", files["a"], "--baseline", files["base"], flag,
        "--paired-n", "300",
    )  # fmt: skip
    metrics = {"BLEU": BLEU(references=[REF_A]), "CHRF": CHRF(references=[REF_A]),
               "TER": TER(references=[REF_A])}  # fmt: skip
    signatures, results = PairedTest(
        [("baseline", BASE), ("system", HYP)], metrics, None, test_type=test_type, n_samples=300
    )()
    for key, name in (("bleu", "BLEU"), ("chrf", "chrF2"), ("ter", "TER")):
        base, system = results[name]
        assert got[key] == pytest.approx(system.score)
        assert got["baseline"][key] == pytest.approx(base.score)
        assert got["p_value"][key] == pytest.approx(system.p_value)
        assert got["signature"][key] == signatures[name].format()
    assert got["test"].endswith("300 samples")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--baseline", "BASE"], "needs both --baseline FILE and --paired-bs"),
        (["--paired-bs"], "needs both --baseline FILE and --paired-bs"),
        (["--baseline", "BASE", "--paired-bs", "--paired-ar"], "exclude each other"),
        (["--baseline", "BASE", "--paired-ar", "--confidence"], "--confidence is for one system"),
        (["--tokenize", "moses"], "--tokenize moses: choose from none, zh, 13a"),
        (["-m", "meteor"], "--metrics meteor: choose from bleu, chrf, ter"),
        (["-l", "english"], "--language-pair english: write it SRC-TGT"),
        (["-r", "SHORT"], "references differ in length"),
    ],
)
def test_a_wrong_option_is_one_line(files, tmp_path, args, says, run_nmt) -> None:
    short = tmp_path / "short.txt"
    short.write_text("one line\n")
    args = [{"BASE": str(files["base"]), "SHORT": str(short)}.get(a, a) for a in args]
    done = run_nmt(["eval", "--hyp", str(files["hyp"]), "--ref", str(files["a"]), *args])
    assert_one_line_error(done.returncode, done.stderr, says)


# --- validation BLEU during training ---------------------------------------------------------


def test_validation_bleu_uses_the_target_languages_tokenizer() -> None:
    for trg_lang, tokenize, expected in (
        ("zh", "", "zh"),
        ("de", "", "13a"),
        ("zh", "char", "char"),
    ):
        bleu = validation_bleu(tokenize, trg_lang)
        assert bleu.tokenizer.signature() == expected
    chinese = validation_bleu("", "zh").corpus_score(ZH_HYP, [ZH_REF]).score
    assert chinese == BLEU(trg_lang="zh").corpus_score(ZH_HYP, [ZH_REF]).score
    assert chinese > BLEU().corpus_score(ZH_HYP, [ZH_REF]).score + 20  # 13a sees no words


def test_a_run_states_its_validation_bleu(trained) -> None:
    log = (trained.run_dir / "train.log").read_text(encoding="utf-8")
    assert "validation BLEU: sacreBLEU, tokenizer 13a (sacreBLEU's for target language tgt" in log
    lines = (trained.run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    validations = [json.loads(line) for line in lines if "valid_bleu" in line]
    assert validations and all(
        entry["valid_bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|")
        for entry in validations
    )


def test_an_unknown_validation_tokenizer_is_one_line(make_recipe) -> None:
    with pytest.raises(ConfigError, match="train.bleu_tokenize: 'moses' is not one of none, zh"):
        config_from_dict(make_recipe(train={"bleu_tokenize": "moses"}))
