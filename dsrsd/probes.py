"""Diagnostics on learned streams: linear probes to planted factors, covariance summaries."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import train_test_split

from dsrsd.data.batch import MultimodalData


@torch.no_grad()
def collect_streams(model, data: MultimodalData, batch_size: int = 1024) -> dict[str, list[np.ndarray]]:
    """Shared ``s``, private ``p`` and aligned ``z`` of every modality over ``data`` (eval mode)."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    acc: dict[str, list[list[torch.Tensor]]] = {"s": [], "p": [], "z": []}
    for batch in data.batches(batch_size):
        st = model.streams(batch.to(device))
        for key in acc:
            acc[key].append([t.float().cpu() for t in st[key]])
    model.train(was)
    return {key: [torch.cat([chunk[m] for chunk in acc[key]]).numpy()
                  for m in range(len(acc[key][0]))] for key in acc}


def probe_r2(features: np.ndarray, target: np.ndarray, seed: int = 0) -> float:
    """Held-out R^2 of a ridge probe (alpha by CV) from ``features`` to ``target`` (all columns)."""
    xtr, xte, ytr, yte = train_test_split(features, target, test_size=0.3, random_state=seed)
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-8
    probe = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit((xtr - mu) / sd, ytr)
    pred = probe.predict((xte - mu) / sd)
    ss_res = ((yte - pred) ** 2).sum(0)
    ss_tot = ((yte - yte.mean(0)) ** 2).sum(0)
    return float(np.mean(1 - ss_res / ss_tot))


def offdiag_mass(x: np.ndarray) -> float:
    """Share of squared correlation mass off the diagonal (0 = decorrelated features)."""
    c = np.corrcoef(x, rowvar=False)
    c = np.nan_to_num(c)
    off = (c ** 2).sum() - (np.diag(c) ** 2).sum()
    return float(off / (c ** 2).sum())


def retrieval_hits(z: list[np.ndarray]) -> np.ndarray:
    """Per-query top-1 cross-modal retrieval hit rate [N], averaged over ordered modality pairs.

    Query ``i`` of modality ``a`` hits when its nearest (cosine) row of modality ``b`` is row ``i``;
    the mean of the result is the top-1 retrieval accuracy, its spread gives a standard error."""
    from itertools import permutations

    unit = [v / (np.linalg.norm(v, axis=1, keepdims=True) + 1e-8) for v in z]
    hits = [np.argmax(unit[a] @ unit[b].T, axis=1) == np.arange(len(unit[a]))
            for a, b in permutations(range(len(unit)), 2)]
    return np.mean(hits, axis=0)


@torch.no_grad()
def fusion_weights(model, data: MultimodalData, batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample modality weights ``alpha`` [N, M] and mean feature gate ``g`` [N] of a fusion
    model that reports them in ``Output.info`` (DSRSD-Net), in eval mode."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    alphas, gates = [], []
    for batch in data.batches(batch_size):
        info = model(batch.to(device)).info
        alphas.append(info["alpha"].float().cpu())
        gates.append(info["gate"].float().cpu())
    model.train(was)
    return torch.cat(alphas).numpy(), torch.cat(gates).numpy()


def without_modality(data: MultimodalData, m: int) -> MultimodalData:
    """A copy of ``data`` with modality ``m`` marked missing in every sample (inputs untouched)."""
    import dataclasses

    if not 0 <= m < len(data.names):
        raise ValueError(f"without_modality: modality index {m} not in 0..{len(data.names) - 1}")
    present = data.present.clone()
    present[:, m] = False
    return dataclasses.replace(data, present=present, name=f"{data.name} without {data.names[m]}")
