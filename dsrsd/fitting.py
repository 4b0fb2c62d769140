"""Fitting routines of the direct-fit methods (:class:`dsrsd.base.DirectFit`).

A direct-fit method holds what was fitted and predicts; the routine that fits it lives here, in
the training layer, registered in :data:`FITTERS` under the method's class. The trainer
(:func:`dsrsd.train.fit`) calls :func:`fit_direct`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import numpy as np
import torch

from dsrsd.base import DirectFit
from dsrsd.coral import COrALProbe
from dsrsd.data.batch import MultimodalData, Splits
from dsrsd.errors import DsrsdError
from dsrsd.gbdt import GBDT, flatten_features
from dsrsd.step import make_optimizer, train_epoch


def fit_gbdt(model: GBDT, splits: Splits, cfg, device: torch.device) -> None:
    """``HistGradientBoostingClassifier`` on the flattened features; early stopping on the
    validation split (scikit-learn >= 1.7; older: an internal 10% of the training rows)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    x, y, model.feature_names = flatten_features(splits.train, model.max_vocab)
    xv, yv, _ = flatten_features(splits.val, model.max_vocab)
    clf = HistGradientBoostingClassifier(**model.params)
    if "X_val" in inspect.signature(clf.fit).parameters:
        clf.fit(x, y, X_val=xv, y_val=yv)
    else:  # scikit-learn < 1.7: internal validation fraction of the training rows
        clf.fit(x, y)
    model.clf = clf


def pretrain_coral(model: COrALProbe, train: MultimodalData, cfg, device: torch.device) -> None:
    """Self-supervised pre-training: ``cfg.epochs`` epochs of the one train step on the COrAL
    loss (:meth:`~dsrsd.coral.COrAL.ssl_loss`), AdamW as the trainer's, no early stopping;
    batches of fewer than 2 rows are skipped (the contrastive terms need 2)."""
    net = model.net
    opt = make_optimizer(net, cfg)
    loss_fn = type(net).ssl_loss
    for epoch in range(cfg.epochs):
        sums: dict[str, float] = {}
        steps = 0
        for logged in train_epoch(net, train, opt, loss_fn, cfg, epoch, device, min_rows=2):
            for k, v in logged.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            steps += 1
        model.history.append({"epoch": epoch, **{k: v / max(steps, 1) for k, v in sums.items()}})


def _balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    from sklearn.metrics import balanced_accuracy_score
    return float(balanced_accuracy_score(y, pred))


def fit_linear_probe(model: COrALProbe, splits: Splits, device: torch.device) -> None:
    """Logistic regression on the frozen, standardised representation: cost ``C`` chosen on
    validation balanced accuracy over ``1e-6 .. 1e6``, then ``probe_fine`` log-spaced values
    within two decades of the best; the final probe is fit on train + val."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    xt, yt = model.embed(splits.train, device)
    xv, yv = model.embed(splits.val, device)
    scaler = StandardScaler().fit(xt)
    xts, xvs = scaler.transform(xt), scaler.transform(xv)

    def score(c: float) -> float:
        clf = LogisticRegression(C=c, max_iter=1000)
        clf.fit(xts, yt)
        return _balanced_accuracy(yv, clf.predict(xvs))

    coarse = np.logspace(-6, 6, 13)
    scores = [score(c) for c in coarse]
    best = float(coarse[int(np.argmax(scores))])
    if model.probe_fine > 0:
        fine = np.logspace(np.log10(best) - 2, np.log10(best) + 2, model.probe_fine)
        fscores = [score(c) for c in fine]
        if max(fscores) >= max(scores):
            best = float(fine[int(np.argmax(fscores))])
    model.probe_C = best
    xall, yall = np.concatenate([xt, xv]), np.concatenate([yt, yv])
    model.scaler = StandardScaler().fit(xall)
    model.probe = LogisticRegression(C=best, max_iter=1000).fit(model.scaler.transform(xall), yall)


def fit_coral_probe(model: COrALProbe, splits: Splits, cfg, device: torch.device) -> None:
    """COrAL's protocol: :func:`pretrain_coral`, then :func:`fit_linear_probe`."""
    model.amp = cfg.amp
    pretrain_coral(model, splits.train, cfg, device)
    fit_linear_probe(model, splits, device)


FITTERS: dict[type, Callable[[DirectFit, Splits, object, torch.device], None]] = {
    GBDT: fit_gbdt,
    COrALProbe: fit_coral_probe,
}


def fit_direct(model: DirectFit, splits: Splits, cfg, device: torch.device) -> None:
    """Fit ``model`` with the routine registered for its class (or a base class)."""
    for cls in type(model).__mro__:
        if cls in FITTERS:
            return FITTERS[cls](model, splits, cfg, device)
    raise DsrsdError(f"no fitting routine for {type(model).__name__} (add it to "
                     "dsrsd.fitting.FITTERS)")


__all__ = ["FITTERS", "fit_coral_probe", "fit_direct", "fit_gbdt", "fit_linear_probe",
           "pretrain_coral"]
