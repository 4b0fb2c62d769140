"""Training: fit, evaluate, checkpoints, early stopping, data parallel, records.

``fit`` is the one entry point (the CLI, the notebooks and the sweep all call it). It calls the
method contract of :mod:`dsrsd.base` only: a :class:`~dsrsd.base.FusionModel` is trained by the
epoch loop here, built on the one train step of :mod:`dsrsd.step`; a
:class:`~dsrsd.base.DirectFit` method by its fitting routine in :mod:`dsrsd.fitting`. Under
``torchrun`` the network is wrapped in ``DistributedDataParallel`` (gloo on CPU, NCCL on CUDA)
and ``batch_gather`` is set, so global-batch loss terms gather every rank's rows. Seeded CPU
runs are bit-identical; a killed run resumed from its last checkpoint ends with the same
metrics, because every epoch's shuffling is seeded by ``(seed, epoch)`` and the checkpoint
carries the optimiser and RNG state. On CUDA, bf16 autocast and non-deterministic kernels
(e.g. scatter-add in embedding backward) make runs close but not bit-identical.
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.std import tqdm  # the text bar: tqdm.auto warns in kernels without ipywidgets

from dsrsd.base import DirectFit, FusionModel, drop_modalities
from dsrsd.config import TrainConfig
from dsrsd.data import Splits, flat_targets, load_dataset
from dsrsd.data.batch import MultimodalData
from dsrsd.errors import DsrsdError
from dsrsd.losses import effective_weights
from dsrsd.metrics import binary_metrics, multiclass_metrics
from dsrsd.observe import EpochObserver
from dsrsd.predictions import PREDICTIONS_FILE, prediction_arrays, write_predictions
from dsrsd.records import atomic_torch_save, atomic_write_json, provenance
from dsrsd.registry import build_model
from dsrsd.step import autocast, make_optimizer, supervised_loss, train_epoch

CHECKPOINT_FORMAT = 1


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DsrsdError(f"device {name!r} requested but CUDA is not available")
    return torch.device(name)


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch, and ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def predict(model: nn.Module, data: MultimodalData, batch_size: int = 1024,
            device: torch.device | None = None, amp: bool = True,
            trim: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Targets and predicted probabilities (``[N]`` binary, ``[N, C]`` multiclass) on ``data``.

    ``trim`` (per-step tasks): each batch is cut after its longest window (the samples keep
    their order, so the scored steps come in the same order and number)."""
    if isinstance(model, DirectFit):  # fitted outside the gradient loop (e.g. boosting)
        return model.predict_proba(data)
    device = device or next(model.parameters()).device
    was = model.training
    model.eval()
    ys, ps = [], []
    for batch in data.batches(batch_size, trim=trim):
        batch = batch.to(device)
        with autocast(device, amp):
            logits = model(batch).logits.float()
        ps.append(torch.softmax(logits, -1) if data.task.kind == "multiclass" else torch.sigmoid(logits))
        ys.append(flat_targets(batch))
    model.train(was)
    return torch.cat(ys).cpu().numpy(), torch.cat(ps).cpu().numpy()


def evaluate(model: nn.Module, data: MultimodalData, batch_size: int = 1024,
             device: torch.device | None = None, amp: bool = True,
             trim: bool = False) -> dict[str, float]:
    """Protocol metrics of ``model`` on ``data`` (``trim``: see :func:`predict`)."""
    y, p = predict(model, data, batch_size, device, amp, trim)
    return score(data, y, p)


