"""Train-step time and peak memory of every neural method, side by side, in one run.

Usage::

    python benchmarks/methods_cost.py                  # every method x dataset, --device auto
    python benchmarks/methods_cost.py --datasets synthetic --sizes 256x64 --methods early,coral

Datasets: ``synthetic`` (3 modalities: 2 tabular, 1 sequence of 8 steps) at two sizes, and, when
their caches are prepared (``data_scripts/``), ``oulad`` (cutoff 0.5, temporal) and
``assist2009`` (fold 1, windows of 200 steps, per-step targets) at the batch size and width the
sweep uses (512x64 and 32x64). Each method gets one fixed batch (the first training rows).

* **step time**, *in one process, interleaved*: every method of a (dataset, size) is built
  first; then, in each of ``--rounds`` rounds, each method runs ``--number`` steps timed by
  ``torch.utils.benchmark.Timer`` (synchronised on CUDA), in an order rotated every round, so
  machine load drifts over all methods alike. A step is :func:`dsrsd.step.train_step`, the
  trainer's own (forward under its autocast, task loss + weighted aux terms, backward,
  gradient clipping, AdamW); COrAL's probe protocol runs its pre-training step. Reported: the
  median, 25/75th percentiles and minimum of the per-step time over rounds, and
  ``ratio_to_early``, the median over rounds of the time relative to early fusion *in the same
  round* (a paired ratio: load common to a round cancels).
* **peak memory**, in a *fresh subprocess* per method (one method's allocator caches can not
  hide another's), over ``--warmup`` + 3 steps, over what was allocated before them:
  - CUDA: ``torch.cuda.max_memory_allocated() - torch.cuda.memory_allocated()`` (tensor bytes
    held by the caching allocator's users; the allocator's reserve is not counted);
  - CPU: peak resident set size (``VmHWM`` after resetting it by writing 5 to
    ``/proc/self/clear_refs``) minus the RSS before the first step: gradients, AdamW state and
    the activations of the largest step, plus allocator slack (page granularity), not tensor
    bytes. Where ``clear_refs`` cannot be written, ``ru_maxrss`` is used (``mem_measure``).
  ``--no-memory`` skips it.
* **epoch hook**: the time of one ``on_epoch_start`` where a method has one (CLEAR dynamic: the
  per-epoch pass over the training split plus the SVD), not part of the step time.

``--threads N`` fixes torch's CPU threads (default: torch's choice). On a shared machine CPU
timings are noisy; interleaving makes the ratios robust to slow drifts, not to load spikes.
``--clock cpu`` (with ``--threads 1``) times the process's CPU time instead of wall time, so
time the scheduler gives to other processes is not counted (cache and memory-bandwidth
contention still is); ``timing`` says which.

``samples_per_s`` is batch rows per second of training (ASSISTments: student windows of up to
200 scored steps each). Writes ``results/cost.csv`` (``--out``) and prints the table.
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

GRID = {"fusion": "blocks", "orthogonality": "xcorr", "contrastive": "masked",
        "task_reads": "streams"}
# The grid's options with the fast paths and the bounded row sample (issue 13 item 4).
FAST = {**GRID, "batched_streams": True, "batched_aux": True, "max_aux_rows": 256,
        "recon_rows": "aux"}

# name -> (registry method, method_params); the loss weights are TrainConfig's defaults.
VARIANTS: dict[str, tuple[str, dict]] = {
    "early": ("early", {}),
    "unimodal": ("unimodal", {}),
    "late": ("late", {}),
    "late_logit": ("late_logit", {}),
    "coattention": ("coattention", {}),
    "dsrsd": ("dsrsd", {}),
    # The options of the main grids (issue 12), with the reference auxiliary path, then with
    # the fast paths and the bounded row sample (issue 13 item 4; same model, see model.py).
    "dsrsd_grid": ("dsrsd", {**GRID, "batched_streams": True}),
    "dsrsd_fast": ("dsrsd", FAST),
    # dsrsd_fast on the lean streams of the full-budget runs (one Linear per stream, scorer 16).
    "dsrsd_lean": ("dsrsd", {**FAST, "stream_layers": 1, "score_hidden": 16}),
    "misa": ("misa", {}),
    "coral": ("coral", {"ortho": "cos2"}),
    "coral_probe_ssl": ("coral", {"ortho": "cos2", "protocol": "probe"}),
    "clear_static": ("clear", {"mode": "static", "base": "early", "k": 4}),
    "clear_dynamic": ("clear", {"mode": "dynamic", "base": "early", "k": 4}),
    "clear_dynamic_dsrsd": ("clear", {"mode": "dynamic", "base": "dsrsd", "k": 4}),
}

# name -> (experiment file, variant, extra method_params): the configuration a committed
# result used, its method_params *and* loss weights read from the grid file, so the cost table
# measures it. ``dsrsd_oulad`` / ``dsrsd_assist``: the headline DSRSD-Net (lean streams,
# skip_unweighted); ``_mlp``: the two-layer streams of the ablation reference, with the same
# speed-only options (batched_streams, skip_unweighted), so the two differ in the network only.
EXPERIMENT_VARIANTS = {"dsrsd_oulad": ("oulad_full", "dsrsd", {}),
                       "dsrsd_assist": ("assist_full", "dsrsd", {}),
                       "dsrsd_oulad_mlp": ("oulad_ablate", "dsrsd", {"batched_streams": True,
                                                                     "skip_unweighted": True}),
                       "dsrsd_assist_mlp": ("assist_ablate", "dsrsd", {"batched_streams": True,
                                                                       "skip_unweighted": True})}


def variant_config(name: str) -> tuple[str, dict, dict | None]:
    """``(registry method, method_params, loss weights)`` of a variant; weights ``None``: the
    defaults (:data:`VARIANTS`), else the experiment's (:data:`EXPERIMENT_VARIANTS`)."""
    if name in VARIANTS:
        return (*VARIANTS[name], None)
    name_, label, extra = EXPERIMENT_VARIANTS[name]
    grid = json.loads((ROOT / "experiments" / f"{name_}.json").read_text())
    var = grid.get("variants", {}).get(label, {})
    # Merged as dsrsd.sweep merges them (grid level, then the variant).
    params = {**grid.get("method_params", {}).get(label, {}), **var.get("method_params", {}),
              **extra}
    return (var.get("method", label), params,
            {**grid.get("weights", {}), **var.get("weights", {})})


