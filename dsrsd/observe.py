"""Per-epoch training diagnostics for every record: train AUC, fusion weights, gradient norms.

:class:`EpochObserver` watches one epoch of the one train step (:mod:`dsrsd.step`) and adds to
the epoch's ``history`` row (issue 12, item 4):

* ``train_auc``: the validation metric's AUC (:mod:`dsrsd.metrics`) of the predictions the
  training forward passes already made (train mode, so with dropout; per-step tasks: the
  scored steps). No extra pass.
* ``alpha`` (modality -> mean weight) and ``gate`` (mean ``g``), for a model reporting them in
  ``Output.info`` (DSRSD-Net): averaged over the epoch's training rows, each modality over the
  rows where it was present (after modality dropout).
* ``grad_norm``: term -> L2 norm, over the model's parameters, of the gradient of that term as
  weighted in the objective (task; each auxiliary term times its warmed-up weight, 0 for a
  term outside the objective), and ``total``: the norm of the whole gradient before clipping
  (what clipping sees). Measured on **the first batch of every epoch only**: one extra
  backward per term (``torch.autograd.grad(..., retain_graph=True)``) before the normal one,
  which neither draws random numbers nor touches ``.grad``, so training is bit-identical.

Under ``torchrun`` every rank observes its own rows; predictions and weights are gathered and
per-term gradients averaged over ranks (as data parallelism averages them), so the row holds
the values one process would log.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from dsrsd.data.batch import Batch, flat_targets
from dsrsd.metrics import binary_metrics, multiclass_metrics

Gather = Callable[[Tensor], Tensor]

# History keys that are not loss terms: the epoch, the objective, metrics and diagnostics.
NOT_LOSS_TERMS = ("epoch", "total", "val_auc", "train_auc", "alpha", "gate", "grad_norm",
                  "weights", "weighted")


def loss_terms(row: dict) -> list[str]:
    """The (unweighted) loss terms of a ``history`` row, in its order (what a plot of the loss
    terms shows; ``row["weighted"]`` holds them times their weights)."""
    return [k for k in row if k not in NOT_LOSS_TERMS]


class EpochObserver:
    """Diagnostics of one training epoch (see the module docstring).

    Args:
        names: the modalities, in batch order (the columns of ``alpha``).
        kind: the task kind (``multiclass`` uses the one-vs-rest AUC, as validation does).
        weights: each auxiliary term's weight in this epoch's objective
            (:func:`dsrsd.losses.effective_weights`).
        gather: under ``torchrun``, a function concatenating a tensor's rows from every rank
            (:func:`dsrsd.train.gather_rows`); ``None`` in one process.
        task_scale: under ``torchrun``, the batch's multiplier of the task term in the loss
            each rank differentiates (the trainer's data-parallel weighting).
    """

    def __init__(self, names: list[str], kind: str, weights: dict[str, float],
                 gather: Gather | None = None,
                 task_scale: Callable[[Batch], Tensor] | None = None):
        self.names, self.kind, self.weights = list(names), kind, dict(weights)
        self.gather, self.task_scale = gather, task_scale
        self.logits: list[Tensor] = []
        self.targets: list[Tensor] = []
        self.fusion: dict[str, list[Tensor]] = {"alpha": [], "present": [], "gate": []}
        self.grad_norm: dict[str, float] = {}
        self.steps = 0
        self._terms: dict[str, Tensor] = {}
        self._batch: Batch | None = None

    # ------------------------------------------------------------------ per step
    def forward(self, output, batch: Batch, terms: dict[str, Tensor]) -> None:
        """Record a training forward pass (``terms``: unweighted, with ``"task"``)."""
        self.logits.append(output.logits.detach())
        self.targets.append(flat_targets(batch))
        info = output.info
        if "alpha" in info and "present" in info:
            self.fusion["alpha"].append(info["alpha"].detach().float())
            self.fusion["present"].append(info["present"])
            self.fusion["gate"].append(info["gate"].detach().float())
        self._terms = terms if self.steps == 0 else {}
        self._batch = batch if self.steps == 0 else None

    def before_backward(self, model: nn.Module) -> None:
        """On the epoch's first step: the gradient norm of each weighted term."""
        if self.steps == 0 and self._terms:
            params = [p for p in model.parameters() if p.requires_grad]
            for name, value in self._terms.items():
                w = self.weights.get(name, 0.0) if name != "task" else (
                    1.0 if self.task_scale is None else self.task_scale(self._batch))
                self.grad_norm[name] = self._norm(params, value, w)
        self._terms, self._batch = {}, None

    def after_backward(self, model: nn.Module) -> None:
        """On the epoch's first step: the norm of the whole gradient, as clipping sees it."""
        if self.steps == 0 and self.grad_norm:
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            self.grad_norm["total"] = float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
        self.steps += 1

    def _norm(self, params: list[Tensor], value: Tensor, weight: float | Tensor) -> float:
        grads = [None] * len(params)
        if value.requires_grad and (torch.is_tensor(weight) or weight != 0):
            grads = torch.autograd.grad(weight * value, params, retain_graph=True,
                                        allow_unused=True)
        elif self.gather is None:
            return 0.0  # outside the objective, or a constant: no gradient
        flat = torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                          for p, g in zip(params, grads, strict=True)])
        if self.gather is not None:  # data parallelism averages every rank's gradient
            dist.all_reduce(flat)
            flat = flat / dist.get_world_size()
        return float(torch.linalg.vector_norm(flat))

    # ------------------------------------------------------------------ per epoch
    def summary(self) -> dict:
        """The epoch's ``train_auc``, ``grad_norm`` and, when reported, ``alpha`` and ``gate``."""
        g = self.gather or (lambda t: t)
        out: dict = {"train_auc": float("nan"), "grad_norm": dict(self.grad_norm)}
        if self.logits:
            logits = g(torch.cat(self.logits)).float()
            y = g(torch.cat(self.targets)).cpu().numpy()
            if self.kind == "multiclass":
                out["train_auc"] = multiclass_metrics(y, torch.softmax(logits, -1).cpu().numpy())["auc"]
            else:
                out["train_auc"] = binary_metrics(y, torch.sigmoid(logits).cpu().numpy())["auc"]
        if self.fusion["alpha"]:
            alpha, present, gate = (g(torch.cat(self.fusion[k])) for k in ("alpha", "present", "gate"))
            pres = present.to(alpha.dtype)
            means = ((alpha * pres).sum(0) / pres.sum(0).clamp_min(1)).cpu().numpy()
            out["alpha"] = {n: float(a) for n, a in zip(self.names, means, strict=True)}
            out["gate"] = float(gate.double().mean())
        return out
