"""Decoding speed, memory and BLEU of `nmt translate`, side by side with other engines.

Decodes Multi30k test_2016_flickr (1,000 sentences) De->En with beam 5 and reports, per
engine: target tokens per second (output subwords, EOS included, as fairseq counts them),
sentences per second (model loading excluded: that is start-up, not decoding), peak RSS of
the process (`/usr/bin/time -v`), and sacreBLEU. The engines, in one run:

  nmt_cli fp32            our PyTorch decoder on the checkpoint (on CPU its linear layers
                          prepacked for oneDNN, `nmt_cli/inference/cpu_linear.py`)
  nmt_cli int8            the same with dynamic int8 linear layers (`--quantize int8`)
  nmt_cli fp32 uncached   the same without the decoder cache (each step recomputes the
                          prefix): its BLEU must equal the cached decoder's
  nmt_cli bf16            bf16 autocast, on CPUs with native bf16 (AMX or AVX512-BF16) only
  ctranslate2 f32 / int8  the checkpoint exported with `nmt export --format ctranslate2`
  fairseq                 (--peer fairseq) fairseq-generate on the Transformer of the same size
                          that `bench/train_speed.py --peer fairseq` trained

Every engine gets the same cores; the thread settings are printed with the figures. Our
decoder and CTranslate2 both cut the length-sorted input into batches of `--batch-tokens`
source tokens (default: the device's, 1,500 on a CPU; 4000 is faster on 2 cores and costs
memory, see the README). With `--rss-lines N` it also pipes
an N-line input (the test set repeated) through `nmt translate` and reports its peak RSS:
memory must not grow with the input, which is streamed.

    python bench/decode_speed.py runs/multi30k-transformer/avg.pt --peer fairseq
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import sacrebleu
import torch
from rich.console import Console
from rich.table import Table

from nmt_cli.config import DecodeConfig
from nmt_cli.runtime import resolve_precision

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
THREADS = 2
BEAM = 5

console = Console(stderr=True)


# --- one engine, in its own process ---------------------------------------------------------


def worker(args: argparse.Namespace) -> None:
    """Load one engine, translate the file, print timings as JSON (run in a fresh process)."""
    from nmt_cli.runtime import keep_freed_memory, set_threads

    set_threads(args.threads)
    if args.engine == "torch":
        keep_freed_memory()  # as `nmt translate` does
    lines = Path(args.src).read_text(encoding="utf-8").splitlines()
    started = time.perf_counter()
    if args.engine == "torch":
        from nmt_cli.inference.engines import load_translator

        translator = load_translator(
            args.model, torch.device(args.device),
            {"beam": BEAM, "batch_tokens": args.batch_tokens},
            quantize=args.quantize,
            precision=args.dtype,
        )  # fmt: skip
        if args.uncached:
            from nmt_cli.models.uncached import Uncached

            translator.engine.model = Uncached(translator.engine.model)
    else:
        from nmt_cli.inference.ctranslate2 import CTranslate2Engine
        from nmt_cli.inference.translator import Translator

        translator = Translator(CTranslate2Engine(
            args.model, {"beam": BEAM, "batch_tokens": args.batch_tokens}, device=args.device,
            compute_type=args.compute_type, inter_threads=args.threads, intra_threads=1,
        ))  # fmt: skip
    loaded = time.perf_counter()
    translations = translator.translate(lines)
    finished = time.perf_counter()
    Path(args.out).write_text("".join(t.text + "\n" for t in translations), encoding="utf-8")
    print(json.dumps({
        "load_s": loaded - started,
        "decode_s": finished - loaded,
        "sentences": len(lines),
        "tokens": sum(len(t.out_pieces) for t in translations),
    }))  # fmt: skip


# --- the benchmark --------------------------------------------------------------------------


def timed(command: list[str], log: Path, env: dict[str, str] | None = None) -> tuple[str, int]:
    """Run under /usr/bin/time -v; return stdout and the peak RSS in bytes."""
    time_file = log.with_suffix(".time")
    done = subprocess.run(["/usr/bin/time", "-v", "-o", str(time_file), *command],
                          capture_output=True, text=True, env=env)  # fmt: skip
    log.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command[:4])} failed; see {log}")
    peak_kb = re.search(r"Maximum resident set size \(kbytes\): (\d+)", time_file.read_text())
    return done.stdout, int(peak_kb.group(1)) * 1024


def bleu(hyp: Path, ref: Path) -> float:
    hyps = hyp.read_text(encoding="utf-8").splitlines()
    refs = ref.read_text(encoding="utf-8").splitlines()
    return sacrebleu.corpus_bleu(hyps, [refs]).score


def run_engine(name: str, engine: str, model: Path, work: Path, test: Path, *extra: str) -> dict:
    """Decode the test set with one engine in a fresh process; its figures."""
    console.print(f"{name}: decoding test_2016_flickr, beam {BEAM}")
    out = work / f"{name.replace(' ', '-')}.en"
    command = [sys.executable, __file__, "worker", "--engine", engine, "--model", str(model),
               "--src", str(test / "test.de"), "--out", str(out),
               "--threads", str(THREADS), *extra]  # fmt: skip
    stdout, peak = timed(command, work / f"{name.replace(' ', '-')}.log")
    figures = json.loads(stdout.strip().splitlines()[-1])
    threads = f"intra {THREADS}" if engine == "torch" else f"inter {THREADS} x intra 1"
    return {
        "engine": name,
        "threads": threads,
        "tok_per_s": figures["tokens"] / figures["decode_s"],
        "sent_per_s": figures["sentences"] / figures["decode_s"],
        "peak_rss_mib": peak / 2**20,
        "bleu": bleu(out, test / "test.en"),
    }


def export(checkpoint: Path, out: Path, quantize: str) -> Path:
    command = [sys.executable, "-m", "nmt_cli", "export", str(checkpoint), "--format",
               "ctranslate2", "--out", str(out), "--quantize", quantize]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)
    return out


def run_fairseq(work: Path, data: Path, test: Path) -> dict:
    """Decode with fairseq-generate on the model bench/train_speed.py trained (no training)."""
    env = {**os.environ, "DATA": str(data), "WORK": str(work.parent / "peers"), "SKIP_TRAIN": "1",
           "OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS)}  # fmt: skip
    if not (work.parent / "peers" / "fairseq" / "ckpt" / "checkpoint_last.pt").exists():
        sys.exit("no fairseq model: run `python bench/train_speed.py --peer fairseq` first")
    console.print(f"fairseq: fairseq-generate on test_2016_flickr, beam {BEAM}")
    log = work / "fairseq.log"
    done = subprocess.run(["bash", str(SHARED / "peers" / "run_fairseq.sh")], env=env,
                          capture_output=True, text=True)  # fmt: skip
    log.write_text(done.stdout + done.stderr)
    peer = work.parent / "peers" / "fairseq"
    summary = re.search(
        r"Translated ([\d,]+) sentences \(([\d,]+) tokens\) in ([\d.]+)s",
        (peer / "gen.out").read_text() + (peer / "decode.log").read_text(),
    )
    peak = re.search(
        r"Maximum resident set size \(kbytes\): (\d+)", (peer / "decode.time").read_text()
    )
    if done.returncode != 0 or not summary or not peak:
        sys.exit(f"fairseq failed; see {log}")
    sentences, tokens, seconds = (float(g.replace(",", "")) for g in summary.groups())
    return {
        "engine": "fairseq 0.12.2",
        "threads": f"intra {THREADS}",
        "tok_per_s": tokens / seconds,
        "sent_per_s": sentences / seconds,
        "peak_rss_mib": int(peak.group(1)) / 1024,
        "bleu": bleu(peer / "hyp.en", test / "test.en"),
    }


def streamed_rss(checkpoint: Path, work: Path, test: Path, lines: int, batch_tokens: int) -> dict:
    """Peak RSS of `nmt translate` on an N-line input: the test set, repeated."""
    console.print(f"nmt_cli: translating {lines:,} lines through one process (peak RSS)")
    source = (test / "test.de").read_text(encoding="utf-8").splitlines()
    big = work / f"input-{lines}.de"
    with big.open("w", encoding="utf-8") as handle:
        for i in range(lines):
            handle.write(source[i % len(source)] + "\n")
    started = time.perf_counter()
    _, peak = timed([sys.executable, "-m", "nmt_cli", "translate", str(checkpoint), "--input",
                     str(big), "--output", str(work / "big.en"), "--beam", str(BEAM),
                     "--threads", str(THREADS), "--device", "cpu", "--batch-tokens",
                     str(batch_tokens)],
                    work / "big.log")  # fmt: skip
    return {"lines": lines, "peak_rss_mib": peak / 2**20, "seconds": time.perf_counter() - started}


def main() -> None:
    if sys.argv[1:2] == ["worker"]:  # one engine in its own process (see `run_engine`)
        w = argparse.ArgumentParser(prog="decode_speed.py worker")
        w.add_argument("--engine", choices=["torch", "ctranslate2"], required=True)
        w.add_argument("--model", required=True)
        w.add_argument("--src", required=True)
        w.add_argument("--out", required=True)
        w.add_argument("--threads", type=int, default=THREADS)
        w.add_argument("--quantize")
        w.add_argument("--dtype", default="fp32")
        w.add_argument("--device", default="cpu")
        w.add_argument("--compute-type", default="default", help="CTranslate2's")
        w.add_argument("--uncached", action="store_true", help="recompute the prefix each step")
        w.add_argument("--batch-tokens", type=int, default=DecodeConfig().batch_tokens)
        worker(w.parse_args(sys.argv[2:]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "multi30k")
    parser.add_argument(
        "--work", type=Path, default=Path.home() / ".cache" / "nmt-bench" / "decode"
    )
    parser.add_argument("--peer", choices=["fairseq"], action="append", default=[])
    parser.add_argument("--rss-lines", type=int, default=0, help="also stream this many lines")
    parser.add_argument(
        "--batch-tokens", type=int, default=DecodeConfig().batch_tokens_on("cpu"),
        help="our decoder's source tokens per decoding batch (default: a new recipe's on a CPU)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    work, data = args.work.resolve(), args.data.resolve()
    test = work / "test"
    test.mkdir(parents=True, exist_ok=True)
    for lang in ("de", "en"):
        (test / f"test.{lang}").write_bytes(
            gzip.decompress((data / f"test_2016_flickr.{lang}.gz").read_bytes())
        )
    ckpt = args.checkpoint.resolve()
    batches = ("--batch-tokens", str(args.batch_tokens))
    rows = [
        run_engine("nmt_cli fp32", "torch", ckpt, work, test, *batches),
        run_engine("nmt_cli int8", "torch", ckpt, work, test, *batches, "--quantize", "int8"),
        run_engine("nmt_cli fp32 uncached", "torch", ckpt, work, test, *batches, "--uncached"),
    ]
    if resolve_precision("auto", torch.device("cpu")) == "bf16":  # native bf16 units only
        bf16 = ("--dtype", "bf16")
        rows.append(run_engine("nmt_cli bf16", "torch", ckpt, work, test, *batches, *bf16))
    for quantize, label in (("none", "f32"), ("int8", "int8")):
        model = export(ckpt, work / f"ct2-{label}", quantize)
        rows.append(run_engine(f"ctranslate2 {label}", "ctranslate2", model, work, test, *batches))
    if "fairseq" in args.peer:
        rows.append(run_fairseq(work, data, test))
    stream = None
    if args.rss_lines:
        stream = streamed_rss(ckpt, work, test, args.rss_lines, args.batch_tokens)
    if args.json:
        print(json.dumps({"rows": rows, "streamed": stream}))
        return
    table = Table(
        title=f"Multi30k test_2016_flickr, beam {BEAM}, {args.batch_tokens}-token batches, "
        f"CPU, {THREADS} cores each"
    )
    for column in ("engine", "threads", "target tok/s", "sent/s", "peak RSS MiB", "BLEU"):
        table.add_column(column, justify="left" if column in ("engine", "threads") else "right")
    for r in rows:
        table.add_row(r["engine"], r["threads"], f"{r['tok_per_s']:,.0f}", f"{r['sent_per_s']:.1f}",
                      f"{r['peak_rss_mib']:,.0f}", f"{r['bleu']:.2f}")  # fmt: skip
    out = Console()
    out.print(table)
    by_name = {r["engine"]: r for r in rows}
    peers = [r for r in rows if not r["engine"].startswith(("nmt_cli", "ctranslate2"))]
    if peers:
        best = max(peers, key=lambda r: r["tok_per_s"])
        ratio = by_name["nmt_cli fp32"]["tok_per_s"] / best["tok_per_s"]
        out.print(f"nmt_cli fp32 / {best['engine']}: {ratio:.2f}x tokens/s")
    same = by_name["nmt_cli fp32"]["bleu"] == by_name["nmt_cli fp32 uncached"]["bleu"]
    out.print(f"BLEU cached vs uncached: {'identical' if same else 'DIFFERENT'}")
    ratio = by_name["nmt_cli int8"]["tok_per_s"] / by_name["ctranslate2 int8"]["tok_per_s"]
    out.print(f"nmt_cli int8 / ctranslate2 int8: {ratio:.2f}x tokens/s")
    if stream:
        out.print(f"streamed {stream['lines']:,} lines in {stream['seconds']:.0f} s, "
                  f"peak RSS {stream['peak_rss_mib']:,.0f} MiB")  # fmt: skip


if __name__ == "__main__":
    main()
