"""The attention seq2seq: a deep, bidirectional, residual LSTM encoder and an attentional
LSTM decoder with input feeding (Luong et al. 2015; GNMT, Wu et al. 2016).

The encoder keeps one hidden vector per source position, a matrix [S, H] rather than one
fixed vector, so the decoder can look back at every source word. Each decoder step:

1. runs the LSTM stack on [embedding of the previous word; previous attentional vector]
   (input feeding, Luong sec. 3.3: the next step knows what was attended before),
2. scores the top layer's state h_t against all encoder states, softmax-normalises the
   scores into alignment weights and takes their weighted sum, the context c_t,
3. forms the attentional vector h~_t = tanh(W_c [c_t; h_t]) (Luong eq. 5), which feeds the
   output layer p(y_t) = softmax(W_s h~_t) (eq. 6) and the next step's input.

With `attention: none` step 2 is skipped and h~_t = h_t: the classic encoder-decoder
(Sutskever et al. 2014) whose decoder starts from the encoder's last state and sees nothing
else of the source, the baseline that attention and the Neural Turing Machine improve on.

The step is written once and used by both teacher-forced training and decoding, so the
two can never disagree.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from nmt_cli.config import RNNModelConfig
from nmt_cli.models.attention import Attention
from nmt_cli.models.interface import DecoderState, step_log_probs
from nmt_cli.special_ids import PAD


@dataclasses.dataclass
class RNNMemory:
    """What the encoder hands the decoder."""

    states: torch.Tensor  # [B, S, H] one vector per source position
    keys: torch.Tensor | None  # [B, S, H] source half of the attention score
    mask: torch.Tensor  # [B, S] True on real tokens


@dataclasses.dataclass
class RNNState(DecoderState):
    hidden: torch.Tensor  # [B, L, H] LSTM h per decoder layer
    cell: torch.Tensor  # [B, L, H] LSTM c per decoder layer
    feed: torch.Tensor  # [B, H] previous attentional vector (input feeding)
    states: torch.Tensor | None  # [B, S, H] (None without attention)
    keys: torch.Tensor | None  # [B, S, H]
    mask: torch.Tensor | None  # [B, S]


def _uses_residual(layer: int, residual_from: int) -> bool:
    """Layers are 1-based; residual_from == 0 turns residual connections off."""
    return residual_from > 0 and layer >= residual_from


class RNNEncoder(nn.Module):
    """A stack of LSTM layers; every layer outputs `hidden_dim` features per position."""

    def __init__(self, cfg: RNNModelConfig) -> None:
        super().__init__()
        self.residual_from = cfg.residual_from
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList()
        for layer in range(1, cfg.enc_layers + 1):
            bidirectional = cfg.bidirectional == "all" or (
                cfg.bidirectional == "bottom" and layer == 1
            )
            self.layers.append(
                nn.LSTM(
                    cfg.emb_dim if layer == 1 else cfg.hidden_dim,
                    cfg.hidden_dim // 2 if bidirectional else cfg.hidden_dim,
                    batch_first=True,
                    bidirectional=bidirectional,
                )
            )

    def forward(self, embedded: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """embedded [B, S, E], mask [B, S] -> states [B, S, H]."""
        B, S, _ = embedded.shape
        lengths = mask.sum(1).cpu()
        x = embedded
        for layer, lstm in enumerate(self.layers, start=1):
            packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            out, _ = lstm(packed)
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=S)  # [B, S, H]
            out = self.dropout(out)
            x = out + x if _uses_residual(layer, self.residual_from) else out
        return x


class LSTMStackCell(nn.Module):
    """One decoder time step through a stack of LSTM layers.

    Gates are computed as W_x x + W_h h + b with one fused matmul per layer; layer 1's
    input-to-gate product for the embeddings is done outside, once for all time steps.
    """

    def __init__(self, cfg: RNNModelConfig, first_input_dim: int) -> None:
        super().__init__()
        H = cfg.hidden_dim
        self.residual_from = cfg.residual_from
        self.dropout = nn.Dropout(cfg.dropout)
        # Layer 1's non-embedding inputs are [feed; h] (feed only with input feeding).
        self.recurrent = nn.ModuleList(
            [nn.Linear(first_input_dim + H, 4 * H, bias=False)]
            + [nn.Linear(2 * H, 4 * H, bias=True) for _ in range(cfg.dec_layers - 1)]
        )

    def forward(
        self,
        first_gates: torch.Tensor,
        first_input: torch.Tensor | None,
        hidden: torch.Tensor,
        cell: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """first_gates [B, 4H] (embedding part of layer 1), first_input [B, F] or None,
        hidden/cell [B, L, H] -> top output [B, H], new hidden, new cell."""
        new_hidden, new_cell = [], []
        x = None
        for layer, linear in enumerate(self.recurrent, start=1):
            h, c = hidden[:, layer - 1], cell[:, layer - 1]
            if layer == 1:
                inputs = h if first_input is None else torch.cat([first_input, h], dim=1)
                gates = first_gates + linear(inputs)  # [B, 4H]
            else:
                gates = linear(torch.cat([x, h], dim=1))  # [B, 4H]
            i, f, g, o = gates.chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            new_hidden.append(h)
            new_cell.append(c)
            out = self.dropout(h)
            x = out + x if layer > 1 and _uses_residual(layer, self.residual_from) else out
        return x, torch.stack(new_hidden, dim=1), torch.stack(new_cell, dim=1)


class RNNSeq2Seq(nn.Module):
    """Encoder-attention-decoder with the model interface that decoding relies on."""

    def __init__(
        self,
        cfg: RNNModelConfig,
        src_vocab: int,
        tgt_vocab: int,
        shared_vocab: bool,
    ) -> None:
        super().__init__()
        E, H = cfg.emb_dim, cfg.hidden_dim
        self.cfg = cfg
        self.tgt_embed = nn.Embedding(tgt_vocab, E, padding_idx=PAD)
        tie_src = cfg.tie_embeddings and shared_vocab
        self.src_embed = self.tgt_embed if tie_src else nn.Embedding(src_vocab, E, padding_idx=PAD)
        self.embed_dropout = nn.Dropout(cfg.dropout)
        self.encoder = RNNEncoder(cfg)
        self.bridge = nn.Linear(H, cfg.dec_layers * H)
        self.embed_to_gates = nn.Linear(E, 4 * H)
        self.cell = LSTMStackCell(cfg, first_input_dim=H if cfg.input_feeding else 0)
        self.attention = (
            None if cfg.attention == "none" else Attention(cfg.attention, query_dim=H, memory_dim=H)
        )
        self.combine = None if self.attention is None else nn.Linear(2 * H, H, bias=False)
        self.out_dropout = nn.Dropout(cfg.dropout)
        self.to_embed = nn.Linear(H, E, bias=False) if cfg.tie_embeddings and E != H else None
        self.output = nn.Linear(E if cfg.tie_embeddings else H, tgt_vocab, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = self.tgt_embed.weight
        self._init_weights()

    def _init_weights(self) -> None:
        for name, param in self.named_parameters():
            if "embed.weight" in name:
                nn.init.normal_(param, std=self.cfg.emb_dim**-0.5)
            elif param.dim() > 1:
                nn.init.xavier_uniform_(param)
            else:
                nn.init.zeros_(param)

    # --- the model interface -------------------------------------------------------------
    def encode(self, src: torch.Tensor, src_mask: torch.Tensor) -> RNNMemory:
        """src [B, S] token ids, src_mask [B, S] -> encoder states and attention keys."""
        states = self.encoder(self.embed_dropout(self.src_embed(src)), src_mask)  # [B, S, H]
        keys = None if self.attention is None else self.attention.precompute_keys(states)
        return RNNMemory(states, keys, src_mask)

    def init_state(self, memory: RNNMemory) -> RNNState:
        """Decoder starts from a projection (a "bridge") of the mean encoder state, or of
        the last one when it has no attention to reach the other positions."""
        B, S, H = memory.states.shape
        if self.attention is None:
            last = memory.mask.sum(1) - 1  # [B] index of each sentence's last token
            summary = memory.states[torch.arange(B, device=last.device), last]  # [B, H]
        else:
            mask = memory.mask.unsqueeze(2).to(memory.states.dtype)
            summary = (memory.states * mask).sum(1) / mask.sum(1).clamp(min=1)  # [B, H]
        hidden = torch.tanh(self.bridge(summary)).view(B, self.cfg.dec_layers, H)  # [B, L, H]
        attends = self.attention is not None
        return RNNState(
            hidden=hidden,
            cell=torch.zeros_like(hidden),
            feed=memory.states.new_zeros(B, H),
            states=memory.states if attends else None,
            keys=memory.keys,
            mask=memory.mask if attends else None,
        )

    def step(
        self, prev_tokens: torch.Tensor, state: RNNState
    ) -> tuple[torch.Tensor, RNNState, torch.Tensor | None]:
        """prev_tokens [B] -> log_probs [B, V], next state, attention weights [B, S] or None."""
        gates = self.embed_to_gates(self.embed_dropout(self.tgt_embed(prev_tokens)))  # [B, 4H]
        attentional, state, weights = self._step(gates, state)
        return step_log_probs(self._logits(attentional)), state, weights

    def forward(
        self, src: torch.Tensor, src_mask: torch.Tensor, tgt_in: torch.Tensor
    ) -> torch.Tensor:
        """Teacher forcing: src [B, S], tgt_in [B, T] (BOS + target) -> logits [B, T, V]."""
        state = self.init_state(self.encode(src, src_mask))
        all_gates = self.embed_to_gates(self.embed_dropout(self.tgt_embed(tgt_in)))  # [B, T, 4H]
        attentional = []
        for gates in all_gates.unbind(1):  # unbind: its backward is one stack, not T copies
            step_out, state, _ = self._step(gates, state)
            attentional.append(step_out)
        # The output layer runs once over all steps: one big matmul instead of T small ones.
        return self._logits(torch.stack(attentional, dim=1))  # [B, T, V]

    # --- one decoder step ----------------------------------------------------------------
    def _step(
        self, gates: torch.Tensor, state: RNNState
    ) -> tuple[torch.Tensor, RNNState, torch.Tensor | None]:
        """-> attentional vector h~_t [B, H], next state, attention weights [B, S] or None."""
        feed = state.feed if self.cfg.input_feeding else None
        top, hidden, cell = self.cell(gates, feed, state.hidden, state.cell)  # top [B, H]
        if self.attention is None:
            attentional, weights = top, None
        else:
            context, weights = self.attention(top, state.keys, state.states, state.mask)
            attentional = torch.tanh(self.combine(torch.cat([context, top], dim=1)))  # [B, H]
        next_state = dataclasses.replace(state, hidden=hidden, cell=cell, feed=attentional)
        return attentional, next_state, weights

    def _logits(self, attentional: torch.Tensor) -> torch.Tensor:
        """h~ [..., H] -> logits [..., V] (Luong eq. 6), through the tied embedding if shared."""
        out = self.out_dropout(attentional)
        if self.to_embed is not None:
            out = self.to_embed(out)  # [..., E]
        return self.output(out)


def build_rnn(
    cfg: RNNModelConfig, src_vocab: int, tgt_vocab: int, shared_vocab: bool
) -> RNNSeq2Seq:
    return RNNSeq2Seq(cfg, src_vocab, tgt_vocab, shared_vocab)
