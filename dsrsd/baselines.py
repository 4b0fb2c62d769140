"""Fusion baselines named by the DSRSD-Net abstract, built from the same encoders and head.

Every baseline reuses :func:`dsrsd.encoders.build_encoder` and the MLP head of
:class:`~dsrsd.base.FusionModel`, so differences between methods come from the fusion alone
(book/papers.md section 1.6, [R]):

* :class:`EarlyFusion` (``early``): concatenate ``[h_1; ...; h_M]`` -> MLP head.
* :class:`Unimodal` (``unimodal``): one modality's encoder + the head; the rest is ignored.
* :class:`LateFusion` (``late``): each modality goes through its own predictor trunk (the head's
  hidden layer), the trunks' outputs are concatenated and one linear layer fuses them: fusion
  after modality-specific processing, with learned weights.
* :class:`LateLogitFusion` (``late_logit``): one full predictor per modality, logits averaged over
  the *present* modalities (decision-level fusion).
* :class:`CoAttention` (``coattention``): MulT-style bidirectional cross-attention between the
  modality token sequences, pooled and concatenated, then the head.

Missing modalities (``present`` False, after modality dropout in training) never influence the
output: their encodings are zeroed (early, late), left out of the average (late_logit), masked
out of attention (coattention) or replaced by a learned bias (unimodal).
"""

from __future__ import annotations

import math
from itertools import permutations

import torch
from torch import Tensor, nn

from dsrsd.base import (
    FusionModel,
    Output,
    check_present,
    drop_modalities,
    keep_first_valid,
    masked_mean,
)
from dsrsd.data.batch import Batch, ModalitySpec, TaskSpec
from dsrsd.errors import DsrsdError


class EarlyFusion(FusionModel):
    """Early fusion: concatenate every modality's encoding, then the MLP head.

    Missing modalities are zero in the concatenation (their encodings are zeroed by ``encode``).
    """

    def __init__(self, specs: list[ModalitySpec], task: TaskSpec, d: int = 128, **kw):
        super().__init__(specs, task, d, **kw)
        self.head = self.make_head(len(specs) * d)

    def forward(self, batch: Batch) -> Output:
        hs, _ = self.encode(batch)
        return Output(self.head_logits(self.head, torch.cat(hs, 1)))


def resolve_modality(specs: list[ModalitySpec], modality: str | int | None) -> int:
    """Index of ``modality`` (a name or an index; ``None`` = the first) in ``specs``."""
    names = [s.name for s in specs]
    if modality is None:
        return 0
    if isinstance(modality, bool):
        raise DsrsdError(f"modality must be a name or an index, got {modality!r}")
    if isinstance(modality, int):
        if not -len(specs) <= modality < len(specs):
            raise DsrsdError(f"modality index {modality} out of range for {len(specs)} "
                             f"modalities {names}")
        return modality % len(specs)
    if modality not in names:
        raise DsrsdError(f"unknown modality {modality!r} (expected one of {', '.join(names)})")
    return names.index(modality)


class Unimodal(FusionModel):
    """Single-modality baseline: the chosen modality's encoder + the MLP head.

    Only that modality's encoder is built, so every parameter is trained. A sample whose chosen
    modality is missing (``present`` False, or hidden by modality dropout in training) gets a
    learned constant instead of the head's output: ``missing_logit`` (one value per output), which
    converges to the log-odds (log-prior) of the rows it serves. It is trained only by such rows,
    so with no missing data and ``modality_dropout = 0`` it stays at its initial value (0).

    Args:
        modality: name or index of the modality to use (default: the first).
    """

    def __init__(self, specs: list[ModalitySpec], task: TaskSpec, d: int = 128,
                 modality: str | int | None = None, **kw):
        index = resolve_modality(specs, modality)
        super().__init__([specs[index]], task, d, **kw)
        self.index = index  # column of ``batch.present`` (which holds every modality)
        self.modality = specs[index].name
        self.head = self.make_head(d)
        self.missing_logit = nn.Parameter(torch.zeros(task.out_dim))

    def forward(self, batch: Batch) -> Output:
        # No "some modality present" check: rows without this modality get a learned constant.
        here = self.present_mask(batch, check=False)[:, self.index]
        x, pad = batch.x[self.modality], batch.pad.get(self.modality)
        h = self.flatten_steps(self.encoders[self.modality](x, pad), batch)
        logits = self.head_logits(self.head, h)
        fill = self.missing_logit if self.task.kind == "multiclass" else self.missing_logit[0]
        mask = here.unsqueeze(-1) if logits.dim() == 2 else here
        return Output(torch.where(mask, logits, fill.to(logits.dtype).expand_as(logits)))


