"""The Transformer (Vaswani et al. 2017): attention is all the model uses to relate words.

The encoder turns the source into one vector per position through self-attention (every
position looks at every other) and position-wise feed-forward blocks. The decoder does the
same over the words produced so far, masked so that position t sees only positions <= t,
and in each layer also attends to the encoder's vectors (cross-attention), the role that
the attention of the RNN seq2seq plays. Word order enters only through sinusoidal position
encodings added to the embeddings.

Each attention is multi-head: queries, keys and values are projected into `heads` smaller
spaces, attended in parallel (`scaled_dot_product`: PyTorch's fused or math attention,
whichever is faster for the device and the sentence length) and concatenated back.

Incremental decoding keeps, per decoder layer, the keys and values of the words produced so
far (the self-attention cache) and the projected encoder keys and values (computed once per
sentence), so each `step` costs one position rather than the whole prefix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from nmt_cli.config import TransformerModelConfig
from nmt_cli.models.interface import DecoderState, step_log_probs
from nmt_cli.special_ids import PAD


@dataclasses.dataclass
class TransformerMemory:
    states: torch.Tensor  # [B, S, D] encoder output
    mask: torch.Tensor  # [B, S] True on real tokens


@dataclasses.dataclass
class TransformerState(DecoderState):
    """The decoder's cache for R rows (hypotheses) of N sentences, G = R / N rows each.

    Every row of a sentence (its beam) attends to the same encoder keys and values, so they
    are kept once per sentence: reordering a beam moves only the self-attention cache, and
    cross-attention takes a sentence's G rows as G queries against one set of keys.

    Reordering the self-attention cache is deferred to the next step, which copies the
    selected rows straight into the cache one position longer: one copy of the cache per
    step, where selecting and then appending made three.
    """

    # Layer-major: each layer's keys and values are one contiguous block, which the batched
    # matrix products read as they are (a layer slice of [N, L, ...] cost a copy per use).
    self_keys: torch.Tensor  # [L, R0, h, t, d_h] the t words decoded so far
    self_values: torch.Tensor  # [L, R0, h, t, d_h]
    cross_keys: torch.Tensor  # [L, N, h, S, d_h] encoder keys, projected once per sentence
    cross_values: torch.Tensor  # [L, N, h, S, d_h]
    key_mask: torch.Tensor  # [N, 1, 1, S] True on real source tokens
    rows_per_sentence: int = 1  # G: rows r*G .. r*G+G-1 belong to sentence r
    rows: torch.Tensor | None = None  # [R] row r continues cached row rows[r]; None: r itself

    def reorder(
        self,
        index: torch.Tensor,
        *,
        rows_per_sentence: int | None = None,
        sentences: torch.Tensor | None = None,
    ) -> TransformerState:
        """Select rows `index`; sentences follow their rows, copied only when they change
        (see `DecoderState.reorder`: without the grouping, it is found from `index`)."""
        if rows_per_sentence is None:
            rows_per_sentence, sentences = self._grouping(index)
        select = lambda x, dim: x if sentences is None else x.index_select(dim, sentences)  # noqa: E731
        return TransformerState(
            self_keys=self.self_keys,
            self_values=self.self_values,
            cross_keys=select(self.cross_keys, 1),
            cross_values=select(self.cross_values, 1),
            key_mask=select(self.key_mask, 0),
            rows_per_sentence=rows_per_sentence,
            rows=index if self.rows is None else self.rows.index_select(0, index),
        )

    def _grouping(self, index: torch.Tensor) -> tuple[int, torch.Tensor | None]:
        """How the rows `index` group into sentences, read from the index itself."""
        sentence_of_row = index // self.rows_per_sentence
        sentences, counts = torch.unique_consecutive(sentence_of_row, return_counts=True)
        if bool((counts == counts[0]).all()):  # sentence-major, equal groups: a beam
            rows_per_sentence, pick = int(counts[0]), sentences
        else:
            rows_per_sentence, pick = 1, sentence_of_row
        N = self.key_mask.size(0)
        unchanged = pick.numel() == N and torch.equal(pick, torch.arange(N, device=pick.device))
        return rows_per_sentence, None if unchanged else pick

    def grown_cache(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [L, R, h, t + 1, d_h]: the cached t positions of each row, in row
        order, and room for the position the next step adds."""
        L, R0, h, t, d_h = self.self_keys.shape
        R = R0 if self.rows is None else self.rows.numel()
        grown = []
        for cache in (self.self_keys, self.self_values):
            out = cache.new_empty((L, R, h, t + 1, d_h))
            if self.rows is None:
                out[:, :, :, :t] = cache
            else:
                torch.index_select(cache, 1, self.rows, out=out[:, :, :, :t])
            grown.append(out)
        return grown[0], grown[1]


