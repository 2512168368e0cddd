"""Corpus-level scores with sacreBLEU, its options passed through, always with their signatures.

BLEU numbers are only comparable when tokenisation, casing and smoothing match (Post, 2018,
"A Call for Clarity in Reporting BLEU Scores"), so every score travels with the sacreBLEU
signature that produced it, and every option here is one of sacreBLEU's own, computed by
sacreBLEU: several references, the BLEU tokenizer (by default the one sacreBLEU picks for the
target language: `zh`, `ja-mecab`, `ko-mecab`, else `13a`), lowercasing, chrF++, bootstrap
confidence intervals and paired significance tests against a baseline system. Scoring is on
detokenised text, which is what makes the number comparable across toolkits.

Scoring files imports neither torch nor the models: `nmt eval --hyp` starts as fast as
sacreBLEU's own command line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sacrebleu.metrics import BLEU, CHRF, TER
from sacrebleu.metrics.base import Metric

from nmt_cli.errors import ConfigError, DataError, first_line
from nmt_cli.streams import display_name, read_lines

METRICS = ("bleu", "chrf", "ter")
TOKENIZERS = tuple(BLEU.TOKENIZERS)
PAIRED_TESTS = {"bs": "paired bootstrap resampling", "ar": "paired approximate randomization"}


@dataclass(frozen=True)
class ScoreOptions:
    """sacreBLEU's options, named as its command line names them; the defaults are its own."""

    metrics: tuple[str, ...] = METRICS
    tokenize: str | None = None  # BLEU's tokenizer; None: sacreBLEU's choice for `trg_lang`
    trg_lang: str = ""  # the target language code, e.g. "zh"
    lowercase: bool = False  # BLEU's, as sacreBLEU's --lowercase (chrF keeps case, TER ignores it)
    chrf_word_order: int = 0  # 2 for chrF++
    confidence: bool = False  # 95% interval by bootstrap resampling (`--confidence`)
    confidence_n: int = 1000
    paired: str | None = None  # "bs" or "ar": a paired test against a baseline system
    paired_n: int = 0  # 0: sacreBLEU's default (1,000 resamples for bs, 10,000 trials for ar)


@dataclass
class MetricScore:
    """One metric's corpus score; `mean` and `ci` (a 95% half-width) come from bootstrap
    resampling, `p_value` and `baseline` from a paired test against the baseline system."""

    name: str  # sacreBLEU's: BLEU, chrF2, chrF2++, TER
    score: float
    signature: str
    mean: float | None = None
    ci: float | None = None
    p_value: float | None = None
    baseline: float | None = None


@dataclass
class EvalResult:
    """Scores of one system against its references, by metric (`bleu`, `chrf`, `ter`).

    `bleu_detail` keeps sacreBLEU's own line (n-gram precisions, brevity penalty, lengths)
    for diagnosing a low BLEU; `test` names the statistical test when there was one.
    """

    scores: dict[str, MetricScore]
    sentences: int
    bleu_detail: str = ""
    test: str = ""

    @property
    def bleu(self) -> float:
        return self.scores["bleu"].score

    @property
    def signature(self) -> dict[str, str]:
        return {key: metric.signature for key, metric in self.scores.items()}

    def to_dict(self) -> dict[str, Any]:
        """Plain containers for `json.dumps` on stdout: each metric's score by its key, then
        the signatures; intervals and p-values only when a test computed them."""
        out: dict[str, Any] = {key: metric.score for key, metric in self.scores.items()}
        out |= {"signature": self.signature, "sentences": self.sentences}
        out["bleu_detail"] = self.bleu_detail
        for name in ("mean", "ci", "p_value", "baseline"):
            found = {
                k: getattr(m, name) for k, m in self.scores.items() if getattr(m, name) is not None
            }
            if found:
                out[name] = found
        if self.test:
            out["test"] = self.test
        return out


