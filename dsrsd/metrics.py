"""Evaluation metrics (book/protocols.md): ROC-AUC primary; PR-AUC, accuracy, macro-F1, Brier."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm


def binary_metrics(y: np.ndarray, prob: np.ndarray) -> dict[str, float]:
    """Metrics for 0/1 targets and predicted probabilities of class 1."""
    y = np.asarray(y).astype(int)
    prob = np.asarray(prob, dtype=np.float64)
    pred = (prob >= 0.5).astype(int)
    both = len(np.unique(y)) == 2
    return {
        "auc": float(skm.roc_auc_score(y, prob)) if both else float("nan"),
        "pr_auc": float(skm.average_precision_score(y, prob)) if both else float("nan"),
        "acc": float(skm.accuracy_score(y, pred)),
        "f1_macro": float(skm.f1_score(y, pred, average="macro", zero_division=0)),
        "brier": float(np.mean((prob - y) ** 2)),
        "n": int(len(y)),
    }


def multiclass_metrics(y: np.ndarray, prob: np.ndarray) -> dict[str, float]:
    """Metrics for class targets and ``[N, C]`` class probabilities (AUC one-vs-rest, macro)."""
    y = np.asarray(y).astype(int)
    prob = np.asarray(prob, dtype=np.float64)
    pred = prob.argmax(1)
    labels = np.arange(prob.shape[1])
    try:
        auc = float(skm.roc_auc_score(y, prob, multi_class="ovr", labels=labels))
    except ValueError:  # a class absent from y
        auc = float("nan")
    onehot = np.eye(prob.shape[1])[y]
    return {"auc": auc, "acc": float(skm.accuracy_score(y, pred)),
            "f1_macro": float(skm.f1_score(y, pred, average="macro", zero_division=0)),
            "brier": float(np.mean(((prob - onehot) ** 2).sum(1))), "n": int(len(y))}
