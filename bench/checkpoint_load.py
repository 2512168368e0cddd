"""What the integrity checks on checkpoint load cost, next to the load itself.

    python bench/checkpoint_load.py [CKPT.pt ...]

Without arguments it builds a Transformer-base checkpoint (about 60M parameters, a 32,000-word
vocabulary) in a temporary directory. For each checkpoint it prints the median over a few runs,
file in the page cache, of: torch.load alone (as `load_checkpoint` calls it, on an open
file); the zip CRC check; the NaN/inf scan of the weights; all payload checks (fields,
tokenizer hashes and parsing, config, weights); and the whole `load_checkpoint`.
"""

from __future__ import annotations

import gc
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import sentencepiece as spm
import torch

from nmt_cli.checkpoint import load_checkpoint, save_checkpoint, tokenizer_entry
from nmt_cli.checkpoint_checks import _check_weights, check_archive, check_payload
from nmt_cli.config import config_from_dict, config_to_dict
from nmt_cli.data.tokenizer import Tokenizer
from nmt_cli.models import build_model

RUNS = 9


def build_base(root: Path) -> Path:
    rng = random.Random(0)
    words = [f"w{i}" for i in range(40_000)]
    text = root / "text.txt"
    text.write_text("".join(" ".join(rng.choices(words, k=12)) + "\n" for _ in range(120_000)))
    spm.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(root / "spm"), model_type="word", vocab_size=32_000,
        pad_id=0, unk_id=1, bos_id=2, eos_id=3, minloglevel=2,
    )  # fmt: skip
    model_bytes = (root / "spm.model").read_bytes()
    vocab = Tokenizer(model_bytes).vocab_size
    cfg = config_from_dict({"model": {"type": "transformer", "preset": "base"}})
    model = build_model(cfg.model, vocab, vocab, True)
    return save_checkpoint(
        root / "base.pt",
        config=config_to_dict(cfg),
        model_state=model.state_dict(),
        tokenizer=tokenizer_entry(model_bytes, model_bytes, True),
        step=1,
        metrics={},
    )


def timed_ms(fn: Callable[[], object]) -> tuple[float, float]:
    """(median, fastest) of RUNS calls; the fastest is the least disturbed by other work."""
    times = []
    for _ in range(RUNS):
        gc.collect()
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), min(times)


def report(path: Path) -> None:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    storages = {t.untyped_storage().data_ptr(): t.numel() for t in payload["model_state"].values()}

    def load() -> None:
        with open(path, "rb") as handle:
            torch.load(handle, map_location="cpu", weights_only=True)

    def crc() -> None:
        with open(path, "rb") as handle:
            check_archive(path, handle)

    figures = {
        "torch.load": timed_ms(load),
        "zip CRC": timed_ms(crc),
        "NaN/inf scan": timed_ms(lambda: _check_weights(path, payload["model_state"])),
        "all payload checks": timed_ms(lambda: check_payload(path, payload)),
        "load_checkpoint": timed_ms(lambda: load_checkpoint(path)),
    }
    base = figures["torch.load"]
    size = path.stat().st_size / 2**20
    print(f"{path} ({sum(storages.values()) / 1e6:.1f}M parameters, {size:.1f} MiB)")
    for name, (median, fastest) in figures.items():
        print(
            f"  {name:20s} median {median:7.1f} ms ({100 * median / base[0]:5.1f}%)  "
            f"fastest {fastest:7.1f} ms ({100 * fastest / base[1]:5.1f}% of torch.load)"
        )


def main() -> None:
    torch.set_num_threads(1)
    if len(sys.argv) > 1:
        for arg in sys.argv[1:]:
            report(Path(arg))
        return
    with tempfile.TemporaryDirectory() as tmp:
        report(build_base(Path(tmp)))


if __name__ == "__main__":
    main()
