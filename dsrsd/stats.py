"""Statistics the chapters and the result tables use to say whether a difference is larger than
the noise.

Paired bootstrap over test rows (the same resamples for every model), percentile intervals,
the paired comparison of two methods over the seeds / folds both ran (paired t with its interval,
and a paired bootstrap over those runs), the paired bootstrap over test units (students, from the
runs' prediction files: all of a student's predictions drawn together), Holm's correction for a
family of comparisons, and retained skill for robustness. numpy, scipy and pandas only: no torch, no record files, so
chapters and tables share one tested copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import stats as sps

from dsrsd.errors import DsrsdError


def bootstrap_indices(n: int, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """``[n_boot, n]`` row indices, each row a resample of ``n`` test units with replacement.

    Reuse one array for every model you compare: that is what makes the bootstrap paired."""
    if n < 1 or n_boot < 1:
        raise ValueError(f"bootstrap_indices: need n >= 1 and n_boot >= 1, got n={n}, n_boot={n_boot}")
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def auc_on_resamples(y: np.ndarray, prob: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """ROC-AUC of ``prob`` against 0/1 ``y`` on every resample (row) of ``idx``.

    Rank form (Mann-Whitney U): ties count one half, as in ``sklearn.metrics.roc_auc_score``.
    A resample that holds one class only gives NaN. Each resample is read as how often it
    draws each test unit, over units sorted once by ``prob``: no sort per resample, so 1,000
    resamples of 2,000 units cost milliseconds, not a second."""
    y = np.asarray(y).astype(int)
    prob = np.asarray(prob, dtype=np.float64)
    if y.shape != prob.shape or y.ndim != 1:
        raise ValueError(f"auc_on_resamples: y {y.shape} and prob {prob.shape} must be equal 1-d")
    idx = np.atleast_2d(np.asarray(idx))
    n_boot, n = len(idx), len(y)
    counts = np.bincount((idx + n * np.arange(n_boot)[:, None]).ravel(),
                         minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)
    return _auc_from_counts(y, prob, counts)


def _auc_from_counts(y: np.ndarray, prob: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``[n_boot]`` ROC-AUCs of 0/1 ``y`` and ``prob`` [n] with every row counted ``counts``
    [n_boot, n] times (the rank form of :func:`auc_on_resamples`)."""
    order = np.argsort(prob, kind="stable")
    sorted_prob, y_sorted, counts = prob[order], y[order], counts[:, order]
    starts = np.flatnonzero(np.r_[True, sorted_prob[1:] != sorted_prob[:-1]])  # tie groups
    pos = np.add.reduceat(counts * y_sorted, starts, axis=1)
    neg = np.add.reduceat(counts * (1 - y_sorted), starts, axis=1)
    below = np.cumsum(neg, 1) - neg  # negatives strictly below each group
    n_pos, n_neg = pos.sum(1), neg.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (pos * (below + 0.5 * neg)).sum(1) / (n_pos * n_neg)


def paired_bootstrap_auc(y: np.ndarray, probs: Sequence[np.ndarray], n_boot: int = 1000,
                         seed: int = 0) -> np.ndarray:
    """``[n_boot, len(probs)]`` AUCs of several models' predictions on shared resamples.

    A column difference, e.g. ``draws[:, 1] - draws[:, 0]``, is the bootstrap distribution of the
    AUC difference between two models over test units."""
    idx = bootstrap_indices(len(y), n_boot, seed)
    return np.stack([auc_on_resamples(y, p, idx) for p in probs], 1)


