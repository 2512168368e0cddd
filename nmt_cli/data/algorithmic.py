"""The algorithmic tasks of the Neural Turing Machine paper (Graves et al. 2014, sec. 4) as text.

The paper feeds its tasks to the network as raw bit vectors. Here each 8-bit vector is one
word, written as two lowercase hex digits ("3f" = 00111111), so the tasks become ordinary
sentence pairs: `nmt preprocess` can build them from a recipe, a word-level SentencePiece
model (`tokenizer.model_type: word`) gives each of the 256 symbols its own token, and every
model family trains and decodes them through the same pipeline as real translation. The
target's end-of-sentence plays the paper's end-of-output role, and the source's plays the
delimiter channel.

The tasks (sec. 4.1, 4.2, 4.3), with `s` a symbol:

  copy                s1 .. sL                          -> s1 .. sL
  repeat_copy         s1 .. sL x{n}                     -> (s1 .. sL) n times
  associative_recall  i1 | i2 | .. | ik ? iq            -> i(q+1)

where an item `i` is 3 symbols, the query `iq` is one of the first k-1 items and the target
is the item after it. The paper gives the repeat count as a scalar on an extra input channel;
here it is one token (`x7`), so the count must be within the range the vocabulary saw.

`bit_errors` scores a hypothesis as the paper does (bits wrong per sequence, Fig. 4 and 7),
extended to outputs of the wrong length: see its docstring.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator

TASKS = ("copy", "repeat_copy", "associative_recall")
SYMBOL_BITS = 8
ITEM_SYMBOLS = 3  # symbols per associative-recall item (the paper uses 3 six-bit vectors)
DELIMITER = "|"  # between associative-recall items
QUERY = "?"  # before the associative-recall query item

_SYMBOL = re.compile(r"[0-9a-f]{2}")

Pair = tuple[str, str]


def symbol(value: int) -> str:
    """An 8-bit vector (0..255) as one word: two lowercase hex digits."""
    return f"{value:02x}"


def repeat_token(n: int) -> str:
    """The source token that asks for `n` repetitions."""
    return f"x{n}"


def random_symbols(rng: random.Random, count: int) -> list[str]:
    """`count` symbols drawn uniformly and independently (repeats allowed, as in the paper)."""
    return [symbol(rng.randrange(1 << SYMBOL_BITS)) for _ in range(count)]


def copy_pair(rng: random.Random, lengths: tuple[int, int]) -> Pair:
    """Copy: `s1 .. sL` -> `s1 .. sL`, L uniform in `lengths` [lo, hi]."""
    seq = " ".join(random_symbols(rng, rng.randint(*lengths)))
    return seq, seq


def repeat_copy_pair(
    rng: random.Random, lengths: tuple[int, int], repeats: tuple[int, int]
) -> Pair:
    """Repeat copy: `s1 .. sL x{n}` -> the L symbols n times, L in `lengths`, n in `repeats`."""
    seq = " ".join(random_symbols(rng, rng.randint(*lengths)))
    n = rng.randint(*repeats)
    return f"{seq} {repeat_token(n)}", " ".join([seq] * n)


def associative_recall_pair(rng: random.Random, items: tuple[int, int]) -> Pair:
    """Associative recall: `i1 | .. | ik ? iq` -> `i(q+1)`, k in `items`, q < k uniform.

    Items are 3 symbols each and distinct within a sequence: a repeated query item could have
    two successors, and the answer would not be unique.
    """
    k = rng.randint(*items)
    seen: set[tuple[str, ...]] = set()
    contents: list[tuple[str, ...]] = []
    while len(contents) < k:  # 256^3 possible items: a clash is rare, a retry cheap
        item = tuple(random_symbols(rng, ITEM_SYMBOLS))
        if item not in seen:
            seen.add(item)
            contents.append(item)
    q = rng.randrange(k - 1)
    words = f" {DELIMITER} ".join(" ".join(item) for item in contents)
    return f"{words} {QUERY} {' '.join(contents[q])}", " ".join(contents[q + 1])


def generate(
    task: str,
    size: int,
    seed: int,
    lengths: tuple[int, int] = (1, 20),
    repeats: tuple[int, int] = (1, 10),
    items: tuple[int, int] = (2, 6),
) -> Iterator[Pair]:
    """`size` (source, target) pairs of `task`, one at a time (`nmt preprocess` reads them so:
    memory stays flat); the same seed gives the same pairs.

    `lengths` bounds the sequence length of copy and repeat_copy, `repeats` the repeat count
    of repeat_copy and `items` the item count of associative_recall (all inclusive, uniform).
    Ranges a task does not use are ignored.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if task == "associative_recall" and items[0] < 2:
        raise ValueError("associative_recall needs at least 2 items (a query and its answer)")
    rng = random.Random(seed)
    for _ in range(size):
        if task == "copy":
            yield copy_pair(rng, lengths)
        elif task == "repeat_copy":
            yield repeat_copy_pair(rng, lengths, repeats)
        else:
            yield associative_recall_pair(rng, items)


def _bits(word: str) -> int | None:
    """The 8-bit vector a word writes, or None if it is not a 2-digit hex symbol."""
    return int(word, 16) if _SYMBOL.fullmatch(word) else None


def bit_errors(hypothesis: str, reference: str) -> int:
    """Bits wrong in `hypothesis` against `reference` (space-separated symbols).

    Position i of each is compared: two symbols cost the Hamming distance of their 8-bit
    vectors (the paper's measure). Outputs of the wrong length have no bits at some positions,
    so this convention charges a whole symbol, 8 bits, for each of them:
      - a hypothesis word that is not a 2-digit hex symbol (`<unk>`, `x3`, `|`): 8,
      - each reference symbol the hypothesis is too short to reach (missing): 8,
      - each hypothesis word past the end of the reference (extra): 8.
    So an empty hypothesis costs 8 x the reference length, and 0 means exactly correct.
    Reference words are assumed to be symbols; a non-symbol one counts 8 unless matched exactly.
    """
    hyp, ref = hypothesis.split(), reference.split()
    errors = SYMBOL_BITS * abs(len(hyp) - len(ref))
    for h, r in zip(hyp, ref, strict=False):
        hb, rb = _bits(h), _bits(r)
        if hb is None or rb is None:
            errors += 0 if h == r else SYMBOL_BITS
        else:
            errors += (hb ^ rb).bit_count()
    return errors
