"""The coin-flip leakage detector on the real ASSISTments 2009 folds; writes its record.

    python data_scripts/coin_flip.py [--data-dir D] [--source DIR] [--out FILE] [--epochs E]

Every interaction's response (one flip per merged multi-skill run, not per row) is replaced by a
seeded coin flip with the fold's base rate, so nothing in the data predicts a response. A model
that scores test AUC clearly above 0.5 reads a response it should not see.

1. On each fold a logistic regression on ``kt_features_flat`` is fitted to the flipped data built
   with the merge of multi-skill runs (must be at chance) and without it (the leak the merge
   removes: a run's rows are history for each other; the control shows the detector can fire).
2. On fold 1 the neural KT methods train briefly through :func:`dsrsd.train.fit`; a causal model
   stays within noise of 0.5.

Each AUC comes with a percentile bootstrap 95% interval over the scored test steps (under the
flips the steps' labels are independent, so the step is the right resampling unit). The record
(default ``results/coin_flip.json``) is written atomically, with provenance and a one-line
verdict. The data is read from the prepared cache ``<data-dir>/assist2009`` (data dir:
--data-dir, else $DSRSD_DATA, else ~/.cache/dsrsd), as ``--dataset assist2009`` reads it;
``--source`` prepares it first from an AKT folder, as ``get_assistments.py`` does. Errors print
``error: ...`` and exit with status 2.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable without installing

import numpy as np  # noqa: E402

from dsrsd.cli import OneLineParser, prepare_cache  # noqa: E402
from dsrsd.data.batch import Splits  # noqa: E402
from dsrsd.errors import DsrsdError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "results" / "coin_flip.json"
METHODS = ("dkt", "akt", "early", "dsrsd")
TOLERANCE = 0.02  # |AUC - 0.5| allowed on the flipped data (the real-data test's tolerance)


def flip_responses(parts: dict, seed: int) -> float:
    """Replace ``parts``' responses in place by one seeded flip per merged interaction, with the
    rows' base rate (all parts of the fold); return that base rate.

    The generator is seeded afresh for every fold and walks the parts in file order, so fold 1
    repeats ``tests/test_realdata.py::test_assist_coin_flip_fold1`` exactly."""
    from dsrsd.data.kt_features import merge_runs

    rng = np.random.default_rng(seed)
    base = float(np.concatenate([p["resp"] for p in parts.values()]).mean())
    for p in parts.values():
        row_interaction = merge_runs(p)["row_interaction"]
        flips = rng.random(int(row_interaction.max()) + 1) < base
        p["resp"] = flips[row_interaction].astype(np.int8)
    return base


def auc_interval(y: np.ndarray, prob: np.ndarray, n_boot: int, seed: int) -> dict:
    """Test AUC, its 95% percentile bootstrap interval over test steps, and n."""
    from sklearn.metrics import roc_auc_score

    from dsrsd.stats import auc_on_resamples, bootstrap_indices, interval

    # in chunks of 50 resamples: one [n_boot, n] count matrix of 60k steps would take gigabytes
    draws = np.concatenate([auc_on_resamples(y, prob, bootstrap_indices(len(y), 50, seed + s))
                            for s in range(0, n_boot, 50)])[:n_boot]
    lo, hi = interval(draws)
    return {"auc": float(roc_auc_score(y, prob)), "lo": lo, "hi": hi, "n": int(len(y)),
            "positive_rate": float(np.mean(y))}


def lr_detector(splits: Splits, n_boot: int, seed: int) -> dict:
    """The logistic-regression detector of the real-data test, fitted on train, scored on test."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from dsrsd.data.kt_features import kt_features_flat

    xtr, ytr = kt_features_flat(splits.train)
    xte, yte = kt_features_flat(splits.test)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=500))
    return auc_interval(yte, model.fit(xtr, ytr).predict_proba(xte)[:, 1], n_boot, seed)


