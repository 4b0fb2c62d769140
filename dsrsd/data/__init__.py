"""Datasets: each returns :class:`~dsrsd.data.batch.Splits` in the one batch format."""

from __future__ import annotations

from dsrsd.data.batch import Batch, ModalitySpec, MultimodalData, Splits, TaskSpec, flat_targets
from dsrsd.errors import DsrsdError

DATASETS = ("synthetic", "oulad", "assist2009", "kt")


def check_dataset_params(name: str, params: dict) -> None:
    """The dataset's own range checks on ``params`` (keys and types already checked by
    :func:`dsrsd.validate.check_data_params`); loads nothing."""
    import inspect
    if name == "synthetic":
        from dsrsd.data.synthetic import make_config
        rest = {k: v for k, v in params.items() if k != "scenario"}
        make_config(params.get("scenario", "default"), **{"seed": 0, **rest})
    elif name == "oulad":
        from dsrsd.data.oulad import _check_params, load_oulad
        kw = inspect.signature(load_oulad).bind_partial(**params)
        kw.apply_defaults()
        _check_params(*(kw.arguments[k] for k in ("cutoff", "label", "split", "direction",
                                                   "val_frac")))
    elif name == "assist2009":
        from dsrsd.data.assist import check_params, load_assist2009
        kw = inspect.signature(load_assist2009).bind_partial(**params)
        kw.apply_defaults()
        check_params(*(kw.arguments[k] for k in ("fold", "max_len", "text_dim", "valid",
                                                 "inner_frac")))
    elif name == "kt":
        from dsrsd.data.kt import check_kt_params, load_kt
        kw = inspect.signature(load_kt).bind_partial(**params)
        kw.apply_defaults()
        check_kt_params(*(kw.arguments[k] for k in ("path", "fold", "max_len", "text_dim", "valid",
                                                    "inner_frac", "name")))


def subsample_train(splits: Splits, max_train: int, seed: int) -> Splits:
    """Train on a seeded random subsample of ``max_train`` training samples (val/test whole)."""
    import torch
    n = len(splits.train)
    if max_train >= n:
        return splits
    g = torch.Generator().manual_seed(10_000 + seed)
    idx = torch.randperm(n, generator=g)[:max_train].sort().values
    info = {**splits.info, "subsample_train": [max_train, n]}
    return Splits(splits.train.subset(idx, splits.train.name), splits.val, splits.test, info)


def load_dataset(name: str, seed: int = 0, max_train: int | None = None, **params) -> Splits:
    """Load ``name`` with dataset parameters (e.g. ``scenario``, ``cutoff``, ``fold``), checked
    first (:func:`dsrsd.validate.check_data_params`). ``max_train``: train on a seeded subsample."""
    from dsrsd.validate import check_data_params
    check_data_params(name, {**params, **({} if max_train is None else {"max_train": max_train})})
    splits = _load(name, seed, **params)
    return subsample_train(splits, int(max_train), seed) if max_train else splits


def _load(name: str, seed: int, **params) -> Splits:
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
    if name == "kt":  # any knowledge-tracing data set: AKT folder, pyKT folder, skill-builder CSV
        from dsrsd.data.kt import load_kt
        return load_kt(**params)
    raise DsrsdError(f"unknown dataset {name!r} (expected one of {', '.join(DATASETS)})")


__all__ = ["Batch", "ModalitySpec", "MultimodalData", "Splits", "TaskSpec", "flat_targets",
           "load_dataset", "check_dataset_params", "subsample_train", "DATASETS"]
