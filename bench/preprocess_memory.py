"""Peak memory of `nmt preprocess` on a generated WMT-sized corpus (target: < 2 GB RSS).

Generates N sentence pairs (default 2,000,000) of Zipf-distributed words from two made-up
vocabularies, 3-40 words per sentence, as gzipped parallel files, written block by block so
generation itself stays small. Then runs `/usr/bin/time -v nmt preprocess RECIPE --out DIR`
and prints pairs, wall seconds and peak resident memory. Memory, not speed, is the point:
preprocess streams the corpus, so peak RSS should not grow with N beyond the tokenizer's
`sample_size` sentences.

    python bench/preprocess_memory.py --pairs 200000
"""

from __future__ import annotations

import argparse
import gzip
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

TARGET_BYTES = 2 * 1024**3
BLOCK = 10_000
SYLLABLES = "ka ri to mu ne sa lo pe di fu ga hi jo ku ma no ra se ti vu we ya zo".split()


def make_vocab(rng: np.random.Generator, size: int) -> np.ndarray:
    """`size` distinct pseudo-words of 1-4 syllables, as an object array for fast indexing."""
    words: set[str] = set()
    while len(words) < size:
        n = int(rng.integers(1, 5))
        words.add("".join(SYLLABLES[i] for i in rng.integers(0, len(SYLLABLES), n)))
    return np.array(sorted(words), dtype=object)


def zipf_ids(rng: np.random.Generator, vocab_size: int, count: int) -> np.ndarray:
    """Word ids with a Zipf(1.1)-like rank distribution, as in natural text."""
    ranks = np.arange(1, vocab_size + 1, dtype=np.float64)
    probs = ranks**-1.1
    return rng.choice(vocab_size, size=count, p=probs / probs.sum())


def write_corpus(
    prefix: Path, pairs: int, rng: np.random.Generator, vocabs: tuple[np.ndarray, np.ndarray]
) -> None:
    """`{prefix}.xx.gz` and `{prefix}.yy.gz`, line-aligned, generated `BLOCK` pairs at a time."""
    src_vocab, tgt_vocab = vocabs
    with (
        gzip.open(f"{prefix}.xx.gz", "wt", encoding="utf-8", compresslevel=1) as src_out,
        gzip.open(f"{prefix}.yy.gz", "wt", encoding="utf-8", compresslevel=1) as tgt_out,
    ):
        for start in range(0, pairs, BLOCK):
            n = min(BLOCK, pairs - start)
            src_len = rng.integers(3, 41, n)
            tgt_len = np.clip(src_len + rng.integers(-3, 4, n), 3, 40)
            for lengths, vocab, out in (
                (src_len, src_vocab, src_out),
                (tgt_len, tgt_vocab, tgt_out),
            ):
                words = vocab[zipf_ids(rng, len(vocab), int(lengths.sum()))]
                ends = np.cumsum(lengths)
                lines = (" ".join(words[e - k : e]) for e, k in zip(ends, lengths, strict=True))
                out.write("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2_000_000)
    parser.add_argument("--dir", type=Path, help="work dir (default: a temp dir, removed after)")
    parser.add_argument("--vocab-size", type=int, default=8000, help="sentencepiece vocab")
    parser.add_argument("--words", type=int, default=5000, help="generated words per language")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    if shutil.which("/usr/bin/time") is None:
        sys.exit("needs GNU time at /usr/bin/time (apt-get install -y time)")
    root = args.dir or Path(tempfile.mkdtemp(prefix="nmt-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        started = time.perf_counter()
        rng = np.random.default_rng(args.seed)
        vocabs = make_vocab(rng, args.words), make_vocab(rng, args.words)
        write_corpus(root / "train", args.pairs, rng, vocabs)
        write_corpus(root / "valid", 1000, rng, vocabs)
        print(
            f"generated {args.pairs} pairs in {time.perf_counter() - started:.0f}s", file=sys.stderr
        )

        recipe = {
            "data": {
                "src_lang": "xx",
                "tgt_lang": "yy",
                "train": [{"src": str(root / "train.xx.gz"), "tgt": str(root / "train.yy.gz")}],
                "valid": [{"src": str(root / "valid.xx.gz"), "tgt": str(root / "valid.yy.gz")}],
            },
            "tokenizer": {"vocab_size": args.vocab_size},
        }
        (root / "recipe.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
        stats = root / "time.txt"
        command = ["/usr/bin/time", "-v", "-o", str(stats), "nmt", "preprocess"]
        command += [str(root / "recipe.yaml"), "--out", str(root / "data")]
        started = time.perf_counter()
        code = subprocess.run(command).returncode
        wall = time.perf_counter() - started
        if code != 0:
            print(f"nmt preprocess failed with exit code {code}", file=sys.stderr)
            return code
        match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stats.read_text())
        if match is None:
            print(f"no peak RSS in /usr/bin/time output:\n{stats.read_text()}", file=sys.stderr)
            return 1
        rss = int(match.group(1)) * 1024
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)

    verdict = "PASS" if rss < TARGET_BYTES else "FAIL"
    print(f"pairs        {args.pairs}")
    print(f"wall_seconds {wall:.1f}")
    print(f"peak_rss     {rss / 1024**2:.0f} MiB")
    print("target       < 2 GB")
    print(f"result       {verdict}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
