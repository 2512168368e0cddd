"""Start-up time of the `nmt` commands a user runs most, next to sacreBLEU's own CLI.

A command's start-up is what a user waits for before any work: importing Python modules and
loading the model. Times, each the median of `--repeat` fresh processes:

  nmt --help                      the CLI alone
  nmt eval --hyp H --ref R        scoring two text files (no torch: see nmt_cli/evaluate.py)
  sacrebleu R -i H                sacreBLEU's CLI on the same files, BLEU/chrF/TER as nmt eval
  nmt translate CKPT              from start to the first translated line on stdout, for one
                                  line piped in (torch engine), and for an export
                                  (--engine ctranslate2) when `--export DIR` is given

    python bench/startup.py --checkpoint runs/multi30k-transformer/avg.pt \
        --export runs/multi30k-ct2
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "multi30k"
NMT = [sys.executable, "-m", "nmt_cli"]


def seconds(command: list[str], repeat: int) -> float:
    """Median wall time of `command` run to its end, `repeat` times."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def first_line_seconds(command: list[str], line: str, repeat: int) -> float:
    """Median time from start until `command` prints its first line for `line` on stdin."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        process.stdin.write((line + "\n").encode())
        process.stdin.flush()
        if not process.stdout.readline():
            sys.exit(f"{' '.join(command)} printed nothing")
        times.append(time.perf_counter() - started)
        process.stdin.close()
        process.wait()
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="holds test_2016_flickr.*.gz")
    parser.add_argument("--checkpoint", type=Path, help="a .pt for nmt translate's start-up")
    parser.add_argument("--export", type=Path, help="an nmt export dir for the ctranslate2 engine")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sacrebleu = shutil.which("sacrebleu")
    if sacrebleu is None:
        sys.exit("sacrebleu's CLI is not on PATH")
    with tempfile.TemporaryDirectory() as work:
        hyp, ref = Path(work) / "hyp.en", Path(work) / "ref.en"
        source = gzip.decompress((args.data / "test_2016_flickr.de.gz").read_bytes()).decode()
        reference = gzip.decompress((args.data / "test_2016_flickr.en.gz").read_bytes())
        ref.write_bytes(reference)
        hyp.write_bytes(reference.lower())  # any 1,000 lines to score
        rows = {
            "nmt --help": seconds([*NMT, "--help"], args.repeat),
            "nmt eval --hyp (BLEU, chrF, TER)": seconds(
                [*NMT, "eval", "--hyp", str(hyp), "--ref", str(ref)], args.repeat
            ),
            "sacrebleu CLI (BLEU, chrF, TER)": seconds(
                [sacrebleu, str(ref), "-i", str(hyp), "-m", "bleu", "chrf", "ter"], args.repeat
            ),
        }
        first = source.splitlines()[0]
        if args.checkpoint is not None:
            command = [*NMT, "translate", str(args.checkpoint), "--device", "cpu"]
            rows["nmt translate, first line (torch)"] = first_line_seconds(
                command, first, args.repeat
            )
        if args.export is not None:
            command = [*NMT, "translate", str(args.export), "--engine", "ctranslate2"]
            rows["nmt translate, first line (ctranslate2)"] = first_line_seconds(
                command, first, args.repeat
            )
    ratio = rows["nmt eval --hyp (BLEU, chrF, TER)"] / rows["sacrebleu CLI (BLEU, chrF, TER)"]
    if args.json:
        print(json.dumps({"seconds": rows, "eval_over_sacrebleu": ratio}))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Start-up, median of {args.repeat} runs")
    table.add_column("command")
    table.add_column("seconds", justify="right")
    for name, value in rows.items():
        table.add_row(name, f"{value:.2f}")
    console = Console(stderr=True)
    console.print(table)
    console.print(f"nmt eval --hyp / sacrebleu: {ratio:.2f}x")


if __name__ == "__main__":
    main()
