"""Corpus-level scores with sacrebleu, always reported with their signatures.

BLEU numbers are only comparable when tokenisation, casing and smoothing match (Post, 2018,
"A Call for Clarity in Reporting BLEU Scores"), so every score travels with the sacrebleu
signature that produced it. Scoring is on detokenised text: sacrebleu applies its own
tokeniser (13a for BLEU), which is what makes the number comparable across toolkits.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table
from sacrebleu.metrics import BLEU, CHRF, TER

from nmt_cli.errors import DataError
from nmt_cli.streams import read_lines


@dataclass
class EvalResult:
    """Scores for one hypothesis file against one reference file.

    `signature` maps each metric name to its sacrebleu signature string; `bleu_detail` keeps
    sacrebleu's own line (n-gram precisions, brevity penalty, lengths) for diagnosing a low BLEU.
    """

    bleu: float
    chrf: float
    ter: float
    signature: dict[str, str] = field(default_factory=dict)
    sentences: int = 0
    bleu_detail: str = ""

    def to_dict(self) -> dict:
        """Plain containers, ready for `json.dumps` on stdout."""
        return asdict(self)


def score(hypotheses: list[str], references: list[str]) -> EvalResult:
    """Score hypotheses against a single reference each with BLEU (13a, cased), chrF and TER."""
    check_aligned(hypotheses, references, "hypotheses")
    refs = [list(references)]
    bleu, chrf, ter = BLEU(), CHRF(), TER()
    bleu_score = bleu.corpus_score(hypotheses, refs)
    chrf_score = chrf.corpus_score(hypotheses, refs)
    ter_score = ter.corpus_score(hypotheses, refs)
    return EvalResult(
        bleu=float(bleu_score.score),
        chrf=float(chrf_score.score),
        ter=float(ter_score.score),
        signature={
            "bleu": bleu.get_signature().format(),
            "chrf": chrf.get_signature().format(),
            "ter": ter.get_signature().format(),
        },
        sentences=len(hypotheses),
        bleu_detail=bleu_score.format(),
    )


def check_aligned(lines: list[str], references: list[str], what: str) -> None:
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
    table = Table(title=f"Evaluation ({result.sentences} sentences)")
    table.add_column("metric", style="bold")
    table.add_column("score", justify="right")
    table.add_column("signature", overflow="fold")
    for name, label, value in (
        ("bleu", "BLEU", result.bleu),
        ("chrf", "chrF2", result.chrf),
        ("ter", "TER", result.ter),
    ):
        table.add_row(label, f"{value:.2f}", result.signature.get(name, ""))
    console.print(table)
    if result.bleu_detail:
        console.print(result.bleu_detail, style="dim", highlight=False)


def evaluate(
    *,
    ref: Path,
    hyp: Path | None = None,
    checkpoint: Path | None = None,
    src: Path | None = None,
    device: str = "auto",
    decode_overrides: dict | None = None,
    save_hyp: Path | None = None,
    engine: str = "torch",
    precision: str = "auto",
    quantize: str | None = None,
    threads: int | None = None,
) -> EvalResult:
    """Score `hyp` against `ref`, or first translate `src` with `checkpoint` and score that.

    Translation uses the checkpoint's decoding settings (as validation during training did),
    with `decode_overrides` on top, so `nmt eval` reproduces the BLEU that chose best.pt.
    `engine`, `precision`, `quantize` and `threads` choose how it runs, as for `nmt translate`
    (`nmt_cli.inference.engines.load_translator`).
    """
    from nmt_cli.console import progress
    from nmt_cli.outputs import check_output, open_output

    check_output(save_hyp, inputs=(checkpoint, src, ref, hyp), option="--save-hyp")
    references = list(read_lines(ref))
    if checkpoint is None:
        hypotheses = list(read_lines(hyp))
    else:
        from nmt_cli.inference.engines import load_translator

        sources = list(read_lines(src))
        check_aligned(sources, references, "sources")  # before a translation that would be lost
        translator = load_translator(
            checkpoint,
            device,
            decode_overrides,
            engine=engine,
            precision=precision,
            quantize=quantize,
            threads=threads,
        )
        with progress() as bar:
            task = bar.add_task("translating", total=len(sources))
            translations = translator.translate(sources, on_progress=lambda n: bar.advance(task, n))
        hypotheses = [t.text for t in translations]
        if save_hyp is not None:
            with open_output(save_hyp) as handle:
                handle.writelines(line + "\n" for line in hypotheses)
    return score(hypotheses, references)
