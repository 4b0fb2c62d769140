"""Knowledge-tracing training speed: ms per train step and seconds per epoch, per CPU thread count.

Usage::

    python benchmarks/kt_speed.py --path DIR                 # an AKT folder (e.g. assist2009_pid)
    python benchmarks/kt_speed.py --path DIR --threads 1,2 --methods dkt,akt --steps 20
    python benchmarks/kt_speed.py --dataset assist2009 --threads 1 --buckets 0,8 --reps 3

For each thread count a fresh subprocess (``OMP_NUM_THREADS`` set before torch starts) loads
fold ``--fold`` (``--dataset kt`` at ``--path``, or the prepared ``assist2009``) and, for each
method (``dkt``, ``akt``, ``early`` and ``dsrsd`` by default; fusion methods with
``--seq-encoder``) and each bucket factor of ``--buckets`` (``TrainConfig.length_buckets``:
0 = plain batches padded to the window length T, B > 0 = length-bucketed batches trimmed to
their longest window), builds it as the trainer would and times:

* **ms/step**: the mean of ``--steps`` calls of :func:`dsrsd.step.train_step` (the trainer's
  own step: forward, task loss + weighted aux terms, backward, clipping, AdamW) on the first
  batches of seeded training epochs as that bucket factor makes them, after 3 warm-up steps
  (a mean, not a median: bucketed batches differ in length, so their cost varies);
* **train s/epoch**: one full shuffled training epoch (:func:`dsrsd.step.train_epoch`), wall
  time, the median of ``--reps`` repetitions;
* **eval s**: scoring the validation split once (what the trainer adds per epoch; trimmed
  batches when B > 0), median of ``--reps``.

The variants of one method share one process and are timed interleaved (step by step, epoch
by epoch), so a change of machine load hits them alike. ``pad_frac`` is exact, not timed: the
share of the steps computed in one training epoch that are padding beyond a window's end, and
``mean_len`` the mean valid window length (out of T) of the training split.

CPU timings on a shared machine are noisy: read the table with the load (printed) in mind.
Prints a table; ``--out FILE.csv`` also writes it.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["threads", "method", "seq_encoder", "buckets", "params", "ms_step", "train_s_epoch",
           "steps_epoch", "eval_s", "pad_frac", "mean_len", "T"]


def padding(data, cfg) -> float:
    """Share of the steps computed in one seeded training epoch that are padding."""
    import torch

    g = torch.Generator().manual_seed(0)
    b = cfg.length_buckets
    cells = sum(x.y.numel() for x in data.batches(cfg.batch_size, shuffle=True, generator=g,
                                                  buckets=b, trim=b > 0))
    return 1 - float(data.step_lengths().sum()) / cells


def train_batches(data, cfg):
    """The training batches of seeded epochs 0, 1, ... as ``cfg.length_buckets`` makes them."""
    import torch

    b = cfg.length_buckets
    for epoch in itertools.count():
        g = torch.Generator().manual_seed(epoch)
        yield from data.batches(cfg.batch_size, shuffle=True, generator=g, buckets=b, trim=b > 0)


def child(args) -> list[dict]:
    import torch

    from dsrsd.config import TrainConfig
    from dsrsd.data import load_dataset
    from dsrsd.registry import build_model
    from dsrsd.step import make_optimizer, supervised_loss, train_epoch, train_step
    from dsrsd.train import evaluate, set_seed

    data_params = {"path": args.path} if args.dataset == "kt" else {}
    sp = load_dataset(args.dataset, fold=args.fold, data_dir=args.data_dir, **data_params)
    dev = torch.device("cpu")
    buckets = [int(b) for b in args.buckets.split(",")]
    mean_len = round(float(sp.train.step_lengths().float().mean()), 1)
    rows = []
    for method in args.methods.split(","):
        runs = []
        for b in buckets:  # one model per variant, same initial weights
            cfg = TrainConfig(method=method, dataset=args.dataset, data_params=data_params,
                              batch_size=args.batch_size, d=args.d, seq_encoder=args.seq_encoder,
                              device="cpu", amp=False, length_buckets=b)
            set_seed(0)
            model = build_model(cfg, sp.train.specs, sp.train.task, sp.train)
            steps = list(itertools.islice(train_batches(sp.train, cfg), args.steps + 3))
            runs.append({"cfg": cfg, "model": model, "opt": make_optimizer(model, cfg),
                         "loss": supervised_loss(cfg.weights), "batches": steps, "step_s": [],
                         "epoch_s": [], "eval_s": []})
        for r in runs:
            r["model"].train()
        for i in range(len(runs[0]["batches"])):
            for r in runs:
                t = time.perf_counter()
                train_step(r["model"], r["batches"][i], r["opt"], r["loss"], dev, amp=False,
                           grad_clip=r["cfg"].grad_clip)
                if i >= 3:
                    r["step_s"].append(time.perf_counter() - t)
        for rep in range(args.reps):
            for r in runs:
                t = time.perf_counter()
                r["n"] = sum(1 for _ in train_epoch(r["model"], sp.train, r["opt"], r["loss"],
                                                    r["cfg"], rep, dev))
                r["epoch_s"].append(time.perf_counter() - t)
                t = time.perf_counter()
                evaluate(r["model"], sp.val, device=dev, amp=False, trim=r["cfg"].length_buckets > 0)
                r["eval_s"].append(time.perf_counter() - t)
        for r in runs:
            cfg = r["cfg"]
            rows.append({"threads": torch.get_num_threads(), "method": method,
                         "seq_encoder": cfg.seq_encoder if method not in ("dkt", "akt") else "-",
                         "buckets": cfg.length_buckets,
                         "params": sum(p.numel() for p in r["model"].parameters()),
                         "ms_step": round(1000 * statistics.mean(r["step_s"]), 1),
                         "train_s_epoch": round(statistics.median(r["epoch_s"]), 1),
                         "steps_epoch": r["n"],
                         "eval_s": round(statistics.median(r["eval_s"]), 1),
                         "pad_frac": round(padding(sp.train, cfg), 3), "mean_len": mean_len,
                         "T": sp.train.y.shape[1]})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="kt", choices=("kt", "assist2009"),
                    help="kt: the folder or file at --path; assist2009: the prepared cache")
    ap.add_argument("--path", default=None, help="a KT data folder or file (--dataset kt)")
    ap.add_argument("--data-dir", default=None, help="cache folder (default: dsrsd's)")
    ap.add_argument("--fold", type=int, default=1)
    ap.add_argument("--methods", default="dkt,akt,early,dsrsd")
    ap.add_argument("--seq-encoder", default="gru", choices=("gru", "transformer"))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--buckets", default="0",
                    help="length_buckets values timed side by side, e.g. 0,8 (0 = plain batches)")
    ap.add_argument("--reps", type=int, default=1, help="epochs timed per variant")
    ap.add_argument("--out", default=None, help="also write the table as CSV here")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.dataset == "kt" and not args.path:
        ap.error("--dataset kt needs --path")
    if args.child:
        child(args)
        return 0
    rows = []
    for n in args.threads.split(","):
        env = {**os.environ, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n}
        cmd = [sys.executable, __file__, "--child", *[a for a in (argv or sys.argv[1:])]]
        out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
        if out.returncode:
            sys.stderr.write(out.stderr)
            return out.returncode
        rows += [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    print(f"load average before the last run: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in COLUMNS}
    print("  ".join(c.rjust(widths[c]) for c in COLUMNS))
    for r in rows:
        print("  ".join(str(r[c]).rjust(widths[c]) for c in COLUMNS))
    if args.out:
        with open(args.out, "w", newline="") as f:
            w = csv.DictWriter(f, COLUMNS)
            w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
