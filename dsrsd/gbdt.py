"""Gradient-boosted trees on flattened features: the strong non-neural reference.

scikit-learn's ``HistGradientBoostingClassifier`` on hand-made features of the same splits the
neural methods see (book/protocols.md: "a strong, honest in-project reference is gradient boosting on
the same cutoff features"). Features per modality:

* ``tabular`` float ``[B, F]``: as is. Token ids ``[B, L]``: id counts (a bag of words).
* ``sequence`` float ``[B, T, F]``: masked mean, last valid step and max over valid steps, plus
  the number of valid steps. Token bags ``[B, T, L]``: id counts over all valid steps, id counts
  of the last valid step, and the number of valid steps.
* ``set``: id counts (token ids) or masked mean and max (floats), plus the set size.
* a knowledge-tracing history (layout ``kt``): target-skill history features
  (:func:`dsrsd.data.kt_features.history_features`: previous response, prior count and correct
  rate, and prior count and correct rate on the target item's skills, all from steps before t).

Per-step tasks (``task.kind == "per_step"``) give one row per *scored* step: position-wise
features at step ``t`` (tabular ``[B, T, ...]``), and for sequences the current step plus the
aggregates over steps ``<= t`` (prefix mean / max / counts) when the modality is causal, or over
the whole sequence when it is not; a set is the same for every step. A ``step`` column holds
``t``.

Id counts use at most ``max_vocab`` columns: ids ``>= 1`` go to bucket ``(id - 1) % max_vocab``
(exact counts when ``vocab - 1 <= max_vocab``; hashed beyond). A missing modality (``present``
False) has NaN in all its columns, which the trees route by learned missing-value branches.

Early stopping uses the *validation split* (``X_val``/``y_val`` of ``fit``, scikit-learn >= 1.7;
older versions fall back to an internal 10% of the training rows).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from dsrsd.base import DirectFit
from dsrsd.data.batch import ModalitySpec, MultimodalData, TaskSpec, flat_targets
from dsrsd.data.kt_features import HISTORY_FEATURES, history_features
from dsrsd.errors import DsrsdError


def _counts(ids: Tensor, buckets: int) -> Tensor:
    """``[..., L]`` token ids (0 = padding) -> ``[..., buckets]`` float counts."""
    valid = ids > 0
    idx = torch.where(valid, (ids - 1) % buckets, torch.zeros_like(ids))
    out = torch.zeros((*ids.shape[:-1], buckets), dtype=torch.float32)
    return out.scatter_add_(-1, idx, valid.float())


def _masked_stats(x: Tensor, valid: Tensor, dim: int, prefix: bool) -> list[Tensor]:
    """Mean and max of ``x`` over valid positions along ``dim`` (prefix = cumulative)."""
    w = valid.unsqueeze(-1).float()
    neg = torch.where(valid.unsqueeze(-1), x, torch.full_like(x, -torch.inf))
    if prefix:
        n = w.cumsum(dim)
        mean = (x * w).cumsum(dim) / n.clamp_min(1)
        mx = torch.cummax(neg, dim).values
    else:
        n = w.sum(dim)
        mean = (x * w).sum(dim) / n.clamp_min(1)
        mx = neg.max(dim).values
    mean = torch.where(n > 0, mean, torch.full_like(mean, torch.nan))
    mx = torch.where(torch.isinf(mx), torch.full_like(mx, torch.nan), mx)
    return [mean, mx]


def _last_valid(x: Tensor, valid: Tensor) -> Tensor:
    """``x`` at the last valid position of dim 1 (``x`` is ``[B, T, ...]``)."""
    last = (valid.long().sum(1) - 1).clamp_min(0)
    out = x[torch.arange(x.shape[0]), last]
    empty = ~valid.any(1)
    if bool(empty.any()):
        out = out.clone()
        out[empty] = torch.nan
    return out


class ModalityFeatures:
    """Feature blocks of one modality: ``[B, k]`` per sample or ``[B, T, k]`` per step."""

    def __init__(self, spec: ModalitySpec, per_step: bool, max_vocab: int):
        self.spec, self.per_step = spec, per_step
        self.buckets = min(max(spec.vocab - 1, 1), max_vocab)

    def __call__(self, x: Tensor, pad: Tensor | None) -> tuple[Tensor, list[str]]:
        s, n = self.spec, self.spec.name
        tok = s.vocab > 0
        if s.layout == "kt":  # per-step by construction (validated with the data)
            return history_features(x, s.n_skills), [f"{n}:{c}" for c in HISTORY_FEATURES]
        if s.kind == "tabular":
            f = _counts(x, self.buckets) if tok else x.float()
            return f, [f"{n}:{'count' if tok else 'x'}{i}" for i in range(f.shape[-1])]
        valid = pad.bool() if pad is not None else torch.ones(x.shape[:2], dtype=torch.bool)
        length = valid.float().sum(1, keepdim=True)
        if s.kind == "set":
            if tok:
                f = _counts(torch.where(valid, x, torch.zeros_like(x)), self.buckets)
                names = [f"{n}:count{i}" for i in range(self.buckets)]
            else:
                f = torch.cat(_masked_stats(x.float(), valid, 1, prefix=False), -1)
                names = [f"{n}:{k}{i}" for k in ("mean", "max") for i in range(x.shape[-1])]
            return torch.cat([f, length], -1), names + [f"{n}:size"]
        # sequence [B, T, F] or token bags [B, T, L]
        steps = _counts(x, self.buckets) if tok else x.float()
        steps = torch.where(valid.unsqueeze(-1), steps, torch.zeros_like(steps))
        k = steps.shape[-1]
        causal = self.per_step and s.causal
        if tok:
            cnt = steps.cumsum(1) if causal else steps.sum(1)
            aggs, agg_names = [cnt], ["count"]
        else:
            aggs, agg_names = _masked_stats(steps, valid, 1, prefix=causal), ["mean", "max"]
        if self.per_step:
            t = x.shape[1]
            cur = torch.where(valid.unsqueeze(-1), steps, torch.full_like(steps, torch.nan))
            aggs = [a if causal else a.unsqueeze(1).expand(-1, t, -1) for a in aggs]
            nlen = valid.float().cumsum(1).unsqueeze(-1) if causal else \
                length.unsqueeze(1).expand(-1, t, -1)
            f = torch.cat([cur, *aggs, nlen], -1)
            names = [f"{n}:{a}{i}" for a in ("step", *agg_names) for i in range(k)]
        else:
            f = torch.cat([*aggs, _last_valid(steps, valid), length], -1)
            names = [f"{n}:{a}{i}" for a in (*agg_names, "last") for i in range(k)]
        return f, names + [f"{n}:len"]


def flatten_features(data: MultimodalData, max_vocab: int = 512,
                     chunk: int = 512) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Feature matrix ``X`` (float32, NaN = missing), targets ``y`` and column names."""
    per_step = data.task.kind == "per_step"
    makers = [ModalityFeatures(s, per_step, max_vocab) for s in data.specs]
    xs, ys, names = [], [], []
    for batch in data.batches(chunk):
        blocks, names = [], []
        for m, (s, make) in enumerate(zip(data.specs, makers, strict=True)):
            f, nm = make(batch.x[s.name], batch.pad.get(s.name))
            missing = ~batch.present[:, m]
            if per_step and f.dim() == 2:  # per-sample features, repeated at every step
                f = f.unsqueeze(1).expand(-1, batch.y_mask.shape[1], -1)
            f = f.clone()
            f[missing] = torch.nan
            blocks.append(f)
            names += nm
        if per_step:
            t = batch.y_mask.shape[1]
            step = torch.arange(t, dtype=torch.float32).expand(len(batch), t).unsqueeze(-1)
            blocks.append(step)
            names.append("step")
        xs.append(torch.cat(blocks, -1)[batch.y_mask] if per_step else torch.cat(blocks, -1))
        ys.append(flat_targets(batch))
    x = torch.cat(xs).numpy().astype(np.float32)
    y = torch.cat(ys).numpy()
    return x, (y.astype(np.int64) if data.task.kind != "multiclass" else y), names


