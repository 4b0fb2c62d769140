"""Sentences about the result tables: which method is best, and is the gap shown?

Every word is computed from :mod:`dsrsd.tables` (and so from the records); a gap is called
shown only when it survives Holm's correction over the comparisons of its table.
"""

from __future__ import annotations

import pandas as pd

from dsrsd import tables


def gap_text(row: pd.Series, alpha: float = 0.05) -> str:
    """Whether one row of :func:`dsrsd.tables.significance` is shown, with its test, its
    Holm-adjusted p-value and the t interval of the difference (unadjusted, so it can exclude 0
    for a gap that Holm's correction leaves within the noise: the word follows Holm)."""
    if row["test"] == "none":
        return f"untested: {row['n_pairs']} matched pair(s) or identical differences"
    word = "shown" if row["p_holm"] < alpha else "within the noise"
    return (f"{word} after Holm's correction: paired t p = {row['p_value']:.3g}, Holm p = "
            f"{row['p_holm']:.3g}, unadjusted 95% interval of the difference [{row['diff_t_lo']:+.4f}, "
            f"{row['diff_t_hi']:+.4f}], {row['n_pairs']} pairs")


def verdict(df: pd.DataFrame, dataset: str, ref: str = "dsrsd", metric: str = "test_auc",
            alpha: float = 0.05) -> str:
    """One sentence, computed from the records: is ``ref`` best on ``dataset``, and is the gap
    to the runner-up (or to the best) shown after Holm's correction?"""
    sub = df[df["setting"] == dataset]
    s = tables.summary(sub, metric)
    if s.empty or ref not in set(s["variant"]):
        return f"{dataset}: no {ref} records."
    best = s.iloc[0]
    mine = s[s["variant"] == ref].iloc[0]
    sig = tables.significance(sub, ref, metric, alpha).set_index("variant")
    n_units = int(mine["n"])
    if best["variant"] == ref:
        if len(s) < 2:
            return f"{dataset}: {ref} is the only method."
        runner = s.iloc[1]
        better = int((sig["ref_better"] & sig["significant_holm"]).sum())
        return (f"{dataset}: {ref} has the best mean AUC ({mine['mean']:.4f} over {n_units} "
                f"runs), {mine['mean'] - runner['mean']:+.4f} over the runner-up "
                f"{runner['variant']} ({runner['mean']:.4f}; "
                f"{gap_text(sig.loc[runner['variant']], alpha)}); it is shown better than "
                f"{better} of {len(sig)} other methods.")
    rank = list(s["variant"]).index(ref) + 1
    return (f"{dataset}: {ref} is not the best: it ranks {rank} of {len(s)} by mean AUC "
            f"({mine['mean']:.4f} over {n_units} runs) behind {best['variant']} "
            f"({best['mean']:.4f}); the gap of {best['mean'] - mine['mean']:.4f} is "
            f"{gap_text(sig.loc[best['variant']], alpha)}.")
