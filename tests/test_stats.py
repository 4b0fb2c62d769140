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


# ------------------------------------------------------------------ Holm, by hand
def test_holm_hand_computed_families():
    # sorted 0.01, 0.03, 0.04 times 3, 2, 1: 0.03, 0.06, 0.04, made non-decreasing: 0.03, 0.06, 0.06
    np.testing.assert_allclose(stats.holm([0.04, 0.01, 0.03]), [0.06, 0.03, 0.06])
    # one test: unchanged; ties keep their order and their (equal) adjusted value
    assert stats.holm([0.2]).tolist() == [0.2]
    np.testing.assert_allclose(stats.holm([0.01, 0.01]), [0.02, 0.02])
    # sorted 0.001, 0.002, 0.3 times 3, 2, 1: the largest p-value keeps its value
    np.testing.assert_allclose(stats.holm([0.3, 0.001, 0.002]), [0.3, 0.003, 0.004])


def test_holm_omits_untested_comparisons_only_when_asked():
    p = [0.01, np.nan, 0.04]
    with pytest.raises(ValueError, match="p-values"):
        stats.holm(p)
    out = stats.holm(p, nan_policy="omit")  # a family of 2, not 3
    assert np.isnan(out[1])
    np.testing.assert_allclose(out[[0, 2]], [0.02, 0.04])
    assert np.isnan(stats.holm([np.nan], nan_policy="omit")).all()
    with pytest.raises(ValueError, match="nan_policy"):
        stats.holm(p, nan_policy="drop")


# ------------------------------------------------------------------ retained skill
def test_retained_skill_is_one_without_a_drop_and_zero_at_chance():
    assert stats.retained_skill(0.8, 0.8) == pytest.approx(1.0)
    assert stats.retained_skill(0.5, 0.8) == pytest.approx(0.0)
    assert stats.retained_skill(0.45, 0.8) < 0  # below chance
    out = stats.retained_skill(np.array([0.7, 0.6]), np.array([0.9, 0.5]))
    assert out[0] == pytest.approx(0.5) and np.isnan(out[1])  # no skill to retain
    assert isinstance(stats.retained_skill(0.7, 0.9), float)


# ------------------------------------------------------------------ pairing runs
def _runs(rows):
    import pandas as pd
    return pd.DataFrame(rows, columns=["variant", "unit", "test_auc"])


def test_pair_units_keeps_only_shared_units_in_order():
    df = _runs([("a", "s2", 0.72), ("a", "s0", 0.70), ("a", "s1", 0.71),
                ("b", "s1", 0.69), ("b", "s2", 0.70), ("b", "s3", 0.50), ("c", "s0", None)])
    pair = stats.pair_units(df, "a", "b")
    assert list(pair.index) == ["s1", "s2"] and list(pair.columns) == ["a", "b"]
    assert pair["a"].tolist() == [0.71, 0.72] and pair["b"].tolist() == [0.69, 0.70]


@pytest.mark.parametrize("rows, other, words", [
    ([("a", "s0", 0.7), ("b", "s1", 0.6)], "b", "share no unit"),
    ([("a", "s0", 0.7), ("c", "s0", None)], "c", "share no unit"),  # a missing metric is no run
    ([("a", "s0", 0.7), ("a", "s0", 0.71), ("b", "s0", 0.6)], "b", "more than one"),
    ([("a", "s0", 0.7)], "nobody", "share no unit"),
])
def test_pair_units_errors_are_one_line(rows, other, words):
    from dsrsd.errors import DsrsdError
    with pytest.raises(DsrsdError, match=words) as e:
        stats.pair_units(_runs(rows), "a", other)
    assert "\n" not in str(e.value)
    with pytest.raises(DsrsdError, match="no column 'val_auc'"):
        stats.pair_units(_runs(rows), "a", other, metric="val_auc")


def test_paired_t_matches_scipy_and_its_interval_matches_its_p_value():
    from scipy import stats as sps
    a = np.array([0.71, 0.73, 0.70, 0.74, 0.72])
    b = np.array([0.70, 0.70, 0.69, 0.71, 0.71])
    r = stats.paired_t(a, b)
    assert r.test == "paired_t" and r.n == 5
    assert r.p_value == sps.ttest_rel(a, b).pvalue
    assert r.mean_diff == pytest.approx(0.018)
    # by hand: sd of the differences, t quantile 2.776 at 4 degrees of freedom
    half = sps.t.ppf(0.975, 4) * np.std(a - b, ddof=1) / np.sqrt(5)
    assert (r.lo, r.hi) == pytest.approx((0.018 - half, 0.018 + half))
    # duality: the 95% interval excludes 0 exactly when p < 0.05
    assert (r.lo > 0) == (r.p_value < 0.05)
    level = 1 - r.p_value  # at this level the interval just touches 0
    assert stats.paired_t(a, b, level=level).lo == pytest.approx(0, abs=1e-12)


