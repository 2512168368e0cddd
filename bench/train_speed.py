"""Training speed and memory of `nmt train` on Multi30k De->En, side by side with a peer.

The protocol is PEERS.md's: joint SentencePiece unigram 8k, Transformer 3+3 layers, d_model
256, 4 heads, FFN 1024, dropout 0.1, tied embeddings, label smoothing 0.1, Adam (0.9, 0.98),
linear warm-up over 500 updates to 1e-3 then inverse-sqrt, ~4,096-token batches (padded
max(source, target) length x sentences, as fairseq's --max-tokens), OMP_NUM_THREADS=2,
seed 1, a fixed training budget (default 360 s, or --steps N updates for nmt_cli alone).
After training, both decode test_2016_flickr with beam 5 and report sacreBLEU.

Speed is real target tokens per second (fairseq's `wps`), the mean over logging intervals
after the first, which holds start-up; peak memory is the training process's maximum RSS
(`/usr/bin/time -v`; with `--nproc 2`, the largest of the processes). `--nproc 2` trains
with two DDP processes of one thread each on half of every batch (the same batch per
update), which uses two cores better than one process with two threads. `--peer fairseq`
builds fairseq's venv with the workarounds in `../shared/peers/` (once, cached under --work)
and trains it in the same run.

    python bench/train_speed.py --peer fairseq [--nproc 2]
    python bench/train_speed.py --steps 200            # nmt_cli alone, fixed number of updates
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from rich.console import Console
from rich.table import Table

from nmt_cli.runtime import resolve_precision

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
PEER_SCRIPTS = {"fairseq": "run_fairseq.sh"}
THREADS = 2
LOG_EVERY = 20  # fairseq's --log-interval in the peer script

console = Console(stderr=True)


def protocol_recipe(data: Path, precision: str, seconds: float, steps: int, nproc: int) -> dict:
    """The protocol's settings; `nproc` processes split the cores and each batch between them."""
    split = lambda name: {"src": str(data / f"{name}.de.gz"), "tgt": str(data / f"{name}.en.gz")}  # noqa: E731
    return {
        "data": {
            "src_lang": "de",
            "tgt_lang": "en",
            "train": [split("train")],
            "test": [split("test_2016_flickr")],
        },  # fmt: skip
        "tokenizer": {"model_type": "unigram", "vocab_size": 8000, "joint": True},
        "model": {
            "type": "transformer",
            "d_model": 256,
            "heads": 4,
            "ff_dim": 1024,
            "enc_layers": 3,
            "dec_layers": 3,
            "norm": "post",
            "dropout": 0.1,
            "attention_dropout": 0.0,
            "activation_dropout": 0.0,
            "tie_embeddings": True,
        },  # fmt: skip
        "train": {
            "seed": 1,
            "batch_tokens": 4096 // nproc,  # per process: the same batch per update
            "lr": 1e-3,
            "betas": [0.9, 0.98],
            "warmup_steps": 500,
            "decay": "inverse_sqrt",
            "label_smoothing": 0.1,
            "clip_norm": 0.0,
            "max_steps": steps or 10**9,
            "max_seconds": seconds,
            "log_every": LOG_EVERY,
            "keep_last": 1,
            "precision": precision,
            "threads": THREADS // nproc,
        },  # fmt: skip
        "decode": {"beam": 5},
    }


def timed(command: list[str], env: dict[str, str], log: Path) -> int:
    """Run under /usr/bin/time -v; return the peak RSS in bytes (the command must succeed)."""
    time_file = log.with_suffix(".time")
    with log.open("w") as out:
        done = subprocess.run(["/usr/bin/time", "-v", "-o", str(time_file), *command],
                              stdout=out, stderr=subprocess.STDOUT, env=env)  # fmt: skip
    if done.returncode != 0:
        sys.exit(f"{' '.join(command[:3])} failed; see {log}")
    peak_kb = re.search(r"Maximum resident set size \(kbytes\): (\d+)", time_file.read_text())
    return int(peak_kb.group(1)) * 1024