KNOWN = [*VARIANTS, *EXPERIMENT_VARIANTS]

# dataset -> (default sizes BATCHxD, loader parameters)
DATASETS = {"synthetic": ("256x64,1024x128", {}),
            "oulad": ("512x64", {"cutoff": 0.5, "label": "binary", "split": "temporal"}),
            "assist2009": ("32x64", {"fold": 1})}

FIELDS = ["dataset", "method", "registry_method", "method_params", "weights", "device", "batch", "d",
          "n_params", "samples_per_s", "ratio_to_early", "step_ms_median", "step_ms_p25", "step_ms_p75", "step_ms_min", "peak_mem_mb", "mem_measure",
          "epoch_hook_ms", "n_train", "torch_threads", "timing", "rounds", "steps_per_round"]


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


class Case:
    """One method ready to step on one fixed batch: the model, its optimiser, the step."""

    def __init__(self, variant: str, dataset: str, batch_size: int, d: int, device_name: str,
                 splits):
        import torch

        from dsrsd.base import DirectFit
        from dsrsd.config import TrainConfig
        from dsrsd.registry import build_model
        from dsrsd.step import make_optimizer, supervised_loss, train_step
        from dsrsd.train import resolve_device

        method, params, weights = variant_config(variant)
        self.variant, self.method, self.params = variant, method, params
        self.device = device = resolve_device(device_name)
        train = splits.train
        if len(train) < batch_size:
            raise SystemExit(f"{dataset}: {len(train)} training rows < batch {batch_size}")
        cfg = TrainConfig(method=method, method_params=dict(params), d=d,
                          batch_size=batch_size, device=device_name)
        if weights is not None:  # the experiment's weights over the defaults, as the sweep does
            cfg.weights = {**cfg.weights, **weights}
        self.weights = cfg.weights
        self.model = build_model(cfg, train.specs, train.task, train)
        # The probe protocol's network pre-trains on its own loss; the others on the trainer's.
        self.net = self.model.net if isinstance(self.model, DirectFit) else self.model
        self.net.to(device)
        loss_fn = (type(self.net).ssl_loss if isinstance(self.model, DirectFit)
                   else supervised_loss(cfg.weights))
        opt = make_optimizer(self.net, cfg)
        batch = train.batch(torch.arange(batch_size)).to(device)
        self.net.train()

        def step():
            train_step(self.net, batch, opt, loss_fn, device, cfg.amp, cfg.grad_clip)

        self.step, self.train, self.cfg = step, train, cfg

    def sync(self) -> None:
        import torch
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def hook_ms(self) -> float:
        """One ``on_epoch_start`` where the method overrides the no-op default, else NaN."""
        from dsrsd.base import DirectFit, FusionModel
        if isinstance(self.model, DirectFit) or \
                type(self.net).on_epoch_start is FusionModel.on_epoch_start:
            return float("nan")
        self.sync()
        t = time.perf_counter()
        self.net.on_epoch_start(0, self.train, self.device)
        self.sync()
        return 1000 * (time.perf_counter() - t)


