"""Test-time Gaussian noise on one modality (dsrsd.train.add_noise) and its place in records."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from dsrsd.data.synthetic import load_synthetic
from dsrsd.errors import DsrsdError
from dsrsd.train import add_noise, fit, real_entries
from tests.helpers import small_config


def _test_split():
    test = load_synthetic(seed=0, n=6000).test
    present = test.present.clone()
    present[:20, 0] = False  # m0 missing for the first 20 samples
    pad = test.pad["m2"].clone()
    pad[:, -3:] = False  # the last 3 steps of every sequence are padding
    return replace(test, present=present, pad={**test.pad, "m2": pad})


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_noise_touches_only_the_real_entries_of_the_named_modality():
    test = _test_split()
    for name in ("m0", "m2"):
        noisy = add_noise(test, name, 1.0, _gen())
        real = real_entries(test, name)
        changed = (noisy.x[name] != test.x[name]).any(-1)
        assert torch.equal(changed, real)  # every real entry moves, nothing else does
        for other in test.names:
            if other != name:
                assert noisy.x[other] is test.x[other]
    assert not real_entries(test, "m0")[:20].any()  # absent samples
    assert not real_entries(test, "m2")[:, -3:].any()  # padding steps


def test_noise_is_scaled_by_each_features_spread_and_sigma_zero_is_the_identity():
    test = _test_split()
    x = test.x["m0"]
    real = real_entries(test, "m0")
    for sigma in (0.5, 2.0):
        delta = (add_noise(test, "m0", sigma, _gen(1)).x["m0"] - x)[real]
        ratio = delta.std(0) / (sigma * x[real].std(0))
        assert torch.allclose(ratio, torch.ones_like(ratio), atol=0.12)  # 900 samples: sd within a few %
    assert torch.equal(add_noise(test, "m0", 0.0, _gen()).x["m0"], x)
    # seeded: the same generator seed gives the same draw
    assert torch.equal(add_noise(test, "m0", 1.0, _gen(3)).x["m0"],
                       add_noise(test, "m0", 1.0, _gen(3)).x["m0"])


def test_noise_on_token_ids_is_a_one_line_error():
    test = _test_split()
    tokens = replace(test)
    tokens.x = {**test.x, "m0": torch.zeros(len(test), 4, dtype=torch.long)}  # as a KT history
    with pytest.raises(DsrsdError, match="token ids") as e:
        add_noise(tokens, "m0", 1.0, _gen())
    assert "\n" not in str(e.value)


def test_records_carry_noise_robustness_and_a_model_ignores_noise_on_what_it_does_not_read():
    rec = fit(small_config("unimodal", {"modality": "m0"}, dataset="synthetic",
                           data_params={"n": 600}), out=None, progress=False)
    noise = rec["robustness"]["noise"]
    assert set(noise) == {"m0", "m1", "m2"} and set(noise["m1"]) == {"0.5", "1", "2"}
    clean = rec["test"]["auc"]
    for name in ("m1", "m2"):  # the single-modality network reads m0 alone
        assert all(auc == clean for auc in noise[name].values())
    assert noise["m0"]["2"] < clean  # heavy noise on the one modality it reads costs skill
