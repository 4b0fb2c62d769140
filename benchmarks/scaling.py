"""How DSRSD-Net's train step grows with batch size, number of modalities and sequence length.

Usage::

    python benchmarks/scaling.py --threads 1 --clock cpu          # prints the table
    python benchmarks/scaling.py --out results/scaling.csv        # and writes it

Generated batches (no data files): per-sample binary tasks with ``M`` modalities (one GRU
sequence of ``L`` steps, the others tabular with 16 features), and per-step tasks shaped as
ASSISTments (32 windows of ``L`` steps, a causal history and two per-step float modalities,
about a third of the steps scored). Each axis varies one of batch ``B``, modalities ``M``,
steps ``L`` around a base point; every point times early fusion, DSRSD-Net with the main grid's
options on the reference path (``dsrsd_grid``), with the fast paths (``dsrsd_fast``) and on the
lean streams of the full-budget runs (``dsrsd_lean``; every term at the default weights), with
``methods_cost``'s interleaved ``torch.utils.benchmark`` timing; ``x early`` is the paired
median ratio per round.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import methods_cost as mc  # noqa: E402

METHODS = ("early", "dsrsd_grid", "dsrsd_fast", "dsrsd_lean")
# (axis, task, B, M, L): one axis moves at a time around the base points B=512, M=3, L=16
# (per-sample) and B=32 windows, L=200 steps (per-step, ASSISTments-like).
GRID = ([("batch", "binary", b, 3, 16) for b in (128, 512, 2048)]
        + [("modalities", "binary", 512, m, 16) for m in (2, 3, 5)]
        + [("steps", "binary", 512, 3, n) for n in (8, 32, 128)]
        + [("steps", "per_step", 32, 3, n) for n in (50, 100, 200, 400)])


def make_splits(task: str, b: int, m: int, steps: int, seed: int = 0):
    """A generated split of ``b`` samples (or windows) with ``m`` modalities, ``steps`` steps."""
    import torch

    from dsrsd.data.batch import ModalitySpec, MultimodalData, Splits, TaskSpec

    g = torch.Generator().manual_seed(seed)
    per_step = task == "per_step"
    specs = [ModalitySpec("seq", "sequence", 8, causal=per_step)]
    specs += [ModalitySpec(f"tab{i}", "tabular", 16) for i in range(1, m)]
    x = {"seq": torch.randn(b, steps, 8, generator=g)}
    for s in specs[1:]:
        x[s.name] = torch.randn(*((b, steps) if per_step else (b,)), 16, generator=g)
    lengths = torch.randint(steps // 4, steps + 1, (b,), generator=g)
    pad = torch.arange(steps)[None] < lengths[:, None]
    present = torch.ones(b, m, dtype=torch.bool)
    if per_step:  # about a third of the steps scored, as in ASSISTments' windows
        y_mask = pad & (torch.rand(b, steps, generator=g) < 0.35)
        y = (torch.rand(b, steps, generator=g) < 0.6).float()
    else:
        y_mask, y = None, (torch.rand(b, generator=g) < 0.5).float()
    data = MultimodalData(specs, TaskSpec(task), x, {"seq": pad}, present, y, y_mask)
    return Splits(data, data, data)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--number", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="cpu")
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--axes", default="batch,modalities,steps", help="comma list")
    ap.add_argument("--out", default=None, help="CSV to write (default: print only)")
    args = ap.parse_args(argv)
    import torch

    from dsrsd.train import set_seed

    torch.set_num_threads(args.threads)
    axes = {a.strip() for a in args.axes.split(",")}
    rows = []
    print(f"{'axis':<11}{'task':<9}{'B':>5}{'M':>3}{'L':>5}{'rows':>6} | "
          + " | ".join(f"{m}: ms, x early" for m in METHODS), flush=True)
    for axis, task, b, m, steps in GRID:
        if axis not in axes:
            continue
        splits = make_splits(task, b, m, steps)
        cases = []
        for v in METHODS:
            set_seed(0)
            cases.append(mc.Case(v, "generated", b, args.d, "cpu", splits))
        times = mc.time_interleaved(cases, args.rounds, args.number, args.warmup, args.clock)
        n_rows = b if task == "binary" else int(splits.train.y_mask.sum())
        cells = []
        for v in METHODS:
            ratio = statistics.median(x / e for x, e in zip(times[v], times["early"], strict=True))
            ms = statistics.median(times[v])
            rows.append({"axis": axis, "task": task, "batch": b, "modalities": m, "steps": steps,
                         "rows": n_rows, "method": v, "step_ms_median": round(ms, 2),
                         "ratio_to_early": round(ratio, 2), "d": args.d, "clock": args.clock,
                         "torch_threads": args.threads, "rounds": args.rounds})
            cells.append(f"{ms:7.1f}, {ratio:4.2f}x")
        print(f"{axis:<11}{task:<9}{b:>5}{m:>3}{steps:>5}{n_rows:>6} | " + " | ".join(
            f"{c:>{len(v) + 15}}" for c, v in zip(cells, METHODS, strict=True)), flush=True)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        print(f"CSV: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
