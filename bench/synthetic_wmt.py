"""A corpus with the shapes of WMT14 En-De, for measuring training speed without WMT.

Training speed depends on the batch shapes (sentence lengths) and the vocabulary size, not
on what the words mean. This writes parallel text of pseudo-words whose lengths follow
WMT14 En-De's subword lengths (log-normal, mean ~27, a long tail clipped at 250; the target
~5% longer) and whose word frequencies follow Zipf's law over a 40k-word lexicon, then runs
`nmt preprocess` with a SentencePiece word model of 32k entries: one pseudo-word is one
subword, so the data dir's lengths are the generated ones.

    python bench/synthetic_wmt.py --out bench-work/synthetic-wmt --pairs 200000
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from nmt_cli.config import config_from_dict
from nmt_cli.preprocess import preprocess

LEXICON = 40_000
VOCAB = 32_000
MAX_LENGTH = 250


def wmt_like_lengths(pairs: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Source and target lengths in subwords: mean ~27, a long tail to 250."""
    src = np.clip(rng.lognormal(3.1, 0.6, pairs), 1, MAX_LENGTH).astype(np.int64)
    tgt = np.clip(src * rng.normal(1.05, 0.15, pairs), 1, MAX_LENGTH).astype(np.int64)
    return src, tgt


def pseudo_words(count: int) -> list[str]:
    """Distinct lower-case words: a, b, ..., z, ba, bb, ..."""
    words = []
    for i in range(count):
        word = ""
        while True:
            word = chr(ord("a") + i % 26) + word
            i //= 26
            if i == 0:
                break
        words.append(word)
    return words


def write_corpus(folder: Path, pairs: int, seed: int = 0) -> dict:
    """`train.{en,de}` (and a 1,000-pair `valid`) of Zipf-distributed pseudo-words; returns
    the recipe that preprocesses them."""
    rng = np.random.default_rng(seed)
    lexicon = np.array(pseudo_words(LEXICON), dtype=object)
    zipf = 1.0 / (np.arange(LEXICON) + 10.0)
    zipf /= zipf.sum()
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", pairs), ("valid", 1000)):
        for side, lengths in zip(("en", "de"), wmt_like_lengths(count, rng), strict=True):
            words = lexicon[rng.choice(LEXICON, size=int(lengths.sum()), p=zipf)]
            ends = np.cumsum(lengths)
            lines = (" ".join(words[end - n : end]) for n, end in zip(lengths, ends, strict=True))
            (folder / f"{split}.{side}").write_text("".join(line + "\n" for line in lines))
    split = lambda name: {"src": str(folder / f"{name}.en"), "tgt": str(folder / f"{name}.de")}  # noqa: E731
    return {
        "data": {"src_lang": "en", "tgt_lang": "de", "train": [split("train")],
                 "valid": [split("valid")]},
        "tokenizer": {"model_type": "word", "vocab_size": VOCAB, "joint": True},
    }  # fmt: skip


def synthetic_wmt(work: Path, pairs: int) -> Path:
    """A preprocessed data dir of `pairs` WMT-shaped pairs under `work`, made once."""
    data_dir = work / f"synthetic-wmt-{pairs}"
    if not (data_dir / "manifest.json").exists():
        recipe = write_corpus(work / f"synthetic-wmt-{pairs}-text", pairs)
        preprocess(config_from_dict(recipe), data_dir, show_progress=False)
    return data_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-work"))
    parser.add_argument("--pairs", type=int, default=200_000)
    args = parser.parse_args()
    print(synthetic_wmt(args.out, args.pairs))


if __name__ == "__main__":
    main()
