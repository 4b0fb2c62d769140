"""Knowledge-tracing training speed: ms per train step and seconds per epoch, per CPU thread count.

Usage::

    python benchmarks/kt_speed.py --path DIR                 # an AKT folder (e.g. assist2009_pid)
    python benchmarks/kt_speed.py --path DIR --threads 1,2 --methods dkt,akt --steps 20

For each thread count a fresh subprocess (``OMP_NUM_THREADS`` set before torch starts) loads
fold ``--fold`` through ``--dataset kt`` and, for each method (``dkt``, ``akt``, ``early`` and
``dsrsd`` by default; fusion methods with ``--seq-encoder``), builds it as the trainer would and
times:

* **ms/step**: the median of ``--steps`` calls of :func:`dsrsd.step.train_step` (the trainer's
  own step: forward, task loss + weighted aux terms, backward, clipping, AdamW) on fixed batches
  of ``--batch-size`` training windows, after 3 warm-up steps;
* **train s/epoch**: one full shuffled training epoch (:func:`dsrsd.step.train_epoch`), wall time;
* **eval s**: scoring the validation split once (what the trainer adds per epoch).

CPU timings on a shared machine are noisy: read the table with the load (printed) in mind.
Prints a table; ``--out FILE.csv`` also writes it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["threads", "method", "seq_encoder", "params", "ms_step", "train_s_epoch",
           "steps_epoch", "eval_s"]


def child(args) -> list[dict]:
    import torch

    from dsrsd.config import TrainConfig
    from dsrsd.data import load_dataset
    from dsrsd.registry import build_model
    from dsrsd.step import make_optimizer, supervised_loss, train_epoch, train_step
    from dsrsd.train import evaluate, set_seed

    sp = load_dataset("kt", path=args.path, fold=args.fold, data_dir=args.data_dir)
    dev = torch.device("cpu")
    rows = []
    for method in args.methods.split(","):
        cfg = TrainConfig(method=method, dataset="kt", data_params={"path": args.path},
                          batch_size=args.batch_size, d=args.d,
                          seq_encoder=args.seq_encoder, device="cpu", amp=False)
        set_seed(0)
        model = build_model(cfg, sp.train.specs, sp.train.task, sp.train)
        opt = make_optimizer(model, cfg)
        loss_fn = supervised_loss(cfg.weights)
        g = torch.Generator().manual_seed(0)
        batches = [sp.train.batch(torch.randperm(len(sp.train), generator=g)[:args.batch_size])
                   for _ in range(args.steps + 3)]
        model.train()
        times = []
        for i, b in enumerate(batches):
            t = time.perf_counter()
            train_step(model, b, opt, loss_fn, dev, amp=False, grad_clip=cfg.grad_clip)
            if i >= 3:
                times.append(time.perf_counter() - t)
        t = time.perf_counter()
        n = sum(1 for _ in train_epoch(model, sp.train, opt, loss_fn, cfg, 0, dev))
        epoch_s = time.perf_counter() - t
        t = time.perf_counter()
        evaluate(model, sp.val, device=dev, amp=False)
        rows.append({"threads": torch.get_num_threads(), "method": method,
                     "seq_encoder": cfg.seq_encoder if method not in ("dkt", "akt") else "-",
                     "params": sum(p.numel() for p in model.parameters()),
                     "ms_step": round(1000 * statistics.median(times), 1),
                     "train_s_epoch": round(epoch_s, 1), "steps_epoch": n,
                     "eval_s": round(time.perf_counter() - t, 1)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--path", required=True, help="a KT data folder or file (--dataset kt)")
    ap.add_argument("--data-dir", default=None, help="cache folder (default: dsrsd's)")
    ap.add_argument("--fold", type=int, default=1)
    ap.add_argument("--methods", default="dkt,akt,early,dsrsd")
    ap.add_argument("--seq-encoder", default="gru", choices=("gru", "transformer"))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default=None, help="also write the table as CSV here")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
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
