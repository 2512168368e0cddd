"""Attention heatmaps (what each output token looked at in the source) and NTM memory plots.

Figures are drawn on the Agg canvas directly (`matplotlib.figure.Figure` + `FigureCanvasAgg`)
rather than through pyplot, so plotting needs no display, keeps no global figure registry that
could leak memory over a long training run, and does not switch the backend of a notebook that
imports this module. Files are written through `outputs.open_output`: a crash mid-save never
leaves a half PNG.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from nmt_cli.outputs import NOTHING_WRITTEN, open_output, write_error

DPI = 150
_INCHES_PER_TOKEN = 0.32
_MAX_INCHES = 40.0

Example = tuple[np.ndarray, Sequence[str], Sequence[str]]  # weights [T_out, S_in], src, out


def _visible(token: str) -> str:
    """Show whitespace as glyphs, so a space token is a labelled tick, not a blank one."""
    if token == "":
        return "∅"
    return token.replace(" ", "␣").replace("\t", "⇥").replace("\n", "↵")


def _checked(
    weights: np.ndarray, src_tokens: Sequence[str], out_tokens: Sequence[str]
) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError(f"attention weights must be 2-D [T_out, S_in], got shape {w.shape}")
    expected = (len(out_tokens), len(src_tokens))
    if w.shape != expected:
        raise ValueError(
            f"attention weights have shape {w.shape} but there are {expected[0]} output tokens "
            f"and {expected[1]} source tokens (expected {expected})"
        )
    if w.size == 0:
        raise ValueError("attention weights are empty: no source or no output tokens")
    return w


def _norm(arrays: Sequence[np.ndarray]) -> Normalize:
    """Probabilities get a fixed 0..1 scale so maps are comparable; other values (memory) don't."""
    lo = min(float(np.nanmin(a)) for a in arrays)
    hi = max(float(np.nanmax(a)) for a in arrays)
    if lo >= 0.0 and hi <= 1.0:
        return Normalize(vmin=0.0, vmax=1.0)
    return Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1.0)


def _draw(
    ax: Axes,
    weights: np.ndarray,
    src_tokens: Sequence[str],
    out_tokens: Sequence[str],
    norm: Normalize,
    title: str | None,
):
    T, S = weights.shape
    image = ax.imshow(weights, aspect="auto", cmap="viridis", norm=norm, interpolation="nearest")
    ax.set_xticks(range(S), [_visible(t) for t in src_tokens], rotation=90, fontsize=8)
    ax.set_yticks(range(T), [_visible(t) for t in out_tokens], fontsize=8)
    ax.set_xlabel("source")
    ax.set_ylabel("output")
    if title:
        ax.set_title(title)
    return image


