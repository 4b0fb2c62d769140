"""One batch format for every dataset: named modalities, per-sample presence masks, a target.

Every data source (synthetic, OULAD, ASSISTments) produces a :class:`MultimodalData` split; every
model consumes :class:`Batch`. Nothing else crosses the data -> model boundary.

Shapes (B = batch, T = steps, L = set/bag length, F = float features):

* ``tabular``  : float ``[B, F]``, or ``[B, T, F]`` in per-step tasks (encoded position-wise);
                 with ``vocab > 0``: long token ids ``[B, L]`` / ``[B, T, L]`` (0 = padding), summed.
* ``sequence`` : float ``[B, T, F]`` or long ``[B, T, L]`` token bags (``vocab > 0``), with a bool
                 padding mask ``pad[name]`` ``[B, T]`` (True = real step).
* ``set``      : long ``[B, L]`` (``vocab > 0``) or float ``[B, L, F]``, order-free, ``pad`` ``[B, L]``.
* ``sequence`` with ``layout="kt"`` (knowledge-tracing interactions, per-step tasks only): long
  ``[B, T, K + 2]``; at step t the skills of interaction t (``[..., :K]``, 1-based, 0 = padding),
  its problem id + 1 (``[..., K]``, 0 = padding) and its response r_t (``[..., K + 1]``, 0/1).
  r_t is the target of step t: a model may read it only for predictions after t
  (:func:`kt_columns` splits the columns).

``present`` is bool ``[B, M]`` in ``specs`` order: False means the modality is missing for that
sample, whatever its tensor holds. Targets: ``binary`` float ``[B]``; ``multiclass`` long ``[B]``;
``per_step`` float ``[B, T]`` with ``y_mask`` bool ``[B, T]`` marking the scored steps.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from dsrsd.errors import DsrsdError

ModalityKind = Literal["tabular", "sequence", "set"]
LAYOUTS = ("", "kt")
TaskKind = Literal["binary", "multiclass", "per_step"]


@dataclass(frozen=True)
class ModalitySpec:
    """What a modality looks like, enough to build its encoder."""

    name: str
    kind: ModalityKind
    dim: int  # float feature size per element; for token inputs the embedding size to use
    vocab: int = 0  # > 0: inputs are token ids in [0, vocab), 0 is padding
    causal: bool = False  # sequence in a per-step task: step t may only see steps <= t
    # "kt": knowledge-tracing interactions (module docstring); vocab = 2 * skills + 1 (the
    # (skill, response) tokens), items = problems + 1 (0 = padding)
    layout: str = ""
    items: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("tabular", "sequence", "set"):
            raise DsrsdError(f"modality {self.name!r}: unknown kind {self.kind!r} "
                             "(expected tabular, sequence or set)")
        if self.dim <= 0:
            raise DsrsdError(f"modality {self.name!r}: dim must be positive, got {self.dim}")
        if self.vocab < 0:
            raise DsrsdError(f"modality {self.name!r}: vocab must be >= 0, got {self.vocab}")
        if self.layout not in LAYOUTS:
            raise DsrsdError(f"modality {self.name!r}: unknown layout {self.layout!r} "
                             "(expected '' or 'kt')")
        if self.layout == "kt" and (self.kind != "sequence" or self.vocab < 3
                                    or self.vocab % 2 == 0 or self.items < 2):
            raise DsrsdError(f"modality {self.name!r}: layout 'kt' needs kind 'sequence', an odd "
                             f"vocab >= 3 and items >= 2, got {self.kind!r}, {self.vocab}, "
                             f"{self.items}")

    @property
    def n_skills(self) -> int:
        """Skills of a ``kt`` layout (ids 1..n_skills); 0 otherwise."""
        return (self.vocab - 1) // 2 if self.layout == "kt" else 0


@dataclass(frozen=True)
class TaskSpec:
    """The prediction target: binary, multi-class (``n_classes``) or per-step binary."""

    kind: TaskKind
    n_classes: int = 2

    def __post_init__(self) -> None:
        if self.kind not in ("binary", "multiclass", "per_step"):
            raise DsrsdError(f"unknown task kind {self.kind!r} (binary, multiclass, per_step)")
        if self.kind == "multiclass" and self.n_classes < 2:
            raise DsrsdError(f"multiclass task needs n_classes >= 2, got {self.n_classes}")

    @property
    def out_dim(self) -> int:
        return self.n_classes if self.kind == "multiclass" else 1


@dataclass
class Batch:
    """A mini-batch in the one format every model reads."""

    x: dict[str, Tensor]
    pad: dict[str, Tensor]
    present: Tensor
    y: Tensor
    y_mask: Tensor | None = None
    # The batch's weight in an epoch's objective (the train step scales its loss by it): 1, or
    # for length-bucketed batches its share of scored steps (MultimodalData.batches).
    weight: float = 1.0

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        def mv(t: Tensor) -> Tensor:
            return t.to(device, non_blocking=non_blocking)

        return Batch(
            x={k: mv(v) for k, v in self.x.items()},
            pad={k: mv(v) for k, v in self.pad.items()},
            present=mv(self.present),
            y=mv(self.y),
            y_mask=None if self.y_mask is None else mv(self.y_mask),
            weight=self.weight,
        )

    def __len__(self) -> int:
        return int(self.present.shape[0])


@dataclass
class MultimodalData:
    """An in-memory split: whole tensors, batched by index (no per-item collate).

    ``extras`` carries anything a dataset wants to keep aligned with samples (e.g. ground-truth
    factors of the synthetic data, student ids); it is indexed with the samples by :meth:`subset`.
    """

    specs: list[ModalitySpec]
    task: TaskSpec
    x: dict[str, Tensor]
    pad: dict[str, Tensor]
    present: Tensor
    y: Tensor
    y_mask: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)
    name: str = "data"

    def __post_init__(self) -> None:
        validate(self)

    def __len__(self) -> int:
        return int(self.present.shape[0])

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    def batch(self, idx: Tensor, trim: bool = False) -> Batch:
        """Rows ``idx`` (a long tensor) as a :class:`Batch`.

        ``trim`` (per-step tasks; ignored otherwise): cut the step axis after the last valid step
        of these rows (:meth:`step_lengths`), so a batch of short windows is not padded to the
        full window length. Only steps no row scores or holds are dropped, so causal models give
        the same predictions at every scored step, in the same order.
        """
        if trim and self.task.kind == "per_step" and len(idx):
            return self._trimmed(idx, max(int(self.step_lengths(idx).max()), 1))
        return Batch(
            x={k: v[idx] for k, v in self.x.items()},
            pad={k: v[idx] for k, v in self.pad.items()},
            present=self.present[idx],
            y=self.y[idx],
            y_mask=None if self.y_mask is None else self.y_mask[idx],
        )

    def timed(self) -> list[str]:
        """Modalities whose tensors carry the step axis of a per-step task (axis 1, as long as
        ``y``): sequences, and tabular features given per step (``[N, T, ...]``)."""
        if self.task.kind != "per_step":
            return []
        steps = self.y.shape[1]
        return [s.name for s in self.specs
                if (s.kind == "sequence" or (s.kind == "tabular" and self.x[s.name].dim() >= 3))
                and self.x[s.name].shape[1] == steps]

    def step_lengths(self, idx: Tensor | None = None) -> Tensor:
        """Per-step tasks: each window's valid length ``[N]`` (or rows ``idx``): one past its
        last scored step or last real step of a timed sequence; 0 for an empty window."""
        if self.task.kind != "per_step":
            raise DsrsdError(f"dataset {self.name!r}: step lengths need a per_step task, "
                             f"got {self.task.kind!r}")
        rows = slice(None) if idx is None else idx
        valid = self.y_mask[rows].clone()
        for name in self.timed():
            if name in self.pad:
                valid |= self.pad[name][rows]
        # position + 1 where valid, 0 elsewhere: the row maximum is one past the last valid step
        last = valid.long() * torch.arange(1, valid.shape[1] + 1)
        return last.amax(1) if valid.shape[1] else last.sum(1)

    def _trimmed(self, idx: Tensor, steps: int) -> Batch:
        # Index rows and steps in one go: the copy holds only the kept steps (and is contiguous).
        timed = set(self.timed())
        return Batch(
            x={k: v[idx, :steps] if k in timed else v[idx] for k, v in self.x.items()},
            pad={k: v[idx, :steps] if k in timed else v[idx] for k, v in self.pad.items()},
            present=self.present[idx],
            y=self.y[idx, :steps],
            y_mask=self.y_mask[idx, :steps],
        )

    def subset(self, idx: Tensor, name: str | None = None) -> MultimodalData:
        """A new split holding rows ``idx`` (extras included)."""
        b = self.batch(idx)
        return MultimodalData(self.specs, self.task, b.x, b.pad, b.present, b.y, b.y_mask,
                              {k: v[idx] for k, v in self.extras.items()}, name or self.name)

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
                rank: int = 0, world: int = 1, drop_last: bool = False, buckets: int = 0,
                trim: bool = False) -> Iterator[Batch]:
        """Iterate mini-batches; with ``world > 1`` each rank gets its slice of every global batch.

        ``batch_size`` is the *global* batch size, so data-parallel runs see exactly the samples a
        single process would, split across ranks.

        ``buckets = B > 0`` (per-step tasks, with ``shuffle``): length-bucketed batches. The
        seeded permutation is cut into chunks of ``B * batch_size`` windows, each chunk is sorted
        by :meth:`step_lengths` (stable) and cut into batches, and the order of all batches is
        shuffled with the same ``generator``; every window still comes once per epoch. ``0``
        keeps the plain order. A bucketed batch's ``weight`` is its global batch's scored steps
        over their mean per batch: a batch of short windows holds few scored steps, and
        weighting keeps every scored step's weight in the epoch's objective what it is in plain
        batches (unweighted, bucketing lowered DKT's test AUC on ASSISTments by about 0.01).
        ``trim``: see :meth:`batch`.
        """
        if batch_size <= 0:
            raise DsrsdError(f"batch_size must be positive, got {batch_size}")
        if buckets < 0:
            raise DsrsdError(f"buckets must be >= 0, got {buckets}")
        if buckets and self.task.kind != "per_step":
            raise DsrsdError(f"length_buckets={buckets}: length-bucketed batches need a per_step "
                             f"task, dataset {self.name!r} is {self.task.kind!r} (use 0)")
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        if buckets and shuffle:
            groups, weights = self._bucketed(order, batch_size, buckets, generator, drop_last)
        else:
            stop = n - n % batch_size if drop_last else n
            groups = [order[start:start + batch_size] for start in range(0, stop, batch_size)]
            weights = [1.0] * len(groups)
        for idx, weight in zip(groups, weights, strict=True):
            if world > 1:
                idx = idx[rank::world]
            if len(idx):
                batch = self.batch(idx, trim)
                batch.weight = weight
                yield batch

    def _bucketed(self, order: Tensor, batch_size: int, buckets: int,
                  generator: torch.Generator | None, drop_last: bool
                  ) -> tuple[list[Tensor], list[float]]:
        """Global batches of ``order``, sorted by length within chunks of ``buckets``
        batches, in a shuffled order, and their weights (see :meth:`batches`)."""
        lengths = self.step_lengths()
        chunk = buckets * batch_size
        groups = []
        for start in range(0, len(order), chunk):
            part = order[start:start + chunk]
            part = part[torch.sort(lengths[part], stable=True).indices]
            groups += list(part.split(batch_size))
        if drop_last and groups and len(groups[-1]) < batch_size:
            groups.pop()  # only the last chunk's longest batch can be short
        groups = [groups[i] for i in torch.randperm(len(groups), generator=generator).tolist()]
        scored = [float(self.y_mask[idx].sum()) for idx in groups]
        mean = sum(scored) / max(len(scored), 1)
        return groups, [k / mean if mean else 1.0 for k in scored]


def validate(d: MultimodalData) -> None:
    """Check a split against the format; raise :class:`DsrsdError` naming what is wrong."""
    where = f"dataset {d.name!r}"
    if len(d.specs) < 1:
        raise DsrsdError(f"{where}: zero modalities")
    names = [s.name for s in d.specs]
    if len(set(names)) != len(names):
        raise DsrsdError(f"{where}: duplicate modality names {names}")
    n = d.y.shape[0]
    if d.present.dtype != torch.bool or tuple(d.present.shape) != (n, len(d.specs)):
        raise DsrsdError(f"{where}: present must be bool [{n}, {len(d.specs)}], "
                         f"got {d.present.dtype} {tuple(d.present.shape)}")
    for s in d.specs:
        if s.name not in d.x:
            raise DsrsdError(f"{where}: modality {s.name!r} has no tensor")
        t = d.x[s.name]
        if t.shape[0] != n:
            raise DsrsdError(f"{where}: modality {s.name!r} has {t.shape[0]} rows, labels have {n}")
        if s.layout == "kt":
            if d.task.kind != "per_step":
                raise DsrsdError(f"{where}: modality {s.name!r} (layout kt) needs a per_step task")
            _validate_kt(where, s, t)
        elif s.vocab > 0:
            if t.dtype != torch.long:
                raise DsrsdError(f"{where}: modality {s.name!r} has vocab={s.vocab} so needs long "
                                 f"token ids, got {t.dtype}")
            if t.numel() and (int(t.min()) < 0 or int(t.max()) >= s.vocab):
                raise DsrsdError(f"{where}: modality {s.name!r} token ids outside [0, {s.vocab})")
        else:
            if not t.is_floating_point():
                raise DsrsdError(f"{where}: modality {s.name!r} needs float features, got {t.dtype}")
            if t.shape[-1] != s.dim:
                raise DsrsdError(f"{where}: modality {s.name!r} has feature size {t.shape[-1]}, "
                                 f"spec says dim={s.dim}")
        if s.kind in ("sequence", "set"):
            p = d.pad.get(s.name)
            if p is None or p.dtype != torch.bool or tuple(p.shape) != tuple(t.shape[:2]):
                raise DsrsdError(f"{where}: modality {s.name!r} needs a bool padding mask "
                                 f"of shape {tuple(t.shape[:2])}")
    if d.task.kind == "per_step":
        if d.y.dim() != 2 or d.y_mask is None or d.y_mask.shape != d.y.shape:
            raise DsrsdError(f"{where}: per_step task needs y [N, T] and a bool y_mask of the "
                             "same shape")
    elif d.task.kind == "multiclass":
        if d.y.dtype != torch.long or d.y.dim() != 1:
            raise DsrsdError(f"{where}: multiclass labels must be long [N]")
        if n and (int(d.y.min()) < 0 or int(d.y.max()) >= d.task.n_classes):
            raise DsrsdError(f"{where}: labels outside [0, {d.task.n_classes})")
    else:
        if d.y.dim() != 1 or not d.y.is_floating_point():
            raise DsrsdError(f"{where}: binary labels must be float [N] of 0/1")


def kt_columns(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """A ``kt`` layout tensor ``[..., K + 2]`` -> skills ``[..., K]``, problem + 1 and response."""
    return x[..., :-2], x[..., -2], x[..., -1]


def _validate_kt(where: str, s: ModalitySpec, t: Tensor) -> None:
    name = f"{where}: modality {s.name!r} (layout kt)"
    if t.dtype != torch.long or t.dim() != 3 or t.shape[-1] < 3:
        raise DsrsdError(f"{name} needs long [N, T, skills + 2], got {t.dtype} {tuple(t.shape)}")
    if not t.numel():
        return
    skills, problem, resp = kt_columns(t)
    for what, v, hi in (("skill ids", skills, s.n_skills + 1), ("problem ids", problem, s.items),
                        ("responses", resp, 2)):
        if int(v.min()) < 0 or int(v.max()) >= hi:
            raise DsrsdError(f"{name}: {what} outside [0, {hi})")


@dataclass
class Splits:
    """train / val / test splits of one dataset, plus a description for records."""

    train: MultimodalData
    val: MultimodalData
    test: MultimodalData
    info: dict = field(default_factory=dict)


def flat_targets(batch: Batch | MultimodalData) -> Tensor:
    """The targets a model's logits line up with: ``y`` or, per-step, ``y[y_mask]`` (of a batch,
    or of a whole split in its row order)."""
    if batch.y_mask is not None:
        return batch.y[batch.y_mask]
    return batch.y
