"""Modality dominance, made measurable: fusion without per-modality normalisation.

Every encoder of :mod:`dsrsd.encoders` ends in a LayerNorm, which rescales each modality's
encoding ``h_m`` to unit scale before any fusion sees it; a loud modality (large scale, many
high-variance features) therefore cannot outweigh the quiet ones by its scale alone.
:func:`without_modality_norm` removes those LayerNorms from a built model, so chapter 1 can
show the failure the normalisation prevents (:class:`RawEarlyFusion`: early fusion as a plain
MLP on concatenated, un-normalised encodings) and ask whether DSRSD-Net's gate prevents it
when the encoders do not. :func:`encoding_shares` measures how much of the fusion input each
modality holds. Nothing here is registered as a method: it is a diagnostic of chapter 1.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from dsrsd.base import FusionModel
from dsrsd.baselines import EarlyFusion
from dsrsd.data.batch import ModalitySpec, MultimodalData, TaskSpec
from dsrsd.errors import DsrsdError


def without_modality_norm(model: FusionModel) -> FusionModel:
    """``model`` with every LayerNorm inside its per-modality encoders replaced by an identity
    (in place; returned for chaining). Layers after the encoders (fusion, heads, DSRSD-Net's
    projectors) keep theirs. Raises when the encoders hold no LayerNorm."""
    if not isinstance(getattr(model, "encoders", None), nn.ModuleDict):
        raise DsrsdError(f"without_modality_norm: {type(model).__name__} has no encoders")
    n = 0
    for encoder in model.encoders.values():
        for name, child in list(encoder.named_modules()):
            if isinstance(child, nn.LayerNorm):
                parent = encoder.get_submodule(name.rpartition(".")[0]) if "." in name else encoder
                setattr(parent, name.rpartition(".")[2], nn.Identity())
                n += 1
    if n == 0:
        raise DsrsdError(f"without_modality_norm: the encoders of {type(model).__name__} hold "
                         "no LayerNorm to remove")
    return model


class RawEarlyFusion(EarlyFusion):
    """Early fusion without per-modality normalisation: :class:`~dsrsd.baselines.EarlyFusion`
    (concatenate every ``h_m``, then the MLP head) with the encoders' LayerNorms removed, so a
    modality's input scale reaches the fusion layer. Same parameters as early fusion (a
    LayerNorm's affine weights aside), and the same random initialisation for a given seed."""

    def __init__(self, specs: list[ModalitySpec], task: TaskSpec, d: int = 128, **kw):
        super().__init__(specs, task, d, **kw)
        without_modality_norm(self)


@torch.no_grad()
def encoding_shares(model: FusionModel, data: MultimodalData, batch_size: int = 1024) -> np.ndarray:
    """Each modality's share of the fusion input, ``[M]`` summing to 1: the mean over samples
    of ``|h_m|^2 / sum_k |h_k|^2`` for the encodings ``h_m`` (eval mode, present modalities
    only). Under per-modality normalisation every present modality holds about ``1/M``."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    shares = []
    for batch in data.batches(batch_size):
        hs, _ = model.encode(batch.to(device))
        energy = torch.stack([h.float().pow(2).sum(-1) for h in hs], 1)  # [N, M]
        shares.append(energy / energy.sum(1, keepdim=True).clamp_min(1e-30))
    model.train(was)
    return torch.cat(shares).mean(0).cpu().numpy()
