"""Transformer training throughput on a GPU: target tokens/s and model FLOPs utilisation.

Trains the Transformer (preset `base` by default: 6+6 layers, d_model 512, FFN 2048) with
`nmt_cli.train.train`, the function behind `nmt train`, for a fixed number of updates on a
preprocessed data dir, and reports the mean of the logging intervals after the first
`--skip` (start-up, cuDNN/cuBLAS autotuning and torch.compile happen there):

- target tok/s: real target tokens (+ EOS) per second, as `nmt train` logs them;
- TFLOP/s and MFU: model FLOPs (`nmt_cli/models/flops.py`: the matrix products the model
  needs for the real tokens, forward and backward) per second, over the GPU's dense bf16
  peak (989 TFLOP/s for an H100 SXM or H200; `--peak-tflops` for other cards). FLOPs per
  target token are those of the whole training split, whose batches the run draws;
- peak GPU memory (`torch.cuda.max_memory_allocated`).

    nmt preprocess recipes/multi30k-de-en-transformer.yaml --out data-bin/multi30k-de-en
    python bench/train_mfu.py --data data-bin/multi30k-de-en --batch-tokens 25000
    python bench/train_mfu.py --data data-bin/multi30k-de-en --batch-tokens 25000 --compile

`--profile FILE` also writes PyTorch's profiler table (GPU time per operator) for 5 updates.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from nmt_cli.config import config_from_dict
from nmt_cli.data.shards import ShardReader, read_manifest
from nmt_cli.models.flops import transformer_training_flops
from nmt_cli.train import train

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, by device name.
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4, "A100": 312.0}


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

    def on_step(step: int, loss: float) -> None:
        profiler.step()
        if step == 20 + steps:
            profiler.stop()

    return on_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a data dir from nmt preprocess")
    parser.add_argument(
        "--device", default="cuda", help="cuda, cuda:N, or cpu (with --peak-tflops)"
    )
    parser.add_argument("--preset", default="base", choices=("small", "base", "big"))
    parser.add_argument("--batch-tokens", type=int, default=25000)
    parser.add_argument("--accum-steps", type=int, default=1)
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp16", "fp32"))
    parser.add_argument("--compile", action="store_true", help="train.compile: torch.compile")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--skip", type=int, default=1, help="first logging intervals left out")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense peak, if not known")
    parser.add_argument("--profile", type=Path, help="write the profiler's operator table here")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    on_gpu = args.device.startswith("cuda")
    if on_gpu and not torch.cuda.is_available():
        parser.error("no CUDA device is visible; use --device cpu with --peak-tflops")
    device_name = torch.cuda.get_device_name(args.device) if on_gpu else "CPU"
    peak = args.peak_tflops or peak_tflops(device_name)
    if peak is None:
        parser.error(f"no known bf16 peak for {device_name}; pass --peak-tflops")
    cfg = config_from_dict(recipe(args))
    per_token = flops_per_target_token(cfg, args.data)
    on_step = profiled(5, args.profile, on_gpu) if args.profile else None

    if on_gpu:
        torch.cuda.reset_peak_memory_stats(args.device)
    with tempfile.TemporaryDirectory() as run_dir:
        result = train(cfg, args.data, run_dir, device=args.device, show_progress=False,
                       on_step=on_step)  # fmt: skip
        lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    logged = [json.loads(line) for line in lines]
    rates = [r["tok_per_s"] for r in logged if "tok_per_s" in r][args.skip :]
    if not rates:
        parser.error("no logging interval left to measure: raise --steps or lower --skip")
    tokens_per_s = statistics.mean(rates)
    achieved = tokens_per_s * per_token / 1e12
    row = {
        "device": device_name,
        "preset": args.preset,
        "precision": args.precision,
        "compile": args.compile,
        "batch_tokens": args.batch_tokens,
        "accum_steps": args.accum_steps,
        "updates": result.steps,
        "measured_intervals": len(rates),
        "target_tok_per_s": tokens_per_s,
        "gflops_per_target_token": per_token / 1e9,
        "tflops_per_s": achieved,
        "peak_tflops": peak,
        "mfu": achieved / peak,
        "peak_gpu_memory_gb": torch.cuda.max_memory_allocated(args.device) / 1e9
        if on_gpu
        else None,
        "last_loss": logged[-1].get("loss"),
    }
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
