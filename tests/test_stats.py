"""dsrsd.stats: the numbers behind every "within the noise" in the book."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from dsrsd import stats


def _data(n=300, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    good = y + rng.normal(0, 0.8, n)
    weak = y + rng.normal(0, 3.0, n)
    return y, good, weak


def test_auc_on_resamples_matches_sklearn_on_every_resample_ties_included():
    y, good, _ = _data()
    good = np.round(good, 1)  # ties: each counts one half, as in sklearn
    idx = stats.bootstrap_indices(len(y), 20, seed=3)
    draws = stats.auc_on_resamples(y, good, idx)
    expected = [roc_auc_score(y[i], good[i]) for i in idx]
    np.testing.assert_allclose(draws, expected, rtol=0, atol=1e-12)


def test_identity_resample_gives_the_plain_auc():
    y, good, _ = _data()
    idx = np.arange(len(y))[None, :]
    assert stats.auc_on_resamples(y, good, idx)[0] == pytest.approx(roc_auc_score(y, good), abs=1e-12)


def test_one_class_resample_is_nan_not_an_error():
    y = np.array([0, 1, 0, 1])
    draws = stats.auc_on_resamples(y, np.array([0.1, 0.9, 0.2, 0.8]), np.array([[0, 0, 2, 2]]))
    assert np.isnan(draws[0])


def test_paired_bootstrap_identical_models_differ_by_exactly_zero():
    y, good, _ = _data()
    draws = stats.paired_bootstrap_auc(y, [good, good.copy()], n_boot=200)
    assert np.array_equal(draws[:, 0], draws[:, 1])
    assert stats.interval(draws[:, 1] - draws[:, 0]) == (0.0, 0.0)


def test_paired_bootstrap_separates_a_real_gap_and_is_seeded():
    y, good, weak = _data(n=2000)
    draws = stats.paired_bootstrap_auc(y, [weak, good], n_boot=300, seed=1)
    lo, hi = stats.interval(draws[:, 1] - draws[:, 0])
    assert lo > 0 and hi > lo
    assert stats.noise_word(lo, hi) == "higher"
    again = stats.paired_bootstrap_auc(y, [weak, good], n_boot=300, seed=1)
    assert np.array_equal(draws, again)


def test_interval_and_noise_word():
    draws = np.linspace(-1, 1, 1001)
    lo, hi = stats.interval(draws, level=0.9)
    assert lo == pytest.approx(-0.9) and hi == pytest.approx(0.9)
    assert stats.noise_word(lo, hi).startswith("within the noise")
    assert stats.noise_word(-0.2, -0.1) == "lower"
    with pytest.raises(ValueError, match="level"):
        stats.interval(draws, level=1.5)
    with pytest.raises(ValueError, match="finite"):
        stats.interval(np.array([np.nan]))


def test_holm_matches_a_worked_example_and_keeps_order():
    # p sorted: 0.01 (x4 = 0.04), 0.02 (x3 = 0.06), 0.03 (x2 = 0.06 by monotonicity), 0.5 (x1)
    adjusted = stats.holm([0.03, 0.5, 0.01, 0.02])
    np.testing.assert_allclose(adjusted, [0.06, 0.5, 0.04, 0.06])
    assert stats.holm([0.9, 0.8]).tolist() == [1.0, 1.0]  # capped at 1
    assert stats.holm([]).size == 0
    with pytest.raises(ValueError, match="p-values"):
        stats.holm([0.1, 1.2])


def test_retained_skill():
    assert stats.retained_skill(0.75, 1.0) == pytest.approx(0.5)
    assert stats.retained_skill(0.9, 0.9) == pytest.approx(1.0)
    # A weak model that loses little raw AUC can still keep less of its skill.
    assert stats.retained_skill(0.58, 0.60) < stats.retained_skill(0.90, 0.95)


def test_effective_rank_of_isotropic_and_collapsed_data():
    rng = np.random.default_rng(0)
    iso = rng.normal(size=(20000, 8))
    assert stats.effective_rank(iso) == pytest.approx(8, rel=0.01)
    line = rng.normal(size=(500, 1)) @ rng.normal(size=(1, 8))
    assert stats.effective_rank(line) == pytest.approx(1, abs=1e-6)


def test_retrieval_hits_perfect_and_chance():
    from dsrsd.probes import retrieval_hits

    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 8))
    assert retrieval_hits([a, 2 * a, a + 1e-6]).tolist() == [1.0] * 50  # same directions
    shuffled = retrieval_hits([a, a[rng.permutation(50)]])
    assert shuffled.shape == (50,) and shuffled.mean() < 0.2


def test_fusion_weights_are_a_distribution_over_present_modalities():
    from dsrsd.config import TrainConfig
    from dsrsd.data.synthetic import load_synthetic
    from dsrsd.probes import fusion_weights
    from dsrsd.train import fit

    splits = load_synthetic("default", n=200, seed=0)
    rec = fit(TrainConfig(method="dsrsd", epochs=1, seed=0, d=16), splits=splits, progress=False)
    rec["model"].train()
    alpha, gate = fusion_weights(rec["model"], splits.test)
    assert rec["model"].training  # the caller's mode is restored
    assert alpha.shape == (len(splits.test), len(splits.test.names)) and gate.shape == (len(splits.test),)
    np.testing.assert_allclose(alpha.sum(1), 1.0, atol=1e-5)
    assert ((gate > 0) & (gate < 1)).all()