def score(
    hypotheses: Sequence[str],
    references: Sequence[str] | Sequence[Sequence[str]],
    options: ScoreOptions = ScoreOptions(),
    baseline: Sequence[str] | None = None,
) -> EvalResult:
    """Score `hypotheses` against one reference stream, or several (a list per reference).

    With `baseline` and `options.paired`, also test whether the difference to the baseline
    system is significant (sacreBLEU's `PairedTest`).
    """
    streams = _reference_streams(references)
    for stream in streams:
        check_aligned(hypotheses, stream, "hypotheses")
    if baseline is not None:
        check_aligned(baseline, streams[0], "baseline hypotheses")
    metrics = make_metrics(options, streams)
    if baseline is not None and options.paired:
        scores, test = _paired(hypotheses, baseline, metrics, options)
    else:
        scores, test = _single(hypotheses, metrics, options), ""
    detail = ""
    if "bleu" in metrics:
        detail = metrics["bleu"].corpus_score(hypotheses, None).format()
    return EvalResult(scores, len(hypotheses), detail, test)


def validation_bleu(tokenize: str, trg_lang: str) -> BLEU:
    """The BLEU that validation during training computes: `tokenize` (`train.bleu_tokenize`),
    or where that is "" sacreBLEU's choice for the target language."""
    options = ScoreOptions(metrics=("bleu",), tokenize=tokenize or None, trg_lang=trg_lang)
    return make_metrics(options, None)["bleu"]


def make_metrics(
    options: ScoreOptions, references: list[Sequence[str]] | None
) -> dict[str, Metric]:
    """sacreBLEU's metric objects for `options`, with the references' statistics cached."""
    makers = {
        "bleu": lambda: BLEU(
            lowercase=options.lowercase,
            tokenize=options.tokenize,
            trg_lang=options.trg_lang,
            references=references,
        ),
        "chrf": lambda: CHRF(word_order=options.chrf_word_order, references=references),
        "ter": lambda: TER(references=references),
    }
    metrics = {}
    for key in options.metrics:
        try:
            metrics[key] = makers[key]()
        except (ImportError, OSError, RuntimeError) as exc:  # a tokenizer's missing extra
            name = options.tokenize or BLEU._TOKENIZER_MAP.get(options.trg_lang, "13a")
            extra = {"ja-mecab": "ja", "ko-mecab": "ko"}.get(name)
            fix = f"pip install 'sacrebleu[{extra}]'" if extra else "install what it names"
            raise ConfigError(
                f"sacreBLEU's {name} tokenizer cannot run here ({first_line(exc)}); {fix}, or "
                "choose another tokenizer (nmt eval --tokenize, train.bleu_tokenize)"
            ) from None
    return metrics


def _single(hypotheses: Sequence[str], metrics: dict[str, Metric], options: ScoreOptions):
    scores = {}
    n_bootstrap = options.confidence_n if options.confidence else 1
    for key, metric in metrics.items():
        result = metric.corpus_score(hypotheses, None, n_bootstrap=n_bootstrap)
        scores[key] = MetricScore(
            name=result.name,
            score=float(result.score),
            signature=metric.get_signature().format(),
            mean=float(result._mean) if options.confidence else None,
            ci=float(result._ci) if options.confidence else None,
        )
    return scores


def _paired(hypotheses, baseline, metrics: dict[str, Metric], options: ScoreOptions):
    from sacrebleu.significance import PairedTest

    test = PairedTest(
        [("baseline", baseline), ("system", hypotheses)],
        {metric.__class__.__name__: metric for metric in metrics.values()},
        references=None,
        test_type=options.paired,
        n_samples=options.paired_n,
    )
    signatures, results = test()
    scores = {}
    for key, metric in metrics.items():
        name = metric.corpus_score(baseline, None).name
        base, system = results[name]
        scores[key] = MetricScore(
            name=name,
            score=float(system.score),
            signature=signatures[name].format(),
            mean=_float(system.mean),
            ci=_float(system.ci),
            p_value=_float(system.p_value),
            baseline=float(base.score),
        )
    return scores, f"{PAIRED_TESTS[options.paired]}, {test.n_samples} samples"


def _float(value) -> float | None:
    return None if value is None else float(value)


def _reference_streams(references) -> list[Sequence[str]]:
    """One stream (a str per line) or several, as a list of streams."""
    if references and not isinstance(references[0], str):
        return list(references)
    return [references]


def check_aligned(lines: Sequence[str], references: Sequence[str], what: str) -> None:
    """One reference per line, and at least one line to score."""
    if len(lines) != len(references):
        raise DataError(
            f"{what} and references differ in length: {len(lines)} {what} vs "
            f"{len(references)} references; they must be line-aligned"
        )
    if not references:
        raise DataError("nothing to score: the reference file is empty; give one line per sentence")