def score(data: MultimodalData, y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """Protocol metrics of predictions ``y``, ``p`` (:func:`predict`) on ``data``; predictions
    that are not finite are an error (training diverged)."""
    if not np.isfinite(p).all():
        raise DsrsdError(f"the model's predictions on {data.name!r} are not finite (training "
                         "diverged: lower --lr or the loss weights)")
    return multiclass_metrics(y, p) if data.task.kind == "multiclass" else binary_metrics(y, p)


ROBUSTNESS_RATES = (0.1, 0.2, 0.3, 0.4, 0.5)
NOISE_SIGMAS = (0.5, 1.0, 2.0)


def real_entries(data: MultimodalData, name: str) -> Tensor:
    """Bool mask over ``data.x[name]``'s entries without the feature axis: True where the sample
    has the modality and the step or element is real (its padding mask; for per-step tabular
    inputs, the scored steps)."""
    x = data.x[name]
    real = data.present[:, data.names.index(name)]
    real = real.reshape(-1, *[1] * (x.dim() - 2)).expand(x.shape[:-1])
    if name in data.pad:
        real = real & data.pad[name]
    elif x.dim() == 3 and data.y_mask is not None and data.y_mask.shape == x.shape[:2]:
        real = real & data.y_mask
    return real


def add_noise(data: MultimodalData, name: str, sigma: float,
              generator: torch.Generator) -> MultimodalData:
    """``data`` with Gaussian noise of ``sigma`` standard deviations added to every float feature
    of modality ``name`` at its real entries (:func:`real_entries`); each feature's standard
    deviation is taken over those entries of ``data`` itself, so the noise is label-free and
    scaled like the features. Padding and absent modalities are left as they are."""
    x = data.x[name]
    if not x.is_floating_point():
        raise DsrsdError(f"modality {name!r} holds token ids: Gaussian noise needs float features")
    real = real_entries(data, name)
    vals = x[real]
    sd = vals.std(0) if len(vals) > 1 else torch.zeros(x.shape[-1], dtype=x.dtype)
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype) * (sigma * sd)
    return replace(data, x={**data.x, name: torch.where(real.unsqueeze(-1), x + noise, x)})


def robustness(model: nn.Module, data: MultimodalData, device: torch.device | None = None,
               amp: bool = True, rates: tuple[float, ...] = ROBUSTNESS_RATES,
               seed: int = 0, trim: bool = False,
               sigmas: tuple[float, ...] = NOISE_SIGMAS) -> dict:
    """ROC-AUC with modalities hidden or made noisy at test time (book/papers.md's
    missing-modality protocol [R], and additive noise as in chapter 8).

    ``drop_rate[r]``: every present modality of every sample is hidden with probability ``r``
    (seeded; each sample keeps at least one). ``drop_modality[name]``: that modality is hidden
    everywhere; samples that had nothing else are left out (``n`` says how many remain).
    ``noise[name][sigma]``: Gaussian noise of ``sigma`` standard deviations on every float
    feature of that modality alone (:func:`add_noise`, seeded); token-id modalities have none.
    """
    out: dict = {"drop_rate": {}, "drop_modality": {}, "noise": {}, "seed": seed}
    for m, name in enumerate(data.names):
        if not data.x[name].is_floating_point():
            continue
        out["noise"][name] = {}
        for j, sigma in enumerate(sigmas):
            g = torch.Generator().manual_seed(seed * 7919 + 1009 * (m + 1) + j)
            out["noise"][name][f"{sigma:g}"] = evaluate(
                model, add_noise(data, name, sigma, g), device=device, amp=amp, trim=trim)["auc"]
    if len(data.specs) < 2:
        return out
    for i, r in enumerate(rates):
        g = torch.Generator().manual_seed(seed * 7919 + i)
        hidden = replace(data, present=drop_modalities(data.present, r, generator=g))
        out["drop_rate"][f"{r:g}"] = evaluate(model, hidden, device=device, amp=amp,
                                              trim=trim)["auc"]
    for m, name in enumerate(data.names):
        present = data.present.clone()
        present[:, m] = False
        keep = torch.nonzero(present.any(1)).squeeze(1)
        if len(keep) == 0:
            continue
        hidden = replace(data, present=present).subset(keep)
        met = evaluate(model, hidden, device=device, amp=amp, trim=trim)
        out["drop_modality"][name] = {"auc": met["auc"], "n": len(keep)}
    return out


def _check_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise DsrsdError(f"cannot write to --out {str(out)!r}: {e.strerror or e}") from None


def load_checkpoint(path: Path, keys: tuple[str, ...] = ()) -> dict:
    """Load a checkpoint safely (``weights_only=True``); a bad file, or one without ``keys``, is
    a clear error."""
    path = Path(path)
    if not path.exists():
        raise DsrsdError(f"checkpoint {str(path)!r} does not exist")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt files
        raise DsrsdError(f"checkpoint {str(path)!r} is corrupt or not a torch file "
                         f"({type(e).__name__})") from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise DsrsdError(f"checkpoint {str(path)!r} is not a dsrsd checkpoint (format "
                         f"{CHECKPOINT_FORMAT})")
    missing = [k for k in keys if k not in ck]
    if missing:
        raise DsrsdError(f"checkpoint {str(path)!r} is incomplete (missing {', '.join(missing)})")
    return ck