def test_paired_t_untestable_cases():
    for a, b in (([0.7], [0.6]), ([0.7, 0.8], [0.7, 0.8]), ([0.7, 0.8], [0.6, 0.7])):
        r = stats.paired_t(a, b)
        assert r.test == "none" and np.isnan(r.p_value) and np.isnan(r.lo)
    with pytest.raises(ValueError, match="equal 1-d"):
        stats.paired_t([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="level"):
        stats.paired_t([0.1, 0.2], [0.0, 0.3], level=95)


def test_paired_bootstrap_mean_diff_is_seeded_paired_and_within_the_data():
    a = np.array([0.71, 0.73, 0.70, 0.74, 0.72])
    b = a - np.array([0.01, 0.03, 0.01, 0.03, 0.01])
    lo, hi = stats.paired_bootstrap_mean_diff(a, b, n_boot=2000, seed=3)
    assert 0.01 <= lo < hi <= 0.03  # a percentile interval never leaves the observed range
    assert (lo, hi) == stats.paired_bootstrap_mean_diff(a, b, n_boot=2000, seed=3)
    # a shift common to both methods (a seed effect) cancels: pairing at work
    shift = np.array([0.0, 0.05, -0.05, 0.1, -0.1])
    assert stats.paired_bootstrap_mean_diff(a + shift, b + shift, 2000, 3) == pytest.approx((lo, hi))
    with pytest.raises(ValueError, match=">= 2 pairs"):
        stats.paired_bootstrap_mean_diff([0.7], [0.6])


@pytest.mark.parametrize("n, t_min, boot_min, boot_max", [(5, 0.92, 0.78, 0.90), (20, 0.92, 0.88, 0.96)])
def test_interval_coverage_on_simulated_runs(n, t_min, boot_min, boot_max):
    """95% intervals on seeded normal differences: the t interval covers about 95% at any n; the
    run bootstrap undercovers at 5 pairs (about 84%) and nears 95% with more pairs. Loose bounds:
    400 trials give a standard error of about 1.5 points."""
    rng = np.random.default_rng(12)
    trials, true = 400, 0.01
    t_hit = boot_hit = 0
    for k in range(trials):
        d = rng.normal(true, 0.02, n)
        r = stats.paired_t(d, np.zeros(n))
        t_hit += r.lo <= true <= r.hi
        lo, hi = stats.paired_bootstrap_mean_diff(d, np.zeros(n), n_boot=500, seed=k)
        boot_hit += lo <= true <= hi
    assert t_min <= t_hit / trials <= 0.98
    assert boot_min <= boot_hit / trials <= boot_max


def test_auc_on_resamples_with_heavy_ties_and_repeated_units_matches_sklearn():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 2000)
    prob = np.round(y * 0.3 + rng.random(2000), 1)  # 12 distinct values: ties everywhere
    idx = stats.bootstrap_indices(len(y), 5, seed=1)
    expected = [roc_auc_score(y[i], prob[i]) for i in idx]
    np.testing.assert_allclose(stats.auc_on_resamples(y, prob, idx), expected, rtol=0, atol=1e-12)


def test_bootstrap_offdiag_mass_is_offdiag_mass_of_each_explicit_resample():
    from dsrsd.probes import offdiag_mass

    rng = np.random.default_rng(0)
    n = 120
    shared = rng.normal(size=(n, 1))
    z0 = shared @ rng.normal(size=(1, 6)) + 0.5 * rng.normal(size=(n, 6))
    z1 = rng.normal(size=(n, 6))
    z1[:, 2] = 3.0  # a dead dimension: no correlations, as offdiag_mass counts it
    draws = stats.bootstrap_offdiag_mass([z0, z1], n_boot=25, seed=4)
    # The same resamples, drawn as counts per row and expanded into explicit row lists.
    counts = np.random.default_rng(4).multinomial(n, np.full(n, 1 / n), size=25)
    rows = [np.repeat(np.arange(n), c) for c in counts]
    with np.errstate(invalid="ignore", divide="ignore"):  # np.corrcoef on the dead dimension
        expected = [np.mean([offdiag_mass(z0[r]), offdiag_mass(z1[r])]) for r in rows]
    np.testing.assert_allclose(draws, expected, rtol=0, atol=1e-10)
    assert np.array_equal(draws, stats.bootstrap_offdiag_mass([z0, z1], n_boot=25, seed=4))