def neural_detector(splits: Splits, method: str, args) -> dict:
    """Train ``method`` briefly through the package's trainer; its test AUC with an interval."""
    from dsrsd.config import TrainConfig
    from dsrsd.train import fit, predict

    cfg = TrainConfig(method=method, dataset="assist2009", epochs=args.epochs, patience=args.epochs,
                      batch_size=args.batch_size, d=args.d, modality_dropout=0.0,
                      length_buckets=args.length_buckets, seed=args.train_seed, device="cpu")
    rec = fit(cfg, splits=splits, progress=not args.quiet)
    y, prob = predict(rec["model"], splits.test, trim=cfg.length_buckets > 0)
    return {**auc_interval(y, prob, args.n_boot, args.boot_seed),
            "val_auc": rec["val"]["auc"], "epochs_run": rec["epochs_run"],
            "best_epoch": rec["best_epoch"], "n_params": rec["n_params"],
            "config_hash": rec["config_hash"], "wall_time_s": round(rec["wall_time_s"], 1)}


def verdict(folds: dict, neural: dict, tol: float = TOLERANCE) -> str:
    """One line: no leak when every merged AUC lies within ``tol`` of 0.5, else the offenders;
    which 95% intervals exclude 0.5 (about 1 in 20 by chance: reported, not judged); whether
    the unmerged control fired (if not, the detector proved nothing)."""
    res = {f"logistic regression fold {k}": v["merged"] for k, v in folds.items()}
    res.update({f"{m} fold {neural['fold']}": v for m, v in neural["methods"].items()})
    merged = {name: r["auc"] for name, r in res.items()}
    bad = [f"{name} {auc:.4f}" for name, auc in merged.items() if abs(auc - 0.5) > tol]
    # at the 95% level about 1 in 20 intervals misses 0.5 by chance alone: said, not judged
    off = [f"{name} [{r['lo']:.4f}, {r['hi']:.4f}]" for name, r in res.items()
           if "lo" in r and not r["lo"] <= 0.5 <= r["hi"]]
    chance = (f"{len(off)} of {len(res)} 95% intervals exclude 0.5 ({0.05 * len(res):.2f} "
              f"expected by chance){': ' + ', '.join(off) if off else ''}")
    ctrl = [v["unmerged"]["auc"] for v in folds.values()]
    control = (f"the unmerged control leaks on every fold (AUC {min(ctrl):.4f}-{max(ctrl):.4f})"
               if min(ctrl) > 0.5 + tol else
               f"WARNING: the unmerged control does not fire on every fold (AUC {min(ctrl):.4f}"
               f"-{max(ctrl):.4f}), so the detector may be blind")
    lo, hi = min(merged.values()), max(merged.values())
    head = (f"no leak: every merged AUC within {tol} of 0.5 ({len(merged)} AUCs, {lo:.4f}-{hi:.4f})"
            if not bad else f"LEAK: merged AUC further than {tol} from 0.5: {', '.join(bad)}")
    return f"{head}; {chance}; {control}"