def interval(draws: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap ``draws`` (NaN draws are dropped)."""
    if not 0 < level < 1:
        raise ValueError(f"interval: level must lie in (0, 1), got {level}")
    draws = np.asarray(draws, dtype=np.float64)
    draws = draws[np.isfinite(draws)]
    if draws.size == 0:
        raise ValueError("interval: no finite draws")
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def noise_word(lo: float, hi: float, above: str = "higher", below: str = "lower",
               tie: str = "within the noise (the interval contains 0)") -> str:
    """A verdict on a difference, given only when its interval ``[lo, hi]`` excludes 0."""
    return above if lo > 0 else below if hi < 0 else tie


def holm(p: Sequence[float], nan_policy: str = "raise") -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (controls the family-wise error).

    Adjusted p-values keep the input order; compare them with the level directly.
    ``nan_policy="omit"`` leaves untested comparisons (NaN) NaN and out of the family's size;
    ``"raise"`` (the default) refuses them."""
    if nan_policy not in ("raise", "omit"):
        raise ValueError(f"holm: nan_policy must be 'raise' or 'omit', got {nan_policy!r}")
    p = np.asarray(p, dtype=np.float64)
    tested = ~np.isnan(p)
    if np.any((p[tested] < 0) | (p[tested] > 1)) or (nan_policy == "raise" and not tested.all()):
        raise ValueError(f"holm: p-values must lie in [0, 1], got {p.tolist()}")
    adjusted, running = np.full(len(p), np.nan), 0.0
    family = np.flatnonzero(tested)
    for rank, i in enumerate(family[np.argsort(p[family], kind="stable")]):
        running = max(running, (len(family) - rank) * p[i])
        adjusted[i] = min(1.0, running)
    return adjusted


def retained_skill(auc_stressed, auc_clean):
    """Share of the skill above chance that survives a stress: (AUC_r - 0.5) / (AUC_0 - 0.5).

    1 when the stress costs nothing, 0 when it leaves chance, negative below chance. Unlike the
    raw AUC drop it does not reward a model for having little skill to lose. NaN where the clean
    AUC is at or below chance: there is no skill to retain."""
    stressed = np.asarray(auc_stressed, dtype=np.float64)
    clean = np.asarray(auc_clean, dtype=np.float64)
    margin = np.where(clean > 0.5, clean - 0.5, np.nan)
    return ((stressed - 0.5) / margin)[()]  # [()]: a scalar in, a scalar out


# ----------------------------------------------------------------- methods paired over runs
# Result records hold one test AUC per run (per seed, or per fold), so the seed / fold test pairs
# runs: its unit of replication is the run. (Runs that keep their test predictions also get the
# bootstrap over test units below, which answers a different question.)


def pair_units(df: pd.DataFrame, a: str, b: str, metric: str = "test_auc", unit: str = "unit",
               by: str = "variant") -> pd.DataFrame:
    """``metric`` of methods ``a`` and ``b`` (values of column ``by``) on the units (seeds /
    folds, column ``unit``) both ran: one row per shared unit, sorted, columns ``a`` and ``b``.

    A unit a method ran twice is ambiguous (two records of one seed) and is refused, and so is a
    pair with no shared unit: both raise a one-line :class:`DsrsdError`."""
    for col in (metric, unit, by):
        if col not in df.columns:
            raise DsrsdError(f"pair_units: no column {col!r} in the table")
    cols = {}
    for name in (a, b):
        runs = df.loc[(df[by] == name) & df[metric].notna(), [unit, metric]]
        twice = runs[unit][runs[unit].duplicated()]
        if len(twice):
            raise DsrsdError(f"pair_units: {by} {name!r} has more than one {metric!r} for "
                             f"{unit} {twice.iloc[0]!r}")
        cols[name] = runs.set_index(unit)[metric]
    shared = sorted(set(cols[a].index) & set(cols[b].index))
    if not shared:
        raise DsrsdError(f"pair_units: {by} {a!r} and {b!r} share no {unit} with a {metric!r}")
    return pd.DataFrame({a: cols[a].loc[shared], b: cols[b].loc[shared]}).rename_axis(unit)


class PairedT(NamedTuple):
    """A paired t test of ``a - b`` and the t interval of its mean (``test == "none"`` and NaN
    p-value and interval when there is no spread to test: fewer than 2 pairs, or differences
    that are all equal)."""

    test: str
    n: int
    mean_diff: float
    lo: float
    hi: float
    p_value: float


def paired_t(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> PairedT:
    """Two-sided paired t test of ``a`` vs ``b`` (pairs in the same order) with the ``level``
    t interval of the mean difference ``a - b``: the seed / fold test of the result tables.

    It assumes roughly normal differences; with 3-5 pairs nothing can check that, and the
    interval is wide by design (t quantile 2.78 at 5 pairs, 4.30 at 3)."""
    if not 0 < level < 1:
        raise ValueError(f"paired_t: level must lie in (0, 1), got {level}")
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired_t: a {a.shape} and b {b.shape} must be equal 1-d")
    d = a - b
    n = len(d)
    mean = float(d.mean()) if n else np.nan
    if n < 2 or np.allclose(d, d[0]):  # no spread: the t statistic is undefined
        return PairedT("none", n, mean, np.nan, np.nan, np.nan)
    half = sps.t.ppf((1 + level) / 2, n - 1) * d.std(ddof=1) / np.sqrt(n)
    p = float(sps.ttest_rel(a, b).pvalue)
    return PairedT("paired_t", n, mean, mean - float(half), mean + float(half), p)


def paired_bootstrap_mean_diff(a: Sequence[float], b: Sequence[float], n_boot: int = 10000,
                               seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean difference ``a - b``, resampling the pairs (the runs)
    with replacement: the same resample for both methods, so the pairing is kept.

    Distribution-free, but with few pairs it is too narrow: it cannot see beyond the observed
    differences (5 pairs have 126 distinct resamples): for normal differences a 95% interval
    covers the true mean about 76% of the time at 3 pairs, 84% at 5 and 92% at 20, where the t
    interval covers 95% (tests/test_stats.py measures both). Read it beside :func:`paired_t`,
    not instead of it."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.ndim != 1 or len(d) < 2:
        raise ValueError(f"paired_bootstrap_mean_diff: need >= 2 pairs, got shape {d.shape}")
    idx = bootstrap_indices(len(d), n_boot, seed)
    return interval(d[idx].mean(1), level)


def effective_rank(x: np.ndarray) -> float:
    """exp(entropy) of the normalised covariance eigenvalues of ``x`` [N, k]: k when isotropic,
    1 when the rows lie on a line."""
    ev = np.clip(np.linalg.eigvalsh(np.cov(np.asarray(x, dtype=np.float64), rowvar=False)), 0, None)
    p = ev / ev.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def noise_band(d_boot: np.ndarray, d_seeds: Sequence[float], z: float = 1.96) -> float:
    """Half-width of the noise band of a seed-mean difference: ``z`` standard errors from two
    sources together, the test-sample bootstrap draws ``d_boot`` of the difference and the
    spread of the per-seed differences ``d_seeds`` (its standard error over seeds)."""
    d_seeds = np.asarray(d_seeds, dtype=np.float64)
    if d_seeds.size < 2:
        raise ValueError(f"noise_band: need >= 2 seeds for a seed spread, got {d_seeds.size}")
    se = np.sqrt(np.asarray(d_boot, dtype=np.float64).var() + np.var(d_seeds, ddof=1) / d_seeds.size)
    return float(z * se)


def _resample_weights(n: int, n_boot: int, seed: int) -> np.ndarray:
    """``[n_boot, n]`` row weights of ``n_boot`` bootstrap resamples of ``n`` rows (multinomial
    counts / n): a resample's weighted mean is its mean."""
    return np.random.default_rng(seed).multinomial(n, np.full(n, 1 / n), size=n_boot) / n


def _weighted_covariances(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``[n_boot, k, k]`` covariances of ``x`` [n, k] under each row weighting of ``w``, all in
    one matrix product (no resampled copies of ``x``)."""
    n, k = x.shape
    mu = w @ x
    cov = (w @ (x[:, :, None] * x[:, None, :]).reshape(n, -1)).reshape(len(w), k, k)
    cov -= mu[:, :, None] * mu[:, None, :]
    return cov


def bootstrap_effective_rank(z: Sequence[np.ndarray], n_boot: int = 100, seed: int = 0) -> np.ndarray:
    """``[n_boot]`` effective ranks (:func:`effective_rank`, mean over the matrices of ``z``, one
    per modality, rows aligned) on resamples of the rows; the same ``seed`` gives the same
    resamples for every run, so differences between runs are paired. Each resample's covariance
    comes from multinomial row weights in one matrix product."""
    n = len(z[0])
    w = _resample_weights(n, n_boot, seed)
    ranks = []
    for zm in z:
        ev = np.clip(np.linalg.eigvalsh(_weighted_covariances(np.asarray(zm, np.float64), w)), 0, None)
        p = ev / ev.sum(1, keepdims=True)
        ranks.append(np.exp(-(p * np.log(np.where(p > 0, p, 1.0))).sum(1)))
    return np.mean(ranks, 0)


def bootstrap_offdiag_mass(z: Sequence[np.ndarray], n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """``[n_boot]`` off-diagonal correlation masses (``dsrsd.probes.offdiag_mass``, mean over the
    matrices of ``z``, one per modality, rows aligned) on resamples of the rows, drawn as
    :func:`bootstrap_effective_rank` draws them: the same ``seed`` gives the same resamples for
    every run, so differences between runs are paired. A column with no spread in a resample
    has no correlations (counted 0, as in ``offdiag_mass``)."""
    if n_boot < 1 or len(z) == 0:
        raise ValueError(f"bootstrap_offdiag_mass: need n_boot >= 1 and >= 1 matrix, got "
                         f"n_boot={n_boot}, {len(z)} matrices")
    n = len(z[0])
    w = _resample_weights(n, n_boot, seed)
    masses = []
    for zm in z:
        x = np.asarray(zm, dtype=np.float64)
        if x.ndim != 2 or len(x) != n:
            raise ValueError(f"bootstrap_offdiag_mass: every matrix needs {n} rows, got {x.shape}")
        # centring first keeps E[x x'] - mu mu' free of cancellation
        cov = _weighted_covariances(x - x.mean(0), w)
        sd = np.sqrt(np.clip(np.diagonal(cov, axis1=1, axis2=2), 0, None))
        with np.errstate(invalid="ignore", divide="ignore"):
            c2 = np.nan_to_num(cov / (sd[:, :, None] * sd[:, None, :])) ** 2
        diag = np.diagonal(c2, axis1=1, axis2=2).sum(1)
        total = c2.sum((1, 2))
        masses.append((total - diag) / total)
    return np.mean(masses, 0)


# ------------------------------------------------------------ methods paired over test units
# With each run's test predictions (dsrsd.predictions), a comparison resamples the test units
# themselves (students): a student's predictions are drawn together, and the same draw weights
# both methods' predictions, so the pairing by student is kept.

_CHUNK_CELLS = 2_000_000  # resamples x rows weighed at once: tens of MB, whatever the test size


def weighted_auc(y: np.ndarray, prob: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``[n_boot]`` ROC-AUCs with every row counted ``weights`` [n_boot, n] times.

    ``prob`` [n]: binary, ties count one half (as ``roc_auc_score``); ``prob`` [n, C]:
    one-vs-rest macro AUC over the C classes (``roc_auc_score(multi_class="ovr")``), NaN when a
    class is absent."""
    y = np.asarray(y).astype(np.int64)
    prob = np.asarray(prob, dtype=np.float64)
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    if prob.ndim == 1:
        return _auc_from_counts(y, prob, weights)
    return np.mean([_auc_from_counts((y == c).astype(np.int64), prob[:, c], weights)
                    for c in range(prob.shape[1])], 0)


def auc_difference(y: np.ndarray, prob_a: np.ndarray, prob_b: np.ndarray) -> float:
    """AUC_a - AUC_b on all rows (each AUC equals ``roc_auc_score``'s up to rounding)."""
    ones = np.ones((1, len(y)))
    return float((weighted_auc(y, prob_a, ones) - weighted_auc(y, prob_b, ones))[0])


def _check_paired(y, prob_a, prob_b, unit) -> tuple[np.ndarray, ...]:
    y, unit = np.asarray(y), np.asarray(unit)
    prob_a, prob_b = np.asarray(prob_a), np.asarray(prob_b)
    if y.ndim != 1 or len(y) == 0:
        raise DsrsdError(f"unit bootstrap: y must be a non-empty 1-d array, got shape {y.shape}")
    if prob_a.shape != prob_b.shape or len(prob_a) != len(y) or prob_a.ndim not in (1, 2):
        raise DsrsdError(f"unit bootstrap: prob_a {prob_a.shape} and prob_b {prob_b.shape} must "
                         f"both be [{len(y)}] or [{len(y)}, C]")
    if unit.shape != y.shape:
        raise DsrsdError(f"unit bootstrap: unit {unit.shape} must match y {y.shape}")
    return y, prob_a, prob_b, unit


def _pair_matrix(pos: np.ndarray, prob: np.ndarray, inverse: np.ndarray, k: int) -> np.ndarray:
    """``[k, k]``: ``M[u, v]`` counts the (positive of unit u, negative of unit v) row pairs
    ranked right by ``prob`` (ties one half). With units drawn ``c`` times, the resample's
    Mann-Whitney U is ``c M c``: one matrix product per resample instead of a pass over rows."""
    neg_p, neg_u = prob[~pos], inverse[~pos]
    pos_u = inverse[pos]
    order = np.argsort(pos_u, kind="stable")
    pos_p, bounds = prob[pos][order], np.searchsorted(pos_u[order], np.arange(k + 1))
    m = np.zeros((k, k))
    for u in np.flatnonzero(np.diff(bounds)):
        p = np.sort(pos_p[bounds[u]:bounds[u + 1]])
        left, right = np.searchsorted(p, neg_p, "left"), np.searchsorted(p, neg_p, "right")
        m[u] = np.bincount(neg_u, weights=len(p) - right + 0.5 * (right - left), minlength=k)
    return m


def _unit_auc(y: np.ndarray, prob: np.ndarray, inverse: np.ndarray, k: int, by_unit: bool):
    """A function: unit counts ``[b, k]`` -> the ``[b]`` AUCs (:func:`weighted_auc`) of the
    rows weighted by their unit's count; ``by_unit``: through :func:`_pair_matrix`."""
    y, prob = np.asarray(y).astype(np.int64), np.asarray(prob, dtype=np.float64)
    if not by_unit:
        return lambda counts: weighted_auc(y, prob, counts[:, inverse].astype(np.float64))
    columns = ([(y == c, prob[:, c]) for c in range(prob.shape[1])] if prob.ndim == 2
               else [(y == 1, prob)])
    parts = [(_pair_matrix(pos, p, inverse, k), np.bincount(inverse[pos], minlength=k),
              np.bincount(inverse[~pos], minlength=k)) for pos, p in columns]

    def auc(counts: np.ndarray) -> np.ndarray:
        c = counts.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.mean([((c @ m) * c).sum(1) / ((c @ n_pos) * (c @ n_neg))
                            for m, n_pos, n_neg in parts], 0)

    return auc


def _unit_draws(y, prob_a, prob_b, inverse: np.ndarray, idx: np.ndarray,
                by_unit: bool | None = None) -> np.ndarray:
    """AUC_a - AUC_b on each resample of units ``idx`` [n_boot, K]; row i belongs to unit
    ``inverse[i]`` and is counted as often as its unit is drawn. ``by_unit`` (default: when
    units are few against rows, e.g. knowledge-tracing students with many steps each): the
    unit-pair matrices, else a weighted pass over the rows; both give the same draws."""
    n_boot, k = idx.shape
    if by_unit is None:
        by_unit = k <= 2000 and k * k <= 32 * len(y)
    auc_a, auc_b = (_unit_auc(y, p, inverse, k, by_unit) for p in (prob_a, prob_b))
    step = max(1, _CHUNK_CELLS // (k if by_unit else max(len(y), k)))
    out = np.empty(n_boot)
    for s in range(0, n_boot, step):
        part = idx[s:s + step]
        counts = np.bincount((part + k * np.arange(len(part))[:, None]).ravel(),
                             minlength=len(part) * k).reshape(len(part), k)
        out[s:s + step] = auc_a(counts) - auc_b(counts)
    return out


def paired_unit_bootstrap(y: np.ndarray, prob_a: np.ndarray, prob_b: np.ndarray,
                          unit: np.ndarray, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """``[n_boot]`` bootstrap draws of AUC_a - AUC_b over test units.

    Each draw resamples the distinct ``unit`` ids (students) with replacement and counts each
    prediction as often as its unit is drawn, so a student's predictions stay together (their
    correlation widens the interval, as it should); both methods get the same draw. ``prob_*``
    [n] binary or [n, C] multiclass (macro one-vs-rest AUC). Pass the draws to
    :func:`interval`; a draw with one class only is NaN (``interval`` drops it)."""
    y, prob_a, prob_b, unit = _check_paired(y, prob_a, prob_b, unit)
    units, inverse = np.unique(unit, return_inverse=True)
    return _unit_draws(y, prob_a, prob_b, inverse, bootstrap_indices(len(units), n_boot, seed))


def pair_predictions(a: dict, b: dict, names: tuple[str, str] = ("a", "b")
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(y, prob_a, prob_b, unit)`` of two runs' prediction arrays (``y``, ``prob``, ``unit``,
    as :func:`dsrsd.predictions.read_predictions` returns them); runs on different test rows
    (labels or units that differ) are a one-line :class:`DsrsdError` naming them."""
    for what in ("y", "unit"):
        if a[what].shape != b[what].shape or not np.array_equal(a[what], b[what]):
            raise DsrsdError(f"{names[0]} and {names[1]} are not on the same test rows (their "
                             f"{'labels' if what == 'y' else 'test units'} differ)")
    if a["prob"].shape != b["prob"].shape:
        raise DsrsdError(f"{names[0]} and {names[1]}: probabilities of shapes "
                         f"{a['prob'].shape} and {b['prob'].shape}")
    return a["y"], a["prob"], b["prob"], a["unit"]


class UnitBootstrap(NamedTuple):
    """Mean AUC difference over paired runs, with its interval over test units."""

    n_runs: int
    n_units: int  # distinct test units over all runs
    mean_diff: float
    lo: float
    hi: float


def paired_unit_bootstrap_runs(runs: Sequence[tuple], n_boot: int = 1000, seed: int = 0,
                               level: float = 0.95) -> UnitBootstrap:
    """Mean over paired runs of AUC_a - AUC_b, and its ``level`` percentile interval from
    resampling test units (students) within each run.

    ``runs``: one ``(y, prob_a, prob_b, unit)`` per run pair (the two methods' runs of one seed
    or one fold, e.g. from :func:`pair_predictions`). Each bootstrap draw resamples the
    students and averages the runs' differences on that draw. Runs whose test units are the
    same set (the seeds of one test set) share one resample, since another draw of test
    students would change every seed's test set alike; runs on different sets (the folds of a
    cross-validation) are resampled independently.

    What it accounts for: which students happen to be in the test set(s). What it does not:
    seed variance (another seed trains another model; the runs' differences are averaged, not
    resampled), and with 5 folds, the variation between training sets. That is why it is
    reported beside the seed / fold paired t (:func:`paired_t`), not instead of it.
    """
    if not runs:
        raise DsrsdError("unit bootstrap: no paired runs")
    runs = [_check_paired(*r) for r in runs]
    strata: dict[bytes, np.ndarray] = {}
    total, diffs = np.zeros(n_boot), []
    for y, prob_a, prob_b, unit in runs:
        units = np.unique(unit)
        key = units.tobytes()
        if key not in strata:  # each new set of units gets its own resamples
            strata[key] = bootstrap_indices(len(units), n_boot, seed + len(strata))
        total += _unit_draws(y, prob_a, prob_b, np.searchsorted(units, unit), strata[key])
        diffs.append(auc_difference(y, prob_a, prob_b))
    lo, hi = interval(total / len(runs), level)
    n_units = len(np.unique(np.concatenate([r[3] for r in runs])))
    return UnitBootstrap(len(runs), n_units, float(np.mean(diffs)), lo, hi)