def test_bootstrap_offdiag_mass_separates_correlated_from_independent_columns():
    rng = np.random.default_rng(1)
    n = 1000
    indep = rng.normal(size=(n, 8))
    corr = rng.normal(size=(n, 1)) + 0.3 * rng.normal(size=(n, 8))
    d = stats.bootstrap_offdiag_mass([corr]) - stats.bootstrap_offdiag_mass([indep])
    lo, hi = stats.interval(d)
    assert lo > 0.5 and stats.noise_word(lo, hi) == "higher"
    with pytest.raises(ValueError, match="rows"):
        stats.bootstrap_offdiag_mass([indep, indep[:10]])


# ----------------------------------------------------------------- bootstrap over test units

def _clustered(k=60, m=30, spread=1.5, seed=0):
    """``k`` students of ``m`` predictions each; method a's edge over b differs by student
    (a per-student effect of sd ``spread``), so a student's rows move together."""
    rng = np.random.default_rng(seed)
    unit = np.repeat(rng.permutation(10 * k)[:k], m).astype(np.int32)  # ids need not be 0..k-1
    y = rng.integers(0, 2, k * m)
    edge = np.repeat(rng.normal(0.3, spread, k), m)
    prob_b = y + rng.normal(0, 1.0, k * m)
    prob_a = y * (1 + edge) + rng.normal(0, 1.0, k * m)
    return y, prob_a, prob_b, unit


def test_unit_bootstrap_of_identical_predictions_is_exactly_zero():
    y, prob_a, _, unit = _clustered()
    draws = stats.paired_unit_bootstrap(y, prob_a, prob_a.copy(), unit, n_boot=200)
    assert np.all(draws == 0) and stats.interval(draws) == (0.0, 0.0)


def test_unit_bootstrap_finds_a_planted_better_method_and_is_seeded():
    y, _, prob_b, unit = _clustered()
    better = y + np.random.default_rng(5).normal(0, 0.5, len(y))  # less noise than b
    draws = stats.paired_unit_bootstrap(y, better, prob_b, unit, n_boot=500, seed=1)
    assert stats.interval(draws)[0] > 0
    assert np.array_equal(draws, stats.paired_unit_bootstrap(y, better, prob_b, unit, 500, 1))
    assert not np.array_equal(draws, stats.paired_unit_bootstrap(y, better, prob_b, unit, 500, 2))


def test_each_unit_draw_is_the_auc_difference_of_the_students_it_draws():
    """Draw by hand: the students of resample 0, each with all its rows, as many times as drawn."""
    y, prob_a, prob_b, unit = _clustered(k=25, m=7)
    prob_a = np.round(prob_a, 1)  # ties count one half, as in sklearn
    units = np.unique(unit)
    idx = stats.bootstrap_indices(len(units), 3, seed=4)
    draws = stats.paired_unit_bootstrap(y, prob_a, prob_b, unit, n_boot=3, seed=4)
    for b in range(3):
        rows = np.concatenate([np.flatnonzero(unit == units[i]) for i in idx[b]])
        expected = roc_auc_score(y[rows], prob_a[rows]) - roc_auc_score(y[rows], prob_b[rows])
        assert draws[b] == pytest.approx(expected, abs=1e-12)


