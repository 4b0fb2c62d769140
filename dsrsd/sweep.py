"""Sweeps: ``python -m dsrsd sweep --grid GRID.json | --preset NAME --out results/runs``.

``--preset NAME`` is the experiment ``experiments/NAME.json``: experiments are data files, and
this module only expands and executes them. A grid expands methods x datasets x seeds (x folds) into runs; each run calls
:func:`dsrsd.train.fit` and writes ``<out>/<run_id>/metrics.json`` (the record, with provenance).
``run_id`` is readable plus the config hash (``oulad-dsrsd-s0-<hash>``), built only from
checked names (letters, digits, ``._+=-``; at most 64 characters each), integers and the hash;
the run folder is always a direct child of ``--out``.

* The grid is checked before any run (unknown keys, wrong types, unsafe names: exit 2); config,
  dataset and method parameters through :mod:`dsrsd.validate`, like the CLI and the chapters.
* Resumable: a run whose ``metrics.json`` exists with the same ``config_hash`` and no
  ``.in_progress`` marker is skipped; a run killed mid-way (even after its record was written,
  e.g. while papermill was finishing) is redone, continuing from its ``last.pt``.
* Failures are never dropped: the run's folder gets ``error.json`` with the one-line error,
  also when its worker process is killed (the OOM killer): the other runs go on.
* ``--jobs N`` runs N at a time, each run in its own process (one torch thread each).
* Concurrent sweeps on one ``--out`` share the work: a run is locked (``flock`` on
  ``<run>/.lock``, released when its process ends, however it ends) while in progress, and a
  second sweep reports it ``busy``; the ``sweep_log.json`` append is locked too.
* Checkpoints (``*.pt``) are deleted after each run; the small JSON record and the run's
  test predictions (``test_predictions.npz``, :mod:`dsrsd.predictions`) stay.

Grid JSON (every key but ``methods`` and ``datasets`` optional)::

    {"name": "my_grid", "description": "what it measures, and why its budget",
     "methods": ["dsrsd", "early"],
     "datasets": [{"name": "oulad", "data_params": {"cutoff": 0.5}, "seeds": [0, 1, 2]},
                  {"name": "assist2009", "folds": [1, 2, 3], "max_train": 800}],
     "seeds": [0], "config": {"epochs": 15, "patience": 3, "d": 64, "batch_size": 512},
     "method_params": {"unimodal": {"modality": "behaviour"}},
     "variants": {"dsrsd-no_orth": {"method": "dsrsd", "weights": {"orth": 0.0},
                                    "group": "ablation", "note": "why this variant"}}}

``group`` (grid or variant: ``main`` by default, ``ablation``, ``selection``, ``reference``) and
the grid's ``name`` go into every record of the run, and so does a variant's ``chosen_by``
(``{"experiment": "oulad_select", "split": "val"}``: the search that chose it and the split it
chose on; :class:`ChosenBy`).

``max_train`` (dataset level) trains on a seeded random subsample of that many training samples
(validation and test stay whole); it is kept in the record's ``data_params`` and so in its hash.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
import typing
from collections.abc import Callable
from pathlib import Path
from typing import TypedDict

from dsrsd.errors import DsrsdError

# Experiments are data: one grid file per experiment in ``experiments/`` (its ``description`` says
# what it measures and why its budget is what it is); this module only expands and executes them.
EXPERIMENTS_DIR = Path(__file__).resolve().parent.parent / "experiments"
# What a run is for, kept in its record: a headline comparison, an ablation of one model, a
# configuration search, or a reference point (e.g. an in-domain run beside a cross-domain one).
GROUPS = ("main", "ablation", "selection", "reference")


def experiments() -> dict[str, Path]:
    """Experiment name -> its grid file (``experiments/<name>.json``)."""
    if not EXPERIMENTS_DIR.is_dir():
        return {}
    return {p.stem: p for p in sorted(EXPERIMENTS_DIR.glob("*.json"))}


PRESETS: dict[str, Path] = experiments()


def add_parser(sub) -> None:
    p = sub.add_parser("sweep", help="run a grid of methods x datasets x seeds into records")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--grid", help="grid JSON file")
    src.add_argument("--preset", choices=sorted(PRESETS), metavar="NAME",
                     help=f"an experiment of experiments/: {', '.join(sorted(PRESETS))}")
    p.add_argument("--out", default="results/runs", help="folder of run records")
    p.add_argument("--jobs", type=_positive(256), default=1,
                   help="runs at a time, each in its own process")
    p.add_argument("--epochs", type=_positive(100_000), default=None,
                   help="override every run's epochs")
    p.add_argument("--quick", action="store_true", help="1 epoch per run (a format check)")
    p.add_argument("--device", default="auto",
                   help="auto (CUDA when available, else CPU; as `train`), cpu, cuda, cuda:N")
    p.add_argument("--only-method", action="append", help="restrict to these methods")
    p.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    p.add_argument("--executor", choices=("papermill", "direct"), default="papermill",
                   help="papermill: each run executes notebooks/run.ipynb, kept beside its "
                        "record (default); direct: train in the worker process")


class GridDataset(TypedDict, total=False):
    """One entry of a grid's ``datasets`` (``name`` required; a bare string is the name)."""

    name: str
    note: str
    setting: str
    data_params: dict
    seeds: list[int]
    folds: list[int]
    max_train: int


