"""Soak test: pipe a million lines through one `nmt translate` process and watch its memory.

A production pipe runs for hours. Whatever a process keeps per line (a cache that is never
emptied, a list of results, fragments the allocator cannot give back) shows up as resident
memory that grows with the input. This script feeds N lines (a corpus file repeated) into
one `nmt translate` on stdin from a feeder thread, reads its stdout as it comes, and every
`--every` output lines samples the process's resident set (VmRSS in /proc) and the lines per
second of the last interval. It checks that exactly N lines came back and reports the RSS
after the first 10,000 lines against the RSS at the end: memory is flat when they are within
10% of each other.

    python bench/translate_soak.py runs/multi30k-transformer/avg.pt --lines 1000000 \
        --beam 1 --threads 2
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "multi30k" / "test_2016_flickr.de.gz"
BASELINE_LINES = 10_000
FLAT_TOLERANCE = 0.10

console = Console(stderr=True)


def read_corpus(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [line.rstrip("\n") for line in handle]


def feed(stdin, corpus: list[str], lines: int) -> None:
    """Write `lines` lines (the corpus over and over) and close the pipe."""
    with stdin:
        for line in itertools.islice(itertools.cycle(corpus), lines):
            stdin.write(line + "\n")


def memory_mib(pid: int) -> tuple[float, float]:
    """(current resident set, peak resident set) of process `pid`, in MiB."""
    fields = {}
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = row.partition(":")
        fields[key] = value
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def soak(args: argparse.Namespace) -> dict:
    corpus = read_corpus(args.src)
    command = [sys.executable, "-m", "nmt_cli", "translate", str(args.checkpoint),
               "--beam", str(args.beam), "--threads", str(args.threads), "--dtype", args.dtype,
               *(["--quantize", args.quantize] if args.quantize else [])]  # fmt: skip
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True, encoding="utf-8", bufsize=1 << 16,
    )  # fmt: skip
    feeder = threading.Thread(target=feed, args=(process.stdin, corpus, args.lines), daemon=True)
    started = time.perf_counter()
    feeder.start()
    samples: list[dict] = []
    received = 0
    last_time, last_count = started, 0
    for _ in process.stdout:
        received += 1
        if received % args.every == 0 or received in (BASELINE_LINES, args.lines):
            now = time.perf_counter()
            rss, peak = memory_mib(process.pid)
            samples.append({
                "lines": received, "seconds": round(now - started, 1),
                "lines_per_s": round((received - last_count) / (now - last_time), 1),
                "rss_mib": round(rss, 1), "peak_rss_mib": round(peak, 1),
            })  # fmt: skip
            last_time, last_count = now, received
            console.log(
                f"{received:,} lines, {samples[-1]['lines_per_s']:,} lines/s, "
                f"RSS {rss:.1f} MiB (peak {peak:.1f})"
            )
    returncode = process.wait()
    feeder.join()
    baseline = next(s for s in samples if s["lines"] == BASELINE_LINES)
    final = samples[-1]  # taken at the last line, while the process still runs
    return {
        "checkpoint": str(args.checkpoint), "lines_in": args.lines, "lines_out": received,
        "exit_code": returncode, "beam": args.beam, "threads": args.threads,
        "precision": args.dtype + (f" + {args.quantize} linear" if args.quantize else ""),
        "seconds": round(time.perf_counter() - started, 1),
        "rss_after_10k_mib": baseline["rss_mib"], "rss_at_end_mib": final["rss_mib"],
        "rss_change": round(final["rss_mib"] / baseline["rss_mib"] - 1, 4),
        "peak_rss_mib": final["peak_rss_mib"], "samples": samples,
    }  # fmt: skip


def report(result: dict) -> None:
    table = Table(title=f"nmt translate soak: {result['lines_in']:,} lines")
    for column in ("lines", "seconds", "lines/s (interval)", "RSS MiB", "peak RSS MiB"):
        table.add_column(column, justify="right")
    for s in result["samples"]:
        table.add_row(f"{s['lines']:,}", f"{s['seconds']:,}", f"{s['lines_per_s']:,}",
                      f"{s['rss_mib']:,}", f"{s['peak_rss_mib']:,}")  # fmt: skip
    console.print(table)
    flat = abs(result["rss_change"]) <= FLAT_TOLERANCE
    console.print(
        f"{result['precision']}, beam {result['beam']}, {result['threads']} threads; "
        f"{result['lines_out']:,} of {result['lines_in']:,} lines back, exit "
        f"{result['exit_code']}, {result['seconds']:,} s. RSS after {BASELINE_LINES:,} lines "
        f"{result['rss_after_10k_mib']} MiB, at the end {result['rss_at_end_mib']} MiB "
        f"({result['rss_change']:+.1%}: {'flat' if flat else 'NOT flat'}, limit "
        f"±{FLAT_TOLERANCE:.0%}); peak {result['peak_rss_mib']} MiB."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--src", type=Path, default=DEFAULT_SOURCE, help="lines to repeat")
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--every", type=int, default=50_000, help="sample every N lines")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--quantize", default=None)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if args.lines < BASELINE_LINES:
        parser.error(f"--lines must be at least {BASELINE_LINES:,}")
    result = soak(args)
    report(result)
    if args.json:
        print(json.dumps(result, indent=2))
    if result["exit_code"] != 0 or result["lines_out"] != args.lines:
        sys.exit(1)


if __name__ == "__main__":
    main()