def test_unit_bootstrap_of_multiclass_uses_the_macro_one_vs_rest_auc():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 4, 400)
    pa, pb = rng.dirichlet(np.ones(4), 400), rng.dirichlet(np.ones(4), 400)
    pa[np.arange(400), y] += 0.5
    pa /= pa.sum(1, keepdims=True)
    expected = (roc_auc_score(y, pa, multi_class="ovr") - roc_auc_score(y, pb, multi_class="ovr"))
    assert stats.auc_difference(y, pa, pb) == pytest.approx(expected, abs=1e-12)
    draws = stats.paired_unit_bootstrap(y, pa, pb, np.arange(400) // 4, n_boot=200)
    assert stats.interval(draws)[0] > 0


def test_clustered_units_widen_the_interval_that_rows_understate():
    """Resampling rows treats 30 predictions of one student as 30 independent ones: with a
    per-student effect its interval is much too narrow; with no clustering both agree."""
    y, prob_a, prob_b, unit = _clustered()
    rows = np.arange(len(y))

    def width(u):
        lo, hi = stats.interval(stats.paired_unit_bootstrap(y, prob_a, prob_b, u, 500, seed=0))
        return hi - lo

    assert width(unit) > 2 * width(rows)
    y, prob_a, prob_b, unit = _clustered(spread=0.0)
    shuffled = np.random.default_rng(1).permutation(unit)  # students of unrelated rows
    assert 0.7 < width(shuffled) / width(rows) < 1.4


def test_unit_bootstrap_input_errors_are_one_line():
    from helpers import one_line

    from dsrsd.errors import DsrsdError
    y, prob_a, prob_b, unit = _clustered(k=5, m=4)
    with pytest.raises(DsrsdError) as e:
        stats.paired_unit_bootstrap(y, prob_a, prob_b[:-1], unit)
    one_line(e, "prob_b")
    with pytest.raises(DsrsdError) as e:
        stats.paired_unit_bootstrap(y, prob_a, prob_b, unit[:-1])
    one_line(e, "unit")
    a = {"y": y, "prob": prob_a, "unit": unit}
    for key, word in (("y", "labels"), ("unit", "test units")):
        other = dict(a, **{key: np.roll(a[key], 1)})
        with pytest.raises(DsrsdError) as e:
            stats.pair_predictions(a, other, ("dsrsd f1", "early f1"))
        one_line(e, "dsrsd f1", "early f1", word)
    with pytest.raises(DsrsdError) as e:
        stats.pair_predictions(a, dict(a, y=y[:-1]))
    one_line(e, "labels")
    assert stats.pair_predictions(a, dict(a, prob=prob_b))[2] is prob_b


def test_runs_on_one_test_set_share_a_resample_and_folds_do_not():
    run = _clustered()
    one = stats.paired_unit_bootstrap_runs([run], n_boot=300)
    lo, hi = stats.interval(stats.paired_unit_bootstrap(*run, n_boot=300))
    assert (one.lo, one.hi) == (lo, hi) and one.n_runs == 1 and one.n_units == 60
    assert one.mean_diff == pytest.approx(roc_auc_score(run[0], run[1]) - roc_auc_score(
        run[0], run[2]), abs=1e-12)
    # two seeds on the same students: one resample of them, so twice the run is the run
    twice = stats.paired_unit_bootstrap_runs([run, run], n_boot=300)
    assert (twice.lo, twice.hi, twice.n_units) == (one.lo, one.hi, 60)
    # five folds of other students: independent resamples, so the mean's interval narrows
    folds = [_clustered(seed=s) for s in range(5)]
    folds = [(y, a, b, u + 1000 * s) for s, (y, a, b, u) in enumerate(folds)]
    five = stats.paired_unit_bootstrap_runs(folds, n_boot=300)
    widths = [np.subtract(*stats.interval(stats.paired_unit_bootstrap(*f, 300))[::-1])
              for f in folds]
    assert five.hi - five.lo < 0.7 * np.mean(widths) and five.n_units == 300
    assert five.mean_diff == pytest.approx(np.mean([stats.auc_difference(*f[:3]) for f in folds]))
    assert five.lo < five.mean_diff < five.hi


def test_one_row_per_unit_is_the_row_bootstrap():
    y, good, weak = _data()
    rows = stats.paired_bootstrap_auc(y, [good, weak], n_boot=100, seed=7)
    units = stats.paired_unit_bootstrap(y, good, weak, np.arange(len(y)), n_boot=100, seed=7)
    np.testing.assert_allclose(units, rows[:, 0] - rows[:, 1], rtol=0, atol=1e-12)


def test_unit_pair_matrices_and_the_row_pass_give_the_same_draws():
    """Two ways to weigh a resample (by unit-pair matrices when units are few, by rows else):
    the same draws, ties and multiclass included."""
    y, prob_a, prob_b, unit = _clustered(k=40, m=12)
    prob_a = np.round(prob_a, 1)
    units, inverse = np.unique(unit, return_inverse=True)
    idx = stats.bootstrap_indices(len(units), 150, seed=3)
    by = [stats._unit_draws(y, prob_a, prob_b, inverse, idx, by_unit=b) for b in (True, False)]
    np.testing.assert_allclose(by[0], by[1], rtol=0, atol=1e-12)
    rng = np.random.default_rng(4)
    y4 = rng.integers(0, 3, len(y))
    pa, pb = rng.dirichlet(np.ones(3), len(y)), rng.dirichlet(np.ones(3), len(y))
    by = [stats._unit_draws(y4, pa, pb, inverse, idx, by_unit=b) for b in (True, False)]
    np.testing.assert_allclose(by[0], by[1], rtol=0, atol=1e-12)