def load_splits(dataset: str, batch_size: int):
    if dataset == "synthetic":
        from dsrsd.data.synthetic import load_synthetic
        n = math.ceil(batch_size / 0.7) + 64  # the 70% training part holds one full batch
        return load_synthetic(n=n)
    from dsrsd.data import load_dataset
    return load_dataset(dataset, seed=0, **DATASETS[dataset][1])


def time_interleaved(cases: list[Case], rounds: int, number: int, warmup: int,
                     clock: str = "wall") -> dict:
    """Per-step times (ms) of every case per round, from ``torch.utils.benchmark.Timer``,
    interleaved: each round runs every case once, in an order rotated every round.
    ``clock="cpu"``: the process's CPU time instead of wall time (CPU only)."""
    import torch
    from torch.utils.benchmark import Timer

    for c in cases:
        for _ in range(warmup):
            c.step()
        c.sync()
    kw = {"timer": time.process_time} if clock == "cpu" else {}
    timers = {c.variant: Timer("step()", globals={"step": c.step},
                               num_threads=torch.get_num_threads(), label=c.variant, **kw)
              for c in cases}
    times: dict[str, list[float]] = {c.variant: [] for c in cases}
    for r in range(rounds):
        k = r % len(cases)
        for c in cases[k:] + cases[:k]:
            m = timers[c.variant].timeit(number)  # synchronises CUDA around the block
            times[c.variant].append(1000 * m.mean)
    return times


def child(args) -> dict:
    """Peak memory of one (variant, batch, d) in this fresh process; returns the fields."""
    import torch

    from dsrsd.train import set_seed

    set_seed(0)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    case = Case(args.variant, args.dataset, args.batch, args.d, args.device,
                load_splits(args.dataset, args.batch))
    device = case.device
    gc.collect()
    if device.type == "cuda":
        case.sync()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        measure = "cuda.max_memory_allocated"
    else:
        base = _rss_kb()
        measure = "VmHWM-RSS" if _reset_hwm() else "ru_maxrss-RSS"
        if measure.startswith("ru_"):
            base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(args.warmup + 3):
        case.step()
    case.sync()
    if device.type == "cuda":
        peak_mb = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    elif measure == "VmHWM-RSS":
        peak_mb = (_hwm_kb() - base) / 1024
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    return {"peak_mem_mb": round(peak_mb, 1), "mem_measure": measure}


