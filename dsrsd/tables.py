"""Tables from run records: every number in the results chapters is computed here from records.

    python -m dsrsd.tables [--runs results/runs] [--out results]

writes ``records.csv`` (one row per run), ``summary.csv`` (mean +- std per setting x variant),
``significance.csv`` (DSRSD-Net vs each variant, paired over matched seeds/folds, Holm-corrected
within each table), ``robustness.csv`` (test AUC and retained skill with modalities hidden at
test time), ``errors.csv`` (failed runs, from ``error.json``) and ``cap_check.csv`` (runs
retrained with a higher epoch cap beside their records: :func:`cap_check`); with
``--unit-bootstrap`` also ``unit_bootstrap.csv`` (:func:`write_unit_bootstrap`: intervals over
test students, from the runs' predictions files). The statistics are :mod:`dsrsd.stats`; the
sentences about them are :mod:`dsrsd.verdicts`.
"""

from __future__ import annotations

import functools
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from dsrsd import stats
from dsrsd.errors import DsrsdError

REFS = ("dsrsd", "dsrsd_pw")
ID_COLS = ["run_id", "method", "variant", "dataset", "setting", "group", "experiment",
           "chosen_by", "chosen_on", "seed", "fold", "unit"]
# What a run is for (``dsrsd.sweep`` writes it into the record): headline comparison, ablation,
# configuration search, or reference point. Only "main" runs enter the headline tables.
GROUPS = ("main", "ablation", "selection", "reference")


def group_of(variant: str, group: str | None = None) -> str:
    """The record's ``group``; records written before it existed fall back to the old naming
    rule: a variant named ``<method>-<change>`` is an ablation, any other a main method."""
    if group is not None:
        return group
    return "ablation" if "-" in variant else "main"


def _groups(df: pd.DataFrame) -> pd.Series:
    """Each row's group: the ``group`` column, or the naming rule for a table without one."""
    explicit = df["group"] if "group" in df.columns else pd.Series(None, index=df.index)
    return pd.Series([group_of(v, g if isinstance(g, str) else None)
                      for v, g in zip(df["variant"], explicit, strict=True)], index=df.index,
                     dtype=object)


def _variant(method: str, params: dict) -> str:
    """``method`` plus its method parameters, e.g. ``unimodal[modality=behaviour]``."""
    if not params:
        return method
    return method + "[" + ",".join(f"{k}={v}" for k, v in sorted(params.items())) + "]"


@functools.cache
def _experiment_variants(name: str) -> dict:
    """The ``variants`` of ``experiments/<name>.json`` ({} when there is no such file)."""
    from dsrsd.sweep import experiments
    path = experiments().get(name)
    return json.loads(path.read_text(encoding="utf-8")).get("variants", {}) if path else {}


def chosen_by(rec: dict) -> dict | None:
    """Which search chose the record's configuration, and on which split: the record's own
    ``chosen_by`` (sweeps write it since it exists), else its experiment file's variant entry
    (for older records), else None (not searched: defaults, a trial, or an ablation)."""
    if rec.get("chosen_by"):
        return rec["chosen_by"]
    if not rec.get("experiment") or not rec.get("variant"):
        return None
    return _experiment_variants(rec["experiment"]).get(rec["variant"], {}).get("chosen_by")


