"""The `nmt` command: each subcommand parses its options, calls one library function and
renders the result. Data (translations, JSON) goes to stdout; progress, tables and errors go
to stderr. A mistake in the input ends with one line naming the problem and exit code 1.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

try:  # typer >= 0.24 carries its own copy of click
    from typer._click.exceptions import UsageError
except ImportError:
    from click.exceptions import UsageError

from nmt_cli.console import console
from nmt_cli.errors import ConfigError, DataError, NMTError, RelayedError
from nmt_cli.streams import MAX_LINE_BYTES

_MAX_LINE = MAX_LINE_BYTES >> 20  # MiB, for --input's help

MAX_PROCESSES = 256  # `train --nproc`: one machine's GPUs (or cores), not a fork bomb

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

SetOption = Annotated[
    Optional[list[str]],  # noqa: UP045 - typer needs Optional here
    typer.Option("--set", help="Override a recipe value: section.key=value (repeatable)."),
]


def _print_version(asked: bool) -> None:
    if asked:
        import nmt_cli

        print(f"nmt_cli {nmt_cli.__version__}")
        raise typer.Exit()


@app.callback()
def _program(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Neural machine translation: preprocess, train, translate, score, evaluate."""


DeviceOption = Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")]
# How `nmt translate` and `nmt eval` decode (`nmt_cli.inference.engines.load_translator`).
EngineOption = Annotated[
    str, typer.Option(help="torch, or ctranslate2 for a directory from nmt export.")
]
QuantizeOption = Annotated[
    str | None,
    typer.Option(help="int8: dynamic int8 linear layers (CPU); with ctranslate2 its compute type."),
]
DtypeOption = Annotated[
    str, typer.Option(help="auto (bf16 on a GPU that has it, else fp32), fp32, bf16, fp16.")
]
ThreadsOption = Annotated[
    int | None,
    typer.Option(help="CPU threads (default: all cores); with ctranslate2 parallel batches."),
]


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn input errors into one red line and exit 1; Ctrl-C into exit 130."""
    try:
        yield
    except NMTError as exc:
        if isinstance(exc, RelayedError) and _on_rank_zeros_machine():
            raise typer.Exit(1) from None  # rank 0 said it on this terminal
        # soft_wrap: rich would otherwise wrap at 80 columns when stderr is not a terminal
        # escape: a path like "runs/[old]/x.pt" is text, not rich markup
        # one_line: a file name may hold a newline, and the error must stay one line
        message = escape(_one_line(str(exc)))
        console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        console.print("[bold red]interrupted[/]")
        raise typer.Exit(130) from None


def _on_rank_zeros_machine() -> bool:
    """Whether all training processes run on this machine (torchrun's variables)."""
    return os.environ.get("LOCAL_WORLD_SIZE") == os.environ.get("WORLD_SIZE")


def _one_line(text: str) -> str:
    """`text` with its line breaks written as escapes (`\\n`), as a shell would show them."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


@app.command()
def preprocess(
    recipe: Annotated[Path, typer.Argument(help="YAML recipe with data and tokenizer sections.")],
    out: Annotated[Path, typer.Option("--out", help="Data directory to write.")],
    set_: SetOption = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Clean a parallel corpus, train SentencePiece and write token shards."""
    from nmt_cli.config import load_config
    from nmt_cli.preprocess import preprocess as run_preprocess

    with user_errors():
        result = run_preprocess(load_config(recipe, set_ or []), out)
    summary = {
        "out_dir": str(result.out_dir),
        "pairs": result.pairs,
        "cleaning": result.clean.as_dict(),
        "vocab_size": result.vocab_size,
        "seconds": round(result.seconds, 1),
    }
    if json_:
        print(json.dumps(summary))
    else:
        console.print_json(data=summary)


@app.command()
def train(
    recipe: Annotated[Path, typer.Argument(help="YAML recipe.")],
    data: Annotated[Path, typer.Option("--data", help="Directory written by nmt preprocess.")],
    out: Annotated[Path, typer.Option("--out", help="Run directory for checkpoints and logs.")],
    resume: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--resume",
            help="Continue from this checkpoint with this command's train settings (without "
            "it, a --out holding a run of the same settings is continued by itself).",
        ),
    ] = None,
    restart: Annotated[
        bool,
        typer.Option(
            "--restart", help="Start over: move a run already in --out aside to OUT.old-N."
        ),
    ] = False,
    init_from: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--init-from",
            help="Fine-tune: start a new run from this checkpoint's weights, with a fresh "
            "optimizer, schedule and data position (train.init_from).",
        ),
    ] = None,
    keep_optimizer: Annotated[
        bool,
        typer.Option("--keep-optimizer", help="With --init-from: also take its optimizer state."),
    ] = False,
    freeze: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(
            "--freeze", help="Keep these weights fixed: embeddings, encoder (repeatable)."
        ),
    ] = None,
    seed: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(help="Random seed of weights, dropout and batch order (train.seed)."),
    ] = None,
    set_: SetOption = None,
    device: DeviceOption = "auto",
    nproc: Annotated[
        int, typer.Option(help="Training processes on this machine (one per GPU), via torchrun.")
    ] = 1,
    json_: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Train a model into --out (checkpoints, train.log, metrics.jsonl, config.yaml).

    Run again, the same command continues the run. Stopped by SIGTERM, SIGUSR1 or SIGHUP it
    saves last.pt and exits 75 (Ctrl-C: 130); a run that ends exits 0.
    """
    from nmt_cli.config import load_config
    from nmt_cli.stop_signals import stop_exit_code
    from nmt_cli.train import train as run_train

    settings = [*(set_ or []), *_train_settings(init_from, keep_optimizer, freeze, seed)]
    with user_errors():
        if not 1 <= nproc <= MAX_PROCESSES:
            raise ConfigError(
                f"--nproc {nproc}: give 1 to {MAX_PROCESSES} processes (one per GPU, or 1 to 2 "
                "per CPU core); for several machines, start torchrun on each"
            )
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        from nmt_cli.distributed import launch

        args = ["train", str(recipe), "--data", str(data), "--out", str(out), "--device", device]
        args += ["--resume", str(resume)] if resume else []
        args += ["--restart"] if restart else []
        args += [arg for value in settings for arg in ("--set", value)]
        args += ["--json"] if json_ else []
        with user_errors():
            exit_code = launch(nproc, args, out)
        raise typer.Exit(exit_code)
    with user_errors():
        result = run_train(
            load_config(recipe, settings),
            data,
            out,
            resume=resume,
            restart=restart,
            device=device,
        )
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports for all
        return
    summary = {
        "run_dir": str(result.run_dir),
        "steps": result.steps,
        "best_bleu": result.best_bleu,
        "best_step": result.best_step,
        "seconds": round(result.seconds, 1),
        "stopped_by": result.stopped_by,
    }
    if json_:
        print(json.dumps(summary))
    else:
        console.print_json(data=summary)
    if result.stopped_by == "interrupted":
        console.print(
            f"stopped by {result.signal or 'a signal to another process'}: saved "
            f"{out / 'last.pt'}; run the same command again to continue",
            soft_wrap=True,
            highlight=False,
        )
        raise typer.Exit(stop_exit_code(result.signal))


def _train_settings(
    init_from: Path | None, keep_optimizer: bool, freeze: list[str] | None, seed: int | None
) -> list[str]:
    """`nmt train`'s fine-tuning and seed options as the recipe overrides they stand for (a
    value in JSON is YAML, so a path stays a string)."""
    settings = []
    if init_from is not None:
        settings.append(f"train.init_from={json.dumps(str(init_from))}")
    if keep_optimizer:
        settings.append("train.keep_optimizer=true")
    if freeze:
        settings.append(f"train.freeze={json.dumps(freeze)}")
    if seed is not None:
        settings.append(f"train.seed={seed}")
    return settings


@app.command()
def average(
    checkpoints: Annotated[
        list[Path], typer.Argument(help="Checkpoints of one run, e.g. RUN/step-*.pt.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Checkpoint to write.")],
) -> None:
    """Average the weights of several checkpoints of one run (Vaswani et al. used the last 5)."""
    from nmt_cli.average import average_checkpoints

    with user_errors():
        written = average_checkpoints(checkpoints, out)
    console.print(f"averaged {len(checkpoints)} checkpoints into {written}", soft_wrap=True)


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Argument(help="A Transformer .pt checkpoint.")],
    out: Annotated[
        Path, typer.Option("--out", help="Model directory to write (replaces an earlier export).")
    ],
    format_: Annotated[str, typer.Option("--format", help="Export format: ctranslate2.")] = (
        "ctranslate2"
    ),
    quantize: Annotated[
        str, typer.Option(help="Weights: none (as trained, float32), int8, int8_float32, ...")
    ] = "none",
) -> None:
    """Write a Transformer checkpoint as a CTranslate2 model directory, for fast inference."""
    from nmt_cli.inference.export import export_ctranslate2, render_export

    with user_errors():
        if format_ != "ctranslate2":
            raise ConfigError(f"--format {format_} is unknown; the export format is ctranslate2")
        result = export_ctranslate2(checkpoint, out, quantization=quantize)
    render_export(result, console)


def _decode_overrides(**values) -> dict:
    return {key: value for key, value in values.items() if value is not None}


@app.command()
def translate(
    checkpoints: Annotated[
        list[Path],
        typer.Argument(
            help="Checkpoint(s) from nmt train (several: an ensemble), or with "
            "--engine ctranslate2 a directory from nmt export."
        ),
    ],
    input_: Annotated[
        Path | None,
        typer.Option(
            "--input", "-i", help=f"Input file (default stdin); lines of at most {_MAX_LINE} MiB."
        ),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Output file (default stdout).")
    ] = None,
    beam: Annotated[int | None, typer.Option(help="Beam size (1 = greedy).")] = None,
    alpha: Annotated[float | None, typer.Option(help="GNMT length penalty.")] = None,
    coverage: Annotated[float | None, typer.Option(help="GNMT coverage penalty beta.")] = None,
    n_best: Annotated[
        int | None,
        typer.Option("--n-best", help="Print N hypotheses (or samples) per line as TSV."),
    ] = None,
    max_len_a: Annotated[float | None, typer.Option("--max-len-a")] = None,
    max_len_b: Annotated[int | None, typer.Option("--max-len-b")] = None,
    min_len_a: Annotated[
        float | None, typer.Option("--min-len-a", help="At least a * |source| + b words.")
    ] = None,
    min_len_b: Annotated[
        int | None, typer.Option("--min-len-b", "--min-len", help="At least this many words.")
    ] = None,
    no_repeat_ngram: Annotated[
        int | None,
        typer.Option("--no-repeat-ngram", help="Never output an n-gram of this size twice."),
    ] = None,
    batch_tokens: Annotated[int | None, typer.Option("--batch-tokens")] = None,
    sampling: Annotated[
        bool, typer.Option("--sampling", help="Sample instead of beam search.")
    ] = False,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature.")] = None,
    top_k: Annotated[
        int | None, typer.Option("--top-k", help="Sample among the k best words.")
    ] = None,
    top_p: Annotated[float | None, typer.Option("--top-p", help="Nucleus sampling mass.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the sampling draws.")] = None,
    prefix: Annotated[
        Path | None, typer.Option(help="File of target prefixes, one per input line, to force.")
    ] = None,
    print_alignment: Annotated[
        bool, typer.Option("--print-alignment", help="Append a TAB and i-j word alignments.")
    ] = False,
    attention_plot: Annotated[
        Path | None,
        typer.Option(
            "--attention-plot",
            help="Write one heatmap PNG per line here (with --n-best, per hypothesis: LINE-RANK).",
        ),
    ] = None,
    memory_plot: Annotated[
        Path | None,
        typer.Option("--memory-plot", help="NTM: write each line's memory weightings here."),
    ] = None,
    replace_unk: Annotated[
        bool, typer.Option("--replace-unk", help="Copy the attended source word for <unk>.")
    ] = False,
    json_: Annotated[
        bool,
        typer.Option(
            "--json", help="One JSON object per line: text, score, tokens (and alignment, n-best)."
        ),
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No summary on stderr at the end.")
    ] = False,
    quantize: QuantizeOption = None,
    dtype: DtypeOption = "auto",
    threads: ThreadsOption = None,
    device: DeviceOption = "auto",
    engine: EngineOption = "torch",
) -> None:
    """Translate lines from stdin (or --input) to stdout (or --output), one line per line;
    a summary (lines, target tokens per second) goes to stderr at the end."""
    from nmt_cli.line_formats import translation_json, translation_text
    from nmt_cli.outputs import check_directory, check_output, open_output
    from nmt_cli.streams import STDIN, display_name, open_text, read_line_chunks, stdin_fd

    overrides = _decode_overrides(
        beam=beam,
        alpha=alpha,
        coverage=coverage,
        n_best=n_best,
        max_len_a=max_len_a,
        max_len_b=max_len_b,
        min_len_a=min_len_a,
        min_len_b=min_len_b,
        no_repeat_ngram=no_repeat_ngram,
        batch_tokens=batch_tokens,
        sampling=sampling or None,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
    )
    source = STDIN if input_ is None else input_
    with user_errors(), contextlib.ExitStack() as stack:
        if str(source) == STDIN and prefix is not None and str(prefix) == STDIN:
            raise ConfigError("--input and --prefix cannot both read stdin; name a file for one")
        named = [path for path in (source, prefix) if path is not None]
        files = [path for path in named if str(path) != STDIN]
        stdin = stdin_fd() if len(files) < len(named) else None  # one of them reads stdin
        check_output(output, inputs=[*checkpoints, *files, stdin], option="--output")
        for directory, option in (
            (attention_plot, "--attention-plot"),
            (memory_plot, "--memory-plot"),
        ):
            if directory is not None:
                check_directory(directory, option)
        chunks = read_line_chunks(
            stack.enter_context(open_text(source)), max_lines=1000, name=display_name(source)
        )
        prefixes = None
        if prefix is not None:  # a line iterator, read along with the input
            prefixes = itertools.chain.from_iterable(
                read_line_chunks(stack.enter_context(open_text(prefix)), 1000, display_name(prefix))
            )
        from nmt_cli.inference.engines import load_translator

        if engine == "torch":  # CTranslate2 runs without torch: no import of it for that engine
            from nmt_cli.runtime import keep_freed_memory

            keep_freed_memory()
        translator = load_translator(
            checkpoints,
            device,
            overrides,
            engine=engine,
            precision=dtype,
            quantize=quantize,
            threads=threads,
            replace_unk=replace_unk,
        )
        if memory_plot is not None and engine != "torch":
            raise ConfigError("--memory-plot needs --engine torch and an ntm checkpoint")
        sink = stack.enter_context(open_output(output))
        results = translator.translate_stream(
            chunks, prefixes=prefixes, keep_attention=print_alignment or bool(attention_plot)
        )
        render = translation_json if json_ else translation_text
        started, lines, tokens = time.perf_counter(), 0, 0
        for index, result in enumerate(results):
            line = render(index, result, n_best=n_best is not None, alignment=print_alignment)
            sink.write(line)
            lines, tokens = lines + 1, tokens + max(len(result.out_pieces) - 1, 0)
            if attention_plot is not None:
                _plot_attention(result, attention_plot, index + 1, n_best is not None)
            if memory_plot is not None:
                _plot_memory(translator, result, memory_plot / f"{index + 1:06d}.png")
            if sink.live:  # stdout or a FIFO: someone may be waiting for this line
                sink.flush()
        if prefixes is not None and next(prefixes, None) is not None:
            raise DataError(
                f"{display_name(prefix)} has more lines than the input; give one prefix per line"
            )
    if not quiet:
        _summary(f"translated {lines:,} lines", tokens, time.perf_counter() - started)


def _plot_attention(result, directory: Path, line: int, n_best: bool) -> None:
    """One heatmap per line, or with --n-best one per hypothesis (`LINE-RANK.png`), titled
    with its line, rank and score; an empty line has nothing to draw."""
    from nmt_cli.plots import save_attention_heatmap

    for rank, candidate in enumerate(result.nbest, start=1):
        if candidate.attention is None:
            continue
        name = f"{line:06d}-{rank}.png" if n_best else f"{line:06d}.png"
        title = (
            f"line {line}, hypothesis {rank} of {len(result.nbest)}, score {candidate.score:.4f}"
        )
        save_attention_heatmap(
            candidate.attention,
            result.src_pieces,
            candidate.out_pieces,
            directory / name,
            title=title,
        )


def _plot_memory(translator, result, path: Path) -> None:
    """The NTM's write and read weightings while it translated this line (heads summed)."""
    from nmt_cli.plots import save_memory_plot

    if not result.src_pieces:
        return  # an empty line was never run through the model
    trace = translator.engine.memory_trace(result)
    steps = [*result.src_pieces, "<s>", *result.out_pieces[:-1]]
    save_memory_plot(
        trace.write_weights.sum(1).cpu().numpy(),
        trace.read_weights.sum(1).cpu().numpy(),
        steps,
        trace.source_steps,
        path,
    )


