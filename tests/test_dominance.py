"""dsrsd.dominance: fusion without per-modality normalisation (chapter 1), and book.fit_changed,
the way a chapter trains such a variant with the package's own loop."""

from __future__ import annotations

import pytest
import torch
from helpers import one_line
from torch import nn

from dsrsd import book, dominance
from dsrsd.baselines import EarlyFusion
from dsrsd.config import TrainConfig
from dsrsd.data.synthetic import load_synthetic
from dsrsd.errors import DsrsdError
from dsrsd.registry import build_model
from dsrsd.train import fit


@pytest.fixture(scope="module")
def splits():
    return load_synthetic("dominance", seed=0, n=300)


def _layernorms(module: nn.Module) -> int:
    return sum(isinstance(m, nn.LayerNorm) for m in module.modules())


def test_the_encoders_lose_every_layernorm_and_nothing_else_changes(splits):
    specs, task = splits.train.specs, splits.train.task
    torch.manual_seed(0)
    normed = EarlyFusion(specs, task, d=16)
    torch.manual_seed(0)
    raw = dominance.RawEarlyFusion(specs, task, d=16)
    assert _layernorms(normed.encoders) > 0 and _layernorms(raw.encoders) == 0
    assert _layernorms(raw.head) == _layernorms(normed.head) > 0  # after the fusion: kept
    # the same seed gives the same weights: the variants differ by the normalisation alone
    sd = raw.state_dict()
    kept = {k: v for k, v in normed.state_dict().items() if k in sd}
    assert set(sd) <= set(normed.state_dict()) and len(kept) == len(sd)
    assert all(torch.equal(v, sd[k]) for k, v in kept.items())
    # DSRSD-Net: its encoders lose theirs; its projectors keep theirs
    cfg = TrainConfig(method="dsrsd", d=16)
    net = build_model(cfg, specs, task, splits.train)
    outside = _layernorms(net) - _layernorms(net.encoders)
    dominance.without_modality_norm(net)
    assert _layernorms(net.encoders) == 0 and _layernorms(net) == outside > 0


def test_a_loud_modality_fills_the_input_of_un_normalised_fusion_only(splits):
    """Scaling one modality's input by 1000 leaves its share of a normalised fusion input at
    about 1/M; without the normalisation it takes over the input (from the loud m0, which holds
    it on the unscaled data)."""
    specs, task = splits.train.specs, splits.train.task
    loud = load_synthetic("dominance", seed=0, n=300).test  # a copy: the fixture stays as it is
    loud.x[specs[1].name] = loud.x[specs[1].name] * 1000.0  # m1: no longer quiet
    torch.manual_seed(0)
    normed = EarlyFusion(specs, task, d=16)
    torch.manual_seed(0)
    raw = dominance.RawEarlyFusion(specs, task, d=16)
    s_norm = dominance.encoding_shares(normed, loud)
    s_raw = dominance.encoding_shares(raw, loud)
    assert s_norm.sum() == pytest.approx(1.0) and s_raw.sum() == pytest.approx(1.0)
    assert abs(s_norm - 1 / len(specs)).max() < 0.05
    assert s_raw[1] > 0.9
    assert dominance.encoding_shares(raw, splits.test)[0] > 0.9


def test_without_modality_norm_errors_are_one_line(splits):
    with pytest.raises(DsrsdError) as e:
        dominance.without_modality_norm(nn.Linear(2, 2))
    one_line(e, "without_modality_norm", "Linear", "no encoders")
    raw = dominance.RawEarlyFusion(splits.train.specs, splits.train.task, d=8)
    with pytest.raises(DsrsdError) as e:
        dominance.without_modality_norm(raw)  # nothing left to remove
    one_line(e, "RawEarlyFusion", "no LayerNorm")


def test_fit_changed_with_no_change_is_fit(splits):
    """The chapter's training path is the trainer's: with an identity change it gives the same
    model and numbers as fit (same process, same seed: bit-identical)."""
    cfg = TrainConfig(method="early", d=16, epochs=2, seed=3, device="cpu")
    a = fit(cfg, splits=splits, progress=False)
    b = book.fit_changed(cfg, splits, lambda model: model)
    assert a["test"] == b["test"] and a["best_epoch"] == b["best_epoch"]
    assert all(torch.equal(v, b["model"].state_dict()[k]) for k, v in a["model"].state_dict().items())
    c = book.fit_changed(cfg, splits, dominance.without_modality_norm)
    assert _layernorms(c["model"].encoders) == 0 and len(c["history"]) == 2
