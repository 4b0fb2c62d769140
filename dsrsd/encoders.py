"""Modality encoders: tabular (MLP + LayerNorm), sequence (GRU or Transformer), set/bag, and
knowledge-tracing histories (layout ``kt``: :mod:`dsrsd.kt_encoders`).

Every encoder maps one modality's tensor to ``h`` of size ``d``: ``[B, d]`` for per-sample
tasks, or ``[B, T, d]`` when ``per_step=True`` (next-step tasks, where step ``t`` must not see
later steps if the modality is causal). ``tokens()`` exposes the element sequence for
co-attention style fusion. Shared by DSRSD-Net and every baseline so comparisons are fair.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dsrsd.data.batch import ModalitySpec
from dsrsd.errors import DsrsdError
from dsrsd.kt_encoders import kt_encoder


class StepInput(nn.Module):
    """Embeds one element: a float feature vector (Linear) or a bag of token ids (summed)."""

    def __init__(self, spec: ModalitySpec, d: int):
        super().__init__()
        self.tokens = spec.vocab > 0
        if self.tokens:
            self.emb = nn.Embedding(spec.vocab, d, padding_idx=0)
        else:
            self.proj = nn.Linear(spec.dim, d)

    def forward(self, x: Tensor) -> Tensor:
        if self.tokens:
            # A bag of ids per element (multi-skill interactions): sum of embeddings, 0 = padding.
            return self.emb(x).sum(-2)
        return self.proj(x)


def mlp(d_in: int, d: int, d_out: int, dropout: float = 0.0) -> nn.Sequential:
    """Linear -> GELU -> LayerNorm -> Dropout -> Linear, the building block used throughout."""
    return nn.Sequential(nn.Linear(d_in, d), nn.GELU(), nn.LayerNorm(d), nn.Dropout(dropout),
                         nn.Linear(d, d_out))


def _safe_pad(pad: Tensor) -> Tensor:
    """Mark step 0 valid in rows with no valid step, so attention never sees an all-masked row.

    Such rows belong to missing modalities; their output is discarded by the presence mask.
    """
    empty = ~pad.any(1)
    if bool(empty.any()):
        pad = pad.clone()
        pad[empty, 0] = True
    return pad


class TabularEncoder(nn.Module):
    """MLP with LayerNorm, applied position-wise (works on ``[B, F]`` and ``[B, T, F]``)."""

    def __init__(self, spec: ModalitySpec, d: int, dropout: float = 0.1):
        super().__init__()
        self.inp = StepInput(spec, d)
        self.net = nn.Sequential(nn.GELU(), nn.LayerNorm(d), nn.Dropout(dropout), nn.Linear(d, d),
                                 nn.GELU(), nn.LayerNorm(d))

    def forward(self, x: Tensor, pad: Tensor | None = None) -> Tensor:
        return self.net(self.inp(x))

    def tokens(self, x: Tensor, pad: Tensor | None = None) -> tuple[Tensor, Tensor]:
        h = self.forward(x).unsqueeze(1)
        return h, torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)


class GRUEncoder(nn.Module):
    """GRU over steps; pooled by the last valid step, or every step's state when per-step."""

    def __init__(self, spec: ModalitySpec, d: int, per_step: bool = False, dropout: float = 0.1):
        super().__init__()
        self.inp = StepInput(spec, d)
        self.gru = nn.GRU(d, d, batch_first=True)
        self.norm = nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)
        self.per_step = per_step

    def tokens(self, x: Tensor, pad: Tensor) -> tuple[Tensor, Tensor]:
        # Padding is trailing, and a GRU is causal, so running over the padded steps cannot
        # change valid outputs; pooling below reads the last valid one.
        out, _ = self.gru(self.drop(self.inp(x)))
        return self.norm(out), pad

    def forward(self, x: Tensor, pad: Tensor) -> Tensor:
        out, pad = self.tokens(x, pad)
        if self.per_step:
            return out
        last = (pad.long().sum(1) - 1).clamp_min(0)
        return out[torch.arange(out.shape[0], device=out.device), last]