class GBDT(DirectFit):
    """Gradient boosting's settings and, once fitted (:func:`dsrsd.fitting.fit_gbdt`), its
    ``HistGradientBoostingClassifier``; it predicts, it does not fit itself.

    It has no torch parameters (the trainer reports 0); ``n_trees`` after fitting says how big it
    is. Args are the classifier's, plus ``max_vocab`` for token-count features.
    """

    def __init__(self, specs: list[ModalitySpec], task: TaskSpec, max_iter: int = 500,
                 learning_rate: float = 0.1, max_leaf_nodes: int = 31, min_samples_leaf: int = 20,
                 l2_regularization: float = 0.0, n_iter_no_change: int = 10, max_vocab: int = 512,
                 seed: int = 0):
        if max_iter < 1 or max_vocab < 1 or n_iter_no_change < 1:
            raise DsrsdError("gbdt: max_iter, max_vocab and n_iter_no_change must be >= 1")
        self.specs, self.task, self.max_vocab = list(specs), task, max_vocab
        self.params = dict(learning_rate=learning_rate, max_iter=max_iter,
                           max_leaf_nodes=max_leaf_nodes, min_samples_leaf=min_samples_leaf,
                           l2_regularization=l2_regularization, n_iter_no_change=n_iter_no_change,
                           early_stopping=True, scoring="loss", random_state=seed)
        self.clf = None
        self.feature_names: list[str] = []

    @property
    def n_trees(self) -> int:
        return 0 if self.clf is None else int(self.clf.n_iter_)

    def predict_proba(self, data: MultimodalData) -> tuple[np.ndarray, np.ndarray]:
        if self.clf is None:
            raise DsrsdError("gbdt: predict before fit")
        x, y, _ = flatten_features(data, self.max_vocab)
        p = self.clf.predict_proba(x)
        if data.task.kind != "multiclass":
            return y, p[:, 1]
        full = np.zeros((len(p), data.task.n_classes))
        full[:, self.clf.classes_] = p  # classes absent from training get probability 0
        return y, full


__all__ = ["GBDT", "flatten_features"]