# What a resumable ``last.pt`` holds (``best.pt``: format, config_hash, model, epoch).
RESUME_KEYS = ("config_hash", "model", "optimizer", "rng", "history", "best", "bad_epochs",
               "epoch")


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _local_share(batch, device: torch.device) -> torch.Tensor:
    """Under torchrun, this rank's share ``n_local / n_all`` of the global batch's samples."""
    n_local = torch.tensor(float(len(batch)), device=device)
    n_all = n_local.clone()
    dist.all_reduce(n_all)
    return n_local / n_all


def _data_parallel_task(world: int, device: torch.device):
    """The supervised loss's ``adjust`` under torchrun (``DistributedDataParallel`` averages
    gradients over ranks).

    The task loss is a mean over this rank's rows: weighted by ``world * n_local / n_all`` its
    average over ranks is the global-batch mean. The other terms are global-batch statistics
    (gathered rows), identical on every rank, and the gather's backward sums every rank's
    gradient into each rank's own rows, so after averaging they count once, unweighted. The
    logged task loss (and total) are the global-batch values, as one process would log.
    """

    def adjust(loss, task, logged, batch):
        share = _local_share(batch, device)
        task_all = task.detach() * share
        dist.all_reduce(task_all)
        logged["total"] = logged["total"] - logged["task"] + task_all
        logged["task"] = task_all
        return loss + (world * share - 1) * task

    return adjust


def gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t``'s rows from every rank, keeping the gradient to each rank's own rows.

    Ranks may hold different row counts (the last batch), so rows are padded to the largest
    count for the collective and trimmed after. The backward of the differentiable all-gather
    sums, over ranks, the gradient each rank's copy of the loss sends to these rows.
    """
    from torch.distributed.nn.functional import all_gather

    n = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    sizes = [int(x) for x in sizes]
    pad = max(sizes) - t.shape[0]
    if pad:
        t = torch.cat([t, t.new_zeros((pad, *t.shape[1:]))])
    if t.requires_grad:
        parts = all_gather(t)
    else:  # masks: no gradient; gloo has no bool collectives
        x = t.to(torch.uint8) if t.dtype == torch.bool else t
        parts = [torch.empty_like(x) for _ in sizes]
        dist.all_gather(parts, x)
        parts = [p.to(t.dtype) for p in parts]
    return torch.cat([x[:k] for x, k in zip(parts, sizes, strict=False)])


def fit(cfg: TrainConfig, splits: Splits | None = None, out: str | Path | None = None,
        resume: bool = False, progress: bool = True, labels: dict | None = None,
        stop_after: int | None = None) -> dict:
    """Train ``cfg.method`` on ``cfg.dataset`` and return its record (also written to ``out``).

    ``labels`` (e.g. a sweep's ``variant``, ``setting``, ``run_id``) go into the record before
    its one write, so a record on disk is always complete.

    With ``out``: ``out/metrics.json`` (the record), ``out/test_predictions.npz`` (every test
    prediction with its label and test unit, :mod:`dsrsd.predictions`; the record's
    ``predictions`` names it and its row count), ``out/last.pt`` (resumable, every epoch) and
    ``out/best.pt`` (the best-validation weights). Under ``torchrun`` every rank trains on
    its share of each global batch; rank 0 writes.

    Each ``history`` row holds the epoch's mean loss terms, ``val_auc``, the diagnostics of
    :mod:`dsrsd.observe` (``train_auc``, ``grad_norm``, ``alpha``, ``gate``) and the epoch's
    ``weights`` and ``weighted`` terms; ``selection`` says how ``best_epoch`` was chosen
    (:class:`~dsrsd.config.TrainConfig` ``select_after_warmup``).

    ``stop_after``: train only the first that many epochs of the config's schedule and return
    just the record's configuration fields and ``history``, with no evaluation, provenance or files
    (:mod:`dsrsd.replay` compares them with a committed record).
    """
    t0 = time.perf_counter()
    rank, world = _dist_info()
    out = Path(out) if out is not None else None
    if out is not None and rank == 0:
        _check_out(out)
    device = resolve_device(cfg.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    set_seed(cfg.seed)
    if splits is None:
        splits = load_dataset(cfg.dataset, seed=cfg.seed, **cfg.data_params)
    train, val, test = splits.train, splits.val, splits.test
    for part in (train, val, test):
        if len(part) == 0:
            raise DsrsdError(f"split {part.name!r} is empty")
    model = build_model(cfg, train.specs, train.task, train)
    net = model.net if isinstance(model, DirectFit) else model
    if net is not None:
        net.to(device)
    if world > 1 and isinstance(model, FusionModel):
        model.batch_gather = gather_rows
    record = {"method": cfg.method, "dataset": cfg.dataset, "config": cfg.to_dict(),
              "config_hash": cfg.hash(), "seed": cfg.seed, "data_info": splits.info,
              "n_params": count_parameters(net) if net is not None else 0, "world_size": world}

    resumed: dict = {}  # filled by _train_loop when it continues a killed run
    if isinstance(model, DirectFit):  # fitted outside the gradient loop
        from dsrsd.fitting import fit_direct
        try:
            fit_direct(model, splits, cfg, device)
        except DsrsdError:
            raise
        except ValueError as e:  # e.g. scikit-learn refusing a parameter value
            msg = (str(e).splitlines() or [""])[0][:200]
            raise DsrsdError(f"method {cfg.method!r} cannot be fitted with parameters "
                             f"{cfg.method_params} ({type(e).__name__}: {msg})") from None
        history, epochs_run, best_epoch = [], 0, -1
    else:
        history, epochs_run, best_epoch = _train_loop(model, cfg, train, val, device, out,
                                                      resume, progress, rank, world, stop_after,
                                                      resumed)
        if stop_after is not None:
            return {**record, "history": history, "epochs_run": epochs_run}
    trim = cfg.length_buckets > 0  # evaluation: trimmed batches in the plain order
    val_metrics = evaluate(model, val, device=device, amp=cfg.amp, trim=trim)
    # One prediction pass on test serves the record and its predictions file, so the file
    # gives back the record's numbers exactly.
    y_test, p_test = predict(model, test, device=device, amp=cfg.amp, trim=trim)
    record.update({
        "val": val_metrics, "test": score(test, y_test, p_test),
        "robustness": robustness(model, test, device=device, amp=cfg.amp, seed=cfg.seed,
                                 trim=trim),
        "history": history, "epochs_run": epochs_run, "best_epoch": best_epoch,
        "selection": selection_policy(cfg),
        "wall_time_s": time.perf_counter() - t0 + (resumed.get("earlier_wall_s") or 0.0),
        **({"resumed": resumed} if resumed else {}), **provenance(device), **(labels or {})})
    if out is not None and rank == 0:
        # before the record: a record on disk always has its predictions file
        record["predictions"] = write_predictions(
            out / PREDICTIONS_FILE, prediction_arrays(test, y_test, p_test))
        atomic_write_json(out / "metrics.json", record)
    record["model"] = model
    return record


def _weighted(row: dict, eff: dict[str, float]) -> dict:
    """The epoch's ``weights`` (each logged auxiliary term's weight in the objective, warm-up
    included) and ``weighted`` terms (task, and each term times that weight)."""
    terms = [k for k in row if k not in ("epoch", "task", "total", "val_auc")]  # logged terms
    weights = {t: eff.get(t, 0.0) for t in terms}
    return {"weights": weights,
            "weighted": {"task": row["task"], **{t: w * row[t] for t, w in weights.items()}}}


def selection_policy(cfg: TrainConfig) -> dict:
    """How the record's checkpoint was chosen: the warmed-up terms, the warm-up length, and
    whether choice (and patience) waited for the warm-up's end (``first_eligible_epoch``)."""
    return {"warmup_terms": sorted(cfg.warmup()), "warmup_epochs": cfg.warmup_epochs,
            "after_warmup": cfg.select_after_warmup,
            "first_eligible_epoch": min(cfg.selection_start(), cfg.epochs - 1)}


