"""How far beyond its training lengths a model solves the NTM algorithmic tasks.

Graves et al. (2014) trained the copy task on sequences of 1-20 vectors and showed (Fig. 4, 5)
that the NTM still copies length 30, 50 and 120 almost perfectly while an LSTM fails beyond
20; repeat copy and associative recall were tested the same way (Fig. 7, 10). This bench
generates fresh sequences of each given length (`nmt_cli.data.algorithmic.generate`, the same
ones for every checkpoint), decodes them greedily with every checkpoint and reports, per
checkpoint and length, the mean bit errors per sequence (the paper's measure; a missing, extra
or non-symbol output word costs 8 bits, see `bit_errors`) and the fraction of sequences copied
exactly. Several checkpoints (the NTM and an LSTM baseline) share one table.

The output limit is set per length to twice the expected output plus 10 words, so a model is
never cut short, and one that does not stop is charged for what it adds. A length whose source
exceeds a checkpoint's `model.max_len`, or a repeat count its vocabulary never saw, is an error.

    python bench/ntm_generalisation.py runs/ntm-copy/best.pt --task copy --lengths 10 20 30 40 60 80
    python bench/ntm_generalisation.py runs/ntm-repeat/best.pt --task repeat_copy \\
        --lengths 5 10 15 20 --repeats 5 10
    python bench/ntm_generalisation.py runs/ntm-recall/best.pt --task associative_recall \\
        --items 2 6 12 --json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from nmt_cli.data.algorithmic import TASKS, bit_errors, generate
from nmt_cli.errors import NMTError
from nmt_cli.inference.engines import load_translator
from nmt_cli.inference.translator import Translator
from nmt_cli.runtime import resolve_device, set_threads

console = Console(stderr=True)
Pair = tuple[str, str]


def settings(task: str, lengths: list[int], repeats: list[int], items: list[int]) -> list[dict]:
    """One dict per test setting: {"length": L}, {"length": L, "repeats": n} or {"items": k}."""
    if task == "copy":
        return [{"length": n} for n in lengths]
    if task == "repeat_copy":
        return [{"length": n, "repeats": r} for n in lengths for r in repeats]
    return [{"items": k} for k in items]


def test_pairs(task: str, setting: dict, sequences: int, seed: int) -> list[Pair]:
    """`sequences` pairs whose length (repeat count, item count) is exactly the setting's."""
    length = setting.get("length", 1)
    repeats = setting.get("repeats", 1)
    items = setting.get("items", 2)
    return generate(task, sequences, seed, (length, length), (repeats, repeats), (items, items))


def check_inputs(translator: Translator, pairs: list[Pair], ckpt: Path, setting: dict) -> None:
    """Fail with one clear line where the model cannot read a source at all."""
    tokenizer = translator.engine.src_tokenizer
    longest = max(len(ids) for ids in tokenizer.encode_batch([s for s, _ in pairs]))
    if longest > translator.engine.max_input_tokens:
        sys.exit(
            f"{ckpt}: {describe(setting)} makes {longest}-token sources, more than the "
            f"model's max_len of {translator.engine.max_input_tokens}; drop that setting or train "
            "with a larger model.max_len"
        )
    words = sorted({w for s, _ in pairs for w in s.split()})
    unknown = [w for w in words if tokenizer.unk_id in tokenizer.encode(w)]
    if unknown:
        hint = (
            "repeat counts must lie in the training range"
            if all(w.startswith("x") for w in unknown)
            else "was it trained on this task?"
        )
        sys.exit(f"{ckpt}: {', '.join(unknown[:5])} not in the model's vocabulary; {hint}")


def score(translator: Translator, pairs: list[Pair]) -> dict:
    """Greedy-decode the sources; mean bit errors per sequence and exact-match fraction."""
    longest = max(len(t.split()) for _, t in pairs)
    translator.engine.decode = dataclasses.replace(
        translator.engine.decode, max_len_a=0.0, max_len_b=2 * longest + 10
    )
    started = time.perf_counter()
    outputs = translator.translate([s for s, _ in pairs])
    seconds = time.perf_counter() - started
    errors = [bit_errors(out.text, tgt) for out, (_, tgt) in zip(outputs, pairs, strict=True)]
    return {
        "sequences": len(pairs),
        "bit_errors": sum(errors) / len(errors),
        "exact": sum(e == 0 for e in errors) / len(errors),
        "seconds": seconds,
    }


def describe(setting: dict) -> str:
    return ", ".join(f"{key} {value}" for key, value in setting.items())


def run(args: argparse.Namespace) -> list[dict]:
    device = resolve_device(args.device)
    overrides = {"beam": 1, "n_best": 1, "sampling": False}
    grid = settings(args.task, args.lengths, args.repeats, args.items)
    data = [test_pairs(args.task, s, args.sequences, args.seed) for s in grid]
    rows = []
    for ckpt in args.checkpoints:
        translator = load_translator(ckpt, device, overrides)
        console.print(f"{ckpt}: {args.task}, {len(grid)} settings x {args.sequences} sequences")
        for setting, pairs in zip(grid, data, strict=True):
            check_inputs(translator, pairs, ckpt, setting)
        for setting, pairs in zip(grid, data, strict=True):
            row = {"checkpoint": str(ckpt), "task": args.task, **setting}
            row.update(score(translator, pairs))
            rows.append(row)
            console.print(
                f"  {describe(setting)}: {row['bit_errors']:.2f} bit errors/seq, "
                f"{row['exact']:.1%} exact"
            )
    return rows


def render(rows: list[dict], task: str, sequences: int) -> Table:
    keys = [k for k in ("length", "repeats", "items") if k in rows[0]]
    table = Table(title=f"{task}: greedy decoding, {sequences} sequences per setting")
    for column in ("checkpoint", *keys, "bit errors/seq", "exact", "seconds"):
        table.add_column(column, justify="left" if column == "checkpoint" else "right")
    for r in rows:
        table.add_row(
            r["checkpoint"],
            *(str(r[k]) for k in keys),
            f"{r['bit_errors']:.2f}",
            f"{r['exact']:.1%}",
            f"{r['seconds']:.2f}",
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", type=Path, nargs="+", metavar="CKPT")
    parser.add_argument("--task", choices=TASKS, default="copy")
    parser.add_argument(
        "--lengths", type=int, nargs="+", default=[10, 20, 30, 40, 60, 80],
        help="sequence lengths (copy, repeat_copy)",
    )  # fmt: skip
    parser.add_argument(
        "--repeats", type=int, nargs="+", default=[10], help="repeat counts (repeat_copy)"
    )
    parser.add_argument(
        "--items", type=int, nargs="+", default=[2, 6, 12], help="item counts (associative_recall)"
    )
    parser.add_argument("--sequences", type=int, default=200, help="test sequences per setting")
    parser.add_argument("--seed", type=int, default=7, help="of the generated test sequences")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON on stdout")
    args = parser.parse_args()
    for name, low in (("lengths", 1), ("repeats", 1), ("items", 2)):
        if min(getattr(args, name)) < low:
            parser.error(f"--{name} must all be >= {low}")
    if args.sequences < 1:
        parser.error("--sequences must be >= 1")
    set_threads(args.threads)
    try:
        with torch.inference_mode():
            rows = run(args)
    except NMTError as exc:
        sys.exit(f"error: {exc}")
    console.print(render(rows, args.task, args.sequences))
    if args.json:
        print(json.dumps({"task": args.task, "seed": args.seed, "rows": rows}))


if __name__ == "__main__":
    main()