@app.command()
def score(
    checkpoints: Annotated[
        list[Path], typer.Argument(help="Checkpoint(s) from nmt train (several: an ensemble).")
    ],
    src: Annotated[Path, typer.Option("--src", help="Source sentences (- for stdin).")],
    tgt: Annotated[Path, typer.Option("--tgt", help="Their translations to score, line by line.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Output file (default stdout).")
    ] = None,
    normalize: Annotated[
        bool,
        typer.Option(
            "--normalize", help="Divide by the length penalty, as beam search ranks (--n-best)."
        ),
    ] = False,
    alpha: Annotated[float | None, typer.Option(help="GNMT length penalty.")] = None,
    per_token: Annotated[
        bool, typer.Option("--per-token", help="Also each subword's log-probability (and EOS).")
    ] = False,
    json_: Annotated[
        bool,
        typer.Option("--json", help="One JSON object per pair: score (tokens, token_scores)."),
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No summary on stderr at the end.")
    ] = False,
    batch_tokens: Annotated[int | None, typer.Option("--batch-tokens")] = None,
    quantize: QuantizeOption = None,
    dtype: DtypeOption = "auto",
    threads: ThreadsOption = None,
    device: DeviceOption = "auto",
) -> None:
    """Score given translations: log P(tgt | src) under the model, one line per pair (the
    sum over the target's subwords and EOS, as --n-best prints with --normalize)."""
    from nmt_cli.line_formats import score_line
    from nmt_cli.outputs import check_output, open_output
    from nmt_cli.streams import (
        STDIN,
        aligned_chunks,
        display_name,
        open_text,
        read_line_chunks,
        stdin_fd,
    )

    with user_errors(), contextlib.ExitStack() as stack:
        if str(src) == STDIN and str(tgt) == STDIN:
            raise ConfigError("--src and --tgt cannot both read stdin; name a file for one")
        stdin = stdin_fd() if STDIN in (str(src), str(tgt)) else None
        files = [path for path in (src, tgt) if str(path) != STDIN]
        check_output(output, inputs=[*checkpoints, *files, stdin], option="--output")
        sources = read_line_chunks(stack.enter_context(open_text(src)), 1000, display_name(src))
        targets = itertools.chain.from_iterable(
            read_line_chunks(stack.enter_context(open_text(tgt)), 1000, display_name(tgt))
        )
        chunks = aligned_chunks(sources, targets, display_name(src), display_name(tgt))
        from nmt_cli.inference.scorer import load_scorer
        from nmt_cli.runtime import keep_freed_memory

        keep_freed_memory()
        scorer = load_scorer(
            checkpoints,
            device,
            _decode_overrides(alpha=alpha, batch_tokens=batch_tokens),
            normalize=normalize,
            precision=dtype,
            quantize=quantize,
            threads=threads,
        )
        sink = stack.enter_context(open_output(output))
        started, pairs, tokens = time.perf_counter(), 0, 0
        for index, scored in enumerate(scorer.score_stream(chunks)):
            sink.write(score_line(index, scored, per_token=per_token, as_json=json_))
            pairs, tokens = pairs + 1, tokens + len(scored.tokens) - 1  # EOS aside
            if sink.live:
                sink.flush()
    if not quiet:
        _summary(f"scored {pairs:,} pairs", tokens, time.perf_counter() - started)


