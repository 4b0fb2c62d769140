"""The field's knowledge-tracing models as methods: ``dkt`` and ``akt`` (history only).

Both read only the ``kt`` history modality (:mod:`dsrsd.data.batch`), through the item-aware
encoders of :mod:`dsrsd.kt_encoders`, so the book compares them with the fusion methods in one
protocol. The other modalities (content, item statistics) are ignored. A row whose history is
missing (``present`` False, or hidden by modality dropout) gets a learned constant, as in
:class:`~dsrsd.baselines.Unimodal`. ``cfg.seq_encoder`` does not apply: each model has its own.

* :class:`DKT` (Piech et al. 2015): a recurrent net (LSTM by default, as pyKT's DKT) over the
  interactions, then one output layer. DKT's output layer has one unit per skill, read at the
  next item's skills; here the next item ``x_t`` is an input of step t instead
  (``[y_{t-1}; x_t]``) and one unit reads the state, which is the same information at question
  level. ``rasch=False`` (default) keeps DKT's skills-only inputs.
* :class:`AKT` (Ghosh et al. 2020): Rasch embeddings, knowledge and question encoders, the
  knowledge retriever (:class:`~dsrsd.kt_encoders.KTAttentionEncoder`; its docstring says what
  is simplified), and AKT's MLP predictor on ``[retrieved knowledge; question embedding]``.
  AKT's L2 penalty on the problem difficulties ``mu_q`` is ``mu_l2`` (added to the loss, as
  AKT does); with ``mu_l2=0`` (default) only AdamW's decoupled weight decay acts on ``mu``
  (an ``[items, 1]`` matrix), which under Adam is a much weaker pull toward 0.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dsrsd.base import FusionModel, Output
from dsrsd.data.batch import Batch, ModalitySpec, TaskSpec
from dsrsd.errors import DsrsdError
from dsrsd.kt_encoders import KTAttentionEncoder, KTRecurrentEncoder


def kt_modality(specs: list[ModalitySpec], method: str) -> int:
    """Index of the first ``kt`` layout modality; a one-line error when there is none."""
    for i, s in enumerate(specs):
        if s.layout == "kt":
            return i
    raise DsrsdError(f"{method} needs a knowledge-tracing history (a modality with layout "
                     f"'kt', e.g. --dataset kt or assist2009); got {[s.name for s in specs]}")


class HistoryOnly(FusionModel):
    """Shared plumbing: the ``kt`` modality alone, a learned constant where it is missing."""

    method = "history-only"

    def __init__(self, specs: list[ModalitySpec], task: TaskSpec, d: int = 128, **kw):
        index = kt_modality(specs, self.method)
        super().__init__([specs[index]], task, d, **kw)
        self.index = index  # column of ``batch.present`` (which holds every modality)
        self.modality = specs[index].name
        self.missing_logit = nn.Parameter(torch.zeros(()))

    def history(self, batch: Batch) -> Tensor:
        return batch.x[self.modality]

    def fill_missing(self, batch: Batch, logits: Tensor) -> Tensor:
        """``logits`` where the history is present, the learned constant elsewhere."""
        here = self.present_mask(batch, check=False)[:, self.index]
        return torch.where(here, logits, self.missing_logit.to(logits.dtype).expand_as(logits))


class DKT(HistoryOnly):
    """DKT (module docstring). Args: ``cell`` (``lstm`` | ``gru``), ``rasch`` (add the problem
    term to the embeddings)."""

    method = "dkt"

    def __init__(self, specs: list[ModalitySpec], task: TaskSpec, d: int = 128,
                 cell: str = "lstm", rasch: bool = False, **kw):
        super().__init__(specs, task, d, **kw)
        dropout = kw.get("dropout", 0.1)
        # replaces the generic KT encoder the base built: DKT's own cell, raw states
        self.encoders[self.modality] = KTRecurrentEncoder(self.specs[0], d, dropout, cell, rasch,
                                                          norm=False)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(d, 1)

    def forward(self, batch: Batch) -> Output:
        h = self.flatten_steps(self.encoders[self.modality](self.history(batch)), batch)
        return Output(self.fill_missing(batch, self.out(self.drop(h)).squeeze(-1)))


class AKT(HistoryOnly):
    """AKT (module docstring). Args: ``layers`` (blocks of each encoder), ``heads``, ``rasch``,
    ``mu_l2``: AKT's L2 penalty on the problem difficulties ``mu_q`` added to the loss (term
    ``rasch_l2``, pre-weighted; AKT uses 1e-5; 0 = off, the decoupled weight decay only);
    ``distance``: ``"step"`` (our fused simplification) or ``"context"`` (AKT's context-aware
    distance, unfused); ``attn_dropout``: dropout on the attention weights (AKT has it; 0 here
    by default, for speed on CPU); ``ff_mult``: the knowledge encoder's feed-forward width in
    units of ``d`` (2 here; AKT's 1024 at d 256 is 4); ``retriever_ff_mult``: the same for the
    knowledge retriever (AKT's one ``d_ff`` sets both: pass 4 to each for its widths; two
    options so that records made before the second keep their models); ``predictor_width``:
    the predictor's first hidden width, the second is half of it (default ``d``; AKT uses 512
    at any ``d``)."""

    method = "akt"

    def __init__(self, specs: list[ModalitySpec], task: TaskSpec, d: int = 128, layers: int = 1,
                 heads: int = 4, rasch: bool = True, mu_l2: float = 0.0, distance: str = "step",
                 attn_dropout: float = 0.0, ff_mult: int = 2, retriever_ff_mult: int = 2,
                 predictor_width: int | None = None, **kw):
        super().__init__(specs, task, d, **kw)
        if not mu_l2 >= 0:
            raise DsrsdError(f"mu_l2 must be >= 0, got {mu_l2}")
        width = d if predictor_width is None else predictor_width
        if not (isinstance(width, int) and width >= 2):
            raise DsrsdError(f"predictor_width must be an integer >= 2, got {predictor_width!r}")
        self.mu_l2 = float(mu_l2)
        dropout = kw.get("dropout", 0.1)
        self.encoders[self.modality] = KTAttentionEncoder(
            self.specs[0], d, dropout, layers, heads, rasch, project=False, distance=distance,
            attn_dropout=attn_dropout, ff_mult=ff_mult, retriever_ff_mult=retriever_ff_mult)
        half = max(width // 2, 1)
        self.predictor = nn.Sequential(
            nn.Linear(2 * d, width), nn.ReLU(), nn.Dropout(dropout), nn.Linear(width, half),
            nn.ReLU(), nn.Dropout(dropout), nn.Linear(half, 1))

    def forward(self, batch: Batch) -> Output:
        h, item = self.encoders[self.modality].retrieve(self.history(batch))
        f = self.flatten_steps(torch.cat([h, item], -1), batch)
        aux = {}
        if self.mu_l2 > 0 and torch.is_grad_enabled():
            # AKT's penalty, added to the loss: under Adam a coupled L2 pulls the difficulty of a
            # problem absent from the batch toward 0 at the full step size, which AdamW's
            # decoupled weight decay (lr * wd per step) does not.
            mu = self.encoders[self.modality].emb.mu.weight
            aux["rasch_l2"] = self.mu_l2 * mu.float().pow(2).sum()
        return Output(self.fill_missing(batch, self.predictor(f).squeeze(-1)), aux)


__all__ = ["AKT", "DKT", "HistoryOnly", "kt_modality"]
