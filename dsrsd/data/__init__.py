"""Datasets: each returns :class:`~dsrsd.data.batch.Splits` in the one batch format."""

from __future__ import annotations

from dsrsd.data.batch import Batch, ModalitySpec, MultimodalData, Splits, TaskSpec, flat_targets
from dsrsd.errors import DsrsdError

DATASETS = ("synthetic", "oulad", "assist2009")


def load_dataset(name: str, seed: int = 0, **params) -> Splits:
    """Load ``name`` with dataset parameters (e.g. ``scenario``, ``cutoff``, ``fold``)."""
    if name == "synthetic":
        from dsrsd.data.synthetic import load_synthetic
        # The data is fixed (its own seed, default 0); the run seed varies the model only.
        return load_synthetic(**{"seed": 0, **params})
    if name == "oulad":
        from dsrsd.data.oulad import load_oulad
        return load_oulad(seed=seed, **params)
    if name == "assist2009":
        from dsrsd.data.assist import load_assist2009
        return load_assist2009(**params)
    raise DsrsdError(f"unknown dataset {name!r} (expected one of {', '.join(DATASETS)})")


__all__ = ["Batch", "ModalitySpec", "MultimodalData", "Splits", "TaskSpec", "flat_targets",
           "load_dataset", "DATASETS"]