def record_row(rec: dict, run_id: str = "") -> dict:
    """One flat row of ``records.csv`` from a record: labels, provenance, metrics, robustness."""
    cfg = rec.get("config", {})
    dp = dict(cfg.get("data_params", {}))
    mp = dict(cfg.get("method_params", {}))
    fold = dp.get("fold")
    seed = rec.get("seed", cfg.get("seed"))
    # Sweep records name their grid entry (``variant``, e.g. an ablation) and protocol
    # (``setting``, e.g. a cross-domain direction); plain train records fall back to the config.
    variant = rec.get("variant") or _variant(rec["method"], mp)
    chosen = chosen_by(rec) or {}
    row = {"run_id": run_id, "method": rec["method"], "variant": variant,
           "dataset": rec["dataset"], "setting": rec.get("setting") or rec["dataset"],
           "group": group_of(variant, rec.get("group")), "experiment": rec.get("experiment"),
           "chosen_by": chosen.get("experiment"), "chosen_on": chosen.get("split"),
           "seed": seed, "fold": fold,
           "unit": f"f{fold}-s{seed}" if fold is not None else f"s{seed}",
           "data_params": json.dumps({k: v for k, v in dp.items() if k != "fold"}, sort_keys=True),
           "method_params": json.dumps(mp, sort_keys=True),
           "max_train": dp.get("max_train"),
           "epochs": cfg.get("epochs"), "epochs_run": rec.get("epochs_run"),
           "best_epoch": rec.get("best_epoch"), "n_params": rec.get("n_params"),
           "wall_time_s": rec.get("wall_time_s"), "device": rec.get("device"),
           "git_commit": rec.get("git_commit"), "config_hash": rec.get("config_hash"),
           "date": rec.get("date"), "torch": rec.get("torch")}
    for split in ("test", "val"):
        for k, v in (rec.get(split) or {}).items():
            if isinstance(v, (int, float)):
                row[f"{split}_{k}"] = v
    rob = rec.get("robustness") or {}
    for r, auc in rob.get("drop_rate", {}).items():
        row[f"rob_rate_{r}"] = auc
    for name, v in rob.get("drop_modality", {}).items():
        row[f"rob_without_{name}"] = v["auc"]
    for name, by_sigma in rob.get("noise", {}).items():
        for sigma, auc in by_sigma.items():
            row[f"rob_noise_{sigma}_{name}"] = auc
    return row


def _read_json(f: Path) -> object:
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except OSError as e:
        raise DsrsdError(f"cannot read {f}: {e.strerror or e}") from None
    except (ValueError, RecursionError) as e:
        raise DsrsdError(f"bad record {f}: not valid JSON ({str(e).splitlines()[0]})") from None


def _check_record(rec: object, f: Path) -> dict:
    """The fields a table needs, with their types; anything else is a one-line error."""
    if not isinstance(rec, dict):
        raise DsrsdError(f"bad record {f}: not a JSON object")
    for key, kind in (("method", str), ("dataset", str), ("config", dict)):
        if not isinstance(rec.get(key), kind):
            raise DsrsdError(f"bad record {f}: {key!r} missing or not a {kind.__name__}")
    cfg = rec["config"]
    for key in ("data_params", "method_params"):
        if not isinstance(cfg.get(key, {}), dict):
            raise DsrsdError(f"bad record {f}: config {key!r} is not an object")
    for key in ("test", "val", "robustness"):
        if not isinstance(rec.get(key) or {}, dict):
            raise DsrsdError(f"bad record {f}: {key!r} is not an object")
    rob = rec.get("robustness") or {}
    if not isinstance(rob.get("drop_rate", {}), dict) or not isinstance(
            rob.get("drop_modality", {}), dict) or not all(
            isinstance(v, dict) and "auc" in v for v in rob.get("drop_modality", {}).values()):
        raise DsrsdError(f"bad record {f}: malformed 'robustness'")
    for key in ("variant", "setting", "group", "experiment"):
        if rec.get(key) is not None and not isinstance(rec[key], str):
            raise DsrsdError(f"bad record {f}: {key!r} is not a string")
    if rec.get("chosen_by") is not None and not (
            isinstance(rec["chosen_by"], dict)
            and all(isinstance(rec["chosen_by"].get(k), str) for k in ("experiment", "split"))):
        raise DsrsdError(f"bad record {f}: 'chosen_by' is not an object with string "
                         "'experiment' and 'split'")
    if rec.get("group") is not None and rec["group"] not in GROUPS:
        raise DsrsdError(f"bad record {f}: group {rec['group']!r} is not one of {', '.join(GROUPS)}")
    return rec