def _summary(done: str, tokens: int, seconds: float) -> None:
    """The line `nmt translate` and `nmt score` end with on stderr: work done, throughput."""
    console.print(
        f"{done}, {tokens:,} target tokens in {seconds:.1f} s "
        f"({tokens / max(seconds, 1e-9):,.0f} tokens/s)",
        highlight=False,
        soft_wrap=True,
    )


@app.command(name="eval")
def eval_(
    checkpoint: Annotated[
        Path | None,
        typer.Argument(
            help="Checkpoint to translate --src with, or with --engine ctranslate2 a directory "
            "from nmt export."
        ),
    ] = None,
    src: Annotated[Path | None, typer.Option(help="Source file to translate.")] = None,
    hyp: Annotated[
        Path | None, typer.Option("--hyp", "-i", help="Translations to score (- for stdin).")
    ] = None,
    refs: Annotated[
        list[Path],
        typer.Option("--ref", "-r", help="Reference file; repeat it for several references."),
    ] = ...,  # type: ignore[assignment]  # required
    metrics: Annotated[
        list[str] | None,
        typer.Option("--metrics", "-m", help="bleu, chrf, ter (repeatable; default all three)."),
    ] = None,
    tokenize: Annotated[
        str | None,
        typer.Option(
            "--tokenize",
            help="BLEU's tokenizer, one of sacreBLEU's: 13a, intl, zh, ja-mecab, ko-mecab, "
            "char, none, flores200, ... (default: sacreBLEU's choice for the target language: "
            "zh, ja-mecab, ko-mecab, else 13a).",
        ),
    ] = None,
    language_pair: Annotated[
        str | None,
        typer.Option(
            "--language-pair",
            "-l",
            help="SRC-TGT, e.g. en-zh: picks the tokenizer as sacreBLEU does.",
        ),
    ] = None,
    lowercase: Annotated[
        bool, typer.Option("--lowercase", "-lc", help="Case-insensitive BLEU (as sacreBLEU's).")
    ] = False,
    chrf_word_order: Annotated[
        int, typer.Option("--chrf-word-order", "-cw", help="2 for chrF++.", min=0, max=6)
    ] = 0,
    confidence: Annotated[
        bool, typer.Option("--confidence", "-ci", help="95% confidence intervals (bootstrap).")
    ] = False,
    confidence_n: Annotated[
        int, typer.Option("--confidence-n", help="Bootstrap resamples.", min=2, max=1_000_000)
    ] = 1000,
    baseline: Annotated[
        Path | None,
        typer.Option(help="A baseline system's translations, for --paired-bs or --paired-ar."),
    ] = None,
    paired_bs: Annotated[
        bool, typer.Option("--paired-bs", help="Paired bootstrap resampling against --baseline.")
    ] = False,
    paired_ar: Annotated[
        bool,
        typer.Option("--paired-ar", help="Paired approximate randomization against --baseline."),
    ] = False,
    paired_n: Annotated[
        int,
        typer.Option(
            "--paired-n", help="Resamples or trials (default: 1000 for bs, 10000 for ar).", min=0
        ),
    ] = 0,
    beam: Annotated[int | None, typer.Option(help="Beam size (1 = greedy).")] = None,
    alpha: Annotated[float | None, typer.Option(help="GNMT length penalty.")] = None,
    batch_tokens: Annotated[int | None, typer.Option("--batch-tokens")] = None,
    save_hyp: Annotated[
        Path | None, typer.Option("--save-hyp", help="Also write the translations here.")
    ] = None,
    quantize: QuantizeOption = None,
    dtype: DtypeOption = "auto",
    threads: ThreadsOption = None,
    device: DeviceOption = "auto",
    engine: EngineOption = "torch",
    json_: Annotated[bool, typer.Option("--json", help="Print scores as JSON on stdout.")] = False,
) -> None:
    """Score with sacreBLEU (BLEU, chrF, TER): CKPT --src F --ref F, or --hyp F --ref F."""
    from nmt_cli.evaluate import evaluate, render_eval_table

    with user_errors():
        if (checkpoint is None) == (hyp is None) or (checkpoint is not None) != (src is not None):
            raise ConfigError("give either CHECKPOINT --src F --ref F, or --hyp F --ref F")
        options = _score_options(
            metrics, tokenize, language_pair, lowercase, chrf_word_order, confidence, confidence_n
        )
        options = _paired_options(options, baseline, paired_bs, paired_ar, paired_n)
        if checkpoint is not None and engine == "torch":
            from nmt_cli.runtime import keep_freed_memory

            keep_freed_memory()  # for the decoding; scoring --hyp decodes nothing
        overrides = _decode_overrides(beam=beam, alpha=alpha, batch_tokens=batch_tokens)
        result = evaluate(
            refs=refs,
            hyp=hyp,
            checkpoint=checkpoint,
            src=src,
            options=options,
            baseline=baseline,
            device=device,
            decode_overrides=overrides,
            save_hyp=save_hyp,
            engine=engine,
            precision=dtype,
            quantize=quantize,
            threads=threads,
        )
    render_eval_table(result, console)
    if json_:
        print(json.dumps(result.to_dict()))


