"""Tables from run records: every number in the results chapters is computed here from records.

    python -m dsrsd.tables [--runs results/runs] [--out results]

writes ``records.csv`` (one row per run), ``summary.csv`` (mean +- std per method x dataset),
``significance.csv`` (DSRSD-Net vs each method, paired over matched seeds/folds) and
``robustness.csv`` (test AUC with modalities hidden at test time) and ``errors.csv`` (failed
runs, from ``error.json``).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from dsrsd.errors import DsrsdError

REFS = ("dsrsd", "dsrsd_pw")
ID_COLS = ["run_id", "method", "variant", "dataset", "setting", "seed", "fold", "unit"]


def _variant(method: str, params: dict) -> str:
    """``method`` plus its method parameters, e.g. ``unimodal[modality=behaviour]``."""
    if not params:
        return method
    return method + "[" + ",".join(f"{k}={v}" for k, v in sorted(params.items())) + "]"


def record_row(rec: dict, run_id: str = "") -> dict:
    cfg = rec.get("config", {})
    dp = dict(cfg.get("data_params", {}))
    mp = dict(cfg.get("method_params", {}))
    fold = dp.get("fold")
    seed = rec.get("seed", cfg.get("seed"))
    # Sweep records name their grid entry (``variant``, e.g. an ablation) and protocol
    # (``setting``, e.g. a cross-domain direction); plain train records fall back to the config.
    row = {"run_id": run_id, "method": rec["method"],
           "variant": rec.get("variant") or _variant(rec["method"], mp),
           "dataset": rec["dataset"], "setting": rec.get("setting") or rec["dataset"],
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
    for key in ("variant", "setting"):
        if rec.get(key) is not None and not isinstance(rec[key], str):
            raise DsrsdError(f"bad record {f}: {key!r} is not a string")
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
    """Mean, std (ddof=1), n and ``mean ± std`` per dataset x variant, best first per dataset."""
    if df.empty:
        return pd.DataFrame(columns=["setting", "variant", "n", "mean", "std", "mean ± std"])
    g = df.groupby(["setting", "variant"])[metric]
    out = g.agg(n="count", mean="mean", std="std").reset_index()
    out["std"] = out["std"].fillna(0.0)
    out["mean ± std"] = [f"{m:.4f} ± {s:.4f}" for m, s in zip(out["mean"], out["std"], strict=False)]
    wall = df.groupby(["setting", "variant"])["wall_time_s"].mean().rename("wall_time_s_mean")
    out = out.merge(wall.reset_index(), on=["setting", "variant"])
    return out.sort_values(["setting", "mean"], ascending=[True, False]).reset_index(drop=True)


def paired_test(a: np.ndarray, b: np.ndarray) -> tuple[str, float]:
    """Two-sided paired test of ``a`` vs ``b``: Wilcoxon signed-rank for n >= 6, else paired t."""
    from scipy import stats

    d = np.asarray(a, float) - np.asarray(b, float)
    n = len(d)
    if n < 2 or np.allclose(d, 0):
        return ("none", math.nan)
    if n >= 6:
        return ("wilcoxon", float(stats.wilcoxon(a, b).pvalue))
    return ("paired_t", float(stats.ttest_rel(a, b).pvalue))


def significance(df: pd.DataFrame, ref: str = "dsrsd", metric: str = "test_auc",
                 alpha: float = 0.05) -> pd.DataFrame:
    """``ref`` vs every other variant per dataset, paired over the units (seeds/folds) both ran."""
    cols = ["setting", "ref", "variant", "n_pairs", "ref_mean", "other_mean", "mean_diff",
            "test", "p_value", "significant", "ref_better"]
    rows = []
    for ds, sub in df.groupby("setting"):
        piv = sub.pivot_table(index="unit", columns="variant", values=metric, aggfunc="mean")
        if ref not in piv:
            continue
        for v in piv.columns:
            if v == ref:
                continue
            pair = piv[[ref, v]].dropna()
            test, p = paired_test(pair[ref].to_numpy(), pair[v].to_numpy())
            diff = float((pair[ref] - pair[v]).mean()) if len(pair) else math.nan
            rows.append({"setting": ds, "ref": ref, "variant": v, "n_pairs": len(pair),
                         "ref_mean": float(pair[ref].mean()) if len(pair) else math.nan,
                         "other_mean": float(pair[v].mean()) if len(pair) else math.nan,
                         "mean_diff": diff, "test": test, "p_value": p,
                         "significant": bool(p < alpha) if not math.isnan(p) else False,
                         "ref_better": bool(diff > 0)})
    return pd.DataFrame(rows, columns=cols)


def robustness(df: pd.DataFrame) -> pd.DataFrame:
    """Test AUC under missing modalities, mean ± std per setting x variant x condition.

    Conditions: ``rate r`` (each present modality hidden with probability r at test time; r = 0
    is the clean test AUC) and ``without <modality>`` (that modality hidden everywhere).
    """
    cols = ["setting", "variant", "condition", "kind", "rate", "n", "mean", "std"]
    rob_cols = [c for c in df.columns if c.startswith("rob_")]
    if df.empty or not rob_cols:
        return pd.DataFrame(columns=cols)
    long = df[["setting", "variant", "unit", "test_auc", *rob_cols]].rename(
        columns={"test_auc": "rob_rate_0"}).melt(
        id_vars=["setting", "variant", "unit"], var_name="col", value_name="auc").dropna()
    rate = long["col"].str.extract(r"^rob_rate_(.+)$")[0]
    long["kind"] = np.where(rate.notna(), "rate", "without")
    long["rate"] = pd.to_numeric(rate)
    long["condition"] = np.where(rate.notna(), "rate " + rate.fillna(""),
                                 "without " + long["col"].str.replace("rob_without_", ""))
    out = (long.groupby(["setting", "variant", "condition", "kind"], dropna=False)
           .agg(rate=("rate", "first"), n=("auc", "count"), mean=("auc", "mean"),
                std=("auc", "std")).reset_index())
    out["std"] = out["std"].fillna(0.0)
    return out[cols].sort_values(["setting", "variant", "kind", "rate", "condition"]).reset_index(
        drop=True)


def write_tables(runs_dir: str | Path = "results/runs", out: str | Path = "results") -> dict:
    """Write records / summary / significance / errors CSVs; return the frames."""
    out = Path(out)
    df = load_records(runs_dir)
    if df.empty and not any(Path(runs_dir).glob("*/error.json")):
        # never overwrite result tables with empty ones because of a wrong --runs
        raise DsrsdError(f"no run records (*/metrics.json) under {str(runs_dir)!r}")
    # DSRSD-Net with the default weights, and with book/papers.md's (when the records hold it)
    refs = [r for r in REFS if not df.empty and r in set(df["variant"])] or [REFS[0]]
    sig = pd.concat([significance(df, ref=r) for r in refs], ignore_index=True)
    frames = {"records": df, "summary": summary(df), "significance": sig,
              "robustness": robustness(df), "errors": load_errors(runs_dir)}
    from dsrsd.records import atomic_write_bytes
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DsrsdError(f"cannot write tables to {str(out)!r}: {e.strerror or e}") from None
    for name, f in frames.items():  # each file whole or not at all
        atomic_write_bytes(out / f"{name}.csv",
                           f.to_csv(index=False, float_format="%.6g").encode("utf-8"))
    return frames


def main(argv: list[str] | None = None) -> int:
    from dsrsd.cli import OneLineParser
    p = OneLineParser(prog="python -m dsrsd.tables", description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="results/runs")
    p.add_argument("--out", default="results")
    a = p.parse_args(argv)
    try:
        fr = write_tables(a.runs, a.out)
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


def headline(df: pd.DataFrame, metric: str = "test_auc") -> pd.DataFrame:
    """``mean ± std (n)`` per variant (rows) x dataset (columns), best first on the first dataset."""
    s = summary(df, metric)
    if s.empty:
        return pd.DataFrame()
    s["cell"] = [f"{m:.4f} ± {sd:.4f} (n={n})" for m, sd, n in zip(s["mean"], s["std"], s["n"], strict=False)]
    t = s.pivot(index="variant", columns="setting", values="cell")
    order = s.pivot(index="variant", columns="setting", values="mean")
    t = t.loc[order.sort_values(list(order.columns), ascending=False).index]
    t.columns.name = None
    return t.fillna("—")


def _ptext(row, alpha: float) -> str:
    if row["test"] == "none":
        return f"untested: {row['n_pairs']} matched pair(s) or identical scores"
    word = "significant" if row["significant"] else "not significant"
    return f"{word}: {row['test']} p = {row['p_value']:.3g}, alpha {alpha}, {row['n_pairs']} pairs"


def verdict(df: pd.DataFrame, dataset: str, ref: str = "dsrsd", metric: str = "test_auc",
            alpha: float = 0.05) -> str:
    """One sentence, computed from the records: is ``ref`` best on ``dataset``, and significantly?"""
    s = summary(df[df["setting"] == dataset], metric)
    if s.empty or ref not in set(s["variant"]):
        return f"{dataset}: no {ref} records."
    best = s.iloc[0]
    mine = s[s["variant"] == ref].iloc[0]
    sig = significance(df[df["setting"] == dataset], ref, metric, alpha)
    n_units = int(mine["n"])
    if best["variant"] == ref:
        runner = s.iloc[1] if len(s) > 1 else None
        if runner is None:
            return f"{dataset}: {ref} is the only method."
        row = sig[sig["variant"] == runner["variant"]].iloc[0]
        worse_sig = int(((sig["ref_better"]) & (sig["significant"])).sum())
        return (f"{dataset}: {ref} has the best mean AUC ({mine['mean']:.4f} over {n_units} "
                f"runs), {mine['mean'] - runner['mean']:+.4f} over the runner-up "
                f"{runner['variant']} ({runner['mean']:.4f}; {_ptext(row, alpha)}); it is "
                f"significantly better than {worse_sig} of {len(sig)} other methods.")
    row = sig[sig["variant"] == best["variant"]].iloc[0]
    rank = int((s["variant"] == ref).to_numpy().nonzero()[0][0]) + 1
    return (f"{dataset}: {ref} is not the best: it ranks {rank} of {len(s)} by mean AUC "
            f"({mine['mean']:.4f} over {n_units} runs) behind {best['variant']} "
            f"({best['mean']:.4f}); the gap of {best['mean'] - mine['mean']:.4f} is "
            f"{_ptext(row, alpha)}.")
