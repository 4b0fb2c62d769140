"""What a run record says about why its auxiliary loss terms helped or hurt (chapter 12).

A record's ``history`` holds, per epoch, the mean of every loss term over the epoch's steps,
unweighted. The objective weighs them by the config's ``weights``, with the warm-up of
:func:`dsrsd.losses.effective_weights`; :func:`term_curves` puts the weights back (from the
row's own ``weights`` in newer records, else recomputed from the record's config, which gives
the logged ``total`` to float precision), so a chapter can plot what the optimiser was actually
pulled by. :func:`chosen_epoch` places the checkpoint early stopping kept against the warm-up,
and :func:`grad_shares` reads the per-term gradient norms of records made since the
observability change (:mod:`dsrsd.observe`); older records lack them.
"""

from __future__ import annotations

import pandas as pd

from dsrsd.config import TrainConfig
from dsrsd.errors import DsrsdError
from dsrsd.losses import effective_weights
from dsrsd.observe import loss_terms


def _config(rec: dict) -> TrainConfig:
    if not isinstance(rec.get("config"), dict) or not isinstance(rec.get("history"), list):
        raise DsrsdError(f"record {rec.get('run_id', '?')}: no config or history to read")
    return TrainConfig.from_dict(rec["config"])


def term_curves(rec: dict) -> pd.DataFrame:
    """One row per epoch and loss term of a record: ``epoch``, ``term`` (``task`` and each
    auxiliary term), ``value`` (the epoch's mean, unweighted), ``weight`` (its weight in that
    epoch's objective, warm-up included; 1 for the task) and ``weighted``."""
    cfg = _config(rec)
    warm = cfg.warmup()
    rows = []
    for h in rec["history"]:
        terms = loss_terms(h)
        weights = h.get("weights") or effective_weights(terms, cfg.weights, h["epoch"], warm)
        for t in terms:
            w = 1.0 if t == "task" else float(weights.get(t, 0.0))
            rows.append({"epoch": h["epoch"], "term": t, "value": h[t], "weight": w,
                         "weighted": w * h[t]})
    return pd.DataFrame(rows, columns=["epoch", "term", "value", "weight", "weighted"])


def chosen_epoch(rec: dict) -> dict:
    """Where the kept checkpoint lies: ``best_epoch``, ``epochs_run``, ``warmup_epochs``, the
    first epoch at which the warmed-up terms have full weight (``full_weight_epoch``,
    ``warmup_epochs - 1``), and ``inside_warmup``: the checkpoint was chosen before it, so the
    model kept was trained with those terms at part of their weight."""
    cfg = _config(rec)
    full = max(cfg.warmup_epochs - 1, 0)
    best = int(rec["best_epoch"])
    return {"best_epoch": best, "epochs_run": int(rec["epochs_run"]),
            "warmup_epochs": cfg.warmup_epochs, "full_weight_epoch": full,
            "inside_warmup": bool(cfg.warmup() and 0 <= best < full)}


def observed(rec: dict) -> bool:
    """Whether the record logs per-term gradient norms (made since the observability change)."""
    return bool(rec.get("history")) and all("grad_norm" in h for h in rec["history"])


def grad_shares(rec: dict) -> pd.DataFrame:
    """Epoch x term: each weighted term's gradient norm (first batch of the epoch) as a share
    of the sum over terms; rows sum to 1. Raises for a record without gradient norms."""
    if not observed(rec):
        raise DsrsdError(f"record {rec.get('run_id', '?')}: no grad_norm in its history (made "
                         "before the observability change)")
    norms = pd.DataFrame([{k: v for k, v in h["grad_norm"].items() if k != "total"}
                          for h in rec["history"]],
                         index=pd.Index([h["epoch"] for h in rec["history"]], name="epoch"))
    return norms.div(norms.sum(axis=1).where(norms.sum(axis=1) > 0), axis=0)