class GridVariant(TypedDict, total=False):
    """``variants[label]``: the method a label runs and what it changes."""

    method: str
    config: dict
    weights: dict
    method_params: dict
    group: str
    note: str
    chosen_by: dict


class ChosenBy(TypedDict, total=False):
    """``variants[label]["chosen_by"]``: the search that chose this configuration and the split
    it chose on (``val``: each seed's validation split; ``inner``: an inner split of the
    training students; ``valid_k``: per fold on its own validation file). Absent: not searched
    (package defaults, a trial, or one change from a reference)."""

    experiment: str
    split: str


SELECTION_SPLITS = ("val", "inner", "valid_k")


class Grid(TypedDict, total=False):
    """A grid file (``methods`` and ``datasets`` required)."""

    name: str
    description: str
    group: str
    methods: list[str]
    datasets: list
    seeds: list[int]
    config: dict
    method_params: dict
    weights: dict
    variants: dict


# Set by the grid's structure (and so refused inside ``config``; a config ``device`` is allowed
# but the command line's --device wins)
_SET_BY_GRID = {"method": "use 'methods' (and 'variants')", "dataset": "use 'datasets'",
                "seed": "use 'seeds'", "data_params": "use the dataset's 'data_params'",
                "method_params": "use 'method_params' or a variant",
                "weights": "use 'weights' or a variant"}