class TransformerSeqEncoder(nn.Module):
    """Transformer encoder with learned positions and padding masks; causal when per-step."""

    def __init__(self, spec: ModalitySpec, d: int, per_step: bool = False, layers: int = 2,
                 heads: int = 4, max_len: int = 512, dropout: float = 0.1):
        super().__init__()
        if d % heads:
            raise DsrsdError(f"hidden size d={d} must be divisible by heads={heads}")
        self.inp = StepInput(spec, d)
        self.pos = nn.Parameter(torch.zeros(max_len, d))
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.per_step = per_step
        self.causal = spec.causal and per_step
        self.max_len = max_len

    def tokens(self, x: Tensor, pad: Tensor) -> tuple[Tensor, Tensor]:
        t = x.shape[1]
        if t > self.max_len:
            raise DsrsdError(f"sequence length {t} exceeds the encoder's max_len={self.max_len}")
        h = self.inp(x) + self.pos[:t]
        safe = _safe_pad(pad)
        mask = None
        if self.causal:
            mask = torch.triu(torch.ones(t, t, dtype=torch.bool, device=x.device), diagonal=1)
        out = self.enc(h, mask=mask, src_key_padding_mask=~safe)
        return self.norm(out), safe

    def forward(self, x: Tensor, pad: Tensor) -> Tensor:
        out, safe = self.tokens(x, pad)
        if self.per_step:
            return out
        w = safe.unsqueeze(-1).to(out.dtype)
        return (out * w).sum(1) / w.sum(1)


class SetEncoder(nn.Module):
    """Order-free bag of elements: embed each, attention-pool with a learned query, then MLP."""

    def __init__(self, spec: ModalitySpec, d: int, dropout: float = 0.1):
        super().__init__()
        self.inp = StepInput(spec, d)
        self.score = nn.Linear(d, 1)
        self.out = nn.Sequential(nn.LayerNorm(d), nn.Dropout(dropout), nn.Linear(d, d), nn.GELU(),
                                 nn.LayerNorm(d))

    def tokens(self, x: Tensor, pad: Tensor) -> tuple[Tensor, Tensor]:
        if self.inp.tokens:
            h = self.inp.emb(x)  # [B, L, d]: each id is one element here
        else:
            h = self.inp(x)
        return h, _safe_pad(pad)

    def forward(self, x: Tensor, pad: Tensor) -> Tensor:
        h, safe = self.tokens(x, pad)
        a = self.score(torch.tanh(h)).squeeze(-1).masked_fill(~safe, float("-inf"))
        w = torch.softmax(a.float(), dim=1).to(h.dtype).unsqueeze(-1)
        return self.out((w * h).sum(1))


def build_encoder(spec: ModalitySpec, d: int, seq_encoder: str = "gru",
                  per_step: bool = False, dropout: float = 0.1) -> nn.Module:
    """The encoder for one modality spec. ``seq_encoder`` is ``gru`` or ``transformer``; a
    ``kt`` layout history gets the item-aware KT encoder of that kind (:mod:`dsrsd.kt_encoders`)."""
    if spec.layout == "kt":
        return kt_encoder(spec, d, seq_encoder, per_step, dropout)
    if spec.kind == "tabular":
        return TabularEncoder(spec, d, dropout)
    if spec.kind == "set":
        if per_step:
            raise DsrsdError(f"modality {spec.name!r}: set encoders are per-sample only")
        return SetEncoder(spec, d, dropout)
    if seq_encoder == "gru":
        return GRUEncoder(spec, d, per_step, dropout)
    if seq_encoder == "transformer":
        return TransformerSeqEncoder(spec, d, per_step, dropout=dropout)
    raise DsrsdError(f"unknown seq_encoder {seq_encoder!r} (expected gru or transformer)")
