"""Word alignments read from attention, and unknown words replaced through them.

The attention weights of an output subword over the source subwords say where the model
looked while producing it (Bahdanau et al. 2015 show them as alignments). A hard alignment
links each output subword to the source subword it attended to most; subwords are grouped
into words by SentencePiece's word-start marker, so the pairs index the words a user sees:
`i-j` means source word i (in the input line) and output word j (in the translation), both
counted from 0 (the Moses / fast_align convention). End-of-sentence markers are left out, and
so is an output subword that attends most to the source's end-of-sentence marker.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

WORD_START = "\u2581"  # SentencePiece's "▁", the marker of a piece that begins a word


def word_of_each_piece(pieces: list[str]) -> list[int]:
    """The index of the word each piece belongs to."""
    words, index = [], -1
    for piece in pieces:
        if piece.startswith(WORD_START) or index < 0:
            index += 1
        words.append(index)
    return words


def strongest_sources(attention: ArrayLike, n_src: int) -> list[int | None]:
    """attention [T_out, S] -> for each output row, the most attended source piece, or None
    where that is the source EOS or beyond (n_src real pieces): such a row, often a
    function word or punctuation read from the sentence summary, aligns to no word."""
    best = np.asarray(attention).argmax(axis=1).tolist()
    return [i if i < n_src else None for i in best]


def hard_alignment(attention: ArrayLike, src_pieces: list[str], out_pieces: list[str]) -> str:
    """`i-j` word pairs, sorted and unique, for pieces that exclude EOS on both sides."""
    if not src_pieces or not out_pieces:
        return ""
    src_word, out_word = word_of_each_piece(src_pieces), word_of_each_piece(out_pieces)
    best = strongest_sources(attention[: len(out_pieces)], len(src_pieces))
    pairs = sorted({(src_word[i], out_word[j]) for j, i in enumerate(best) if i is not None})
    return " ".join(f"{i}-{j}" for i, j in pairs)


def replace_unknowns(
    out_pieces: list[str],
    attention: ArrayLike,
    src_pieces: list[str],
    src_words: list[str],
    unk_piece: str,
) -> list[str]:
    """Replace each unknown output piece by the source word it attended to most (Luong et al.
    2015's unk replacement): names and numbers the vocabulary lacks are copied through."""
    if unk_piece not in out_pieces or not src_pieces:
        return out_pieces
    src_word = word_of_each_piece(src_pieces)
    best = strongest_sources(attention[: len(out_pieces)], len(src_pieces))
    replaced = list(out_pieces)
    for j, piece in enumerate(out_pieces):
        i = best[j]
        if piece == unk_piece and i is not None and src_word[i] < len(src_words):
            replaced[j] = WORD_START + src_words[src_word[i]]
    return replaced