def sinusoidal_positions(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """positions [T] -> encodings [T, dim] (Vaswani sec. 3.5):

    PE(pos, 2i) = sin(pos / 10000^(2i/dim)),  PE(pos, 2i+1) = cos(pos / 10000^(2i/dim)).

    Computed on demand, so any length works and nothing is stored in the checkpoint.
    """
    inv_freq = torch.exp(
        torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32)
        * (-math.log(10000.0) / dim)
    )
    angles = positions.float().unsqueeze(1) * inv_freq  # [T, dim/2]
    return torch.stack([angles.sin(), angles.cos()], dim=2).flatten(1)  # interleaved sin/cos


class MultiHeadAttention(nn.Module):
    """softmax(Q K^T / sqrt(d_h)) V in `heads` subspaces (Vaswani sec. 3.2.2).

    One [3D, D] input projection holds the query, key and value matrices: self-attention
    applies it in one matmul; cross-attention applies the query rows to the decoder and the
    key/value rows to the encoder output. `split_projection` copies those row blocks into
    whole Linear modules for inference, which int8 quantization needs (it replaces modules,
    and cannot slice a quantized weight).
    """

    def __init__(self, d_model: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.d_model, self.dropout = heads, d_model, dropout
        self.in_proj = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.q_proj: nn.Module | None = None  # set by split_projection
        self.kv_proj: nn.Module | None = None

    def split_projection(self) -> None:
        """Copy the query rows and the key/value rows of `in_proj` into Linear modules."""
        D = self.d_model
        weight, bias = self.in_proj.weight.detach(), self.in_proj.bias.detach()
        self.q_proj = nn.Linear(D, D).to(weight.device)
        self.kv_proj = nn.Linear(D, 2 * D).to(weight.device)
        with torch.no_grad():
            self.q_proj.weight.copy_(weight[:D])
            self.q_proj.bias.copy_(bias[:D])
            self.kv_proj.weight.copy_(weight[D:])
            self.kv_proj.bias.copy_(bias[D:])

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, D] -> [B, h, T, d_h]."""
        B, T, _ = x.shape
        return x.view(B, T, self.heads, -1).transpose(1, 2)

    def self_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, T, D] -> q, k, v, each [B, h, T, d_h]."""
        return tuple(self._split(part) for part in self.in_proj(x).chunk(3, dim=-1))

    def query(self, x: torch.Tensor) -> torch.Tensor:
        if self.q_proj is not None:
            return self._split(self.q_proj(x))
        D = self.d_model
        return self._split(F.linear(x, self.in_proj.weight[:D], self.in_proj.bias[:D]))

    def key_value(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """memory [B, S, D] -> k, v [B, h, S, d_h]: done once per sentence when decoding."""
        if self.kv_proj is not None:
            kv = self.kv_proj(memory)
        else:
            D = self.d_model
            kv = F.linear(memory, self.in_proj.weight[D:], self.in_proj.bias[D:])
        return tuple(self._split(part) for part in kv.chunk(2, dim=-1))

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None = None,
        causal: bool = False,
    ) -> torch.Tensor:
        """q [B, h, T, d_h], k/v [B, h, S, d_h], mask [B, 1, 1, S] -> [B, T, D]."""
        dropout = self.dropout if self.training else 0.0
        out = scaled_dot_product(q, k, v, mask, causal, dropout)
        return self.out_proj(out.transpose(1, 2).flatten(2))

    def attend_with_weights(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """As `attend`, also returning the weights averaged over heads [B, T, S]: alignments."""
        weights = attention_weights(q, k, mask)  # [B, h, T, S]
        out = (weights.to(v.dtype) @ v).transpose(1, 2).flatten(2)
        return self.out_proj(out), weights.mean(dim=1)


def attention_weights(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d_h)) over the unmasked keys [B, h, T, S], in fp32."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.size(-1))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return softmax(scores.float())