def run_ours(work: Path, data: Path, precision: str, seconds: float, steps: int,
             nproc: int) -> dict:  # fmt: skip
    threads = THREADS // nproc
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    recipe = work / "nmt_cli.yaml"
    recipe.write_text(yaml.safe_dump(protocol_recipe(data, precision, seconds, steps, nproc)))
    data_dir, run_dir = work / "nmt_cli-data", work / "nmt_cli-run"
    nmt = [sys.executable, "-m", "nmt_cli"]
    if not (data_dir / "manifest.json").exists():
        console.print("nmt_cli: preprocessing Multi30k")
        subprocess.run([*nmt, "preprocess", str(recipe), "--out", str(data_dir)], check=True,
                       env=env, capture_output=True)  # fmt: skip
    shutil.rmtree(run_dir, ignore_errors=True)
    budget = f"{steps} updates" if steps else f"{seconds:.0f} s"
    console.print(f"nmt_cli: training for {budget} ({precision}, {nproc} x {threads} threads)")
    peak = timed([*nmt, "train", str(recipe), "--data", str(data_dir), "--out", str(run_dir),
                  "--device", "cpu", "--json", "--nproc", str(nproc)], env,
                 work / "nmt_cli-train.log")  # fmt: skip
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tok_per_s"] for r in records if "tok_per_s" in r]
    console.print("nmt_cli: decoding test_2016_flickr, beam 5")
    test = work / "test"
    test.mkdir(exist_ok=True)
    for lang in ("de", "en"):
        (test / f"test.{lang}").write_bytes(
            gzip.decompress((data / f"test_2016_flickr.{lang}.gz").read_bytes())
        )
    scores = subprocess.run([*nmt, "eval", str(run_dir / "last.pt"), "--src", str(test / "test.de"),
                             "--ref", str(test / "test.en"), "--device", "cpu", "--json"],
                            check=True, env=env, capture_output=True, text=True)  # fmt: skip
    return {
        "toolkit": "nmt_cli",
        "precision": resolve_precision(precision, torch.device("cpu")),
        "processes": nproc,
        "threads": threads,
        "updates": records[-1]["step"] if records else 0,
        "tok_per_s": statistics.mean(rates[1:] or rates),
        "peak_rss_gb": peak / 1e9,
        "bleu": json.loads(scores.stdout)["bleu"],
    }


def run_peer(name: str, work: Path, data: Path, seconds: float) -> dict:
    env = {**os.environ, "DATA": str(data), "WORK": str(work / "peers"),
           "TRAIN_SECONDS": str(int(seconds)), "OMP_NUM_THREADS": str(THREADS)}  # fmt: skip
    console.print(f"{name}: building its venv if needed, then training for {seconds:.0f} s (fp32)")
    log = work / f"{name}.log"
    with log.open("w") as out:
        done = subprocess.run(["bash", str(SHARED / "peers" / PEER_SCRIPTS[name])], stdout=out,
                              stderr=subprocess.STDOUT, env=env)  # fmt: skip
    text = log.read_text()
    bleu, peak = re.search(r"BLEU: ([\d.]+)", text), re.search(r"peak RSS \(KB\): (\d+)", text)
    train_log = work / "peers" / name / "train.log"
    rates = [float(m) for m in re.findall(r"\bwps=([\d.]+)", train_log.read_text())]
    updates = re.findall(r"num_updates=(\d+)", train_log.read_text())
    if done.returncode != 0 or not (bleu and peak and rates):
        sys.exit(f"{name} failed; see {log}")
    return {
        "toolkit": name,
        "precision": "fp32",
        "processes": 1,
        "threads": THREADS,
        "updates": int(updates[-1]) if updates else 0,
        "tok_per_s": statistics.mean(rates[1:] or rates),
        "peak_rss_gb": int(peak.group(1)) * 1024 / 1e9,
        "bleu": float(bleu.group(1)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "multi30k")
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "nmt-bench")
    parser.add_argument("--peer", choices=sorted(PEER_SCRIPTS), action="append", default=[])
    parser.add_argument("--seconds", type=float, default=360.0, help="training budget")
    parser.add_argument("--steps", type=int, default=0, help="updates instead of --seconds")
    parser.add_argument("--precision", default="auto", help="nmt_cli's train.precision")
    parser.add_argument(
        "--nproc",
        type=int,
        default=1,
        choices=(1, 2),
        help="nmt_cli's training processes (DDP over gloo), sharing the cores",
    )
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    if args.steps and args.peer:
        parser.error("peers train on a time budget; use --seconds with --peer")
    work, data = args.work.resolve(), args.data.resolve()
    work.mkdir(parents=True, exist_ok=True)
    seconds = 0.0 if args.steps else args.seconds
    rows = [run_ours(work, data, args.precision, seconds, args.steps, args.nproc)]
    rows += [run_peer(name, work, data, args.seconds) for name in args.peer]
    fastest_peer = max((r["tok_per_s"] for r in rows[1:]), default=None)
    ratio = rows[0]["tok_per_s"] / fastest_peer if fastest_peer else None
    if args.json:
        print(json.dumps({"rows": rows, "speed_ratio_vs_fastest_peer": ratio}))
        return
    table = Table(title=f"Multi30k De-En Transformer training ({THREADS} cores, CPU)")
    columns = ("toolkit", "precision", "processes x threads", "updates", "target tok/s",
               "peak RSS GB (per process)", "BLEU")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column == "toolkit" else "right")
    for r in rows:
        table.add_row(r["toolkit"], r["precision"], f"{r['processes']} x {r['threads']}",
                      str(r["updates"]), f"{r['tok_per_s']:,.0f}", f"{r['peak_rss_gb']:.2f}",
                      f"{r['bleu']:.1f}")  # fmt: skip
    Console().print(table)
    if ratio is not None:
        Console().print(f"speed ratio nmt_cli / fastest peer: {ratio:.2f}")


if __name__ == "__main__":
    main()
