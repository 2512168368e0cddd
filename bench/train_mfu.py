"""Transformer training throughput: target tokens/s, model FLOPs utilisation, and what
decides them on a GPU (batch shapes, compilations, the loss's memory, batching time).

Trains the Transformer (preset `base` by default: 6+6 layers, d_model 512, FFN 2048) with
`nmt_cli.train.train`, the function behind `nmt train`, for a number of updates (or
`--seconds`), on a preprocessed data dir or on `--synthetic wmt` (WMT14 En-De's lengths and a
32k vocabulary, see `synthetic_wmt.py`), and reports the logging intervals after the first
`--skip` (start-up and autotuning happen there):

- target tok/s: real target tokens (+ EOS) per second, as `nmt train` logs them: the median
  of the logging intervals (one in which torch.compile met a new shape is an outlier);
- TFLOP/s and MFU: model FLOPs (`nmt_cli/models/flops.py`: the matrix products the model
  needs for the real tokens, forward and backward) per second, over the device's dense bf16
  peak (989 TFLOP/s for an H100 SXM or H200; `--peak-tflops` for other devices). FLOPs per
  target token are those of the whole training split, whose batches the run draws;
- distinct batch shapes per epoch (`train.static_shapes` bounds them), the graphs
  torch.compile built during the run (`--compile`: one per shape), and the median tok/s of
  the intervals that compiled nothing new (what a long run sees once every shape is);
- the loss's peak memory on `--loss-tokens` x the data's vocabulary bf16 logits (as
  autocast makes them), forward and backward, beside PyTorch's `F.cross_entropy` on the
  fp32 copy (what nmt_cli used before): the growth of the peak resident memory of a fresh
  process beyond the logits;
- the time to cut 4.5M WMT-like pairs into batches, and to deal an epoch's pairs into them;
- peak GPU memory (`torch.cuda.max_memory_allocated`).

    python bench/train_mfu.py --synthetic wmt --batch-tokens 25000 --compile --static-shapes
    python bench/train_mfu.py --synthetic wmt --device cpu --preset small --batch-tokens 2000 \\
        --steps 12 --log-every 4

`--profile FILE` also writes PyTorch's profiler table (time per operator) for 5 updates.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from synthetic_wmt import synthetic_wmt, wmt_like_lengths
from torch._dynamo.utils import counters

from nmt_cli.config import config_from_dict
from nmt_cli.data.batching import plan_batches
from nmt_cli.data.shards import ShardReader, read_manifest
from nmt_cli.models.flops import transformer_training_flops
from nmt_cli.train import train

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, by device name.
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4, "A100": 312.0}
WMT14_PAIRS = 4_500_000


def peak_tflops(device_name: str) -> float | None:
    """The first table entry contained in the device's name (`H100 PCIe` before `H100`)."""
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in device_name), None)


def flops_per_target_token(cfg, data_dir: Path) -> float:
    """Model FLOPs of training on the whole training split, per target token (+ EOS)."""
    reader = ShardReader(data_dir, "train")
    vocab = read_manifest(data_dir)["tokenizer"]["vocab_size"]["tgt"]
    src_positions, tgt_positions = reader.src_lengths + 1, reader.tgt_lengths + 1
    total = transformer_training_flops(cfg.model, vocab, src_positions, tgt_positions)
    return total / float(np.sum(tgt_positions))


def recipe(args: argparse.Namespace) -> dict:
    return {
        "model": {"type": "transformer", "preset": args.preset},
        "train": {
            "batch_tokens": args.batch_tokens,
            "accum_steps": args.accum_steps,
            "max_steps": args.steps,
            "max_seconds": args.seconds,
            "log_every": args.log_every,
            "valid_every": 0,
            "keep_last": 1,
            "lr": 7e-4,
            "betas": [0.9, 0.98],
            "warmup_steps": 4000,
            "label_smoothing": 0.1,
            "clip_norm": 0.0,
            "precision": args.precision,
            "compile": args.compile,
            "static_shapes": args.static_shapes,
        },
    }