def _score_options(
    metrics, tokenize, language_pair, lowercase, chrf_word_order, confidence, confidence_n
):
    """sacreBLEU's options from `nmt eval`'s, each checked in one line."""
    from nmt_cli.evaluate import METRICS, TOKENIZERS, ScoreOptions

    chosen = tuple(dict.fromkeys(metrics or METRICS))
    for metric in chosen:
        if metric not in METRICS:
            raise ConfigError(f"--metrics {metric}: choose from {', '.join(METRICS)}")
    if tokenize is not None and tokenize not in TOKENIZERS:
        raise ConfigError(f"--tokenize {tokenize}: choose from {', '.join(TOKENIZERS)}")
    trg_lang = ""
    if language_pair is not None:
        parts = language_pair.split("-")
        if len(parts) != 2 or not all(parts):
            raise ConfigError(f"--language-pair {language_pair}: write it SRC-TGT, e.g. en-zh")
        trg_lang = parts[1]
    return ScoreOptions(
        metrics=chosen,
        tokenize=tokenize,
        trg_lang=trg_lang,
        lowercase=lowercase,
        chrf_word_order=chrf_word_order,
        confidence=confidence,
        confidence_n=confidence_n,
    )


def _paired_options(options, baseline, paired_bs, paired_ar, paired_n):
    """The paired test of `options`: both flags, or one without a baseline, is one line."""
    import dataclasses

    if paired_bs and paired_ar:
        raise ConfigError("--paired-bs and --paired-ar exclude each other; choose one test")
    test = "bs" if paired_bs else "ar" if paired_ar else None
    if (test is None) != (baseline is None):
        raise ConfigError("a paired test needs both --baseline FILE and --paired-bs or --paired-ar")
    if test is not None and options.confidence:
        raise ConfigError("--confidence is for one system; a paired test reports its own intervals")
    return dataclasses.replace(options, paired=test, paired_n=paired_n)


