"""The method contract (what the trainer calls) and what every fusion method shares.

Adding a method
===============

A method is **one file** implementing one of the two contracts below, plus **one line** in
:data:`dsrsd.registry.METHODS` (a builder ``(cfg, specs, task, train) -> model``). Models never
train themselves: the loops, the optimiser, autocast and data parallelism live in the training
layer (:mod:`dsrsd.step`, :mod:`dsrsd.train`, :mod:`dsrsd.fitting`).

**Gradient-trained methods** subclass :class:`FusionModel` (an ``nn.Module``). The trainer calls:

* ``forward(batch) -> Output`` (required): ``logits`` aligned with ``flat_targets(batch)``;
  ``aux``: the method's *unweighted* loss terms by name, which the one train step
  (:func:`dsrsd.step.train_step`) adds to the task loss with ``cfg.weights``
  (:func:`dsrsd.losses.total_objective`); ``info``: diagnostics, never trained on.
* ``on_epoch_start(epoch, train, device)`` (optional, default: nothing): called before every
  training epoch, e.g. CLEAR's dynamic projection is re-estimated here.
* ``set_term_weights(weights)`` (optional, default: nothing): the one train step's objective
  (:func:`dsrsd.step.supervised_loss`) tells the method, before each forward, the weight it
  gives each ``aux`` term, so a method may skip computing terms weighed 0 (DSRSD-Net's
  ``skip_unweighted``).
* ``batch_gather`` (declared attribute, ``None`` in one process): under ``torchrun`` the trainer
  sets it to a function gathering a tensor's rows from every rank, keeping the gradient
  (:func:`dsrsd.train.gather_rows`). A method whose loss terms are statistics of the batch
  (contrastive negatives, covariances) passes their rows through :meth:`FusionModel.gather_batch`,
  so those terms see the global batch, as one process would (DSRSD-Net does; MISA's and COrAL's
  terms are computed per rank).

The training layer also reads ``modality_dropout`` and the building blocks below, which keep
the shared pieces in one place: :meth:`FusionModel.present_mask` (presence per output row +
modality dropout + the "no row without a modality" check), :func:`masked_mean`,
:func:`keep_first_valid` (never an all-masked attention key row) and :func:`aux_row_sample`
(the bounded row sample of auxiliary terms).

**Directly fitted methods** (gradient boosting, COrAL's linear-probe protocol) subclass
:class:`DirectFit`: they hold what was fitted and predict (``predict_proba(data)``); their
fitting routine is a function of the training layer, registered in
:data:`dsrsd.fitting.FITTERS` under the class (one more line). ``net`` is the torch network a
direct-fit method holds, if any (moved to the device and counted in ``n_params``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from dsrsd.data.batch import Batch, ModalitySpec, MultimodalData, TaskSpec
from dsrsd.encoders import build_encoder, mlp
from dsrsd.errors import DsrsdError


@dataclass
class Output:
    """A forward pass: logits aligned with ``flat_targets(batch)``, loss terms, diagnostics."""

    logits: Tensor
    aux: dict[str, Tensor] = field(default_factory=dict)
    info: dict[str, Tensor] = field(default_factory=dict)


def drop_modalities(present: Tensor, p: float, generator: torch.Generator | None = None) -> Tensor:
    """Randomly mark present modalities missing with probability ``p``, keeping >= 1 per row."""
    if p <= 0:
        return present
    u = torch.rand(present.shape, generator=generator, device="cpu").to(present.device)
    kept = present & (u >= p)
    # A row that would lose every modality keeps one of its present ones, chosen at random.
    rescue = torch.zeros_like(present)
    rescue.scatter_(1, torch.where(present, u, -1.0).argmax(1, keepdim=True), True)
    return torch.where(kept.any(1, keepdim=True), kept, rescue & present)


def masked_mean(x: Tensor, valid: Tensor) -> Tensor:
    """Mean of ``x`` ``[B, L, ...]`` over the valid positions of dim 1 (``valid`` ``[B, L]``);
    0 for a row with none."""
    w = valid.unsqueeze(-1).to(x.dtype)
    return (x * w).sum(1) / w.sum(1).clamp_min(1)


def keep_first_valid(valid: Tensor, always: bool = False) -> Tensor:
    """Attention key validity ``[B, L]`` with position 0 made valid where a row has none, so
    softmax never sees an all-masked row (such rows are missing modalities, whose output the
    presence mask discards). ``always``: position 0 valid in every row (causal attention: step
    0 must be visible to every query)."""
    first = torch.ones_like(valid[:, 0]) if always else ~valid.any(1)
    return torch.cat([(valid[:, 0] | first).unsqueeze(1), valid[:, 1:]], 1)


def aux_row_sample(n: int, max_rows: int, device: torch.device) -> Tensor | None:
    """Row indices for auxiliary terms: ``None`` (all rows) when ``n <= max_rows``, else a
    random sample of ``max_rows`` rows (so per-step tasks with many scored steps stay cheap)."""
    if n <= max_rows:
        return None
    return torch.randperm(n, device=device)[:max_rows]


def check_present(present: Tensor) -> Tensor:
    """``present`` itself; a row with every modality missing is an error."""
    if present.shape[0] and not bool(present.any(1).all()):
        raise DsrsdError("a sample has every modality missing; drop it or provide one")
    return present


class FusionModel(nn.Module):
    """Per-modality encoders plus the plumbing every method needs.

    Args:
        specs: the modalities, in batch order.
        task: the target (decides the head size and per-step flattening).
        d: hidden size of every encoder.
        seq_encoder: ``gru`` or ``transformer`` for sequence modalities.
        dropout: dropout inside encoders.
        modality_dropout: training-time probability of hiding each present modality.
    """

    def __init__(self, specs: list[ModalitySpec], task: TaskSpec, d: int = 128,
                 seq_encoder: str = "gru", dropout: float = 0.1, modality_dropout: float = 0.0):
        super().__init__()
        if len(specs) < 1:
            raise DsrsdError("a model needs at least one modality (got zero)")
        if d <= 0:
            raise DsrsdError(f"hidden size d must be positive, got {d}")
        if not 0.0 <= modality_dropout < 1.0:
            raise DsrsdError(f"modality_dropout must be in [0, 1), got {modality_dropout}")
        self.specs = list(specs)
        self.task = task
        self.d = d
        self.per_step = task.kind == "per_step"
        self.modality_dropout = modality_dropout
        # The task head gets twice the encoder dropout, capped at 0.2 (0.2 at the default 0.1),
        # because that is where small tabular tasks overfit; ``dropout=0`` turns every one off.
        self.head_dropout = min(0.2, 2 * dropout)
        # The contract's declared attribute (module docstring): set by the trainer under
        # torchrun to gather a tensor's rows from every rank (with gradient), so batch-level
        # losses see the global batch, as a single process would.
        self.batch_gather: Callable[[Tensor], Tensor] | None = None
        self.encoders = nn.ModuleDict({
            s.name: build_encoder(s, d, seq_encoder, self.per_step, dropout) for s in specs})

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    def make_head(self, d_in: int, dropout: float | None = None) -> nn.Module:
        """Task predictor: MLP(d_in -> d -> out) with GELU and dropout (``head_dropout`` unless
        given)."""
        return mlp(d_in, self.d, self.task.out_dim,
                   self.head_dropout if dropout is None else dropout)

    def flatten_steps(self, t: Tensor, batch: Batch) -> Tensor:
        """Per-step tasks: keep scored positions only (``[B, T, ...] -> [N, ...]``)."""
        return t[batch.y_mask] if self.per_step else t

    def present_rows(self, batch: Batch, present: Tensor | None = None) -> Tensor:
        """Presence mask per output row (expanded over scored steps in per-step tasks);
        ``present`` (per sample) instead of ``batch.present`` when given."""
        present = batch.present if present is None else present
        if self.per_step:
            t = batch.y_mask.shape[1]
            present = present.unsqueeze(1).expand(-1, t, -1)[batch.y_mask]
        return present

    def present_mask(self, batch: Batch, check: bool = True) -> Tensor:
        """Presence per output row, with modality dropout in training mode; a row with no
        modality is an error (unless ``check`` is False)."""
        present = self.present_rows(batch)
        if self.training:
            present = drop_modalities(present, self.modality_dropout)
        return check_present(present) if check else present

    def encode(self, batch: Batch) -> tuple[list[Tensor], Tensor]:
        """Encode every modality; returns ``h_m`` ``[N, d]`` (zero where missing) and ``present``
        (:meth:`present_mask`: modality dropout is applied here in training mode)."""
        present = self.present_mask(batch)
        hs = []
        for m, s in enumerate(self.specs):
            h = self.encoders[s.name](batch.x[s.name], batch.pad.get(s.name))
            h = self.flatten_steps(h, batch)
            # Zeroing makes a missing modality contribute nothing, whatever its tensor held.
            hs.append(h * present[:, m:m + 1].to(h.dtype))
        return hs, present

    def gather_batch(self, t: Tensor) -> Tensor:
        """``t``'s rows from every rank under ``torchrun`` (with gradient), else ``t``: what a
        loss term that is a statistic of the batch reads (see the module docstring)."""
        return t if self.batch_gather is None else self.batch_gather(t)

    def on_epoch_start(self, epoch: int, train: MultimodalData, device: torch.device) -> None:
        """Called by the trainer before every training epoch; nothing by default."""

    def set_term_weights(self, weights: Mapping[str, float]) -> None:
        """The objective's weight of each ``Output.aux`` term (missing: 0), told by the train
        step before each forward; nothing by default (every term is computed)."""

    def head_logits(self, head: nn.Module, f: Tensor) -> Tensor:
        out = head(f)
        return out if self.task.kind == "multiclass" else out.squeeze(-1)


class DirectFit(ABC):
    """A method fitted outside the gradient loop (see the module docstring).

    It holds what its fitting routine (:data:`dsrsd.fitting.FITTERS`) produced and predicts;
    it never fits itself. ``net``: the torch network it holds, if any.
    """

    net: nn.Module | None = None

    @abstractmethod
    def predict_proba(self, data: MultimodalData) -> tuple[np.ndarray, np.ndarray]:
        """Targets and probabilities (``[N]`` binary, ``[N, C]`` multiclass) on ``data``."""


Method = FusionModel | DirectFit