def _train_loop(model: FusionModel, cfg, train, val, device, out, resume, progress, rank, world,
                stop_after: int | None = None, resumed: dict | None = None):
    """The epochs of :func:`fit`. Continuing a killed run from ``last.pt``, it fills ``resumed``
    with the epoch it resumed at and the training seconds the earlier processes logged there
    (``None`` for a checkpoint written before they were logged), so the record's wall time
    counts the whole run, not only its last piece."""
    t_loop, earlier = time.perf_counter(), None  # earlier: seconds logged in last.pt, if any
    opt = make_optimizer(model, cfg)
    history: list[dict] = []
    best = {"score": -math.inf, "epoch": -1, "state": None}
    bad_epochs, start = 0, 0
    if resume and out is not None and (out / "last.pt").exists():
        ck = load_checkpoint(out / "last.pt", RESUME_KEYS)
        if ck["config_hash"] != cfg.hash():
            raise DsrsdError(f"--resume: {out / 'last.pt'} was written by a different config")
        try:
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            torch.set_rng_state(ck["rng"])
            history, best = list(ck["history"]), dict(ck["best"])
            bad_epochs, start = int(ck["bad_epochs"]), int(ck["epoch"]) + 1
            earlier = None if ck.get("wall_s") is None else float(ck["wall_s"])
            if not {"score", "epoch", "state"} <= set(best):
                raise KeyError("best")
        except (RuntimeError, ValueError, TypeError, KeyError) as e:
            raise DsrsdError(f"--resume: {out / 'last.pt'} does not fit this model "
                             f"({type(e).__name__})") from None
        if bad_epochs >= cfg.patience:
            # Early stopping had fired at the saved epoch: the run is over, only its record
            # was not written yet. Training on would give a different (wrong) result.
            start = cfg.epochs
        if resumed is not None:
            resumed.update(from_epoch=int(ck["epoch"]) + 1, earlier_wall_s=earlier)
    warm = cfg.warmup()
    # Inside the warm-up (select_after_warmup) nothing is chosen and patience does not count;
    # a run that ends inside it keeps its last epoch.
    first_eligible = selection_policy(cfg)["first_eligible_epoch"]
    # Under torchrun the step runs through DDP (it averages gradients over ranks); the epoch
    # hook, evaluation and checkpoints use the network itself.
    step_net, adjust = model, None
    if world > 1:
        step_net = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True)
        adjust = _data_parallel_task(world, device)
    observed = {"gather": gather_rows, "task_scale": lambda b: world * _local_share(b, device)
                } if world > 1 else {}
    bar = tqdm(range(start, cfg.epochs), desc=f"{cfg.method}", disable=not progress or rank > 0,
               initial=start, total=cfg.epochs, leave=False)
    for epoch in bar:
        model.on_epoch_start(epoch, train, device)
        sums: dict[str, torch.Tensor] = {}
        n_steps = 0
        eff = effective_weights(cfg.weights, cfg.weights, epoch, warm)  # this epoch's weights
        observer = EpochObserver(train.names, train.task.kind, eff, **observed)
        loss_fn = supervised_loss(cfg.weights, epoch, warm, adjust, observer)
        for logged in train_epoch(step_net, train, opt, loss_fn, cfg, epoch, device, rank, world,
                                  observer=observer):
            for k, v in logged.items():
                sums[k] = sums.get(k, 0.0) + v
            n_steps += 1
        row = {"epoch": epoch, **{k: float(v) / max(n_steps, 1) for k, v in sums.items()}}
        if not math.isfinite(row.get("total", 0.0)):
            raise DsrsdError(f"training diverged in epoch {epoch}: the loss is {row['total']} "
                             f"(lower --lr or the loss weights)")
        row["val_auc"] = evaluate(model, val, device=device, amp=cfg.amp,
                                  trim=cfg.length_buckets > 0)["auc"]
        row.update(_weighted(row, eff), **observer.summary())
        history.append(row)
        score = row["val_auc"] if not math.isnan(row["val_auc"]) else -row["task"]
        eligible = epoch >= first_eligible
        if eligible and score > best["score"]:
            best = {"score": score, "epoch": epoch,
                    "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
            bad_epochs = 0
        elif eligible:
            bad_epochs += 1
        bar.set_postfix(loss=f"{row['total']:.3f}", val_auc=f"{row['val_auc']:.3f}")
        stop = bad_epochs >= cfg.patience or len(history) == stop_after
        if out is not None and rank == 0:
            atomic_torch_save({"format": CHECKPOINT_FORMAT, "config_hash": cfg.hash(),
                               "model": model.state_dict(), "optimizer": opt.state_dict(),
                               "rng": torch.get_rng_state(), "history": history, "best": best,
                               "bad_epochs": bad_epochs, "epoch": epoch,
                               "wall_s": (earlier or 0.0) + time.perf_counter() - t_loop}, out / "last.pt")
        if stop:
            break
    bar.close()
    if best["state"] is not None:
        model.load_state_dict(best["state"])
        if out is not None and rank == 0:
            atomic_torch_save({"format": CHECKPOINT_FORMAT, "config_hash": cfg.hash(),
                               "model": best["state"], "epoch": best["epoch"]}, out / "best.pt")
    return history, len(history), best["epoch"]