def _save(fig: Figure, path: str | PathLike[str]) -> Path:
    """Render in memory (a figure is small), then write it with `outputs.open_output`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(path, exc, NOTHING_WRITTEN) from None
    fmt = path.suffix.lstrip(".").lower() or "png"
    FigureCanvasAgg(fig)
    image = io.BytesIO()
    fig.savefig(image, format=fmt, dpi=DPI, bbox_inches="tight")
    with open_output(path, binary=True) as out:
        out.write(image.getvalue())
    return path


def _panel_size(weights: np.ndarray) -> tuple[float, float]:
    T, S = weights.shape
    width = min(_MAX_INCHES, max(4.0, _INCHES_PER_TOKEN * S + 2.0))
    height = min(_MAX_INCHES, max(3.0, _INCHES_PER_TOKEN * T + 1.5))
    return width, height


def save_attention_heatmap(
    weights: np.ndarray,
    src_tokens: Sequence[str],
    out_tokens: Sequence[str],
    path: str | PathLike[str],
    title: str | None = None,
) -> Path:
    """Save one attention map: row t is output token t's distribution over source tokens.

    `weights` is [T_out, S_in] (anything `np.asarray` accepts, e.g. a CPU tensor); a shape that
    does not match the token lists raises ValueError. Returns the written path.
    """
    w = _checked(weights, src_tokens, out_tokens)
    fig = Figure(figsize=_panel_size(w), layout="constrained")
    ax = fig.add_subplot()
    image = _draw(ax, w, src_tokens, out_tokens, _norm([w]), title)
    fig.colorbar(image, ax=ax, label="attention weight")
    return _save(fig, path)


def save_attention_grid(
    examples: Sequence[Example],
    path: str | PathLike[str],
    cols: int = 2,
    titles: Sequence[str] | None = None,
) -> Path:
    """Save several attention maps in one figure, `cols` per row, sharing one colour scale.

    Each example is (weights [T_out, S_in], src_tokens, out_tokens), checked as in
    `save_attention_heatmap`. Returns the written path.
    """
    if not examples:
        raise ValueError("no examples to plot")
    if cols < 1:
        raise ValueError(f"cols must be at least 1, got {cols}")
    if titles is not None and len(titles) != len(examples):
        raise ValueError(f"{len(titles)} titles for {len(examples)} examples")
    arrays = [_checked(w, src, out) for w, src, out in examples]
    cols = min(cols, len(arrays))
    rows = math.ceil(len(arrays) / cols)
    panel_w = max(_panel_size(w)[0] for w in arrays)
    panel_h = max(_panel_size(w)[1] for w in arrays)
    fig = Figure(
        figsize=(min(_MAX_INCHES, panel_w * cols + 1.0), min(_MAX_INCHES, panel_h * rows)),
        layout="constrained",
    )
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    norm = _norm(arrays)
    image = None
    for i, (w, (_, src, out)) in enumerate(zip(arrays, examples, strict=True)):
        title = titles[i] if titles is not None else None
        image = _draw(axes[i], w, src, out, norm, title)
    for ax in axes[len(arrays) :]:
        ax.set_axis_off()
    fig.colorbar(image, ax=list(axes), label="attention weight")
    return _save(fig, path)


def save_memory_plot(
    write_weights: np.ndarray,
    read_weights: np.ndarray,
    step_tokens: Sequence[str],
    source_steps: int,
    path: str | PathLike[str],
) -> Path:
    """Save an NTM's write and read weightings over time, as in Graves et al. 2014, fig. 6.

    `write_weights` and `read_weights` are [T, N] (steps x memory slots, heads summed);
    `step_tokens` names each step's input. A dashed line marks where the source ends and the
    output begins. Only the slots that were used (weight > 5%) are drawn, with one slot of
    margin, so a 128-slot memory copying 20 items shows the 20 slots that matter.
    """
    w, r = np.asarray(write_weights, np.float32), np.asarray(read_weights, np.float32)
    if w.ndim != 2 or w.shape != r.shape or w.shape[0] != len(step_tokens):
        raise ValueError(
            f"write {w.shape} and read {r.shape} weightings must both be [T, N] with "
            f"T = {len(step_tokens)} steps"
        )
    used = np.flatnonzero(np.maximum(w, r).max(0) > 0.05)
    first, last = (int(used[0]), int(used[-1])) if used.size else (0, w.shape[1] - 1)
    first, last = max(0, first - 1), min(w.shape[1] - 1, last + 1)
    T, rows = w.shape[0], last - first + 1
    size = (min(12.0, max(4.0, 0.15 * T + 2.0)), min(9.0, max(3.0, 0.08 * rows + 1.5)))
    fig = Figure(figsize=(size[0] * 2, size[1]), layout="constrained")
    axes = fig.subplots(1, 2)
    image = None
    for ax, weights, title in ((axes[0], w, "write weightings"), (axes[1], r, "read weightings")):
        image = ax.imshow(
            weights[:, first : last + 1].T,
            aspect="auto",
            cmap="gray",
            vmin=0.0,
            vmax=1.0,
            interpolation="nearest",
            extent=(-0.5, T - 0.5, last + 0.5, first - 0.5),
        )
        ax.axvline(source_steps - 0.5, color="tab:red", linestyle="--", linewidth=1)
        ax.set_xticks(range(T), [_visible(t) for t in step_tokens], rotation=90, fontsize=6)
        ax.set_xlabel("time step (input token)")
        ax.set_ylabel("memory location")
        ax.set_title(title)
    fig.colorbar(image, ax=list(axes), label="weight")
    return _save(fig, path)
