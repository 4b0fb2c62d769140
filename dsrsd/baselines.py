"""Fusion baselines named by the DSRSD-Net abstract, built from the same encoders and head."""

from __future__ import annotations

import torch
from torch import nn

from dsrsd.base import FusionModel, Output
from dsrsd.data.batch import Batch, ModalitySpec, TaskSpec


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


__all__ = ["EarlyFusion", "nn"]
