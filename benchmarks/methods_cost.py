"""Train-step time and peak memory of every neural method, side by side, in one run.

Usage::

    python benchmarks/methods_cost.py                  # every method x dataset, --device auto
    python benchmarks/methods_cost.py --datasets synthetic --sizes 256x64 --methods early,coral

Every (method, dataset, size) is measured in a *fresh subprocess*, so one method's allocator
caches can not hide another's memory. Datasets: ``synthetic`` (3 modalities: 2 tabular, 1
sequence of 8 steps) at two sizes, and, when their caches are prepared (``data_scripts/``),
``oulad`` (cutoff 0.5, temporal) and ``assist2009`` (fold 1, windows of 200 steps, per-step
targets) at the batch size and width the sweep uses (512x64 and 32x64). In the child, with one
fixed batch (the first training rows) of the requested size:

* **step time**: one training step exactly as ``dsrsd.train`` does it (forward under the trainer's
  autocast, task loss + weighted aux terms, backward, gradient clipping, AdamW step); median and
  25/75th percentiles over ``--steps`` steps after ``--warmup`` steps (CUDA: synchronised).
* **peak memory** during the steps (warm-up included), over what was allocated before them:
  - CUDA: ``torch.cuda.max_memory_allocated() - torch.cuda.memory_allocated()`` (tensor bytes
    held by the caching allocator's users; the allocator's reserve is not counted);
  - CPU: peak resident set size (``VmHWM`` after resetting it by writing 5 to
    ``/proc/self/clear_refs``) minus the RSS before the first step. It counts gradients, AdamW
    state and the activations of the largest step, plus whatever the allocator keeps mapped; it
    is a process-level figure (page granularity, includes allocator slack), not tensor bytes.
    Where ``clear_refs`` cannot be written, ``ru_maxrss`` is used instead (``mem_measure`` says
    which; ``ru_maxrss`` under-reports when setup peaked higher than training).
* **epoch hook**: the time of one ``on_epoch_start`` (CLEAR dynamic: the per-epoch pass over the
  training split plus the SVD), not part of the step time. It runs after the measured steps
  (its freed memory would otherwise be reused by the steps and hide theirs); the projection in
  the step costs the same whatever the projector holds.

``--threads N`` fixes torch's CPU threads per child (default: torch's choice). On a shared
machine CPU timings are noisy: the median is robust to short spikes, ``step_ms_min`` is a lower
bound, and sustained load from other processes inflates every column.

``samples_per_s`` is batch rows per second of training (ASSISTments: student windows of up to
200 scored steps each). Writes ``results/cost.csv`` and prints the table.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name -> (registry method, method_params)
VARIANTS: dict[str, tuple[str, dict]] = {
    "early": ("early", {}),
    "unimodal": ("unimodal", {}),
    "late": ("late", {}),
    "late_logit": ("late_logit", {}),
    "coattention": ("coattention", {}),
    "dsrsd": ("dsrsd", {}),
    "misa": ("misa", {}),
    "coral": ("coral", {"ortho": "cos2"}),
    "coral_probe_ssl": ("coral", {"ortho": "cos2", "protocol": "probe"}),
    "clear_static": ("clear", {"mode": "static", "base": "early", "k": 4}),
    "clear_dynamic": ("clear", {"mode": "dynamic", "base": "early", "k": 4}),
    "clear_dynamic_dsrsd": ("clear", {"mode": "dynamic", "base": "dsrsd", "k": 4}),
}

# dataset -> (default sizes BATCHxD, loader parameters)
DATASETS = {"synthetic": ("256x64,1024x128", {}),
            "oulad": ("512x64", {"cutoff": 0.5, "label": "binary", "split": "temporal"}),
            "assist2009": ("32x64", {"fold": 1})}

FIELDS = ["dataset", "method", "registry_method", "method_params", "device", "batch", "d",
          "n_params", "samples_per_s", "ratio_to_early", "step_ms_median", "step_ms_p25", "step_ms_p75", "step_ms_min", "peak_mem_mb", "mem_measure",
          "epoch_hook_ms", "n_train", "torch_threads"]


def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _hwm_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child(args) -> dict:
    """Measure one (variant, batch, d) in this process; returns the CSV row."""
    import torch

    from dsrsd.config import TrainConfig
    from dsrsd.coral import COrALProbe
    from dsrsd.data.batch import flat_targets
    from dsrsd.data.synthetic import load_synthetic
    from dsrsd.losses import task_loss, total_objective
    from dsrsd.registry import build_model
    from dsrsd.train import _autocast, _param_groups, count_parameters, resolve_device, set_seed

    method, params = VARIANTS[args.variant]
    device = resolve_device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    set_seed(0)
    if args.dataset == "synthetic":
        n = math.ceil(args.batch / 0.7) + 64  # the 70% training part holds one full batch
        splits = load_synthetic(n=n)
    else:
        from dsrsd.data import load_dataset
        splits = load_dataset(args.dataset, seed=0, **DATASETS[args.dataset][1])
    train = splits.train
    if len(train) < args.batch:
        raise SystemExit(f"{args.dataset}: {len(train)} training rows < batch {args.batch}")
    cfg = TrainConfig(method=method, method_params=dict(params), d=args.d,
                      batch_size=args.batch, device=args.device)
    model = build_model(cfg, train.specs, train.task, train).to(device)
    net = model.net if isinstance(model, COrALProbe) else model
    opt = torch.optim.AdamW(_param_groups(net, cfg.weight_decay), lr=cfg.lr)
    batch = train.batch(torch.arange(args.batch)).to(device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def step():
        net.train()
        with _autocast(device, cfg.amp):
            if isinstance(model, COrALProbe):  # the probe protocol's self-supervised step
                loss = net.coral_losses(batch, net.present_mask(batch))["coral"]
            else:
                o = net(batch)
                terms = {"task": task_loss(o.logits, flat_targets(batch)), **o.aux}
                loss, _ = total_objective(terms, cfg.weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        opt.step()

    gc.collect()
    if device.type == "cuda":
        sync()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        measure = "cuda.max_memory_allocated"
    else:
        base = _rss_kb()
        measure = "VmHWM-RSS" if _reset_hwm() else "ru_maxrss-RSS"
        if measure.startswith("ru_"):
            base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for i in range(args.warmup + args.steps):
        sync()
        t = time.perf_counter()
        step()
        sync()
        if i >= args.warmup:
            times.append(1000 * (time.perf_counter() - t))
    if device.type == "cuda":
        peak_mb = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    elif measure == "VmHWM-RSS":
        peak_mb = (_hwm_kb() - base) / 1024
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    # The epoch hook runs after the measured steps, so its (freed) allocations cannot be
    # reused by the steps and hide their memory. The projection costs the same either way.
    hook_ms = float("nan")
    if hasattr(model, "on_epoch_start"):
        sync()
        t = time.perf_counter()
        model.on_epoch_start(0, train, device)
        sync()
        hook_ms = 1000 * (time.perf_counter() - t)
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return {"dataset": args.dataset, "method": args.variant, "registry_method": method,
            "method_params": json.dumps(params, sort_keys=True), "device": device.type,
            "batch": args.batch, "d": args.d, "n_params": count_parameters(net),
            "samples_per_s": round(1000 * args.batch / statistics.median(times), 1),
            "step_ms_median": round(statistics.median(times), 2), "step_ms_p25": round(q[0], 2),
            "step_ms_p75": round(q[2], 2), "step_ms_min": round(min(times), 2), "peak_mem_mb": round(peak_mb, 1),
            "mem_measure": measure, "epoch_hook_ms": round(hook_ms, 1), "n_train": len(train),
            "torch_threads": torch.get_num_threads()}


def _prepared(dataset: str) -> bool:
    if dataset == "synthetic":
        return True
    if dataset == "oulad":
        from dsrsd.data.oulad import oulad_cache_ok
        return oulad_cache_ok()
    from dsrsd.data.assist import assist_cache_ok
    return assist_cache_ok()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--datasets", default="synthetic,oulad,assist2009",
                    help="comma list; real ones are skipped (with a note) when not prepared")
    ap.add_argument("--sizes", default=None,
                    help="comma list of BATCHxD for every dataset (default: per dataset)")
    ap.add_argument("--methods", default=",".join(VARIANTS), help="comma list of variants")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads per child (0: torch's default)")
    ap.add_argument("--out", default=str(ROOT / "results" / "cost.csv"))
    ap.add_argument("--merge", action="store_true",
                    help="replace only the measured datasets' rows of an existing --out CSV")
    ap.add_argument("--dataset", default="synthetic", help=argparse.SUPPRESS)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--d", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return 0
    variants = [v.strip() for v in args.methods.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        ap.error(f"unknown variant(s) {bad} (known: {', '.join(VARIANTS)})")
    datasets = [x.strip() for x in args.datasets.split(",") if x.strip()]
    for ds in datasets:
        if ds not in DATASETS:
            ap.error(f"unknown dataset {ds!r} (known: {', '.join(DATASETS)})")
    rows = []
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    grid = []
    for ds in datasets:
        for s in (args.sizes or DATASETS[ds][0]).split(","):
            b, d = s.lower().split("x")
            grid.append((ds, int(b), int(d)))
    skipped = {ds for ds in datasets if not _prepared(ds)}
    for ds in sorted(skipped):
        print(f"{ds}: skipped (its cache is not prepared; see data_scripts/)", file=sys.stderr)
    for ds, b, d in grid:
        for v in variants:
            if ds in skipped:
                continue
            cmd = [sys.executable, __file__, "--child", "--variant", v, "--batch", str(b),
                   "--d", str(d), "--device", args.device, "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--threads", str(args.threads), "--dataset", ds]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not lines:
                err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                if "DsrsdError" in err:  # e.g. a protocol the method does not support here
                    print(f"  {ds:<11} {v:<20} not measured: {err.split(': ', 1)[-1]}")
                else:
                    print(f"{v} {ds} b={b} d={d}: FAILED\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            row = json.loads(lines[-1][len("RESULT "):])
            rows.append(row)
            print(f"  {ds:<11} {v:<20} b={b:<5} d={d:<4} {row['step_ms_median']:>9.1f} ms/step "
                  f"{row['peak_mem_mb']:>8.1f} MB", flush=True)
    for r in rows:  # time per step relative to early fusion at the same dataset and size
        base = [e for e in rows if e["method"] == "early" and
                (e["dataset"], e["batch"], e["d"]) == (r["dataset"], r["batch"], r["d"])]
        r["ratio_to_early"] = (round(r["step_ms_median"] / base[0]["step_ms_median"], 2)
                               if base else float("nan"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    keep = []
    if args.merge and out.exists():  # keep the other datasets' rows (each from its own run)
        with open(out, newline="") as f:
            keep = [r for r in csv.DictReader(f) if r["dataset"] not in datasets]
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", newline="") as f:  # written whole, then renamed into place
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(keep + rows)
    os.replace(tmp, out)
    # One table: methods as rows, each dataset/size's time and ratio to early fusion side by side.
    cols = sorted({(r["dataset"], r["batch"], r["d"]) for r in rows}, key=grid.index)
    head = f"{'method':<20}" + "".join(f" | {ds[:8]} b{b} d{d}: ms, x early" for ds, b, d in cols)
    print("\n" + head)
    print("-" * len(head))
    for v in variants:
        line = f"{v:<20}"
        for c in cols:
            r = next((r for r in rows if r["method"] == v and
                      (r["dataset"], r["batch"], r["d"]) == c), None)
            width = len(f" | {c[0][:8]} b{c[1]} d{c[2]}: ms, x early")
            cell = f"{r['step_ms_median']:.1f}, {r['ratio_to_early']:.2f}x" if r else "-"
            line += f" | {cell:>{width - 3}}"
        print(line)
    dev = rows[0]["device"] if rows else args.device
    measure = rows[0]["mem_measure"] if rows else "-"
    print(f"\ndevice={dev}; memory = {measure}; CSV: {out}")
    hooks = [r for r in rows if r["epoch_hook_ms"] == r["epoch_hook_ms"]]  # not NaN
    for r in hooks:
        print(f"epoch hook {r['method']} (b={r['batch']}, d={r['d']}, {r['n_train']} train rows):"
              f" {r['epoch_hook_ms']:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
