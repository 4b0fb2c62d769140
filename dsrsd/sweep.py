"""Sweeps: ``python -m dsrsd sweep --grid GRID.json | --preset NAME --out results/runs``.

A grid expands methods x datasets x seeds (x folds) into runs; each run calls
:func:`dsrsd.train.fit` and writes ``<out>/<run_id>/metrics.json`` (the record, with provenance).
``run_id`` is readable plus the config hash (``oulad-dsrsd-s0-<hash>``).

* Resumable: a run whose ``metrics.json`` exists with the same ``config_hash`` is skipped; a
  run killed mid-way continues from its ``last.pt``.
* Failures are never dropped: the run's folder gets ``error.json`` with the one-line error.
* ``--jobs N`` runs N at a time in processes (one torch thread each).
* Checkpoints (``*.pt``) are deleted after each run; only the small JSON record stays.

Grid JSON (every key but ``methods`` and ``datasets`` optional)::

    {"methods": ["dsrsd", "early"],
     "datasets": [{"name": "oulad", "data_params": {"cutoff": 0.5}, "seeds": [0, 1, 2]},
                  {"name": "assist2009", "folds": [1, 2, 3], "max_train": 800}],
     "seeds": [0], "config": {"epochs": 15, "patience": 3, "d": 64, "batch_size": 512},
     "method_params": {"unimodal": {"modality": "behaviour"}}}

``max_train`` (dataset level) trains on a seeded random subsample of that many training samples
(validation and test stay whole); it is kept in the record's ``data_params`` and so in its hash.
Follow-up: executing chapters per configuration through papermill is not done here.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from dsrsd.errors import DsrsdError

_OULAD = {"cutoff": 0.5, "label": "binary", "split": "temporal"}
# Every neural method trains with modality dropout 0.15, papers.md's missing-modality protocol [R].
_COMMON = {"epochs": 15, "patience": 3, "d": 64, "batch_size": 512, "modality_dropout": 0.15}
_ALL = ["dsrsd", "early", "late", "late_logit", "unimodal", "gbdt", "coattention", "coral",
        "clear", "misa"]
# The two attention-heavy peers cost 12-38x early fusion per step on CPU (results/cost.csv):
# they get 5 epochs (patience 2) so the 5-seed grid fits a CPU session; records say so.
_HEAVY = {"coattention": {"method": "coattention", "config": {"epochs": 5, "patience": 2}},
          "coral": {"method": "coral", "config": {"epochs": 5, "patience": 2}}}
# Loss-term ablations of DSRSD-Net: one term off at a time, and all off (the same architecture
# trained on the task loss alone). Named "<method>-<change>": tables keep them out of headlines.
_ABLATIONS = {
    **{f"dsrsd-no_{t}": {"method": "dsrsd", "weights": {t: 0.0}}
       for t in ("align_con", "align_reg", "decor", "orth", "recon")},
    "dsrsd-task_only": {"method": "dsrsd", "weights": {t: 0.0 for t in (
        "align_con", "align_reg", "decor", "orth", "recon")}},
}
# DSRSD-Net with papers.md section 1.4's weights (alignment 0.1 + 0.1, decorrelation 0.04,
# orthogonality 0.1, no reconstruction) instead of the package defaults, which were chosen on
# the synthetic data (orthogonality 10). It is in the main grids because it had the best
# validation AUC of the OULAD ablation variants (seeds 0-2); test AUC played no part.
_PAPER_WEIGHTS = {"dsrsd_pw": {"method": "dsrsd", "weights": {
    "align_con": 0.1, "align_reg": 0.1, "decor": 0.04, "orth": 0.1, "recon": 0.0}}}

PRESETS: dict[str, dict] = {
    "oulad": {"methods": [*_ALL, "dsrsd_pw"],
              "datasets": [{"name": "oulad", "data_params": dict(_OULAD), "seeds": [0, 1, 2, 3, 4]}],
              "config": dict(_COMMON), "variants": {**_HEAVY, **_PAPER_WEIGHTS},
              "method_params": {"unimodal": {"modality": "behaviour"}}},
    "oulad_xdomain": {
        "methods": ["dsrsd", "dsrsd_pw", "early", "late_logit", "gbdt"],
        "datasets": [{"name": "oulad", "setting": f"oulad-{d}", "seeds": [0, 1, 2],
                      "data_params": {**_OULAD, "split": "cross_domain", "direction": d}}
                     for d in ("stem2soc", "soc2stem")],
        "config": dict(_COMMON), "variants": _PAPER_WEIGHTS},
    "oulad_ablation": {
        "methods": ["dsrsd", *_ABLATIONS, "dsrsd_pw"],
        "datasets": [{"name": "oulad", "data_params": dict(_OULAD), "seeds": [0, 1, 2]}],
        "config": dict(_COMMON), "variants": {**_ABLATIONS, **_PAPER_WEIGHTS}},
    # ASSISTments: every method on the 5 AKT folds, training on a seeded subsample of 600
    # student windows (of ~2,750) for 6 epochs (co-attention 1, COrAL 2), so the grid fits a
    # 2-core CPU session.
    "assist": {"methods": [*_ALL, "dsrsd_pw"],
               "datasets": [{"name": "assist2009", "folds": [1, 2, 3, 4, 5], "max_train": 600}],
               "config": {**_COMMON, "epochs": 6, "patience": 2, "batch_size": 32},
               # per-step co-attention over 200-step windows costs minutes per epoch on CPU
               "variants": {"coattention": {"method": "coattention", "config": {"epochs": 1}},
                            "coral": {"method": "coral", "config": {"epochs": 2, "patience": 2}},
                            **_PAPER_WEIGHTS},
               "method_params": {"unimodal": {"modality": "history"}}},
    "smoke": {"methods": ["dsrsd", "early"],
              "datasets": [{"name": "synthetic", "data_params": {"n": 300}, "seeds": [0]}],
              "config": {"epochs": 2, "d": 16, "batch_size": 64}},
}

def add_parser(sub) -> None:
    p = sub.add_parser("sweep", help="run a grid of methods x datasets x seeds into records")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--grid", help="grid JSON file")
    src.add_argument("--preset", choices=sorted(PRESETS))
    p.add_argument("--out", default="results/runs", help="folder of run records")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--epochs", type=int, default=None, help="override every run's epochs")
    p.add_argument("--quick", action="store_true", help="1 epoch per run (a format check)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--only-method", action="append", help="restrict to these methods")
    p.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    p.add_argument("--executor", choices=("papermill", "direct"), default="papermill",
                   help="papermill: each run executes notebooks/run.ipynb, kept beside its "
                        "record (default); direct: train in the worker process")


def load_grid(grid: str | None = None, preset: str | None = None) -> dict:
    if preset is not None:
        if preset not in PRESETS:
            raise DsrsdError(f"unknown preset {preset!r} (expected {', '.join(sorted(PRESETS))})")
        return json.loads(json.dumps(PRESETS[preset]))
    try:
        g = json.loads(Path(grid).read_text())
    except OSError as e:
        raise DsrsdError(f"cannot read grid {grid!r}: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise DsrsdError(f"grid {grid!r} is not valid JSON: {e}") from None
    if not isinstance(g, dict) or not g.get("methods") or not g.get("datasets"):
        raise DsrsdError(f"grid {grid!r} needs non-empty 'methods' and 'datasets'")
    return g


def expand(grid: dict, epochs: int | None = None, quick: bool = False,
           device: str = "cpu") -> list[dict]:
    """The runs of ``grid``: dicts with ``run_id``, ``config`` (TrainConfig dict), ``max_train``.

    A run whose config is invalid (e.g. a bad config value) is still listed, with ``error``
    set, so it is recorded rather than dropped. Unknown methods fail inside the run.
    """
    from dsrsd.config import DEFAULT_WEIGHTS, TrainConfig

    runs = []
    base = dict(grid.get("config", {}))
    if epochs is not None:
        base["epochs"] = epochs
    if quick:
        base["epochs"] = 1
    base["device"] = device
    variants = grid.get("variants", {})
    for ds in grid["datasets"]:
        ds = {"name": ds} if isinstance(ds, str) else ds
        name = ds["name"]
        setting = ds.get("setting", name)
        seeds = ds.get("seeds", grid.get("seeds", [0]))
        folds = ds.get("folds", [None])
        for fold in folds:
            for seed in seeds:
                for label in grid["methods"]:
                    var = variants.get(label, {})
                    method = var.get("method", label)
                    dp = dict(ds.get("data_params", {}))
                    if fold is not None:
                        dp["fold"] = fold
                    if ds.get("max_train"):
                        dp["max_train"] = int(ds["max_train"])
                    mp = {**grid.get("method_params", {}).get(label, {}),
                          **var.get("method_params", {})}
                    cfgd = {**base, **var.get("config", {}), "method": method, "dataset": name,
                            "seed": seed, "data_params": dp, "method_params": mp,
                            "weights": {**DEFAULT_WEIGHTS, **grid.get("weights", {}),
                                        **var.get("weights", {})}}
                    if epochs is not None or quick:  # the command line wins over variants
                        cfgd["epochs"] = base["epochs"]
                    tag = (f"{setting}-{label}" + (f"-f{fold}" if fold is not None else "")
                           + f"-s{seed}")
                    run = {"config": cfgd, "variant": label, "setting": setting}
                    try:
                        h = TrainConfig.from_dict(cfgd).hash()
                        runs.append({**run, "run_id": f"{tag}-{h}", "hash": h})
                    except (DsrsdError, TypeError) as e:
                        runs.append({**run, "run_id": f"{tag}-invalid", "hash": None,
                                     "error": str(e).splitlines()[0]})
    return runs


def is_done(run_dir: Path, h: str | None) -> bool:
    f = run_dir / "metrics.json"
    if h is None or not f.exists():
        return False
    try:
        return json.loads(f.read_text()).get("config_hash") == h
    except (OSError, json.JSONDecodeError):
        return False


def _subsample(splits, max_train: int, seed: int):
    import torch

    from dsrsd.data import Splits
    n = len(splits.train)
    if max_train >= n:
        return splits
    g = torch.Generator().manual_seed(10_000 + seed)
    idx = torch.randperm(n, generator=g)[:max_train].sort().values
    info = {**splits.info, "subsample_train": [max_train, n]}
    return Splits(splits.train.subset(idx, splits.train.name), splits.val, splits.test, info)


RUN_NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "run.ipynb"


def execute_run(run: dict, out: str | Path) -> dict:
    """Train one run of a grid into ``out/<run_id>`` and return its record (raises on error).

    This is what ``notebooks/run.ipynb`` calls, so the papermill path and the direct path
    train identically. The record gets the grid's labels (``variant``, ``setting``).
    """
    import torch

    from dsrsd.config import TrainConfig
    from dsrsd.data import load_dataset
    from dsrsd.train import fit

    if run.get("error"):
        raise DsrsdError(run["error"])
    torch.set_num_threads(int(os.environ.get("DSRSD_THREADS", "1")))
    run_dir = Path(out) / run["run_id"]
    cfg = TrainConfig.from_dict(run["config"])
    dp = dict(cfg.data_params)
    max_train = dp.pop("max_train", None)
    splits = load_dataset(cfg.dataset, seed=cfg.seed, **dp)
    if max_train:
        splits = _subsample(splits, int(max_train), cfg.seed)
    labels = {"variant": run.get("variant", cfg.method),
              "setting": run.get("setting", cfg.dataset), "run_id": run["run_id"]}
    # resume=True continues a run killed mid-way from its last.pt (same config hash only)
    rec = fit(cfg, splits=splits, out=run_dir, resume=True, progress=False, labels=labels)
    rec.pop("model")
    return rec


def scrub_notebook_paths(path: str | Path) -> None:
    """Replace the absolute paths papermill records in a notebook's metadata (its input and
    output files) by the repository-relative input and the bare output name, in place."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    meta = nb.metadata.get("papermill")
    if isinstance(meta, dict):
        meta["input_path"] = "notebooks/run.ipynb"
        meta["output_path"] = "run.ipynb"
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    nbformat.write(nb, str(tmp))
    os.replace(tmp, path)


