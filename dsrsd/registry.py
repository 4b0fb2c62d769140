"""One registry that builds every method from a config. Adding a method: one file + one line."""

from __future__ import annotations

from typing import Callable

from torch import nn

from dsrsd.config import TrainConfig
from dsrsd.data.batch import ModalitySpec, MultimodalData, TaskSpec
from dsrsd.errors import DsrsdError

Builder = Callable[[TrainConfig, list[ModalitySpec], TaskSpec, MultimodalData], nn.Module]


def _common(cfg: TrainConfig) -> dict:
    return {"d": cfg.d, "seq_encoder": cfg.seq_encoder, "dropout": cfg.dropout,
            "modality_dropout": cfg.modality_dropout}


def _params(cfg: TrainConfig, allowed: set[str]) -> dict:
    bad = set(cfg.method_params) - allowed
    if bad:
        raise DsrsdError(f"method {cfg.method!r} does not take parameter(s) {sorted(bad)} "
                         f"(allowed: {sorted(allowed) or 'none'})")
    return dict(cfg.method_params)


def build_dsrsd(cfg: TrainConfig, specs, task, train) -> nn.Module:
    from dsrsd.model import DSRSDNet
    allowed = {"k", "fusion", "temperature", "regression", "decorrelation", "orthogonality",
               "max_aux_rows"}
    return DSRSDNet(specs, task, **_common(cfg), **_params(cfg, allowed))


def build_early(cfg: TrainConfig, specs, task, train) -> nn.Module:
    from dsrsd.baselines import EarlyFusion
    return EarlyFusion(specs, task, **_common(cfg), **_params(cfg, set()))


METHODS: dict[str, Builder] = {
    "dsrsd": build_dsrsd,
    "early": build_early,
}


def build_model(cfg: TrainConfig, specs: list[ModalitySpec], task: TaskSpec,
                train: MultimodalData) -> nn.Module:
    """Construct ``cfg.method`` for these modalities and task (``train`` for data-fitted parts)."""
    if cfg.method not in METHODS:
        raise DsrsdError(f"unknown method {cfg.method!r} (expected one of {', '.join(METHODS)})")
    return METHODS[cfg.method](cfg, specs, task, train)