# PyTorch's CPU softmax runs rows shorter than this one element at a time.
SHORT_ROW = 16


def softmax(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension; short rows on the CPU in three vectorised passes.

    Decoding attends over short rows (the words decoded so far, a sentence's source), where
    PyTorch's kernel is slow: 3,600 rows of 12 keys took 283 us, 84 us this way (2 cores);
    int8 decoding of Multi30k became 1% faster.
    """
    if scores.device.type != "cpu" or scores.size(-1) >= SHORT_ROW:
        return scores.softmax(dim=-1)
    exp = (scores - scores.amax(dim=-1, keepdim=True)).exp_()
    return exp.div_(exp.sum(dim=-1, keepdim=True))


# Eager training on a GPU attends over at most this many keys with the math path (below).
MATH_TRAINING_MAX_KEYS = 64


def scaled_dot_product(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    causal: bool,
    dropout: float,
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d_h)) v over the unmasked keys, by the fastest route where it runs.

    PyTorch's fused kernels, except where they are slow (`bench/attention_kernels.py`;
    figures in docs/performance.md):
    - training on CPU: the fused (flash) kernel's backward pass is slower than PyTorch's math
      path (two batched matrix products around a softmax);
    - eager training on GPU over short sentences: the math path trained a Transformer-base
      faster on Multi30k. Under torch.compile the fused kernels stay: inductor compiles the
      math path far more slowly;
    - decoding on CPU (no gradient, no causal mask, no dropout): the few query positions of
      a step, where three plain ops are faster.
    """
    on_cpu, training = q.device.type == "cpu", torch.is_grad_enabled()
    if on_cpu and not training and not causal and not dropout:
        return attention_weights(q, k, mask).to(v.dtype) @ v
    short_in_eager_gpu_training = (
        not on_cpu and k.size(-2) <= MATH_TRAINING_MAX_KEYS and not torch.compiler.is_compiling()
    )
    kernel = contextlib.nullcontext()
    if training and (on_cpu or short_in_eager_gpu_training):
        kernel = sdpa_kernel(SDPBackend.MATH)
    with kernel:
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, dropout_p=dropout
        )


class FeedForward(nn.Sequential):
    """FFN(x) = max(0, x W1 + b1) W2 + b2, applied to each position alike (sec. 3.3)."""

    def __init__(self, d_model: int, ff_dim: int, activation_dropout: float) -> None:
        super().__init__(
            nn.Linear(d_model, ff_dim),
            nn.ReLU(inplace=True),  # one [tokens, ff_dim] tensor less
            nn.Dropout(activation_dropout),
            nn.Linear(ff_dim, d_model),
        )


class Sublayer(nn.Module):
    """A residual connection around one block, with layer norm before (pre) or after (post)."""

    def __init__(self, d_model: int, dropout: float, pre_norm: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm

    def input(self, x: torch.Tensor) -> torch.Tensor:
        """What the block reads."""
        return self.norm(x) if self.pre_norm else x

    def output(self, x: torch.Tensor, block_out: torch.Tensor) -> torch.Tensor:
        """The residual sum, normalised here in the post-norm arrangement."""
        y = x + self.dropout(block_out)
        return y if self.pre_norm else self.norm(y)


class EncoderLayer(nn.Module):
    def __init__(self, cfg: TransformerModelConfig) -> None:
        super().__init__()
        pre = cfg.norm == "pre"
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.heads, cfg.attention_dropout)
        self.ff = FeedForward(cfg.d_model, cfg.ff_dim, cfg.activation_dropout)
        self.attn_sub = Sublayer(cfg.d_model, cfg.dropout, pre)
        self.ff_sub = Sublayer(cfg.d_model, cfg.dropout, pre)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        h = self.attn_sub.input(x)
        x = self.attn_sub.output(x, self.self_attn.attend(*self.self_attn.self_qkv(h), key_mask))
        return self.ff_sub.output(x, self.ff(self.ff_sub.input(x)))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TransformerModelConfig) -> None:
        super().__init__()
        pre = cfg.norm == "pre"
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.heads, cfg.attention_dropout)
        self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.heads, cfg.attention_dropout)
        self.ff = FeedForward(cfg.d_model, cfg.ff_dim, cfg.activation_dropout)
        self.self_sub = Sublayer(cfg.d_model, cfg.dropout, pre)
        self.cross_sub = Sublayer(cfg.d_model, cfg.dropout, pre)
        self.ff_sub = Sublayer(cfg.d_model, cfg.dropout, pre)

    def forward(
        self, x: torch.Tensor, memory: torch.Tensor, key_mask: torch.Tensor
    ) -> torch.Tensor:
        """Teacher forcing over all target positions: x [B, T, D], memory [B, S, D]."""
        h = self.self_sub.input(x)
        x = self.self_sub.output(x, self.self_attn.attend(*self.self_attn.self_qkv(h), causal=True))
        q = self.cross_attn.query(self.cross_sub.input(x))
        k, v = self.cross_attn.key_value(memory)
        x = self.cross_sub.output(x, self.cross_attn.attend(q, k, v, key_mask))
        return self.ff_sub.output(x, self.ff(self.ff_sub.input(x)))

    def step(
        self,
        x: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        cross_k: torch.Tensor,
        cross_v: torch.Tensor,
        key_mask: torch.Tensor,
        need_weights: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One new position x [R, 1, D] against the cache keys/values [R, h, t + 1, d_h],
        whose last position this step fills in place; cross_k/v [N, h, S, d_h] hold the
        encoder keys and values of the N sentences the rows belong to.

        Returns the output and the cross-attention weights [R, S] when asked. No causal mask
        is needed: the cache holds only earlier positions.
        """
        q, k, v = self.self_attn.self_qkv(self.self_sub.input(x))
        keys[:, :, -1:] = k
        values[:, :, -1:] = v
        x = self.self_sub.output(x, self.self_attn.attend(q, keys, values))
        # The G rows of each of the N sentences become G query positions of one sentence.
        R, N = x.size(0), cross_k.size(0)
        q = self.cross_attn.query(self.cross_sub.input(x))  # [R, h, 1, d_h]
        q = q.reshape(N, R // N, *q.shape[1:]).squeeze(3).transpose(1, 2)  # [N, h, G, d_h]
        weights = None
        if need_weights:
            out, weights = self.cross_attn.attend_with_weights(q, cross_k, cross_v, key_mask)
            weights = weights.reshape(R, -1)  # [N, G, S] -> [R, S]
        else:
            out = self.cross_attn.attend(q, cross_k, cross_v, key_mask)
        x = self.cross_sub.output(x, out.reshape(R, 1, -1))  # [N, G, D] -> [R, 1, D]
        return self.ff_sub.output(x, self.ff(self.ff_sub.input(x))), weights


class Transformer(nn.Module):
    """Encoder-decoder Transformer with the model interface that decoding relies on."""

    def __init__(
        self, cfg: TransformerModelConfig, src_vocab: int, tgt_vocab: int, shared_vocab: bool
    ) -> None:
        super().__init__()
        D = cfg.d_model
        self.cfg = cfg
        self.embed_scale = math.sqrt(D)
        self.tgt_embed = nn.Embedding(tgt_vocab, D, padding_idx=PAD)
        tie_src = cfg.tie_embeddings and shared_vocab
        self.src_embed = self.tgt_embed if tie_src else nn.Embedding(src_vocab, D, padding_idx=PAD)
        self.dropout = nn.Dropout(cfg.dropout)
        self.encoder_layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.enc_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.dec_layers))
        # Pre-norm leaves each stack's output unnormalised, so a final norm closes it.
        pre = cfg.norm == "pre"
        self.encoder_norm = nn.LayerNorm(D) if pre else nn.Identity()
        self.decoder_norm = nn.LayerNorm(D) if pre else nn.Identity()
        self.output = nn.Linear(D, tgt_vocab, bias=False)
        self._init_weights()
        if cfg.tie_embeddings:
            self.output.weight = self.tgt_embed.weight

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=self.cfg.d_model**-0.5)
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()

    def _embed(self, embedding: nn.Embedding, tokens: torch.Tensor, start: int) -> torch.Tensor:
        """tokens [B, T] at positions start.. -> sqrt(D) * embedding + position encoding."""
        positions = torch.arange(start, start + tokens.size(1), device=tokens.device)
        pos = sinusoidal_positions(positions, self.cfg.d_model)
        return self.dropout(embedding(tokens) * self.embed_scale + pos)

    # --- the model interface -------------------------------------------------------------
    def encode(self, src: torch.Tensor, src_mask: torch.Tensor) -> TransformerMemory:
        """src [B, S], src_mask [B, S] -> encoder states [B, S, D]."""
        key_mask = src_mask[:, None, None, :]
        x = self._embed(self.src_embed, src, 0)
        for layer in self.encoder_layers:
            x = layer(x, key_mask)
        return TransformerMemory(self.encoder_norm(x), src_mask)

    def init_state(self, memory: TransformerMemory) -> TransformerState:
        """Project the encoder states into every layer's cross-attention keys and values."""
        cross = [layer.cross_attn.key_value(memory.states) for layer in self.decoder_layers]
        cross_keys = torch.stack([k for k, _ in cross])  # [L, B, h, S, d_h]
        cross_values = torch.stack([v for _, v in cross])
        empty = cross_keys[:, :, :, :0]  # [L, B, h, 0, d_h]: nothing decoded yet
        return TransformerState(
            self_keys=empty,
            self_values=empty,
            cross_keys=cross_keys,
            cross_values=cross_values,
            key_mask=memory.mask[:, None, None, :],
        )

    def step(
        self, prev_tokens: torch.Tensor, state: TransformerState
    ) -> tuple[torch.Tensor, TransformerState, torch.Tensor]:
        """prev_tokens [B] -> log_probs [B, V], next state, last layer's cross-attention
        weights averaged over heads [B, S] (the alignment users see)."""
        t = state.self_keys.size(3)
        x = self._embed(self.tgt_embed, prev_tokens.unsqueeze(1), t)  # [B, 1, D]
        keys, values = state.grown_cache()
        last = len(self.decoder_layers) - 1
        for i, layer in enumerate(self.decoder_layers):
            x, weights = layer.step(
                x,
                keys[i],
                values[i],
                state.cross_keys[i],
                state.cross_values[i],
                state.key_mask,
                need_weights=i == last,
            )
        next_state = dataclasses.replace(state, self_keys=keys, self_values=values, rows=None)
        logits = self.output(self.decoder_norm(x.squeeze(1)))
        return step_log_probs(logits), next_state, weights

    def forward(
        self, src: torch.Tensor, src_mask: torch.Tensor, tgt_in: torch.Tensor
    ) -> torch.Tensor:
        """Teacher forcing: src [B, S], tgt_in [B, T] (BOS + target) -> logits [B, T, V]."""
        memory = self.encode(src, src_mask)
        key_mask = src_mask[:, None, None, :]
        x = self._embed(self.tgt_embed, tgt_in, 0)
        for layer in self.decoder_layers:
            x = layer(x, memory.states, key_mask)
        return self.output(self.decoder_norm(x))


def build_transformer(
    cfg: TransformerModelConfig, src_vocab: int, tgt_vocab: int, shared_vocab: bool
) -> Transformer:
    return Transformer(cfg, src_vocab, tgt_vocab, shared_vocab)