def load_grid(grid: str | None = None, preset: str | None = None) -> dict:
    """A preset or a grid JSON file, checked (:func:`check_grid`)."""
    if preset is not None:
        if preset not in PRESETS:
            raise DsrsdError(f"unknown preset {preset!r} (expected {', '.join(sorted(PRESETS))})")
        grid = str(PRESETS[preset])
    try:
        g = json.loads(Path(grid).read_text(encoding="utf-8"))
    except OSError as e:
        raise DsrsdError(f"cannot read grid {grid!r}: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DsrsdError(f"grid {grid!r} is not valid JSON: {str(e).splitlines()[0]}") from None
    except RecursionError:
        raise DsrsdError(f"grid {grid!r} is nested too deeply") from None
    return check_grid(g, f"grid {grid!r}")


def check_grid(g: object, where: str = "grid") -> dict:
    """Structure, names and types of a grid; unknown keys are errors. Returns ``g``.

    Per-run problems that only a whole config shows (e.g. an unknown method) are left to
    :func:`expand`, which records them as that run's error.
    """
    from dsrsd import validate as v
    from dsrsd.config import TrainConfig

    def keys(what: str, obj: object, td: type, required: tuple[str, ...] = ()) -> None:
        hints = typing.get_type_hints(td)
        v.check_keys(f"{where}: {what}", obj, hints)
        for k in required:
            if k not in obj or obj[k] in ([], "", None):
                raise DsrsdError(f"{where}: {what} needs a non-empty {k!r}")

    keys("key", g, Grid, ("methods", "datasets"))
    if "name" in g:
        v.check_name(f"{where}: name", g["name"])
    v.check_value(f"{where}: group", g.get("group", "main"), str, {"choices": GROUPS})
    labels = g["methods"]
    for m in labels:
        v.check_name(f"{where}: method label", m)
    if len(set(labels)) != len(labels):
        raise DsrsdError(f"{where}: 'methods' lists a label twice")
    hints, metas = v.dataclass_hints(TrainConfig)
    cfg_hints = {k: v for k, v in hints.items() if k not in _SET_BY_GRID}

    def config(what: str, c: object) -> None:
        v.check_keys(f"{where}: {what}", c, cfg_hints, _SET_BY_GRID, metas)

    config("config", g.get("config", {}))
    v.check_weights(g.get("weights", {}))
    seed_meta = metas["seed"]
    for s in g.get("seeds", []):
        v.check_value(f"{where}: seed", s, int, seed_meta)
    for label, var in g.get("variants", {}).items():
        v.check_name(f"{where}: variant label", label)
        keys(f"variant {label!r}", var, GridVariant)
        v.check_value(f"{where}: variant {label!r} group", var.get("group", "main"), str,
                      {"choices": GROUPS})
        config(f"variant {label!r} config", var.get("config", {}))
        v.check_weights(var.get("weights", {}))
        if "chosen_by" in var:
            keys(f"variant {label!r} chosen_by", var["chosen_by"], ChosenBy, ("experiment", "split"))
            v.check_name(f"{where}: variant {label!r} chosen_by experiment",
                         var["chosen_by"]["experiment"])
            v.check_value(f"{where}: variant {label!r} chosen_by split", var["chosen_by"]["split"],
                          str, {"choices": SELECTION_SPLITS})
    mps = g.get("method_params", {})
    v.check_keys(f"{where}: method_params", mps, dict.fromkeys(mps, dict))
    settings = set()
    for ds in g["datasets"]:
        ds = {"name": ds} if isinstance(ds, str) else ds
        keys("dataset", ds, GridDataset, ("name",))
        v.check_data_params(ds["name"], {**ds.get("data_params", {}),
                                       **({"max_train": ds["max_train"]} if "max_train" in ds
                                          else {})})
        setting = v.check_name(f"{where}: setting", ds.get("setting", ds["name"]))
        if setting in settings:
            raise DsrsdError(f"{where}: two datasets share the setting {setting!r} "
                             "(give one a 'setting' name)")
        settings.add(setting)
        for s in ds.get("seeds", []):
            v.check_value(f"{where}: seed", s, int, seed_meta)
        for f in ds.get("folds", []):
            v.check_value(f"{where}: fold", f, int, {"min": 0, "max": 10**6})
    return g


def like(spec: str) -> dict:
    """The run configuration (a TrainConfig dict) an experiment gives a variant, for
    ``train --like EXPERIMENT:VARIANT``: the variant's first run in the experiment (first
    dataset entry, first fold and seed), so that training it again reproduces that record's
    configuration hash. The configurations the validation searches chose are named this way,
    e.g. ``oulad_full:dsrsd`` and ``assist_full:dsrsd``."""
    exp, sep, label = spec.partition(":")
    if not sep or not exp or not label:
        raise DsrsdError(f"--like expects EXPERIMENT:VARIANT (e.g. oulad_full:dsrsd), got {spec[:60]!r}")
    grid = load_grid(preset=exp)
    if label not in grid["methods"]:
        raise DsrsdError(f"experiment {exp!r} has no variant {label[:60]!r} "
                         f"(variants: {', '.join(grid['methods'])})")
    run = next(r for r in expand({**grid, "methods": [label]}))
    if run.get("error"):
        raise DsrsdError(f"{spec}: {run['error']}")
    cfg = dict(run["config"])
    cfg.pop("device")
    return cfg


# The experiments whose validation searches chose each real dataset's configurations: ``train
# --dataset NAME --method M`` starts from ``EXPERIMENT:M`` when the experiment has that variant
# (issue 12: the defaults on real data come from the search, not from the synthetic data).
SEARCHED = {"oulad": "oulad_full", "assist2009": "assist_full"}


def searched_like(dataset: str | None, method: str | None) -> str | None:
    """The ``--like`` spec ``train`` starts from on a real dataset, or ``None`` (the dataclass
    defaults: synthetic data, ``--dataset kt`` on a user's folder, a method no search ran)."""
    exp = SEARCHED.get(dataset or "")
    if exp is None:
        return None
    method = method or "dsrsd"
    grid = load_grid(preset=exp)
    if method not in grid["methods"]:
        return None
    variant = grid.get("variants", {}).get(method, {})
    return f"{exp}:{method}" if variant.get("method", method) == method else None


def expand(grid: dict, epochs: int | None = None, quick: bool = False,
           device: str = "auto") -> list[dict]:
    """The runs of ``grid``: dicts with ``run_id``, ``config`` (TrainConfig dict), ``hash``.

    ``run_id`` is built only from checked names (:func:`dsrsd.validate.check_name`), integers
    and the config hash. A run whose config is invalid (e.g. an unknown method) is still listed,
    with ``error`` set, so it is recorded rather than dropped.
    """
    from dsrsd.config import DEFAULT_WEIGHTS, TrainConfig

    check_grid(grid)
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
                        dp["max_train"] = ds["max_train"]
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
                    run = {"config": cfgd, "variant": label, "setting": setting,
                           "group": var.get("group", grid.get("group", "main"))}
                    if "chosen_by" in var:
                        run["chosen_by"] = dict(var["chosen_by"])
                    if grid.get("name"):
                        run["experiment"] = grid["name"]
                    try:
                        h = TrainConfig.from_dict(cfgd).hash()
                        runs.append({**run, "run_id": f"{tag}-{h}", "hash": h})
                    except (DsrsdError, TypeError) as e:
                        runs.append({**run, "run_id": f"{tag}-invalid", "hash": None,
                                     "error": str(e).splitlines()[0]})
    return runs


# Present while a run is in progress: after a kill it marks the run as not done, even when its
# metrics.json was already written (the kill came before its notebook and cleanup finished).
IN_PROGRESS = ".in_progress"
RUN_LOCK = ".lock"


def is_done(run_dir: Path, h: str | None) -> bool:
    """``metrics.json`` with config hash ``h`` and no sign of an unfinished run."""
    f = run_dir / "metrics.json"
    if h is None or not f.exists() or (run_dir / IN_PROGRESS).exists():
        return False
    try:
        rec = json.loads(f.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(rec, dict) and rec.get("config_hash") == h


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
    from dsrsd.validate import run_dir as checked_run_dir

    if run.get("error"):
        raise DsrsdError(run["error"])
    torch.set_num_threads(int(os.environ.get("DSRSD_THREADS", "1")))
    run_dir = checked_run_dir(out, run["run_id"])
    cfg = TrainConfig.from_dict(run["config"])
    splits = load_dataset(cfg.dataset, seed=cfg.seed, **cfg.data_params)
    labels = {"variant": run.get("variant", cfg.method),
              "setting": run.get("setting", cfg.dataset), "run_id": run["run_id"],
              **{k: run[k] for k in ("group", "experiment", "chosen_by") if k in run}}
    # resume=True continues a run killed mid-way from its last.pt (same config hash only)
    rec = fit(cfg, splits=splits, out=run_dir, resume=True, progress=False, labels=labels)
    rec.pop("model")
    return rec


def scrub_notebook_paths(path: str | Path, edit: Callable | None = None) -> None:
    """Replace the absolute paths papermill records in a notebook's metadata (its input and
    output files) by the repository-relative input and the bare output name, in place;
    ``edit(nb)``, when given, makes further changes in the same single write."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    if edit is not None:
        edit(nb)
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


class FileLock:
    """An exclusive ``flock`` on ``path``, released (and the file removed) by :meth:`release` or
    by the holder's death, so a killed process never leaves a stale lock."""

    def __init__(self, path: Path) -> None:
        self.path, self.fd = Path(path), None

    def acquire(self, blocking: bool = False) -> bool:
        import fcntl
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(fd)
                return False
            try:  # the previous holder may have removed the file between our open and lock
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                return True
            os.close(fd)

    def release(self) -> None:
        import fcntl
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None


def _error_line(e: BaseException) -> tuple[str, str]:
    msg = (str(e).splitlines() or [""])[0] or type(e).__name__
    err = msg if msg.split(":")[0].endswith(("Error", "Exception")) else f"{type(e).__name__}: {msg}"
    return msg, err


def _record_error(run_dir: Path, run: dict, err: str, t0: float, tail: list[str]) -> None:
    """Write ``error.json``; a disk that refuses even that is reported, not raised."""
    from dsrsd.records import atomic_write_json
    try:
        atomic_write_json(run_dir / "error.json", {
            "run_id": run.get("run_id"), "error": err, "config": run.get("config"),
            "wall_time_s": time.perf_counter() - t0, "traceback_tail": tail})
    except OSError as e:
        print(f"warning: cannot write {run_dir / 'error.json'}: {e.strerror or e}", file=sys.stderr)


def run_one(run: dict, out: str, executor: str = "papermill") -> dict:
    """Run one grid entry (``papermill``: through notebooks/run.ipynb, which is kept with the
    record; ``direct``: in this process). Returns a short status dict; never raises (but lets
    KeyboardInterrupt through, keeping ``last.pt`` so the next sweep resumes).

    The run folder is locked while the run is in progress: a second sweep on the same ``--out``
    gets ``busy`` for it, or ``skipped`` if it finished meanwhile.
    """
    from dsrsd.validate import run_dir as checked_run_dir

    t0 = time.perf_counter()
    rid = str(run.get("run_id"))
    try:
        run_dir = checked_run_dir(out, run.get("run_id"))
        run_dir.mkdir(parents=True, exist_ok=True)
    except (DsrsdError, OSError) as e:
        msg = f"cannot use run folder: {getattr(e, 'strerror', None) or e}"
        return {"run_id": rid, "status": "error", "error": msg}
    lock = FileLock(run_dir / RUN_LOCK)
    try:
        if not lock.acquire():
            return {"run_id": rid, "status": "busy"}
    except OSError as e:
        return {"run_id": rid, "status": "error", "error": f"cannot lock the run: {e.strerror}"}
    try:
        if is_done(run_dir, run.get("hash")):
            return {"run_id": rid, "status": "skipped"}
        finished = False
        try:
            (run_dir / IN_PROGRESS).write_text(f"{os.getpid()}\n")
            if run.get("error"):
                raise DsrsdError(run["error"])
            rec = _execute_notebook(run, out) if executor == "papermill" else execute_run(run, out)
            (run_dir / "error.json").unlink(missing_ok=True)
            finished = True
            return {"run_id": rid, "status": "ok", "auc": rec["test"].get("auc"),
                    "wall_time_s": rec["wall_time_s"]}
        except Exception as e:  # recorded, never dropped
            msg, err = _error_line(e)
            _record_error(run_dir, run, err, t0, traceback.format_exc().splitlines()[-3:])
            finished = True
            return {"run_id": rid, "status": "error", "error": msg}
        finally:  # a run killed by a signal keeps last.pt, so the next sweep resumes it
            if finished:
                for pt in run_dir.glob("*.pt"):
                    pt.unlink(missing_ok=True)
                (run_dir / "run.part.ipynb").unlink(missing_ok=True)
                (run_dir / IN_PROGRESS).unlink(missing_ok=True)
    finally:
        lock.release()


def _init_worker() -> None:
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch
    torch.set_num_threads(1)


def _worker(run: dict, out: str, executor: str, conn, ignore_sigint: bool = False) -> None:
    import signal
    # Ctrl-C reaches the whole process group: the sweep reports it once; a worker just stops
    # (keeping last.pt and the in-progress marker, so the next sweep resumes the run). A sweep
    # that ignores SIGINT (started nohup-style or in the background) keeps its workers too.
    signal.signal(signal.SIGINT, signal.SIG_IGN if ignore_sigint else signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _init_worker()
    conn.send(run_one(run, out, executor))
    conn.close()


def _worker_died(run: dict, out: str, exitcode: int | None, t0: float) -> dict:
    """The status (and ``error.json``) of a run whose worker process died without answering."""
    import signal
    if exitcode is not None and exitcode < 0:
        try:
            how = f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            how = f"killed by signal {-exitcode}"
    else:
        how = f"exited with code {exitcode}"
    msg = f"the worker process was {how} (out of memory?) before the run finished"
    try:
        from dsrsd.validate import run_dir as checked_run_dir
        _record_error(checked_run_dir(out, run["run_id"]), run, f"WorkerDied: {msg}", t0, [])
    except DsrsdError:
        pass
    return {"run_id": str(run.get("run_id")), "status": "error", "error": msg}


def _run_parallel(todo: list[dict], out: str, jobs: int, executor: str, done) -> None:
    """Each run in its own process, ``jobs`` at a time; a process that dies (OOM killer, a
    signal) becomes that run's ``error.json`` and the others go on."""
    import multiprocessing as mp
    import signal
    from multiprocessing.connection import wait

    ctx = mp.get_context()
    ignore_sigint = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    pending, running = list(todo), {}
    try:
        while pending or running:
            while pending and len(running) < jobs:
                r = pending.pop(0)
                recv, send = ctx.Pipe(duplex=False)
                p = ctx.Process(target=_worker, args=(r, out, executor, send, ignore_sigint))
                p.start()
                send.close()
                running[p.sentinel] = (p, recv, r, time.perf_counter())
            for s in wait(list(running)):
                p, recv, r, t0 = running.pop(s)
                res = None
                try:
                    if recv.poll():
                        res = recv.recv()
                except (EOFError, OSError):
                    res = None
                p.join()
                recv.close()
                done(res if isinstance(res, dict) else _worker_died(r, out, p.exitcode, t0))
    finally:  # interrupted: stop the workers (their last.pt stays for the next sweep)
        for p, recv, _, _ in running.values():
            p.terminate()
            p.join()
            recv.close()


def _append_log(out: Path, entry: dict) -> None:
    """Append to ``out/sweep_log.json`` under a lock; an unreadable log is moved aside."""
    from dsrsd.records import atomic_write_json

    log = out / "sweep_log.json"
    lock = FileLock(out / ".sweep_log.lock")
    lock.acquire(blocking=True)
    try:
        sweeps: list = []
        if log.exists():
            try:
                prev = json.loads(log.read_text())
                if not (isinstance(prev, dict) and isinstance(prev.get("sweeps"), list)):
                    raise ValueError("not {'sweeps': [...]}")
                sweeps = prev["sweeps"]
            except (OSError, ValueError) as e:
                aside = log.with_name(f"sweep_log.corrupt-{int(time.time())}.json")
                os.replace(log, aside)
                print(f"warning: {log} was unreadable ({str(e).splitlines()[0][:80]}); moved to "
                      f"{aside.name}, starting a new log", file=sys.stderr)
        atomic_write_json(log, {"sweeps": [*sweeps, entry]})
    finally:
        lock.release()


def _check_out(out: Path) -> None:
    if str(out) == "":
        raise DsrsdError("--out must not be empty")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise DsrsdError(f"--out {str(out)!r} is a file, not a folder") from None
    except OSError as e:
        raise DsrsdError(f"cannot write to --out {str(out)!r}: {e.strerror or e}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise DsrsdError(f"cannot write to --out {str(out)!r}: permission denied")


def sweep(runs: list[dict], out: str | Path, jobs: int = 1, progress: bool = True,
          executor: str = "papermill") -> dict:
    """Run (or skip) every run; return counts and the wall time. Writes ``out/sweep_log.json``.

    ``busy``: runs another sweep on the same ``out`` was running (left to it).
    """
    from tqdm.std import tqdm  # tqdm.auto warns in kernels without ipywidgets

    if isinstance(jobs, bool) or not isinstance(jobs, int) or not 1 <= jobs <= 256:
        raise DsrsdError(f"--jobs must be an integer in 1..256, got {jobs!r}")
    if executor not in ("papermill", "direct"):
        raise DsrsdError(f"unknown executor {executor!r} (papermill or direct)")
    if str(out) == "":  # Path("") would be the working directory
        raise DsrsdError("--out must not be empty")
    out = Path(out)
    _check_out(out)
    todo = [r for r in runs if not is_done(out / str(r["run_id"]), r["hash"])]
    t0 = time.perf_counter()
    results: list[dict] = []
    bar = tqdm(total=len(todo), desc="sweep", disable=not progress)

    def done(res: dict) -> None:
        results.append(res)
        bar.update(1)

    try:
        if jobs <= 1:
            for r in todo:
                done(run_one(r, str(out), executor))
        else:
            _run_parallel(todo, str(out), jobs, executor, done)
    finally:
        bar.close()
    summary = {"n_runs": len(runs),
               "skipped": len(runs) - len(todo) + sum(r["status"] == "skipped" for r in results),
               "ok": sum(r["status"] == "ok" for r in results),
               "busy": [r["run_id"] for r in results if r["status"] == "busy"],
               "errors": [r for r in results if r["status"] == "error"],
               "wall_time_s": time.perf_counter() - t0, "jobs": jobs, "executor": executor}
    if todo:
        _append_log(out, {**summary, "run_ids": [r["run_id"] for r in todo]})
    return summary


def _positive(limit: int):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not 1 <= v <= limit:
            raise argparse.ArgumentTypeError(f"must be in 1..{limit}, got {v}")
        return v
    return parse


def run(a: argparse.Namespace) -> int:
    from dsrsd.config import TrainConfig

    grid = load_grid(a.grid, a.preset)
    TrainConfig(device=a.device)  # checks --device once, before any run
    if a.only_method:
        unknown = sorted(set(a.only_method) - set(grid["methods"]))
        if unknown:
            raise DsrsdError(f"--only-method {', '.join(unknown)} matches no method of the grid "
                             f"({', '.join(grid['methods'])})")
        grid["methods"] = [m for m in grid["methods"] if m in a.only_method]
    runs = expand(grid, epochs=a.epochs, quick=a.quick, device=a.device)
    if a.dry_run:
        for r in runs:
            print(r["run_id"])
        return 0
    s = sweep(runs, a.out, jobs=a.jobs, progress=os.environ.get("TQDM_DISABLE") != "1",
              executor=a.executor)
    print(f"sweep: {s['n_runs']} runs, {s['skipped']} skipped (done), {s['ok']} ok, "
          f"{len(s['errors'])} failed, {len(s['busy'])} busy in another sweep, "
          f"wall {s['wall_time_s']:.1f}s -> {a.out}")
    for e in s["errors"]:
        print(f"  failed {e['run_id']}: {e['error']}")
    return 1 if s["errors"] else 0
