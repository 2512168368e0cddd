"""Training attention (forward + backward) by kernel, across sentence lengths.

`nmt_cli.models.transformer.scaled_dot_product` chooses between PyTorch's fused attention
kernels and its math path (two batched matrix products around a softmax); this measures
both on the attention a Transformer-base training batch has: `--tokens` positions split into
sentences of one length, 8 heads of 64, bf16, a padding mask over the keys (the encoder's
self-attention and the cross-attention) or a causal one (the decoder's self-attention).
Times are medians over `--repeat` runs, after warm-up.

    python bench/attention_kernels.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch.nn.attention import SDPBackend, sdpa_kernel

KERNELS = {"fused": None, "math": SDPBackend.MATH}


def time_ms(fn, device: torch.device, repeat: int) -> float:
    """Median wall time of fn() in milliseconds, the device synchronised around each run."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def attention_step(length: int, tokens: int, masked: bool, kernel, device: torch.device):
    """A closure running one forward and backward of a batch's attention."""
    batch, heads, head_dim = max(tokens // length, 1), 8, 64
    shape = (batch, heads, length, head_dim)
    q, k, v = (torch.randn(shape, device=device, dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))  # fmt: skip
    mask = None
    if masked:  # every other sentence is a quarter shorter than the longest: padding
        lengths = torch.full((batch,), length, device=device)
        lengths[::2] = max(length * 3 // 4, 1)
        mask = (torch.arange(length, device=device) < lengths[:, None])[:, None, None, :]
    grad = torch.randn(shape, device=device, dtype=torch.bfloat16)

    def run() -> None:
        context = sdpa_kernel(kernel) if kernel is not None else torch.enable_grad()
        with context:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=not masked)
        out.backward(grad)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tokens", type=int, default=20000, help="positions per batch")
    parser.add_argument("--lengths", default="16,24,32,48,64,96,128,192,256")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = []
    for length in map(int, args.lengths.split(",")):
        for masked in (True, False):
            row = {"length": length, "mask": "padding" if masked else "causal"}
            for name, kernel in KERNELS.items():
                step = attention_step(length, args.tokens, masked, kernel, device)
                row[f"{name}_ms"] = time_ms(step, device, args.repeat)
            rows.append(row)
    if args.json:
        print(json.dumps(rows))
        return
    table = Table(title=f"attention forward + backward, {args.tokens} positions, bf16, {device}")
    for column in ("length", "mask", "fused ms", "math ms", "math / fused"):
        table.add_column(column, justify="right")
    for row in rows:
        fused, math = row["fused_ms"], row["math_ms"]
        table.add_row(str(row["length"]), row["mask"], f"{fused:.3f}", f"{math:.3f}",
                      f"{math / fused:.2f}")  # fmt: skip
    Console().print(table)


if __name__ == "__main__":
    main()
