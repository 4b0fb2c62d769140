"""Statistics the chapters use to say whether a difference is larger than the noise.

Paired bootstrap over test units (the same resamples for every model), percentile intervals,
Holm's correction for a family of comparisons, and retained skill for robustness. Pure numpy and
scipy: no torch, no records, so chapters and tables share one tested copy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import rankdata


def bootstrap_indices(n: int, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """``[n_boot, n]`` row indices, each row a resample of ``n`` test units with replacement.

    Reuse one array for every model you compare: that is what makes the bootstrap paired."""
    if n < 1 or n_boot < 1:
        raise ValueError(f"bootstrap_indices: need n >= 1 and n_boot >= 1, got n={n}, n_boot={n_boot}")
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def auc_on_resamples(y: np.ndarray, prob: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """ROC-AUC of ``prob`` against 0/1 ``y`` on every resample (row) of ``idx``.

    Rank form (Mann-Whitney U): ties count one half, as in ``sklearn.metrics.roc_auc_score``.
    A resample that holds one class only gives NaN."""
    y = np.asarray(y).astype(int)
    prob = np.asarray(prob, dtype=np.float64)
    if y.shape != prob.shape or y.ndim != 1:
        raise ValueError(f"auc_on_resamples: y {y.shape} and prob {prob.shape} must be equal 1-d")
    yb = y[idx]
    ranks = rankdata(prob[idx], axis=1)
    n_pos = yb.sum(1).astype(np.float64)
    n_neg = yb.shape[1] - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((ranks * yb).sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


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


def holm(p: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (controls the family-wise error).

    Adjusted p-values keep the input order; compare them with the level directly."""
    p = np.asarray(p, dtype=np.float64)
    if np.any((p < 0) | (p > 1)) or np.any(np.isnan(p)):
        raise ValueError(f"holm: p-values must lie in [0, 1], got {p.tolist()}")
    adjusted, running = np.empty(len(p)), 0.0
    for rank, i in enumerate(np.argsort(p, kind="stable")):
        running = max(running, (len(p) - rank) * p[i])
        adjusted[i] = min(1.0, running)
    return adjusted


def retained_skill(auc_stressed, auc_clean):
    """Share of the skill above chance that survives a stress: (AUC_r - 0.5) / (AUC_0 - 0.5).

    Unlike the raw AUC drop it does not reward a model for having little skill to lose."""
    return (np.asarray(auc_stressed) - 0.5) / (np.asarray(auc_clean) - 0.5)


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


def bootstrap_effective_rank(z: Sequence[np.ndarray], n_boot: int = 100, seed: int = 0) -> np.ndarray:
    """``[n_boot]`` effective ranks (:func:`effective_rank`, mean over the matrices of ``z``, one
    per modality, rows aligned) on resamples of the rows; the same ``seed`` gives the same
    resamples for every run, so differences between runs are paired. Each resample's covariance
    comes from multinomial row weights in one matrix product."""
    n = len(z[0])
    w = np.random.default_rng(seed).multinomial(n, np.full(n, 1 / n), size=n_boot) / n
    ranks = []
    for zm in z:
        x = np.asarray(zm, dtype=np.float64)
        mu = w @ x
        cov = (w @ (x[:, :, None] * x[:, None, :]).reshape(n, -1)).reshape(n_boot, x.shape[1], -1)
        cov -= mu[:, :, None] * mu[:, None, :]
        ev = np.clip(np.linalg.eigvalsh(cov), 0, None)
        p = ev / ev.sum(1, keepdims=True)
        ranks.append(np.exp(-(p * np.log(np.where(p > 0, p, 1.0))).sum(1)))
    return np.mean(ranks, 0)
