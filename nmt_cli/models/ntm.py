"""The Neural Turing Machine as a seq2seq model (Graves et al. 2014).

One controller network runs over the whole sequence: it reads the source a token at a time,
writing what it needs into an external N x M memory, then the delimiter (the decoder's BOS),
then emits the target, reading it back. Nothing but the memory and the controller's own state
carries the source across, so the memory is where the model must put it. Each step:

1. the controller (an LSTM cell, or one feed-forward layer) sees [embedding of the input
   token; the vectors read at the previous step] and outputs h_t,
2. one linear layer turns h_t into every head's parameters, clipped to [-clip, clip]
   (Collier & Beel 2018: clipping and a small constant initial memory made training stable),
3. the write heads address memory and write (erase, then add); the read heads address the
   updated memory and read (see `ntm_memory` for the addressing stages),
4. the output layer scores the next token from [h_t; read vectors].

Memory starts at a small constant and every head's first weighting focuses on slot 0, so
location-based addressing has a definite place to start from.

The decoding interface has no source attention here: `step` returns None for it, and the
weightings over memory slots are what `memory_trace` records for `--memory-plot`.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from nmt_cli.config import NTMModelConfig
from nmt_cli.models import ntm_memory
from nmt_cli.models.interface import DecoderState, step_log_probs
from nmt_cli.special_ids import PAD

INITIAL_MEMORY = 1e-6  # Collier & Beel 2018, sec. 4: constant initialisation trains best


@dataclasses.dataclass
class NTMState(DecoderState):
    hidden: torch.Tensor  # [B, C] controller output h
    cell: torch.Tensor  # [B, C] LSTM cell (zeros for a feed-forward controller)
    memory: torch.Tensor  # [B, N, M]
    read_weights: torch.Tensor  # [B, R, N]
    write_weights: torch.Tensor  # [B, W, N]
    reads: torch.Tensor  # [B, R * M] vectors read at the previous step


@dataclasses.dataclass
class MemoryTrace:
    """Weightings over memory slots at every step of one sequence, for the paper's figures."""

    write_weights: torch.Tensor  # [T, W, N]
    read_weights: torch.Tensor  # [T, R, N]
    source_steps: int  # the first `source_steps` rows are the source (writing) phase


class Heads(nn.Module):
    """Turns the controller output into each head's addressing (and write) parameters.

    Per head: key k (M), strength beta = softplus (>= 0), gate g = sigmoid, shift weights
    s = softmax over 2k+1 offsets, sharpening gamma = 1 + softplus (>= 1); a write head also
    has an erase vector e = sigmoid (M) and an add vector a = tanh (M).
    """

    def __init__(self, cfg: NTMModelConfig) -> None:
        super().__init__()
        self.width = cfg.memory_width
        self.reads, self.writes = cfg.read_heads, cfg.write_heads
        self.shifts = 2 * cfg.max_shift + 1
        self.clip = cfg.clip
        self.address_size = self.width + 3 + self.shifts  # k, beta, g, s, gamma
        self.write_size = self.address_size + 2 * self.width  # ... e, a
        total = self.reads * self.address_size + self.writes * self.write_size
        self.project = nn.Linear(cfg.controller_dim, total)

    def forward(self, hidden: torch.Tensor) -> tuple[dict, dict]:
        """hidden [B, C] -> (write parameters, read parameters), each a dict of [B, H, ...]."""
        B = hidden.shape[0]
        params = self.project(hidden).clamp(-self.clip, self.clip)
        write_part, read_part = params.split(
            [self.writes * self.write_size, self.reads * self.address_size], dim=1
        )
        write = write_part.view(B, self.writes, self.write_size)
        read = read_part.view(B, self.reads, self.address_size)
        write_params = self._addressing(write[..., : self.address_size])
        erase, add = write[..., self.address_size :].split(self.width, dim=-1)
        write_params.update(erase=torch.sigmoid(erase), add=torch.tanh(add))
        return write_params, self._addressing(read)

    def _addressing(self, raw: torch.Tensor) -> dict:
        """raw [B, H, M + 3 + S] -> key, beta, gate, shift, gamma."""
        M, S = self.width, self.shifts
        key, beta, gate, shift, gamma = raw.split([M, 1, 1, S, 1], dim=-1)
        return {
            "key": key,
            "beta": F.softplus(beta.squeeze(-1)),
            "gate": torch.sigmoid(gate.squeeze(-1)),
            "shift": torch.softmax(shift, dim=-1),
            "gamma": 1 + F.softplus(gamma.squeeze(-1)),
        }