@app.command()
def demo(
    out: Annotated[
        Path, typer.Option("--out", help="Where to write corpus, run and heatmap.")
    ] = Path("demo-out"),
    seed: Annotated[int, typer.Option(help="Random seed.")] = 1,
    json_: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """The attention demo: learn to rewrite human-written dates as ISO dates, offline."""
    from nmt_cli.demo import render_demo, run_demo

    with user_errors():
        result = run_demo(out, seed=seed)
    render_demo(result, console)
    if json_:
        print(json.dumps(result.to_dict()))


def main() -> None:
    """The `nmt` program. A mistyped option value (`--seed 1e23`) is one `error:` line and
    exit 2, like every other input error, instead of click's framed usage box."""
    try:
        exit_code = app(args=sys.argv[1:] or ["--help"], prog_name="nmt", standalone_mode=False)
    except UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "nmt"
        message = " ".join(exc.format_message().split()).rstrip(".")  # click wraps long ones
        console.print(
            f"[bold red]error:[/] {escape(message)}; see {escape(command)} --help",
            highlight=False,
            soft_wrap=True,
        )
        exit_code = exc.exit_code
    except typer.Abort:
        console.print("[bold red]interrupted[/]")
        exit_code = 130
    sys.exit(exit_code or 0)


if __name__ == "__main__":
    main()