class LateFusion(FusionModel):
    """Representation-level late fusion: per-modality trunks, concatenated, one linear layer.

    Each modality has its own predictor trunk (``Linear -> GELU -> LayerNorm -> Dropout``, the
    hidden layer of the task head), so modality-specific processing happens *before* fusion; the
    fusion itself is a single learned linear map of ``[t_1; ...; t_M]``. Missing modalities'
    trunk outputs are zeroed, as in early fusion.
    """

    def __init__(self, specs: list[ModalitySpec], task: TaskSpec, d: int = 128,
                 head_dropout: float | None = None, **kw):
        super().__init__(specs, task, d, **kw)
        if head_dropout is None:
            head_dropout = self.head_dropout
        self.trunks = nn.ModuleDict({
            s.name: nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d),
                                  nn.Dropout(head_dropout)) for s in specs})
        self.fuse = nn.Linear(len(specs) * d, task.out_dim)

    def forward(self, batch: Batch) -> Output:
        hs, present = self.encode(batch)
        ts = [self.trunks[n](h) * present[:, m:m + 1].to(h.dtype)
              for m, (n, h) in enumerate(zip(self.names, hs, strict=True))]
        return Output(self.head_logits(self.fuse, torch.cat(ts, 1)))


class LateLogitFusion(FusionModel):
    """Decision-level late fusion: one predictor per modality, logits averaged over present ones.

    ``logits = sum_m r_m * head_m(h_m) / sum_m r_m`` with ``r_m`` the presence mask, so the output
    equals the mean of the unimodal predictors of the modalities a sample has. ``info`` holds each
    modality's logits.
    """

    def __init__(self, specs: list[ModalitySpec], task: TaskSpec, d: int = 128, **kw):
        super().__init__(specs, task, d, **kw)
        self.heads = nn.ModuleDict({s.name: self.make_head(d) for s in specs})

    def modality_logits(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Per-modality logits stacked on dim 1 (``[N, M]`` or ``[N, M, C]``) and ``present``."""
        hs, present = self.encode(batch)
        logits = [self.head_logits(self.heads[n], h)
                  for n, h in zip(self.names, hs, strict=True)]
        return torch.stack(logits, 1), present

    def forward(self, batch: Batch) -> Output:
        logits, present = self.modality_logits(batch)
        mask = present if logits.dim() == 2 else present.unsqueeze(-1)
        # where(), not a product: a missing modality's logits never enter, whatever they hold.
        summed = torch.where(mask, logits, torch.zeros_like(logits)).sum(1)
        n = present.sum(1).clamp_min(1).to(logits.dtype)
        mean = summed / (n if summed.dim() == 1 else n.unsqueeze(-1))
        return Output(mean, info={"modality_logits": logits.detach()})


class FeatureTokens(nn.Module):
    """Feature tokenizer (COrAL/CoMM ``FeaturesInputAdapter``): ``[R, d] -> [R, n, d]``.

    ``n`` features ``f = Linear(h)`` become tokens ``t_j = f_j w_j + b_j`` (learned ``w_j``,
    ``b_j`` in ``R^d``), so a tabular vector can take part in token-level attention.
    """

    def __init__(self, d: int, n: int):
        super().__init__()
        self.to_features = nn.Linear(d, n)
        self.weight = nn.Parameter(torch.randn(n, d) / math.sqrt(d))
        self.bias = nn.Parameter(torch.zeros(n, d))

    def forward(self, h: Tensor) -> Tensor:
        return self.to_features(h).unsqueeze(-1) * self.weight + self.bias


class CrossAttentionLayer(nn.Module):
    """Pre-norm cross-attention layer (MulT): ``x += g * MHA(LN(x), LN(src)); x += FF(LN(x))``.

    ``gate`` (``[B, 1, 1]``, 0 or 1) switches the attention update off for rows whose source
    modality is missing, so such a row keeps only its own (target) information.
    """

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.ln_q = nn.LayerNorm(d)
        self.ln_kv = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.ln_ff = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Dropout(dropout),
                                nn.Linear(4 * d, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, src: Tensor, key_pad: Tensor, gate: Tensor,
                attn_mask: Tensor | None = None) -> Tensor:
        kv = self.ln_kv(src)
        a, _ = self.attn(self.ln_q(x), kv, kv, key_padding_mask=key_pad, attn_mask=attn_mask,
                         need_weights=False)
        x = x + gate * self.drop(a)
        return x + self.drop(self.ff(self.ln_ff(x)))


class CoAttention(FusionModel):
    """Co-attention fusion: bidirectional cross-modal attention (MulT / ViLBERT style).

    For every ordered pair ``(a -> b)`` of modalities, ``b``'s tokens attend to ``a``'s tokens
    through ``layers`` pre-norm cross-attention layers (``heads`` heads, key padding masks). The
    attended sequence of ``b`` is pooled by its masked mean; the ``M (M - 1)`` pooled vectors are
    concatenated and fed to the head.

    Per-step tasks: every modality's encoder gives one vector per step (``forward``), the
    attention is causal over time (step ``t`` of ``b`` sees steps ``<= t`` of ``a``), and the
    pair outputs are read at the scored steps (``flatten_steps``) instead of pooled.

    Missing modalities: a missing *source* contributes no attention update (the pair output then
    depends on ``b`` alone); a missing *target* zeroes the pair's output.

    A tabular modality is one vector; attending to a single key would make the attention weights
    constant (softmax over one key), so its encoding is split into ``tab_tokens`` tokens by a
    :class:`FeatureTokens` tokenizer [R] (per-step tasks: one token per step, no tokenizer).
    """

    def __init__(self, specs: list[ModalitySpec], task: TaskSpec, d: int = 128, layers: int = 2,
                 heads: int = 4, tab_tokens: int = 8, **kw):
        super().__init__(specs, task, d, **kw)
        if len(specs) < 2:
            raise DsrsdError(f"coattention needs at least 2 modalities, got {len(specs)}")
        if d % heads:
            raise DsrsdError(f"hidden size d={d} must be divisible by heads={heads}")
        if layers < 1:
            raise DsrsdError(f"coattention needs layers >= 1, got {layers}")
        dropout = kw.get("dropout", 0.1)
        if tab_tokens < 1:
            raise DsrsdError(f"coattention needs tab_tokens >= 1, got {tab_tokens}")
        self.tab_tokens = nn.ModuleDict({s.name: FeatureTokens(d, tab_tokens) for s in specs
                                         if s.kind == "tabular" and not self.per_step})
        self.pairs = list(permutations(range(len(specs)), 2))
        self.cross = nn.ModuleDict({
            f"{specs[a].name}->{specs[b].name}": nn.ModuleList(
                CrossAttentionLayer(d, heads, dropout) for _ in range(layers))
            for a, b in self.pairs})
        self.head = self.make_head(len(self.pairs) * d)

    def _tokens(self, batch: Batch) -> tuple[list[Tensor], list[Tensor]]:
        """Each modality's ``[B, L, d]`` tokens and bool ``[B, L]`` validity."""
        toks, valid = [], []
        for s in self.specs:
            x, pad = batch.x[s.name], batch.pad.get(s.name)
            enc = self.encoders[s.name]
            if self.per_step:
                t = enc(x, pad)  # [B, T, d], causal where the modality is
                v = pad if pad is not None else torch.ones(t.shape[:2], dtype=torch.bool,
                                                           device=t.device)
            elif s.name in self.tab_tokens:
                t = self.tab_tokens[s.name](enc(x, pad))
                v = torch.ones(t.shape[:2], dtype=torch.bool, device=t.device)
            else:
                t, v = enc.tokens(x, pad)
            toks.append(t)
            valid.append(v.bool())
        return toks, valid

    def forward(self, batch: Batch) -> Output:
        # Modality dropout per sample (the attention runs over whole sequences), expanded to
        # the scored steps' rows after.
        present = batch.present
        if self.training:
            present = drop_modalities(present, self.modality_dropout)
        rows_present = check_present(self.present_rows(batch, present))
        toks, valid = self._tokens(batch)
        key_valid = []
        for m, v in enumerate(valid):
            # Never an all-masked key row (NaN in softmax): such rows (missing source) have their
            # update gated off. With causal attention step 0 must be visible to every query.
            key_valid.append(keep_first_valid(v & present[:, m:m + 1], always=self.per_step))
        causal = None
        if self.per_step:
            t = toks[0].shape[1]
            causal = torch.triu(torch.ones(t, t, dtype=torch.bool, device=toks[0].device), 1)
        outs = []
        for a, b in self.pairs:
            x = toks[b]
            gate = present[:, a].to(x.dtype)[:, None, None]
            for layer in self.cross[f"{self.specs[a].name}->{self.specs[b].name}"]:
                x = layer(x, toks[a], ~key_valid[a], gate, causal)
            if self.per_step:
                pooled = self.flatten_steps(x, batch)
                outs.append(pooled * rows_present[:, b:b + 1].to(pooled.dtype))
            else:
                pooled = masked_mean(x, valid[b])
                outs.append(pooled * present[:, b:b + 1].to(pooled.dtype))
        return Output(self.head_logits(self.head, torch.cat(outs, 1)))


__all__ = ["CoAttention", "EarlyFusion", "FeatureTokens", "LateFusion", "LateLogitFusion", "Unimodal",
           "resolve_modality"]