class NTMSeq2Seq(nn.Module):
    """Controller + heads + memory with the model interface that decoding relies on."""

    def __init__(
        self,
        cfg: NTMModelConfig,
        src_vocab: int,
        tgt_vocab: int,
        shared_vocab: bool,
    ) -> None:
        super().__init__()
        E, C = cfg.emb_dim, cfg.controller_dim
        self.cfg = cfg
        read_size = cfg.read_heads * cfg.memory_width
        self.tgt_embed = nn.Embedding(tgt_vocab, E, padding_idx=PAD)
        tie_src = cfg.tie_embeddings and shared_vocab
        self.src_embed = self.tgt_embed if tie_src else nn.Embedding(src_vocab, E, padding_idx=PAD)
        self.dropout = nn.Dropout(cfg.dropout)
        if cfg.controller == "lstm":
            self.controller: nn.Module = nn.LSTMCell(E + read_size, C)
        else:
            self.controller = nn.Linear(E + read_size, C)
        self.heads = Heads(cfg)
        self.to_embed = nn.Linear(C + read_size, E) if cfg.tie_embeddings else None
        self.output = nn.Linear(E if cfg.tie_embeddings else C + read_size, tgt_vocab)
        if cfg.tie_embeddings:
            self.output.weight = self.tgt_embed.weight

    # --- the model interface -------------------------------------------------------------
    def encode(self, src: torch.Tensor, src_mask: torch.Tensor) -> NTMState:
        """Run the controller over the source, writing to memory; padding leaves the state
        as it was, so every sentence ends its source phase at its own last token."""
        state = self._initial_state(src.shape[0], src.device)
        for token, real in zip(self.src_embed(src).unbind(1), src_mask.unbind(1), strict=True):
            state = _where(real, self._advance(self.dropout(token), state)[1], state)
        return state

    def init_state(self, memory: NTMState) -> NTMState:
        return memory

    def step(
        self, prev_tokens: torch.Tensor, state: NTMState
    ) -> tuple[torch.Tensor, NTMState, None]:
        """prev_tokens [B] -> log_probs [B, V], next state, no source attention."""
        features, state = self._advance(self.dropout(self.tgt_embed(prev_tokens)), state)
        return step_log_probs(self._logits(features)), state, None

    def forward(
        self, src: torch.Tensor, src_mask: torch.Tensor, tgt_in: torch.Tensor
    ) -> torch.Tensor:
        """Teacher forcing: src [B, S], tgt_in [B, T] (BOS + target) -> logits [B, T, V]."""
        state = self.encode(src, src_mask)
        features = []
        for token in self.tgt_embed(tgt_in).unbind(1):
            step_features, state = self._advance(self.dropout(token), state)
            features.append(step_features)
        return self._logits(torch.stack(features, dim=1))  # [B, T, V]

    def memory_trace(self, src: torch.Tensor, tgt_in: torch.Tensor) -> MemoryTrace:
        """The write and read weightings of one sequence (src [S], tgt_in [T]) at every step."""
        state = self._initial_state(1, src.device)
        writes, reads = [], []
        tokens = torch.cat([self.src_embed(src), self.tgt_embed(tgt_in)])  # [S + T, E]
        for token in tokens:
            state = self._advance(token.unsqueeze(0), state)[1]
            writes.append(state.write_weights[0])
            reads.append(state.read_weights[0])
        return MemoryTrace(torch.stack(writes), torch.stack(reads), source_steps=len(src))

    # --- one controller step -------------------------------------------------------------
    def _initial_state(self, batch: int, device: torch.device) -> NTMState:
        cfg = self.cfg
        N, M = cfg.memory_slots, cfg.memory_width
        dtype = self.tgt_embed.weight.dtype
        focus = torch.zeros(batch, 1, N, device=device, dtype=dtype)
        focus[..., 0] = 1  # every head starts on slot 0
        hidden = torch.zeros(batch, cfg.controller_dim, device=device, dtype=dtype)
        return NTMState(
            hidden=hidden,
            cell=torch.zeros_like(hidden),
            memory=torch.full((batch, N, M), INITIAL_MEMORY, device=device, dtype=dtype),
            read_weights=focus.expand(batch, cfg.read_heads, N).clone(),
            write_weights=focus.expand(batch, cfg.write_heads, N).clone(),
            reads=torch.zeros(batch, cfg.read_heads * M, device=device, dtype=dtype),
        )

    def _advance(self, embedded: torch.Tensor, state: NTMState) -> tuple[torch.Tensor, NTMState]:
        """embedded [B, E] -> output features [B, C + R*M] and the next state."""
        inputs = torch.cat([embedded, state.reads], dim=1)  # [B, E + R*M]
        if isinstance(self.controller, nn.LSTMCell):
            hidden, cell = self.controller(inputs, (state.hidden, state.cell))
        else:
            hidden, cell = torch.relu(self.controller(inputs)), state.cell
        write, read = self.heads(hidden)
        write_weights = ntm_memory.address(
            state.memory,
            state.write_weights,
            write["key"],
            write["beta"],
            write["gate"],
            write["shift"],
            write["gamma"],
        )
        memory = ntm_memory.write(state.memory, write_weights, write["erase"], write["add"])
        read_weights = ntm_memory.address(
            memory,
            state.read_weights,
            read["key"],
            read["beta"],
            read["gate"],
            read["shift"],
            read["gamma"],
        )
        reads = ntm_memory.read(memory, read_weights).flatten(1)  # [B, R*M]
        next_state = NTMState(hidden, cell, memory, read_weights, write_weights, reads)
        return torch.cat([hidden, reads], dim=1), next_state

    def _logits(self, features: torch.Tensor) -> torch.Tensor:
        """[..., C + R*M] -> logits [..., V], through the tied embedding if shared."""
        out = self.dropout(features)
        if self.to_embed is not None:
            out = torch.tanh(self.to_embed(out))  # [..., E]
        return self.output(out)


def _where(condition: torch.Tensor, new: NTMState, old: NTMState) -> NTMState:
    """Per row: the new state where `condition` [B] holds, else the old one."""
    fields = {}
    for f in dataclasses.fields(NTMState):
        a, b = getattr(new, f.name), getattr(old, f.name)
        fields[f.name] = torch.where(condition.view(-1, *([1] * (a.dim() - 1))), a, b)
    return NTMState(**fields)


def build_ntm(
    cfg: NTMModelConfig, src_vocab: int, tgt_vocab: int, shared_vocab: bool
) -> NTMSeq2Seq:
    return NTMSeq2Seq(cfg, src_vocab, tgt_vocab, shared_vocab)
