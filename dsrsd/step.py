"""The one train step, optimiser and autocast of every gradient-trained method.

Used by the trainer (:mod:`dsrsd.train`), COrAL's self-supervised pre-training
(:mod:`dsrsd.fitting`), the cost benchmark (``benchmarks/methods_cost.py``) and the tests, so a
step measured or tested is the step that trains.

A step is: under :func:`autocast`, a *loss function* ``(model, batch) -> (loss, logged)``
(:func:`supervised_loss`: forward, task loss, ``cfg.weights`` on the method's ``aux`` terms;
or a method's own objective, e.g. COrAL's pre-training loss); then ``zero_grad``, backward,
gradient clipping and the optimiser step. An optional *observer*
(:class:`dsrsd.observe.EpochObserver`) sees each forward pass and the gradients around the
backward, without changing what is trained.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from dsrsd.base import FusionModel
from dsrsd.data.batch import Batch, MultimodalData, flat_targets
from dsrsd.losses import task_loss, total_objective

LossFn = Callable[[nn.Module, Batch], tuple[Tensor, dict[str, Tensor]]]


class StepObserver(Protocol):
    """What the train step tells an observer (:class:`dsrsd.observe.EpochObserver`)."""

    def forward(self, output, batch: Batch, terms: dict[str, Tensor]) -> None: ...
    def before_backward(self, model: nn.Module) -> None: ...
    def after_backward(self, model: nn.Module) -> None: ...


def autocast(device: torch.device, amp: bool = True):
    """bf16 autocast on CUDA when ``amp``; off on CPU (slower than fp32 for these models)."""
    enabled = amp and device.type == "cuda"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weights of rank >= 2 only (not on biases, norms' scales, vectors)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    """AdamW with ``cfg.lr`` and :func:`param_groups` (``cfg.weight_decay``)."""
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)


Adjust = Callable[[Tensor, Tensor, dict[str, Tensor], Batch], Tensor]


def supervised_loss(weights: dict[str, float], epoch: int = 0,
                    warmup: dict[str, int] | None = None, adjust: Adjust | None = None,
                    observer: StepObserver | None = None) -> LossFn:
    """The generic objective: task loss + ``weights`` x (warmed-up) ``Output.aux`` terms.

    ``adjust(loss, task, logged, batch)``, when given, returns the loss to differentiate from
    the total and the (differentiable) task term, and may update ``logged`` in place: the
    trainer's data-parallel weighting of the task loss. ``observer`` sees every forward pass
    and the unweighted terms.
    """

    def loss_fn(model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        net = model.module if isinstance(model, DistributedDataParallel) else model
        if isinstance(net, FusionModel):  # which terms count (a warm-up never makes one 0)
            net.set_term_weights(weights)
        o = model(batch)
        terms = {"task": task_loss(o.logits, flat_targets(batch)), **o.aux}
        loss, logged = total_objective(terms, weights, epoch, warmup)
        if adjust is not None:
            loss = adjust(loss, terms["task"], logged, batch)
        if observer is not None:
            observer.forward(o, batch, terms)
        return loss, logged

    return loss_fn


def train_step(model: nn.Module, batch: Batch, opt: torch.optim.Optimizer, loss_fn: LossFn,
               device: torch.device, amp: bool = True, grad_clip: float = 0.0,
               observer: StepObserver | None = None) -> dict[str, Tensor]:
    """One optimisation step of ``model`` on ``batch``; returns the logged (detached) terms.
    The loss and the logged terms are scaled by ``batch.weight`` (1 but for length-bucketed
    batches, where it keeps each scored step's weight in the epoch what plain batches give it).

    ``observer`` (the one ``loss_fn`` reports to) is called just before and after the
    backward, i.e. before clipping."""
    with autocast(device, amp):
        loss, logged = loss_fn(model, batch)
    if batch.weight != 1.0:  # length-bucketed batches (MultimodalData.batches)
        loss = loss * batch.weight
        logged = {k: v * batch.weight for k, v in logged.items()}
    opt.zero_grad(set_to_none=True)
    if observer is not None:
        observer.before_backward(model)
    loss.backward()
    if observer is not None:
        observer.after_backward(model)
    if grad_clip:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return logged


def train_epoch(model: nn.Module, data: MultimodalData, opt: torch.optim.Optimizer,
                loss_fn: LossFn, cfg, epoch: int, device: torch.device, rank: int = 0,
                world: int = 1, min_rows: int = 1, observer: StepObserver | None = None
                ) -> Iterator[dict[str, Tensor]]:
    """One epoch of :func:`train_step` over ``data`` (shuffled, seeded by ``(cfg.seed, epoch)``,
    this rank's share of every global batch); yields each step's logged terms. Batches with
    fewer than ``min_rows`` rows are skipped. ``cfg.length_buckets > 0``: length-bucketed,
    trimmed batches (:meth:`~dsrsd.data.batch.MultimodalData.batches`). ``observer``: see
    :func:`train_step`."""
    model.train()
    g = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
    buckets = cfg.length_buckets
    for batch in data.batches(cfg.batch_size, shuffle=True, generator=g, rank=rank, world=world,
                              buckets=buckets, trim=buckets > 0):
        if len(batch) < min_rows:
            continue
        batch = batch.to(device, non_blocking=True)
        yield train_step(model, batch, opt, loss_fn, device, cfg.amp, cfg.grad_clip, observer)


__all__ = ["Adjust", "LossFn", "StepObserver", "autocast", "make_optimizer", "param_groups", "supervised_loss",
           "train_epoch", "train_step"]
