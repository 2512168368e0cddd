import warnings

import numpy as np
import pytest

from nmt_cli.plots import save_attention_grid, save_attention_heatmap

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _example(t: int, s: int, seed: int = 0):
    w = np.random.default_rng(seed).random((t, s))
    return w / w.sum(axis=1, keepdims=True)


def test_heatmap_writes_png(tmp_path):
    src = ["▁sep", "▁27", " ", "1994", "</s>"]
    out = ["1", "9", "9", "4", "-", "0", "9"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. a missing glyph for the visible-space marker
        path = save_attention_heatmap(_example(7, 5), src, out, tmp_path / "a" / "att.png", "demo")
    assert path == tmp_path / "a" / "att.png"
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert [p.name for p in path.parent.iterdir()] == ["att.png"]  # no temp file left


def test_heatmap_rejects_mismatched_shape(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        save_attention_heatmap(_example(3, 4), ["a", "b", "c"], ["x", "y", "z"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="2-D"):
        save_attention_heatmap(np.ones(3), ["a", "b", "c"], ["x"], tmp_path / "x.png")
    assert not list(tmp_path.iterdir())


def test_grid_writes_png(tmp_path):
    examples = [(_example(3, 4, seed=i), list("abcd"), list("xyz")) for i in range(3)]
    path = save_attention_grid(examples, tmp_path / "grid.png", cols=2)
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_grid_rejects_mismatched_shape(tmp_path):
    examples = [
        (_example(3, 4), list("abcd"), list("xyz")),
        (_example(2, 2), list("ab"), list("x")),
    ]
    with pytest.raises(ValueError, match="shape"):
        save_attention_grid(examples, tmp_path / "grid.png")