def profiled(steps: int, out: Path, on_gpu: bool):
    """An `on_step` callback that profiles `steps` updates after 20 and writes the table."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if on_gpu:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    sort_by = "self_cuda_time_total" if on_gpu else "self_cpu_time_total"
    profiler = torch.profiler.profile(
        activities=activities,
        schedule=torch.profiler.schedule(wait=19, warmup=1, active=steps, repeat=1),
        on_trace_ready=lambda p: out.write_text(
            p.key_averages().table(sort_by=sort_by, row_limit=40)
        ),
    )
    profiler.start()

    def on_step(step: int) -> None:
        profiler.step()
        if step == 20 + steps:
            profiler.stop()

    return on_step


# Run in a fresh process so that its peak resident memory is the loss's alone.
LOSS_PEAK_SCRIPT = """
import resource, sys, torch, torch.nn.functional as F
from nmt_cli.loss import smoothed_cross_entropy
tokens, vocab, which = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
torch.manual_seed(0)
logits = torch.randn(tokens, vocab, dtype=torch.bfloat16).requires_grad_()
target = torch.randint(4, vocab, (tokens,))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if which == "ours":
    loss = smoothed_cross_entropy(logits, target, smoothing=0.1, ignore_index=1)
else:
    loss = F.cross_entropy(logits.float(), target, ignore_index=1, label_smoothing=0.1,
                           reduction="sum")
