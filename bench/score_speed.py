"""`nmt score` against `nmt translate --beam 1` on the same lines: time and target tokens/s.

Scoring a pair is one teacher-forced pass over its reference; greedy translation makes one
decoder step per output word. Both commands run in fresh processes on test_2016_flickr
(German -> English by default), alternately, `--repeat` times; the figures are the medians
of the summary line each prints on stderr (time after loading, target tokens/s) and of the
wall time of the whole process.

    python bench/score_speed.py --checkpoint runs/multi30k-transformer/avg.pt
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "multi30k"
NMT = [sys.executable, "-m", "nmt_cli"]
SUMMARY = re.compile(r"([\d,]+) target tokens in ([\d.]+) s \(([\d,]+) tokens/s\)")


def run(command: list[str]) -> dict[str, float]:
    """Wall seconds of `command`, and the tokens, seconds and tokens/s of its summary line."""
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - started
    found = SUMMARY.search(done.stderr)
    if found is None:
        sys.exit(f"no summary line from {' '.join(command)}: {done.stderr[-300:]}")
    tokens, seconds, _ = (float(g.replace(",", "")) for g in found.groups())
    return {"wall_s": wall, "work_s": seconds, "tokens": tokens, "tok_per_s": tokens / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DATA, help="holds test_2016_flickr.*.gz")
    parser.add_argument("--src", default="de")
    parser.add_argument("--tgt", default="en")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    src = args.data / f"test_2016_flickr.{args.src}.gz"
    tgt = args.data / f"test_2016_flickr.{args.tgt}.gz"
    commands = {
        "nmt score": [*NMT, "score", str(args.checkpoint), "--src", str(src), "--tgt", str(tgt)],
        "nmt translate --beam 1": [*NMT, "translate", str(args.checkpoint), "-i", str(src)]
        + ["--beam", "1"],
    }
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in commands}
    for _ in range(args.repeat):  # alternately, so that a slow spell hits both
        for name, command in commands.items():
            runs[name].append(run(command))
    medians = {
        name: {key: statistics.median(r[key] for r in results) for key in results[0]}
        for name, results in runs.items()
    }
    if args.json:
        print(json.dumps(medians))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{src.name} -> {tgt.name}, median of {args.repeat} runs")
    for column in ("command", "target tokens", "seconds (after loading)", "tokens/s", "wall s"):
        table.add_column(column, justify="left" if column == "command" else "right")
    for name, m in medians.items():
        table.add_row(
            name,
            f"{m['tokens']:,.0f}",
            f"{m['work_s']:.2f}",
            f"{m['tok_per_s']:,.0f}",
            f"{m['wall_s']:.2f}",
        )
    Console(stderr=True).print(table)


if __name__ == "__main__":
    main()