def detect(args) -> dict:
    """Run the detector (all folds, then the neural methods on the first) and return the record."""
    import torch
    from threadpoolctl import threadpool_limits
    from tqdm.std import tqdm

    from dsrsd.data.assist import _root, assist_cache_ok, prepare_assist2009
    from dsrsd.data.kt_features import build, to_splits
    from dsrsd.data.paths import read_json
    from dsrsd.records import provenance
    from dsrsd.registry import METHODS as REGISTRY

    unknown = [m for m in args.methods if m not in REGISTRY]
    if unknown:
        raise DsrsdError(f"--methods: unknown method(s) {', '.join(unknown)} "
                         f"(known: {', '.join(sorted(REGISTRY))})")
    if args.source is not None:
        prepare_assist2009(args.source, args.data_dir, verify=not args.no_verify, log=print)
    root = _root(args.data_dir)
    if not assist_cache_ok(args.data_dir):
        raise DsrsdError(f"no prepared ASSISTments 2009 under {root}: run python "
                         "data_scripts/get_assistments.py [--source DIR] [--data-dir DIR], or "
                         "pass --source DIR here")
    from dsrsd.data.assist import _load_parts

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    folds, base_rates, fold1 = {}, {}, None
    with threadpool_limits(args.threads):
        for fold in tqdm(args.folds, desc="folds (logistic regression)", disable=args.quiet):
            parts, names = _load_parts(root, fold)
            base_rates[str(fold)] = flip_responses(parts, args.seed)
            row = {}
            for label, merge in (("merged", True), ("unmerged", False)):
                splits = to_splits(build(parts, names, fold, args.max_len, 32, merge=merge), 32)
                row[label] = {**lr_detector(splits, args.n_boot, args.boot_seed),
                              "counts": splits.info["counts"]["test"]}
                if merge and fold == args.folds[0]:
                    fold1 = splits
            folds[str(fold)] = row
            print(f"fold {fold}: logistic regression AUC merged {row['merged']['auc']:.4f}, "
                  f"unmerged {row['unmerged']['auc']:.4f}", flush=True)
        neural = {"fold": args.folds[0], "methods": {}}
        for method in args.methods:
            neural["methods"][method] = res = neural_detector(fold1, method, args)
            print(f"fold {args.folds[0]} {method}: test AUC {res['auc']:.4f} "
                  f"[{res['lo']:.4f}, {res['hi']:.4f}] ({res['wall_time_s']} s)", flush=True)
    manifest = read_json(root / "manifest.json")
    return {
        "what": "coin-flip leakage detector: every interaction's response replaced by a seeded "
                "flip at the fold's base rate; any test AUC clearly above 0.5 is a leak",
        "dataset": "assist2009",
        "source": {k: manifest.get(k) for k in ("kind", "verified", "rows", "students")},
        "flip": {"seed": args.seed, "unit": "merged interaction (a multi-skill run flips once)",
                 "base_rate": base_rates,
                 "base_rate_note": "mean response over the rows of the fold's train, valid and "
                                   "test files (before the flip)"},
        "data_params": {"max_len": args.max_len, "text_dim": 32, "valid": "given"},
        "interval": {"kind": "percentile bootstrap over scored test steps", "level": 0.95,
                     "n_boot": args.n_boot, "seed": args.boot_seed},
        "tolerance": TOLERANCE,
        "logistic_regression": {"model": "StandardScaler + LogisticRegression(C=0.1)",
                                "features": "kt_features_flat: item_stats, content, target-skill "
                                            "history features", "folds": folds},
        "neural": {**neural, "config": {"epochs": args.epochs, "patience": args.epochs,
                                        "batch_size": args.batch_size, "d": args.d,
                                        "modality_dropout": 0.0,
                                        "length_buckets": args.length_buckets,
                                        "seed": args.train_seed, "threads": args.threads,
                                        "trainer": "dsrsd.train.fit (best validation epoch)"}},
        "verdict": verdict(folds, neural),
        "wall_time_s": round(time.perf_counter() - t0, 1),
        **provenance(torch.device("cpu")),
    }


def _ints(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise DsrsdError(f"--folds expects comma-separated integers in 1..5, got {text!r}") from None
    if not vals or any(not 1 <= v <= 5 for v in vals):
        raise DsrsdError(f"--folds expects comma-separated integers in 1..5, got {text!r}")
    return vals


def main(argv: list[str] | None = None) -> int:
    ap = OneLineParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", help="data folder (default: $DSRSD_DATA or ~/.cache/dsrsd)")
    ap.add_argument("--source", help="AKT assist2009_pid folder or skill-builder CSV to prepare "
                                     "the cache from first (default: the prepared cache)")
    ap.add_argument("--no-verify", action="store_true",
                    help="skip the SHA-256 check of --source (only for test fixtures)")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="record file (default: %(default)s)")
    ap.add_argument("--folds", default="1,2,3,4,5", help="folds for the logistic regression; "
                                                         "the neural methods run on the first")
    ap.add_argument("--methods", default=",".join(METHODS), help="neural methods, comma-separated")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--length-buckets", type=int, default=8,
                    help="TrainConfig.length_buckets (0 = padded batches; 8 is faster)")
    ap.add_argument("--max-len", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0, help="seed of the coin flips")
    ap.add_argument("--train-seed", type=int, default=0)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--boot-seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    if args.epochs < 1 or args.n_boot < 1 or args.threads < 1:
        ap.error("--epochs, --n-boot and --threads must be at least 1")

    def run() -> None:
        from dsrsd.records import atomic_write_json

        args.folds = _ints(args.folds)
        record = detect(args)
        atomic_write_json(Path(args.out), record)
        print(f"{record['verdict']}\nwrote {args.out}")

    return prepare_cache(run)


if __name__ == "__main__":
    sys.exit(main())