def _execute_notebook(run: dict, out: str) -> dict:
    import papermill as pm

    run_dir = Path(out) / run["run_id"]
    tmp = run_dir / "run.part.ipynb"
    # The kernel runs in notebooks/, so a path relative to it reaches `out` without writing a
    # machine path into the kept notebook.
    out_rel = os.path.relpath(Path(out).resolve(), RUN_NOTEBOOK.parent)
    try:
        pm.execute_notebook(str(RUN_NOTEBOOK), str(tmp), kernel_name="python3",
                            parameters={"run_json": json.dumps(run), "out": out_rel, "fig_dpi": 40},
                            progress_bar=False, cwd=str(RUN_NOTEBOOK.parent))
    except pm.PapermillExecutionError as e:
        scrub_notebook_paths(tmp)
        os.replace(tmp, run_dir / "run.ipynb")  # the failed notebook shows where it stopped
        raise DsrsdError(f"{e.ename}: {(e.evalue.splitlines() or [''])[0]}") from None
    scrub_notebook_paths(tmp)
    os.replace(tmp, run_dir / "run.ipynb")
    return json.loads((run_dir / "metrics.json").read_text())


def run_one(run: dict, out: str, executor: str = "papermill") -> dict:
    """Run one grid entry (``papermill``: through notebooks/run.ipynb, which is kept with the
    record; ``direct``: in this process). Returns a short status dict; never raises."""
    from dsrsd.records import atomic_write_json

    run_dir = Path(out) / run["run_id"]
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        if run.get("error"):
            raise DsrsdError(run["error"])
        rec = _execute_notebook(run, out) if executor == "papermill" else execute_run(run, out)
        (run_dir / "error.json").unlink(missing_ok=True)
        return {"run_id": run["run_id"], "status": "ok", "auc": rec["test"].get("auc"),
                "wall_time_s": rec["wall_time_s"]}
    except Exception as e:  # recorded, never dropped
        msg = (str(e).splitlines() or [""])[0] or type(e).__name__
        err = msg if msg.split(":")[0].endswith(("Error", "Exception")) else f"{type(e).__name__}: {msg}"
        atomic_write_json(run_dir / "error.json", {
            "run_id": run["run_id"], "error": err, "config": run["config"],
            "wall_time_s": time.perf_counter() - t0,
            "traceback_tail": traceback.format_exc().splitlines()[-3:]})
        return {"run_id": run["run_id"], "status": "error", "error": msg}
    finally:  # a run killed by a signal keeps last.pt, so the next sweep resumes it
        for pt in run_dir.glob("*.pt"):
            pt.unlink(missing_ok=True)
        (run_dir / "run.part.ipynb").unlink(missing_ok=True)


