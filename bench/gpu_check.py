"""Everything issue 16 claims about GPUs, measured in one run that writes one JSON.

On a GPU machine (`bench/gpu_check.sh`, about 8 minutes on an H200):
- training throughput and MFU of Transformer-base and -big on WMT14-shaped synthetic data
  (`synthetic_wmt.py`: WMT's lengths, a 32k vocabulary), 25k-token batches, bf16, eager
  and compiled with static shapes (`bench/train_mfu.py`; a compiled run stops after a time
  budget, since every new batch shape costs a compilation);
- decoding speed of the base model (as trained by the run above) with our beam search
  (bf16, batches sized for the GPU) against CTranslate2 fp16 on its export, beam 5, on the
  synthetic validation sources.

`--dry-run` does the same on a CPU with a small model, few updates and 20k pairs, to check
the script before a GPU is used for it. Each step runs in its own process with a time limit;
a step that fails or runs out of time is recorded as such and the next one runs.

    python bench/gpu_check.py --out gpu_check.json [--dry-run]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
BEAM = 5

# (name, train_mfu.py arguments, seconds allowed) on a GPU, and small stand-ins on a CPU.
GPU_TRAINING = [
    ("base eager", ["--preset", "base", "--steps", "50", "--log-every", "5"], 60),
    ("base compiled", ["--preset", "base", "--steps", "100000", "--seconds", "100",
                       "--log-every", "5", "--compile", "--static-shapes"], 150),
    ("big eager", ["--preset", "big", "--steps", "40", "--log-every", "5"], 60),
    ("big compiled", ["--preset", "big", "--steps", "100000", "--seconds", "100",
                      "--log-every", "5", "--compile", "--static-shapes"], 150),
]  # fmt: skip
CPU_TRAINING = [
    ("small eager", ["--preset", "small", "--steps", "4", "--log-every", "1"], 300),
    ("small compiled", ["--preset", "small", "--steps", "100000", "--seconds", "60",
                        "--log-every", "1", "--compile", "--static-shapes"], 300),
]  # fmt: skip


def run_step(command: list[str], seconds: float) -> dict:
    """Run one measurement; its last stdout line as JSON, or what went wrong."""
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds)
    except subprocess.TimeoutExpired:
        return {"error": f"out of time after {seconds} s"}
    figures: dict = {"wall_s": round(time.perf_counter() - started, 1)}
    if done.returncode != 0:
        return {**figures, "error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    return {**figures, **json.loads(done.stdout.strip().splitlines()[-1])}


def training(args: argparse.Namespace, work: Path) -> dict:
    device = "cuda" if not args.dry_run else "cpu"
    common = [sys.executable, str(BENCH / "train_mfu.py"), "--synthetic", "wmt", "--work",
              str(work), "--device", device, "--json"]  # fmt: skip
    if args.dry_run:
        common += ["--pairs", "20000", "--batch-tokens", "1000", "--precision", "fp32",
                   "--loss-tokens", "2000", "--skip", "0"]  # fmt: skip
        plan = CPU_TRAINING
    else:
        common += ["--pairs", "200000", "--batch-tokens", "25000", "--precision", "bf16",
                   "--loss-tokens", "0"]  # fmt: skip
        plan = GPU_TRAINING
    shutil.rmtree(work / "base-run", ignore_errors=True)  # else the run would continue it
    results = {}
    for index, (name, extra, seconds) in enumerate(plan):
        keep = ["--keep-run", str(work / "base-run")] if index == 0 else []  # decoded later
        results[name] = run_step([*common, *extra, *keep], seconds)
        print(f"{name}: {results[name]}", file=sys.stderr)
    return results


def decoding(args: argparse.Namespace, work: Path, data: Path) -> dict:
    """Our beam search against CTranslate2 on the same model (fp16 on a GPU)."""
    checkpoint = work / "base-run" / "last.pt"
    if not checkpoint.exists():
        return {"error": "no trained model to decode (the first training step failed)"}
    export = work / "base-ct2"
    subprocess.run([sys.executable, "-m", "nmt_cli", "export", str(checkpoint), "--out",
                    str(export)], check=True, capture_output=True)  # fmt: skip
    sources = work / "decode.en"
    lines = (data / "valid.en").read_text(encoding="utf-8").splitlines()
    sources.write_text("".join(line + "\n" for line in lines[: 200 if args.dry_run else 1000]))
    device = "cpu" if args.dry_run else "cuda"
    worker = [sys.executable, str(BENCH / "decode_speed.py"), "worker", "--src", str(sources),
              "--device", device]  # fmt: skip
    engines = {
        "nmt_cli": [*worker, "--engine", "torch", "--model", str(checkpoint), "--dtype", "auto"],
        "ctranslate2": [*worker, "--engine", "ctranslate2", "--model", str(export),
                        "--compute-type", "default" if args.dry_run else "float16"],
    }  # fmt: skip
    results = {}
    for name, command in engines.items():
        figures = run_step([*command, "--out", str(work / f"decoded-{name}.de")], 300)
        if "decode_s" in figures:
            figures["tok_per_s"] = figures["tokens"] / figures["decode_s"]
        results[name] = figures
        print(f"decode {name}: {figures}", file=sys.stderr)
    ours, theirs = results["nmt_cli"], results["ctranslate2"]
    if "tok_per_s" in ours and "tok_per_s" in theirs:
        results["ours_over_ctranslate2"] = ours["tok_per_s"] / theirs["tok_per_s"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the JSON to write")
    parser.add_argument("--work", type=Path, default=Path("bench-work") / "gpu-check")
    parser.add_argument("--dry-run", action="store_true", help="on a CPU, small sizes")
    args = parser.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device is visible; --dry-run checks the script on a CPU")
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    report = {
        "dry_run": args.dry_run,
        "device": "CPU" if args.dry_run else torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "training": training(args, work),
    }
    pairs = 20000 if args.dry_run else 200000
    report["decoding"] = decoding(args, work, work / f"synthetic-wmt-{pairs}")
    report["seconds"] = round(time.perf_counter() - started, 1)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
