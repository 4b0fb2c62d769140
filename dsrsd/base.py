"""What every fusion method shares: encoders, per-step flattening, masks, modality dropout, head.

A method subclasses :class:`FusionModel` and implements ``forward(batch) -> Output``. The
trainer adds ``Output.aux`` (unweighted loss terms, by name) to the task loss with the weights
of the config, so a method's regularisers live next to its architecture and nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from dsrsd.data.batch import Batch, ModalitySpec, TaskSpec
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
        # Set by the trainer under torchrun: gathers a tensor's rows from every rank (with
        # gradient), so batch-level losses see the global batch, as a single process would.
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

    def present_rows(self, batch: Batch) -> Tensor:
        """Presence mask per output row (expanded over scored steps in per-step tasks)."""
        present = batch.present
        if self.per_step:
            t = batch.y_mask.shape[1]
            present = present.unsqueeze(1).expand(-1, t, -1)[batch.y_mask]
        return present

    def encode(self, batch: Batch) -> tuple[list[Tensor], Tensor]:
        """Encode every modality; returns ``h_m`` ``[N, d]`` (zero where missing) and ``present``.

        Modality dropout is applied here in training mode. A row with no modality is an error.
        """
        present = self.present_rows(batch)
        if self.training:
            present = drop_modalities(present, self.modality_dropout)
        if present.shape[0] and not bool(present.any(1).all()):
            raise DsrsdError("a sample has every modality missing; drop it or provide one")
        hs = []
        for m, s in enumerate(self.specs):
            h = self.encoders[s.name](batch.x[s.name], batch.pad.get(s.name))
            h = self.flatten_steps(h, batch)
            # Zeroing makes a missing modality contribute nothing, whatever its tensor held.
            hs.append(h * present[:, m:m + 1].to(h.dtype))
        return hs, present

    def head_logits(self, head: nn.Module, f: Tensor) -> Tensor:
        out = head(f)
        return out if self.task.kind == "multiclass" else out.squeeze(-1)
