"""What `nmt translate` and `nmt score` print for each input line: text (one line, or n-best
TSV lines), or one JSON object, so that a script reads every field by name."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from nmt_cli.inference.alignment import hard_alignment

if TYPE_CHECKING:  # annotations only: printing needs no torch
    from nmt_cli.inference.scorer import PairScore
    from nmt_cli.inference.translator import Candidate, Translation


def translation_text(index: int, result: Translation, *, n_best: bool, alignment: bool) -> str:
    """One line (or n-best TSV lines) for `result`, each with its own word alignment if asked."""

    def links(candidate: Candidate) -> str:
        if not alignment:
            return ""
        return "\t" + (word_alignment(result, candidate) or "")

    if n_best:
        return "".join(f"{index}\t{c.score:.4f}\t{c.text}{links(c)}\n" for c in result.nbest)
    return f"{result.text}{links(result.nbest[0])}\n"


def translation_json(index: int, result: Translation, *, n_best: bool, alignment: bool) -> str:
    """`--json`: one object per input line (numbered from 1) with the best hypothesis' text,
    score and output subwords, its word alignment if asked, and with --n-best all of them."""

    def hypothesis(candidate: Candidate) -> dict[str, Any]:
        fields = {"text": candidate.text, "score": round(candidate.score, 4)}
        fields["tokens"] = candidate.out_pieces[:-1]  # without the EOS
        if alignment:
            fields["alignment"] = word_alignment(result, candidate)
        return fields

    record = {"line": index + 1, **hypothesis(result.nbest[0])}
    if n_best:
        record["nbest"] = [hypothesis(c) for c in result.nbest]
    return json.dumps(record, ensure_ascii=False) + "\n"


def word_alignment(result: Translation, candidate: Candidate) -> str | None:
    """`i-j` word pairs of one hypothesis; None where there is no attention to read them from
    (an empty line, or a model without attention)."""
    if candidate.attention is None:
        return None
    pieces = (result.src_pieces[:-1], candidate.out_pieces[:-1])
    return hard_alignment(candidate.attention, *pieces)


def score_line(index: int, scored: PairScore, *, per_token: bool, as_json: bool) -> str:
    """One output line for a pair: its score, then its subwords' scores if asked (TSV or
    JSON)."""
    if as_json:
        record = {"line": index + 1, "score": scored.score}
        if per_token:
            record |= {"tokens": scored.tokens, "token_scores": scored.token_scores}
        return json.dumps(record, ensure_ascii=False) + "\n"
    line = f"{scored.score:.4f}"
    if per_token:
        line += "\t" + " ".join(f"{value:.4f}" for value in scored.token_scores)
    return line + "\n"
