"""Replay: re-train a committed record's configuration with today's code and compare the numbers.

The book's tables mix records written by several commits. Re-running every record at every
commit costs the whole budget again; replaying its first epochs does not, and is enough to show
whether the code still produces that record: the model, the losses, the data pipeline and the
trainer all enter the first epoch's logged loss terms, gradient norms and validation AUC. A
replay trains the record's own config (same seed, same split, one thread as the sweep runs) for
``epochs`` epochs and compares every number its ``history`` logged for them; a method fitted
outside the gradient loop (gradient boosting) is refitted whole and its val and test metrics
compared.

On the machine and software that wrote the record, an unchanged code path gives identical
numbers (seeded CPU runs are bit-identical); on another CPU the math kernels round differently,
so compare with a tolerance there (``--tol``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from dataclasses import replace
from pathlib import Path

from dsrsd.errors import DsrsdError

FIELDS = ("run_id", "setting", "variant", "record_commit", "replay_commit", "epochs", "numbers",
          "max_abs_diff", "worst", "identical", "within_tol", "tol", "device", "date", "wall_s", "note")


def flat_numbers(row: dict, prefix: str = "") -> dict[str, float]:
    """The numeric leaves of a history row (nested dicts joined with ``.``); ``epoch`` excluded."""
    out: dict[str, float] = {}
    for k, v in row.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_numbers(v, key + "."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and key != "epoch":
            out[key] = float(v)
    return out


def compare(recorded: list[dict], replayed: list[dict]) -> dict:
    """Compare two histories epoch by epoch: the numbers compared, the largest absolute
    difference and where it is, and the keys only one side logged (a change in what is logged)."""
    n, worst, where, only = 0, 0.0, "", set()
    for e, (a, b) in enumerate(zip(recorded, replayed, strict=False)):
        fa, fb = flat_numbers(a), flat_numbers(b)
        only |= set(fa) ^ set(fb)
        for k in sorted(set(fa) & set(fb)):
            x, y = fa[k], fb[k]
            d = 0.0 if (x == y or (math.isnan(x) and math.isnan(y))) else abs(x - y)
            if math.isnan(d):  # one side NaN: as different as can be
                d = math.inf
            n += 1
            if d > worst:
                worst, where = d, f"epoch {e} {k}"
    return {"numbers": n, "max_abs_diff": worst, "worst": where, "keys_differ": sorted(only)}


def read_record(run_dir: str | Path) -> dict:
    """A run folder's ``metrics.json``; a missing or unreadable one is a one-line error."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise DsrsdError(f"no run record {str(path)!r}")
    try:
        rec = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DsrsdError(f"run record {str(path)!r} is not valid JSON ({type(e).__name__})") from None
    if not isinstance(rec, dict) or not isinstance(rec.get("config"), dict):
        raise DsrsdError(f"run record {str(path)!r} has no config object")
    return rec