def load_records(runs_dir: str | Path = "results/runs") -> pd.DataFrame:
    """One row per ``*/metrics.json`` under ``runs_dir`` (sorted by run id)."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise DsrsdError(f"no folder of run records at {str(runs_dir)!r}")
    rows = []
    for f in sorted(runs_dir.glob("*/metrics.json")):
        rows.append(record_row(_check_record(_read_json(f), f), f.parent.name))
    if not rows:
        return pd.DataFrame(columns=ID_COLS + ["test_auc", "wall_time_s"])
    return pd.DataFrame(rows).sort_values("run_id").reset_index(drop=True)


def load_errors(runs_dir: str | Path = "results/runs") -> pd.DataFrame:
    """Failed runs: run id and the one-line error (runs that later succeeded are left out)."""
    rows = []
    for f in sorted(Path(runs_dir).glob("*/error.json")):
        if (f.parent / "metrics.json").exists():
            continue
        e = _read_json(f)
        if not isinstance(e, dict):
            raise DsrsdError(f"bad error record {f}: not a JSON object")
        rows.append({"run_id": f.parent.name, "error": str(e.get("error", ""))})
    return pd.DataFrame(rows, columns=["run_id", "error"])


def summary(df: pd.DataFrame, metric: str = "test_auc") -> pd.DataFrame:
    """Mean, std (ddof=1), n and ``mean ± std`` per setting x variant (with its group), best
    first per setting."""
    cols = ["setting", "variant", "group", "n", "mean", "std", "mean ± std", "wall_time_s_mean"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    df = df.assign(group=_groups(df))
    g = df.groupby(["setting", "variant"])[metric]
    out = g.agg(n="count", mean="mean", std="std").reset_index()
    out["std"] = out["std"].fillna(0.0)
    out["mean ± std"] = [f"{m:.4f} ± {s:.4f}" for m, s in zip(out["mean"], out["std"], strict=False)]
    extra = df.groupby(["setting", "variant"]).agg(group=("group", "first"),
                                                   wall_time_s_mean=("wall_time_s", "mean"))
    out = out.merge(extra.reset_index(), on=["setting", "variant"])
    return out[cols].sort_values(["setting", "mean"], ascending=[True, False]).reset_index(drop=True)


def headline(df: pd.DataFrame, metric: str = "test_auc") -> pd.DataFrame:
    """``mean ± std (n)`` per variant (rows) x setting (columns) of the ``main`` group only,
    best first on the first setting."""
    s = summary(df[_groups(df) == "main"] if len(df) else df, metric)
    if s.empty:
        return pd.DataFrame()
    s["cell"] = [f"{m:.4f} ± {sd:.4f} (n={n})" for m, sd, n in zip(s["mean"], s["std"], s["n"], strict=False)]
    t = s.pivot(index="variant", columns="setting", values="cell")
    order = s.pivot(index="variant", columns="setting", values="mean")
    t = t.loc[order.sort_values(list(order.columns), ascending=False).index]
    t.columns.name = None
    return t.fillna("—")


def selection(df: pd.DataFrame, experiment: str | list[str],
              metric: str = "val_auc") -> pd.DataFrame:
    """The trials of a selection experiment per method, best first by mean validation
    ``metric`` over its runs; ``chosen`` marks each method's best trial. Test metrics are not
    read, so nothing is chosen on test data. A list of experiments pools their trials (a search
    grown by a later experiment on the same split), which must not share a variant name."""
    names = [experiment] if isinstance(experiment, str) else list(experiment)
    have = set(df["experiment"]) if "experiment" in df else set()
    missing = [name for name in names if name not in have]
    if missing:
        raise DsrsdError(f"no records of experiment {missing[0]!r} in the results")
    sub = df[df["experiment"].isin(names)]
    shared = sub.groupby("variant")["experiment"].nunique()
    if (shared > 1).any():
        raise DsrsdError(f"experiments {', '.join(names)} share the variant "
                         f"{shared[shared > 1].index[0]!r}: pooled trials need distinct names")
    if metric not in sub:
        raise DsrsdError(f"experiment {', '.join(names)}: its records have no {metric!r}")
    g = sub.groupby(["method", "variant"])[metric].agg(["mean", "count"]).reset_index()
    g = g.rename(columns={"mean": metric, "count": "n"}).sort_values(
        ["method", metric], ascending=[True, False], kind="mergesort")
    g["chosen"] = ~g.duplicated("method")
    return g.reset_index(drop=True)


def paired_test(a: np.ndarray, b: np.ndarray) -> tuple[str, float]:
    """Two-sided paired test of ``a`` vs ``b``: Wilcoxon signed-rank for n >= 6, else paired t.

    The rule of earlier tables, kept for callers; :func:`significance` now uses the paired t at
    every n (:func:`dsrsd.stats.paired_t`), whose interval goes with its p-value."""
    from scipy.stats import wilcoxon

    d = np.asarray(a, float) - np.asarray(b, float)
    if len(d) < 2 or np.allclose(d, 0):
        return ("none", math.nan)
    if len(d) >= 6:
        return ("wilcoxon", float(wilcoxon(a, b).pvalue))
    return ("paired_t", float(stats.paired_t(a, b).p_value))


SIG_COLS = ["setting", "ref", "variant", "group", "n_pairs", "ref_mean", "other_mean", "mean_diff",
            "diff_t_lo", "diff_t_hi", "diff_boot_runs_lo", "diff_boot_runs_hi", "test", "p_value",
            "significant", "p_holm", "significant_holm", "ref_better"]


def significance(df: pd.DataFrame, ref: str = "dsrsd", metric: str = "test_auc",
                 alpha: float = 0.05, n_boot: int = 10000, seed: int = 0) -> pd.DataFrame:
    """``ref`` vs every other variant per setting, paired over the units (seeds/folds) both ran.

    Per pair of methods: the mean difference ``ref - variant`` with its 95% paired t interval
    (``diff_t_*``, not adjusted for multiplicity) and its paired bootstrap interval over the
    runs (``diff_boot_runs_*``:
    records hold one AUC per run, not per-sample predictions, so the bootstrap resamples runs,
    not test units; with 3-5 runs it is too narrow, see
    :func:`dsrsd.stats.paired_bootstrap_mean_diff`); the two-sided paired t p-value, raw
    (``significant``: p < ``alpha``) and Holm-adjusted over the family of one table, the
    comparisons of ``ref`` with one setting's variants of one group (``p_holm``,
    ``significant_holm``); untested pairs (fewer than 2, or equal differences) stay NaN."""
    rows = []
    df = df.assign(group=_groups(df)) if len(df) else df
    for setting, sub in df.groupby("setting"):
        ran = {v: set(u[metric].dropna().index) for v, u in
               sub.set_index("unit").groupby("variant")}
        if not ran.get(ref):
            continue
        group = sub.groupby("variant")["group"].first()
        for v in sorted(ran):
            if v == ref:
                continue
            row = {"setting": setting, "ref": ref, "variant": v, "group": group[v], "n_pairs": 0,
                   "test": "none", "p_value": math.nan}
            if ran[ref] & ran[v]:
                pair = stats.pair_units(sub, ref, v, metric)
                t = stats.paired_t(pair[ref], pair[v])
                boot = (stats.paired_bootstrap_mean_diff(pair[ref], pair[v], n_boot, seed)
                        if len(pair) >= 2 else (math.nan, math.nan))
                row.update(n_pairs=len(pair), ref_mean=float(pair[ref].mean()),
                           other_mean=float(pair[v].mean()), mean_diff=t.mean_diff,
                           diff_t_lo=t.lo, diff_t_hi=t.hi, diff_boot_runs_lo=boot[0],
                           diff_boot_runs_hi=boot[1], test=t.test, p_value=t.p_value)
            rows.append(row)
    out = pd.DataFrame(rows, columns=SIG_COLS)
    if out.empty:
        return out
    out["p_holm"] = out.groupby(["setting", "group"])["p_value"].transform(
        lambda p: stats.holm(p, nan_policy="omit"))
    out["significant"] = out["p_value"] < alpha  # NaN (untested) compares False
    out["significant_holm"] = out["p_holm"] < alpha
    out["ref_better"] = out["mean_diff"] > 0
    return out


TRANSFER_COLS = ["variant", "n_pairs", "home_mean", "cross_mean", "gap", "gap_lo", "gap_hi",
                 "p_value", "p_holm"]


def _home_cross_pairs(df: pd.DataFrame, cross: str, home: str, metric: str
                      ) -> dict[str, pd.DataFrame]:
    """Per variant with records in both settings: its ``metric`` in ``cross`` and in ``home``
    (columns named after them) over the units (seeds) it ran in both."""
    return {v: stats.pair_units(sub, cross, home, metric, by="setting")
            for v, sub in df[df["setting"].isin([cross, home])].groupby("variant")
            if set(sub["setting"]) == {cross, home}}


def transfer(df: pd.DataFrame, cross: str, home: str, metric: str = "test_auc") -> pd.DataFrame:
    """What each method loses across domains: its ``metric`` in the cross-domain setting
    ``cross`` and in the in-domain reference ``home`` (the same test set, trained on the target
    domain), and the gap ``cross - home`` paired by seed with its 95% t interval, the paired
    t p-value and Holm's adjustment over the methods. Methods without records in both are left
    out; a gap with fewer than two pairs is untested (NaN)."""
    rows = []
    for v, pair in sorted(_home_cross_pairs(df, cross, home, metric).items()):
        t = stats.paired_t(pair[cross], pair[home])
        rows.append({"variant": v, "n_pairs": len(pair), "home_mean": float(pair[home].mean()),
                     "cross_mean": float(pair[cross].mean()), "gap": t.mean_diff,
                     "gap_lo": t.lo, "gap_hi": t.hi, "p_value": t.p_value})
    out = pd.DataFrame(rows, columns=TRANSFER_COLS)
    if len(out):
        out["p_holm"] = stats.holm(out["p_value"], nan_policy="omit")
    return out


def transfer_vs(df: pd.DataFrame, cross: str, home: str, ref: str = "dsrsd",
                metric: str = "test_auc") -> pd.DataFrame:
    """Does ``ref`` lose less across domains than each other method? Per method: the mean of
    ``ref``'s gap minus the method's gap (:func:`transfer`), paired by seed (positive: ``ref``
    loses less), its 95% t interval, the paired t p-value and Holm over the methods."""
    gaps = {v: pair[cross] - pair[home]
            for v, pair in _home_cross_pairs(df, cross, home, metric).items()}
    rows = []
    if ref in gaps:
        for v, gap in sorted(gaps.items()):
            shared = sorted(set(gap.index) & set(gaps[ref].index))
            if v == ref or not shared:
                continue
            t = stats.paired_t(gaps[ref].loc[shared], gap.loc[shared])
            rows.append({"variant": v, "n_pairs": len(shared), "diff": t.mean_diff,
                         "diff_lo": t.lo, "diff_hi": t.hi, "p_value": t.p_value})
    out = pd.DataFrame(rows, columns=["variant", "n_pairs", "diff", "diff_lo", "diff_hi",
                                      "p_value", "p_holm"])
    if len(out):
        out["p_holm"] = stats.holm(out["p_value"], nan_policy="omit")
    return out


CAP_COLS = ["setting", "variant", "base", "unit", "cap", "epochs_run", "best_epoch", "reached_cap",
            "long_cap", "long_epochs_run", "long_best_epoch", "test", "long_test", "diff",
            "identical"]


def cap_check(df: pd.DataFrame, suffix: str = "-cap100", metric: str = "test_auc"
              ) -> pd.DataFrame:
    """Did the epoch cap bind? Each record of a variant ``<base><suffix>`` (the same
    configuration with a higher cap) beside the record of ``<base>`` with the same setting and
    seed or fold: both caps, epochs run, best epochs, ``metric`` and the change. ``reached_cap``:
    the base run trained to its cap instead of being stopped by patience. ``identical``: the
    longer run stopped at the same epoch with the same ``metric`` to the last bit, as it must
    when the base run was stopped by patience (the trainer's schedule does not depend on the cap)."""
    rows = []
    keyed = df.set_index(["setting", "variant", "unit"])
    for _, r in df[df["variant"].str.endswith(suffix)].iterrows():
        base = r["variant"][: -len(suffix)]
        key = (r["setting"], base, r["unit"])
        if key not in keyed.index:
            continue
        b = keyed.loc[[key]].iloc[0]
        rows.append({"setting": r["setting"], "variant": r["variant"], "base": base,
                     "unit": r["unit"], "cap": b["epochs"], "epochs_run": b["epochs_run"],
                     "best_epoch": b["best_epoch"], "reached_cap": b["epochs_run"] >= b["epochs"],
                     "long_cap": r["epochs"], "long_epochs_run": r["epochs_run"],
                     "long_best_epoch": r["best_epoch"], "test": b[metric],
                     "long_test": r[metric], "diff": r[metric] - b[metric],
                     "identical": bool(r["epochs_run"] == b["epochs_run"]
                                       and r["best_epoch"] == b["best_epoch"]
                                       and r[metric] == b[metric])})
    return pd.DataFrame(rows, columns=CAP_COLS).sort_values(
        ["setting", "base", "unit"], ignore_index=True)


UNIT_COLS = ["setting", "ref", "variant", "group", "n_pairs", "n_runs", "n_units", "mean_diff",
             "diff_units_lo", "diff_units_hi", "predictions", "runs"]


def unit_bootstrap(runs_dir: str | Path, df: pd.DataFrame, ref: str = "dsrsd",
                   metric: str = "test_auc", n_boot: int = 1000, seed: int = 0,
                   level: float = 0.95) -> pd.DataFrame:
    """``ref`` vs every other variant per setting of ``df`` (rows of :func:`load_records` from
    ``runs_dir``), from the runs' test predictions: the mean AUC difference ``ref - variant``
    over the seeds/folds both ran and its ``level`` interval from a paired bootstrap over test
    units (students), :func:`dsrsd.stats.paired_unit_bootstrap_runs`.

    It sits beside :func:`significance` (same pairs, same ``mean_diff`` up to rounding), not
    in its place: it resamples students, not seeds. ``n_pairs``: seeds/folds both ran;
    ``n_runs``: pairs that entered the bootstrap; ``predictions``: ``ok``, or why the row is
    NaN (a run without a predictions file, written before runs kept one; runs on different test
    rows); ``runs``: the run ids that entered, ``ref_run:other_run`` per pair."""
    from dsrsd.predictions import PREDICTIONS_FILE, read_predictions

    runs_dir, rows, cache = Path(runs_dir), [], {}

    def load(run_id: str) -> dict | None:
        if run_id not in cache:
            f = runs_dir / run_id / PREDICTIONS_FILE
            cache[run_id] = read_predictions(f) if f.exists() else None
        return cache[run_id]

    if df.empty:
        return pd.DataFrame(columns=UNIT_COLS)
    df = df.assign(group=_groups(df))
    for setting, sub in df[df[metric].notna()].groupby("setting"):
        variants = set(sub["variant"])
        if ref not in variants:
            continue
        group = sub.groupby("variant")["group"].first()
        for v in sorted(variants - {ref}):
            row = {"setting": setting, "ref": ref, "variant": v, "group": group[v],
                   "n_pairs": 0, "n_runs": 0, "predictions": "no shared seed or fold"}
            try:
                pair = stats.pair_units(sub, ref, v, "run_id")
            except DsrsdError:  # no shared unit (a unit run twice is significance()'s error)
                rows.append(row)
                continue
            ids = list(zip(pair[ref], pair[v], strict=True))
            missing = [r for a, b in ids for r in (a, b) if load(r) is None]
            row["n_pairs"] = len(ids)
            if missing:
                row["predictions"] = (f"{len(missing)} of {2 * len(ids)} runs have no "
                                      f"{PREDICTIONS_FILE} (e.g. {missing[0]})")
                rows.append(row)
                continue
            try:
                paired = [stats.pair_predictions(load(a), load(b), (a, b)) for a, b in ids]
            except DsrsdError as e:
                row["predictions"] = str(e)
                rows.append(row)
                continue
            res = stats.paired_unit_bootstrap_runs(paired, n_boot, seed, level)
            row.update(n_runs=res.n_runs, n_units=res.n_units, mean_diff=res.mean_diff,
                       diff_units_lo=res.lo, diff_units_hi=res.hi, predictions="ok",
                       runs=" ".join(f"{a}:{b}" for a, b in ids))
            rows.append(row)
    return pd.DataFrame(rows, columns=UNIT_COLS)


def robustness(df: pd.DataFrame) -> pd.DataFrame:
    """Test AUC under missing modalities, and the skill kept, per setting x variant x condition.

    Conditions: ``rate r`` (each present modality hidden with probability r at test time; r = 0
    is the clean test AUC), ``without <modality>`` (that modality hidden everywhere; samples
    left with nothing are dropped, so that AUC may cover fewer samples than the clean one) and
    ``noise s on <modality>`` (Gaussian noise of s standard deviations on its features; kind
    ``noise``, the ``rate`` column holds s). Records written before noise was measured have no
    noise conditions, so ``n`` counts the runs that have each condition.
    ``mean``/``std``: the AUC over runs; ``retained_mean``/``retained_std``: retained skill
    (AUC_r - 0.5) / (AUC_0 - 0.5) of each run against its own clean AUC, over runs.
    """
    cols = ["setting", "variant", "group", "condition", "kind", "rate", "n", "mean", "std",
            "retained_mean", "retained_std"]
    rob_cols = [c for c in df.columns if c.startswith("rob_")]
    if df.empty or not rob_cols:
        return pd.DataFrame(columns=cols)
    keys = ["setting", "variant", "group"]
    wide = df[["setting", "variant", "run_id", "test_auc", *rob_cols]].assign(
        group=_groups(df), rob_rate_0=df["test_auc"])
    long = wide.melt(id_vars=[*keys, "run_id", "test_auc"], value_vars=["rob_rate_0", *rob_cols],
                     var_name="col", value_name="auc").dropna(subset=["auc"])
    long["retained"] = stats.retained_skill(long["auc"].to_numpy(), long["test_auc"].to_numpy())
    rate = long["col"].str.extract(r"^rob_rate_(.+)$")[0]
    noise = long["col"].str.extract(r"^rob_noise_([^_]+)_(.+)$")
    long["kind"] = np.where(rate.notna(), "rate", np.where(noise[0].notna(), "noise", "without"))
    long["rate"] = pd.to_numeric(rate.fillna(noise[0]))
    long["condition"] = np.where(
        rate.notna(), "rate " + rate.fillna(""),
        np.where(noise[0].notna(), "noise " + noise[0].fillna("") + " on " + noise[1].fillna(""),
                 "without " + long["col"].str.replace("rob_without_", "")))
    out = (long.groupby([*keys, "condition", "kind"], dropna=False)
           .agg(rate=("rate", "first"), n=("auc", "count"), mean=("auc", "mean"),
                std=("auc", "std"), retained_mean=("retained", "mean"),
                retained_std=("retained", "std")).reset_index())
    out[["std", "retained_std"]] = out[["std", "retained_std"]].fillna(0.0)
    return out[cols].sort_values(["setting", "variant", "kind", "rate", "condition"]).reset_index(
        drop=True)


def verdict(df: pd.DataFrame, dataset: str, ref: str = "dsrsd", metric: str = "test_auc",
            alpha: float = 0.05) -> str:
    """One sentence, computed from the records: is ``ref`` best on ``dataset``, and is the gap
    shown after Holm's correction? (:func:`dsrsd.verdicts.verdict`; kept here for callers.)"""
    from dsrsd.verdicts import verdict as sentence

    return sentence(df, dataset, ref, metric, alpha)


def write_tables(runs_dir: str | Path = "results/runs", out: str | Path = "results") -> dict:
    """Write records / summary / significance / robustness / errors / cap_check CSVs; return
    the frames."""
    out = Path(out)
    df = load_records(runs_dir)
    if df.empty and not any(Path(runs_dir).glob("*/error.json")):
        # never overwrite result tables with empty ones because of a wrong --runs
        raise DsrsdError(f"no run records (*/metrics.json) under {str(runs_dir)!r}")
    # DSRSD-Net with the default weights, and with book/papers.md's (when the records hold it)
    refs = [r for r in REFS if not df.empty and r in set(df["variant"])] or [REFS[0]]
    sig = pd.concat([significance(df, ref=r) for r in refs], ignore_index=True)
    frames = {"records": df, "summary": summary(df), "significance": sig,
              "robustness": robustness(df), "errors": load_errors(runs_dir),
              "cap_check": cap_check(df) if not df.empty else pd.DataFrame(columns=CAP_COLS)}
    from dsrsd.records import atomic_write_bytes
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DsrsdError(f"cannot write tables to {str(out)!r}: {e.strerror or e}") from None
    for name, f in frames.items():  # each file whole or not at all
        atomic_write_bytes(out / f"{name}.csv",
                           f.to_csv(index=False, float_format="%.6g").encode("utf-8"))
    return frames


def write_unit_bootstrap(runs_dir: str | Path = "results/runs", out: str | Path = "results",
                         n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Write ``unit_bootstrap.csv``: :func:`unit_bootstrap` of DSRSD-Net against every method
    of every setting, from the predictions files this machine holds.

    The files are per-student copies of the real test data, so they are never committed, and a
    fresh checkout has none; this table of statistics made from them is committed. So that a
    machine without the files does not erase what another computed, a comparison it cannot
    compute keeps the ``ok`` row already in ``out`` while every run that row names is still a
    record. CI does not regenerate the file; a test checks each ``ok`` row against the records
    (:func:`check_unit_bootstrap`)."""
    df = load_records(runs_dir)
    if df.empty:
        raise DsrsdError(f"no run records (*/metrics.json) under {str(runs_dir)!r}")
    ub = unit_bootstrap(runs_dir, df, n_boot=n_boot, seed=seed)
    path = Path(out) / "unit_bootstrap.csv"
    if path.is_file():
        kept = {(o["setting"], o["ref"], o["variant"]): o
                for o in pd.read_csv(path).to_dict("records") if o["predictions"] == "ok"}
        ids = set(df["run_id"])
        rows = ub.to_dict("records")
        for i, r in enumerate(rows):
            o = kept.get((r["setting"], r["ref"], r["variant"]))
            if r["predictions"] != "ok" and o is not None and all(
                    x in ids for p in str(o["runs"]).split() for x in p.split(":")):
                rows[i] = o
        ub = pd.DataFrame(rows, columns=UNIT_COLS)
    from dsrsd.records import atomic_write_bytes
    Path(out).mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, ub.to_csv(index=False, float_format="%.6g").encode("utf-8"))
    return ub


def check_unit_bootstrap(ub: pd.DataFrame, df: pd.DataFrame, metric: str = "test_auc",
                         tol: float = 1e-5) -> list[str]:
    """What in a ``unit_bootstrap.csv`` table disagrees with the records ``df``: each ``ok``
    row's runs must be records of its setting and methods, one pair per seed or fold, and its
    ``mean_diff`` the records' mean ``metric`` difference over those pairs (the predictions
    files give the records' AUC back exactly); other rows must say why they are empty."""
    problems = []
    by_id = df.set_index("run_id")
    for _, r in ub.iterrows():
        where = f"{r['setting']} {r['ref']} vs {r['variant']}"
        if r["predictions"] != "ok":
            if not isinstance(r["predictions"], str) or not r["predictions"]:
                problems.append(f"{where}: empty row without a reason")
            continue
        pairs = [p.split(":") for p in str(r["runs"]).split()]
        if any(len(p) != 2 or not set(p) <= set(by_id.index) for p in pairs):
            problems.append(f"{where}: names runs that are not records")
            continue
        a, b = by_id.loc[[p[0] for p in pairs]], by_id.loc[[p[1] for p in pairs]]
        if (set(a["setting"]) | set(b["setting"]) != {r["setting"]} or set(a["variant"]) != {r["ref"]}
                or set(b["variant"]) != {r["variant"]} or list(a["unit"]) != list(b["unit"])
                or a["unit"].duplicated().any() or len(pairs) != r["n_runs"]):
            problems.append(f"{where}: its runs are not one pair per seed or fold of these methods")
            continue
        diff = float(np.mean(a[metric].to_numpy() - b[metric].to_numpy()))
        if not abs(diff - r["mean_diff"]) <= tol:
            problems.append(f"{where}: mean_diff {r['mean_diff']:.6g}, records {diff:.6g}")
    return problems


def main(argv: list[str] | None = None) -> int:
    """``python -m dsrsd.tables``: write the CSVs, print summary and significance; exit 2 with
    one line on bad input."""
    from dsrsd.cli import OneLineParser
    p = OneLineParser(prog="python -m dsrsd.tables", description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="results/runs")
    p.add_argument("--out", default="results")
    p.add_argument("--unit-bootstrap", action="store_true",
                   help="also write unit_bootstrap.csv from the runs' predictions files (minutes)")
    a = p.parse_args(argv)
    try:
        fr = write_tables(a.runs, a.out)
        if a.unit_bootstrap:
            ub = write_unit_bootstrap(a.runs, a.out)
            print(f"unit_bootstrap.csv: {int((ub['predictions'] == 'ok').sum())} of {len(ub)} "
                  "comparisons have every run's predictions")
    except DsrsdError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        from dsrsd.cli import os_error
        print(f"error: {os_error(e)}", file=sys.stderr)
        return 2
    print(fr["summary"].to_string(index=False))
    print(fr["significance"].to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