def _init_worker() -> None:
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch
    torch.set_num_threads(1)


def sweep(runs: list[dict], out: str | Path, jobs: int = 1, progress: bool = True,
          executor: str = "papermill") -> dict:
    """Run (or skip) every run; return counts and the wall time. Writes ``out/sweep_log.json``."""
    from tqdm.auto import tqdm

    from dsrsd.records import atomic_write_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    todo = [r for r in runs if not is_done(out / r["run_id"], r["hash"])]
    skipped = len(runs) - len(todo)
    t0 = time.perf_counter()
    results = []
    bar = tqdm(total=len(todo), desc="sweep", disable=not progress)
    if jobs <= 1:
        for r in todo:
            results.append(run_one(r, str(out), executor))
            bar.update(1)
    else:
        with ProcessPoolExecutor(max_workers=jobs, initializer=_init_worker) as ex:
            futs = [ex.submit(run_one, r, str(out), executor) for r in todo]
            for f in as_completed(futs):
                results.append(f.result())
                bar.update(1)
    bar.close()
    summary = {"n_runs": len(runs), "skipped": skipped,
               "ok": sum(r["status"] == "ok" for r in results),
               "errors": [r for r in results if r["status"] == "error"],
               "wall_time_s": time.perf_counter() - t0, "jobs": jobs, "executor": executor}
    if todo:
        log = out / "sweep_log.json"
        prev = json.loads(log.read_text()) if log.exists() else []
        atomic_write_json(log, {"sweeps": (prev.get("sweeps", []) if isinstance(prev, dict) else [])
                                + [{**summary, "run_ids": [r["run_id"] for r in todo]}]})
    return summary


def run(a: argparse.Namespace) -> int:
    grid = load_grid(a.grid, a.preset)
    if a.only_method:
        grid["methods"] = [m for m in grid["methods"] if m in a.only_method]
    runs = expand(grid, epochs=a.epochs, quick=a.quick, device=a.device)
    if a.dry_run:
        for r in runs:
            print(r["run_id"])
        return 0
    s = sweep(runs, a.out, jobs=a.jobs, progress=os.environ.get("TQDM_DISABLE") != "1",
              executor=a.executor)
    print(f"sweep: {s['n_runs']} runs, {s['skipped']} skipped (done), {s['ok']} ok, "
          f"{len(s['errors'])} failed, wall {s['wall_time_s']:.1f}s -> {a.out}")
    for e in s["errors"]:
        print(f"  failed {e['run_id']}: {e['error']}")
    return 1 if s["errors"] else 0