def replay(run_dir: str | Path, epochs: int = 1, tol: float = 0.0, threads: int = 1) -> dict:
    """Re-train ``run_dir``'s record for its first ``epochs`` epochs (a direct fit: whole) on the
    CPU with today's code and compare; returns one row of :data:`FIELDS`. ``identical``: every
    number both logged is equal (``note`` names keys only one side logged: older records log
    fewer diagnostics)."""
    import torch

    from dsrsd.config import TrainConfig
    from dsrsd.data import load_dataset
    from dsrsd.records import provenance
    from dsrsd.train import fit

    if epochs < 1:
        raise DsrsdError(f"--epochs must be at least 1, got {epochs}")
    rec = read_record(run_dir)
    t0 = time.perf_counter()
    cfg = replace(TrainConfig.from_dict(rec["config"]), device="cpu")
    recorded = rec.get("history") or []
    n = min(epochs, len(recorded))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # the thread count changes the kernels' summation order
    try:
        # The sweep's order: load, then fit seeds the model (dsrsd.sweep.execute_run).
        splits = load_dataset(cfg.dataset, seed=cfg.seed, **cfg.data_params)
        if recorded:
            got = fit(cfg, splits=splits, progress=False, stop_after=n)
            res = compare(recorded[:n], got["history"])
            note = "logged keys differ: " + ", ".join(res["keys_differ"][:5]) if res["keys_differ"] else ""
        else:  # fitted whole outside the gradient loop: its metrics are the numbers
            got = fit(cfg, splits=splits, progress=False)
            res = compare([{"val": rec["val"], "test": rec["test"]}],
                          [{"val": got["val"], "test": got["test"]}])
            note, n = "direct fit, compared whole", 0
    finally:
        torch.set_num_threads(before)
    prov = provenance(torch.device("cpu"))  # commit, device and date in one call
    return {"run_id": rec.get("run_id", Path(run_dir).name), "setting": rec.get("setting", ""),
            "variant": rec.get("variant", rec.get("method", "")),
            "record_commit": rec.get("git_commit", "unknown"), "replay_commit": prov["git_commit"],
            "epochs": n, "numbers": res["numbers"], "max_abs_diff": res["max_abs_diff"],
            "worst": res["worst"], "identical": res["max_abs_diff"] == 0,
            "within_tol": res["max_abs_diff"] <= tol, "tol": tol,
            "device": prov["device"], "date": prov["date"],
            "wall_s": round(time.perf_counter() - t0, 1),
            "note": note}


def read_table(path: Path) -> list[dict]:
    """The rows of a replay CSV (empty when the file does not exist yet)."""
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def write_table(path: Path, rows: list[dict]) -> None:
    """Write ``rows`` sorted by run id, atomically."""
    import io

    from dsrsd.records import atomic_write_bytes
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    w.writeheader()
    for r in sorted(rows, key=lambda r: r["run_id"]):
        w.writerow({k: r.get(k, "") for k in FIELDS})
    atomic_write_bytes(path, buf.getvalue().encode())


def add_parser(sub) -> None:
    p = sub.add_parser("replay", help="re-train records' first epochs with today's code and "
                       "compare their numbers")
    p.add_argument("runs", nargs="+", help="run folders (each holding a metrics.json)")
    p.add_argument("--epochs", type=int, default=1, help="epochs to replay (default 1)")
    p.add_argument("--tol", type=float, default=0.0,
                   help="largest absolute difference accepted (default 0: identical)")
    p.add_argument("--out", default=None, help="CSV to add the rows to; runs it already holds "
                   "are skipped (resumable), unless --again")
    p.add_argument("--again", action="store_true",
                   help="replay runs --out already holds too (their new row replaces the old)")


def run(a: argparse.Namespace) -> int:
    """``python -m dsrsd replay``: exit 0 when every replayed record is within ``--tol``, else 1."""
    from tqdm.std import tqdm

    if a.tol < 0 or not math.isfinite(a.tol):
        raise DsrsdError(f"--tol must be a finite number >= 0, got {a.tol}")
    out = Path(a.out) if a.out else None
    rows = read_table(out) if out else []
    done = {r["run_id"] for r in rows}
    # every record read first, so a bad folder is one line before any work
    ids = [read_record(d).get("run_id", Path(d).name) for d in a.runs]
    todo = [d for d, rid in zip(a.runs, ids, strict=True) if a.again or rid not in done]
    bad = 0
    for run_dir in tqdm(todo, desc="replay", leave=False):
        row = replay(run_dir, a.epochs, a.tol)
        bad += not row["within_tol"]
        verdict = ("identical" if row["identical"] else
                   f"differs by {row['max_abs_diff']:.3g} at {row['worst']}")
        if row["note"].startswith("logged keys differ"):
            verdict += f" ({row['note']})"
        print(f"{row['run_id']}: {verdict} ({row['numbers']} numbers, {row['epochs']} epoch(s), "
              f"recorded by {row['record_commit'][:12]})", flush=True)
        if out:
            rows = [r for r in rows if r["run_id"] != row["run_id"]] + [row]
            write_table(out, rows)  # after each run: an interrupted audit resumes
    return 1 if bad else 0


__all__ = ["flat_numbers", "compare", "read_record", "replay", "read_table", "write_table"]