def _memory(args, ds: str, v: str, b: int, d: int, env: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", "--variant", v, "--batch", str(b), "--d", str(d),
           "--device", args.device, "--warmup", str(args.warmup), "--threads", str(args.threads),
           "--dataset", ds]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        print(f"{v} {ds} b={b} d={d}: memory FAILED\n{proc.stderr[-2000:]}", file=sys.stderr)
        return {"peak_mem_mb": float("nan"), "mem_measure": "failed"}
    return json.loads(lines[-1][len("RESULT "):])


def measure_group(args, ds: str, b: int, d: int, variants: list[str], env: dict) -> list[dict]:
    """Every variant at one (dataset, size): interleaved step times here, memory in children."""
    import torch

    from dsrsd.errors import DsrsdError
    from dsrsd.train import count_parameters, set_seed

    splits = load_splits(ds, b)
    cases = []
    for v in variants:
        set_seed(0)
        try:
            cases.append(Case(v, ds, b, d, args.device, splits))
        except DsrsdError as e:  # e.g. a protocol the method does not support here
            print(f"  {ds:<11} {v:<20} not measured: {e}")
    times = time_interleaved(cases, args.rounds, args.number, args.warmup, args.clock)
    early = times.get("early")
    rows = []
    for c in cases:
        t = times[c.variant]
        q = statistics.quantiles(t, n=4) if len(t) >= 2 else [t[0]] * 3
        ratio = (round(statistics.median([x / e for x, e in zip(t, early, strict=True)]), 2)
                 if early else float("nan"))
        mem = _memory(args, ds, c.variant, b, d, env) if args.memory else \
            {"peak_mem_mb": float("nan"), "mem_measure": "-"}
        med = statistics.median(t)
        row = {"dataset": ds, "method": c.variant, "registry_method": c.method,
               "method_params": json.dumps(c.params, sort_keys=True),
               "weights": json.dumps(c.weights, sort_keys=True), "device": c.device.type,
               "batch": b, "d": d, "n_params": count_parameters(c.net),
               "samples_per_s": round(1000 * b / med, 1), "ratio_to_early": ratio,
               "step_ms_median": round(med, 2), "step_ms_p25": round(q[0], 2),
               "step_ms_p75": round(q[2], 2), "step_ms_min": round(min(t), 2), **mem,
               "epoch_hook_ms": round(c.hook_ms(), 1), "n_train": len(c.train),
               "torch_threads": torch.get_num_threads(),
               "timing": "interleaved" + ("-cpu-time" if args.clock == "cpu" else ""),
               "rounds": args.rounds, "steps_per_round": args.number}
        rows.append(row)
        print(f"  {ds:<11} {c.variant:<20} b={b:<5} d={d:<4} {row['step_ms_median']:>9.1f} ms/step "
              f"{ratio:>6.2f}x early {row['peak_mem_mb']:>8.1f} MB", flush=True)
    return rows


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
    ap.add_argument("--methods", default=",".join(KNOWN), help="comma list of variants")
    ap.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds")
    ap.add_argument("--number", type=int, default=2, help="steps per method per round")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads (0: torch's default)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall time, or the process's CPU time (CPU only: with --threads 1 it "
                         "ignores other processes' load on a shared machine)")
    ap.add_argument("--no-memory", dest="memory", action="store_false",
                    help="skip the peak-memory subprocesses")
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
    bad = [v for v in variants if v not in KNOWN]
    if bad:
        ap.error(f"unknown variant(s) {bad} (known: {', '.join(KNOWN)})")
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
    if args.threads > 0:
        import torch
        torch.set_num_threads(args.threads)
    for ds, b, d in grid:
        if ds not in skipped:
            rows += measure_group(args, ds, b, d, variants, env)
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