def render_eval_table(result: EvalResult, console: Console) -> None:
    """Print the scores as a table to `console` (the stderr console, so stdout stays data)."""
    title = f"Evaluation ({result.sentences} sentences)"
    table = Table(title=title + (f", {result.test}" if result.test else ""))
    table.add_column("metric", style="bold")
    table.add_column("score", justify="right")
    scores = list(result.scores.values())
    extra = [
        (heading, name)
        for heading, name in (("μ ± 95% CI", "ci"), ("baseline", "baseline"), ("p", "p_value"))
        if any(getattr(s, name) is not None for s in scores)
    ]
    for heading, _ in extra:
        table.add_column(heading, justify="right")
    table.add_column("signature", overflow="fold")
    for s in scores:
        cells = {
            "ci": f"{s.mean:.2f} ± {s.ci:.2f}" if s.ci is not None else "",
            "baseline": f"{s.baseline:.2f}" if s.baseline is not None else "",
            "p_value": f"{s.p_value:.4f}" if s.p_value is not None else "",
        }
        table.add_row(s.name, f"{s.score:.2f}", *(cells[name] for _, name in extra), s.signature)
    console.print(table)
    if result.bleu_detail:
        console.print(result.bleu_detail, style="dim", highlight=False)


def evaluate(
    *,
    refs: Sequence[Path],
    hyp: Path | None = None,
    checkpoint: Path | None = None,
    src: Path | None = None,
    options: ScoreOptions = ScoreOptions(),
    baseline: Path | None = None,
    device: str = "auto",
    decode_overrides: dict | None = None,
    save_hyp: Path | None = None,
    engine: str = "torch",
    precision: str = "auto",
    quantize: str | None = None,
    threads: int | None = None,
) -> EvalResult:
    """Score `hyp` against `refs`, or first translate `src` with `checkpoint` and score that.

    Translation uses the checkpoint's decoding settings (as validation during training did),
    with `decode_overrides` on top, so `nmt eval` reproduces the BLEU that chose best.pt; the
    target language for sacreBLEU's tokenizer choice is then the checkpoint's. `engine`,
    `precision`, `quantize` and `threads` choose how it runs, as for `nmt translate`
    (`nmt_cli.inference.engines.load_translator`).
    """
    from nmt_cli.outputs import check_output

    check_output(save_hyp, inputs=(checkpoint, src, *refs, hyp, baseline), option="--save-hyp")
    references = [list(read_lines(ref)) for ref in refs]
    for path, stream in zip(refs[1:], references[1:], strict=True):
        if len(stream) != len(references[0]):
            raise DataError(
                f"references differ in length: {display_name(refs[0])} has "
                f"{len(references[0])} lines, {display_name(path)} {len(stream)}; they must be "
                "line-aligned"
            )
    base = None if baseline is None else list(read_lines(baseline))
    if checkpoint is None:
        hypotheses = list(read_lines(hyp))
    else:
        hypotheses, target = _translate(
            checkpoint,
            src,
            references[0],
            device,
            decode_overrides,
            save_hyp,
            engine=engine,
            precision=precision,
            quantize=quantize,
            threads=threads,
        )
        if not options.trg_lang:
            options = replace(options, trg_lang=target)
    return score(hypotheses, references, options, base)


def _translate(checkpoint, src, references, device, overrides, save_hyp, **engine):
    """The checkpoint's translations of `src` (saved to `save_hyp` if given) and its target
    language."""
    from nmt_cli.console import progress
    from nmt_cli.inference.engines import load_translator
    from nmt_cli.outputs import open_output

    sources = list(read_lines(src))
    check_aligned(sources, references, "sources")  # before a translation that would be lost
    translator = load_translator(checkpoint, device, overrides, **engine)
    with progress() as bar:
        task = bar.add_task("translating", total=len(sources))
        translations = translator.translate(sources, on_progress=lambda n: bar.advance(task, n))
    hypotheses = [t.text for t in translations]
    if save_hyp is not None:
        with open_output(save_hyp) as handle:
            handle.writelines(line + "\n" for line in hypotheses)
    return hypotheses, translator.engine.target_lang