loss.backward()
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 2**20)
"""


def loss_peak_gb(tokens: int, vocab: int, which: str) -> float:
    """GiB the loss's forward and backward add to a process holding bf16 logits (the
    gradient, of the logits' size, included)."""
    done = subprocess.run([sys.executable, "-c", LOSS_PEAK_SCRIPT, str(tokens), str(vocab), which],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return float(done.stdout)


def batch_shapes(plan, reader: ShardReader) -> set[tuple[int, int, int]]:
    """The distinct padded (sentences, source length, target length) of a plan's batches."""
    shapes = set()
    batches, _ = plan.epoch(1, 0)
    for batch, width in zip(batches, plan.widths, strict=True):
        src = max(int(reader.src_lengths[batch].max()) + 1, int(width))
        tgt = max(int(reader.tgt_lengths[batch].max()) + 1, int(width))
        shapes.add((len(batch), src, tgt))
    return shapes


def batching_seconds(batch_tokens: int, static_shapes: bool) -> tuple[float, float]:
    """Seconds to cut 4.5M WMT-like pairs into batches, and to deal one epoch's pairs."""
    src, tgt = wmt_like_lengths(WMT14_PAIRS, np.random.default_rng(0))
    start = time.perf_counter()
    plan = plan_batches(src, tgt, batch_tokens, max_len=256, static_shapes=static_shapes)
    cut = time.perf_counter() - start
    start = time.perf_counter()
    plan.epoch(1, 1)
    return cut, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="a data dir from nmt preprocess")
    source.add_argument("--synthetic", choices=("wmt",), help="WMT14 En-De-shaped pairs")
    parser.add_argument("--pairs", type=int, default=200_000, help="of --synthetic data")
    parser.add_argument("--work", type=Path, default=Path("bench-work"), help="--synthetic's home")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu")
    parser.add_argument("--preset", default="base", choices=("small", "base", "big"))
    parser.add_argument("--batch-tokens", type=int, default=25000)
    parser.add_argument("--accum-steps", type=int, default=1)
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp16", "fp32"))
    parser.add_argument("--compile", action="store_true", help="train.compile: torch.compile")
    parser.add_argument("--static-shapes", action="store_true", help="train.static_shapes")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seconds", type=float, default=0.0, help="stop training after (0: no)")
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--skip", type=int, default=1, help="first logging intervals left out")
    parser.add_argument("--loss-tokens", type=int, default=25000, help="0: skip the loss figure")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense peak, if not known")
    parser.add_argument("--profile", type=Path, help="write the profiler's operator table here")
    parser.add_argument("--keep-run", type=Path, help="train into this run dir and keep it")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    on_gpu = args.device.startswith("cuda")
    if on_gpu and not torch.cuda.is_available():
        parser.error("no CUDA device is visible; use --device cpu")
    device_name = torch.cuda.get_device_name(args.device) if on_gpu else "CPU"
    peak = args.peak_tflops or peak_tflops(device_name)
    data = args.data or synthetic_wmt(args.work, args.pairs)
    cfg = config_from_dict(recipe(args))
    per_token = flops_per_target_token(cfg, data)
    reader = ShardReader(data, "train")
    plan = plan_batches(reader.src_lengths, reader.tgt_lengths, args.batch_tokens,
                        max_len=cfg.model.max_len, static_shapes=args.static_shapes)  # fmt: skip
    graphs_after: dict[int, int] = {}  # torch.compile's graphs after each update

    def on_step(step: int) -> None:
        graphs_after[step] = counters["stats"]["unique_graphs"]
        if profile is not None:
            profile(step)

    profile = profiled(5, args.profile, on_gpu) if args.profile else None

    if on_gpu:
        torch.cuda.reset_peak_memory_stats(args.device)
    counters.clear()
    with tempfile.TemporaryDirectory() as scratch:
        run_dir = args.keep_run or Path(scratch) / "run"
        result = train(cfg, data, run_dir, device=args.device, show_progress=False,
                       on_step=on_step)  # fmt: skip
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    logged = [json.loads(line) for line in lines]
    intervals = [r for r in logged if "tok_per_s" in r][args.skip :]
    rates = [r["tok_per_s"] for r in intervals]

    # An interval in which no new shape was compiled: what a long run sees once all are.
    def compiled_in(r: dict) -> bool:
        return graphs_after.get(r["step"]) != graphs_after.get(r["step"] - args.log_every)

    steady = [r["tok_per_s"] for r in intervals if not compiled_in(r)]
    if not rates:
        parser.error("no logging interval left to measure: raise --steps or lower --skip")
    tokens_per_s = statistics.median(rates)  # an interval that compiled a shape is an outlier
    achieved = tokens_per_s * per_token / 1e12
    vocab = read_manifest(data)["tokenizer"]["vocab_size"]["tgt"]
    cut_s, order_s = batching_seconds(args.batch_tokens, args.static_shapes)
    row = {
        "device": device_name,
        "threads": torch.get_num_threads(),
        "data": str(data),
        "preset": args.preset,
        "precision": args.precision,
        "compile": args.compile,
        "static_shapes": args.static_shapes,
        "batch_tokens": args.batch_tokens,
        "accum_steps": args.accum_steps,
        "updates": result.steps,
        "measured_intervals": len(rates),
        "target_tok_per_s": tokens_per_s,
        "tok_per_s_intervals": rates,
        "steady_tok_per_s": statistics.median(steady) if steady else None,
        "gflops_per_target_token": per_token / 1e9,
        "tflops_per_s": achieved,
        "peak_tflops": peak,
        "mfu": achieved / peak if peak else None,
        "batches_per_epoch": len(plan),
        "distinct_shapes_per_epoch": len(batch_shapes(plan, reader)),
        "compiled_graphs": counters["stats"]["unique_graphs"],
        "batching_4.5M_pairs_s": cut_s,
        "epoch_deal_4.5M_pairs_s": order_s,
        "peak_gpu_memory_gb": torch.cuda.max_memory_allocated(args.device) / 1e9
        if on_gpu
        else None,
        "last_loss": logged[-1].get("loss"),
    }
    if args.loss_tokens:
        for which in ("ours", "pytorch"):
            row[f"loss_peak_gib_{args.loss_tokens}x{vocab}_{which}"] = loss_peak_gb(
                args.loss_tokens, vocab, which
            )
    row["max_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if args.json:
        print(json.dumps(row))
        return
    table = Table(title=f"Transformer-{args.preset} training on {device_name}")
    table.add_column("setting")
    table.add_column("value", justify="right")
    for key, value in row.items():
        table.add_row(key, f"{value:,.3f}" if isinstance(value, float) else str(value))
    Console().print(table)


if __name__ == "__main__":
    main()
