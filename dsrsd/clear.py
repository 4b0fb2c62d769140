"""CLEAR: null-space projection for cross-modal de-redundancy (arXiv 2603.01536), as a plug-in.

The abstract [V-abs] states the idea: model the cross-modal covariance between two modalities'
representations, find its dominant shared directions by SVD, and project the features onto the
complementary null space; plug-and-play, no auxiliary loss. The operator is our reconstruction
(book/papers.md section 3.3, [R]); here it wraps a fusion base of this package (``early``, ``late``,
``late_logit`` or ``dsrsd``) without changing its architecture or losses:

1. rows where both modalities ``a``, ``b`` of ``pair`` are present; centre: ``A - mu_a``,
   ``B - mu_b``; cross-covariance ``C = (A - mu_a)^T (B - mu_b) / (n - 1)``;
2. SVD ``C = U S W^T``; top-``k`` left / right singular vectors ``U_k``, ``W_k``;
3. projectors ``P_a = I - lam U_k U_k^T`` and ``P_b = I - lam W_k W_k^T`` (``lam`` = strength;
   ``lam = 1`` is the exact orthogonal projection onto the complement, idempotent);
4. features are replaced by ``mu + (x - mu) P`` (mean-preserving): the centred part loses its
   components along the shared directions, so the projected cross-covariance is
   ``P_a C P_b = U diag(s_1 (1 - lam)^2, ..., s_k (1 - lam)^2, s_{k+1}, ...) W^T`` (both sides
   are shrunk by ``1 - lam``; at ``lam = 1`` the top-``k`` values are 0 and the rest unchanged).

Modes:

* ``static`` (book/papers.md variant A): computed once, at construction, on the *input* features of
  the training split. A tabular vector is used as is; a sequence (or per-step tabular) is pooled
  by its masked mean over steps to estimate ``C``, and the feature-space projector is then
  applied to every step (projection is linear, so pooled features are projected alike). Padded
  steps stay zero. Needs float inputs (token ids cannot be projected: use ``dynamic``).
* ``dynamic`` (variant B): on the learned encoder outputs ``h_a``, ``h_b``. Recomputed at the
  start of every epoch (trainer hook ``on_epoch_start``) under ``torch.no_grad()`` over the whole
  training split with the encoders in eval mode; applied to ``h_a``, ``h_b`` before the base's
  fusion. Before the first refresh the projectors are the identity.

``P``, ``mu`` and the raw spectrum ``singular_values`` are buffers (saved, moved with the model,
never trained): no gradient flows through the SVD, while gradients reaching the projected
features lose their components along ``U_k`` (the "implicit regulation of learning dynamics").
A missing modality's (zeroed) encoding stays zero after projection.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dsrsd.base import FusionModel, masked_mean
from dsrsd.baselines import EarlyFusion, LateFusion, LateLogitFusion
from dsrsd.data.batch import Batch, ModalitySpec, MultimodalData, TaskSpec
from dsrsd.errors import DsrsdError
from dsrsd.model import DSRSDNet

MODES = ("static", "dynamic")


def cross_covariance(a: Tensor, b: Tensor) -> Tensor:
    """``(A - mu_a)^T (B - mu_b) / (n - 1)`` in float64."""
    a, b = a.double(), b.double()
    a = a - a.mean(0)
    b = b - b.mean(0)
    return a.T @ b / max(a.shape[0] - 1, 1)


def null_space_projectors(c: Tensor, k: int, lam: float) -> tuple[Tensor, Tensor, Tensor]:
    """``P_a = I - lam U_k U_k^T``, ``P_b = I - lam W_k W_k^T`` and the singular values of ``c``."""
    u, s, vh = torch.linalg.svd(c.double(), full_matrices=False)
    uk, wk = u[:, :k], vh[:k].T
    pa = torch.eye(c.shape[0], dtype=c.dtype, device=c.device) - lam * uk @ uk.T
    pb = torch.eye(c.shape[1], dtype=c.dtype, device=c.device) - lam * wk @ wk.T
    return pa, pb, s


class _Moments:
    """Streaming sums for a cross-covariance over many batches (float64)."""

    def __init__(self, da: int, db: int, device: torch.device):
        self.n = 0
        self.sa = torch.zeros(da, dtype=torch.float64, device=device)
        self.sb = torch.zeros(db, dtype=torch.float64, device=device)
        self.sab = torch.zeros(da, db, dtype=torch.float64, device=device)

    def add(self, a: Tensor, b: Tensor) -> None:
        a, b = a.double(), b.double()
        self.n += a.shape[0]
        self.sa += a.sum(0)
        self.sb += b.sum(0)
        self.sab += a.T @ b

    def result(self) -> tuple[Tensor, Tensor, Tensor]:
        if self.n < 2:
            raise DsrsdError("clear: fewer than 2 training rows have both modalities of the pair")
        mu_a, mu_b = self.sa / self.n, self.sb / self.n
        c = (self.sab - self.n * torch.outer(mu_a, mu_b)) / (self.n - 1)
        return c, mu_a, mu_b


def _pooled(x: Tensor, pad: Tensor | None) -> Tensor:
    """Input features per sample: as is (``[N, F]``) or masked mean over steps (``[N, T, F]``)."""
    if x.dim() == 2:
        return x
    return masked_mean(x, pad if pad is not None else
                       torch.ones(x.shape[:2], dtype=torch.bool, device=x.device))


class ClearMixin:
    """Adds CLEAR's projection to a :class:`~dsrsd.base.FusionModel` subclass (via ``encode``).

    Args: ``pair`` (two modality names; default the first two), ``rank`` (``k`` of the paper;
    method_params ``k``), ``lam`` (strength, in ``[0, 1]``), ``mode`` (``static`` | ``dynamic``),
    ``train`` (the training split; required by ``static``). The remaining arguments go to the base
    (so DSRSD-Net's own ``k``, its stream size, stays available).
    """

    def __init__(self, specs: list[ModalitySpec], task: TaskSpec, *, pair=None, rank: int = 4,
                 lam: float = 1.0, mode: str = "dynamic", train: MultimodalData | None = None,
                 **kw):
        super().__init__(specs, task, **kw)
        names = [s.name for s in specs]
        if len(specs) < 2:
            raise DsrsdError(f"clear needs at least 2 modalities, got {len(specs)}")
        pair = list(pair) if pair is not None else names[:2]
        if len(pair) != 2 or pair[0] == pair[1] or any(p not in names for p in pair):
            raise DsrsdError(f"clear: pair must be two different modalities of {names}, "
                             f"got {pair}")
        if mode not in MODES:
            raise DsrsdError(f"clear: unknown mode {mode!r} (expected static or dynamic)")
        if not 0.0 <= lam <= 1.0:
            raise DsrsdError(f"clear: lam must be in [0, 1], got {lam}")
        self.pair = tuple(pair)
        self.pair_idx = (names.index(pair[0]), names.index(pair[1]))
        self.clear_mode, self.rank, self.lam = mode, int(rank), float(lam)
        if mode == "static":
            sa, sb = (specs[i] for i in self.pair_idx)
            if sa.vocab or sb.vocab:
                raise DsrsdError("clear mode='static' projects float input features; "
                                 f"{pair} has token ids (use mode='dynamic')")
            da, db = sa.dim, sb.dim
        else:
            da = db = self.d
        if not 1 <= self.rank <= min(da, db):
            raise DsrsdError(f"clear: k must be in [1, {min(da, db)}], got {rank}")
        self.register_buffer("P_a", torch.eye(da))
        self.register_buffer("P_b", torch.eye(db))
        self.register_buffer("mu_a", torch.zeros(da))
        self.register_buffer("mu_b", torch.zeros(db))
        self.register_buffer("singular_values", torch.zeros(min(da, db)))
        self.register_buffer("n_refresh", torch.zeros((), dtype=torch.long))
        if mode == "static":
            if train is None:
                raise DsrsdError("clear mode='static' needs the training split")
            self.fit_static(train)

    # ------------------------------------------------------------------ statistics
    def _set(self, c: Tensor, mu_a: Tensor, mu_b: Tensor) -> None:
        pa, pb, s = null_space_projectors(c, self.rank, self.lam)
        self.P_a.copy_(pa.float())
        self.P_b.copy_(pb.float())
        self.mu_a.copy_(mu_a.float())
        self.mu_b.copy_(mu_b.float())
        self.singular_values.copy_(s.float())
        self.n_refresh += 1

    def _pair_rows(self, present: Tensor) -> Tensor:
        ia, ib = self.pair_idx
        return present[:, ia] & present[:, ib]

    @torch.no_grad()
    def static_features(self, data: MultimodalData) -> tuple[Tensor, Tensor]:
        """Pooled input features of the pair on rows where both are present."""
        a_name, b_name = self.pair
        both = self._pair_rows(data.present)
        a = _pooled(data.x[a_name], data.pad.get(a_name))[both]
        b = _pooled(data.x[b_name], data.pad.get(b_name))[both]
        return a.float(), b.float()

    @torch.no_grad()
    def fit_static(self, train: MultimodalData) -> None:
        a, b = self.static_features(train)
        m = _Moments(a.shape[1], b.shape[1], torch.device("cpu"))
        m.add(a, b)
        self._set(*m.result())

    @torch.no_grad()
    def encoder_features(self, data: MultimodalData, device: torch.device | None = None,
                         batch_size: int = 1024, project: bool = False) -> tuple[Tensor, Tensor]:
        """``h_a``, ``h_b`` over ``data`` (eval mode; rows with both present), projected or raw."""
        device = device or self.P_a.device
        was = self.training
        self.eval()
        a_list, b_list = [], []
        ia, ib = self.pair_idx
        for batch in data.batches(batch_size):
            batch = batch.to(device)
            hs, present = FusionModel.encode(self, self._project_inputs(batch))
            both = self._pair_rows(present)
            ha, hb = hs[ia], hs[ib]
            if project and self.clear_mode == "dynamic":
                ha, hb = self._project(ha, self.P_a, self.mu_a), self._project(hb, self.P_b, self.mu_b)
            a_list.append(ha[both].float())
            b_list.append(hb[both].float())
        self.train(was)
        return torch.cat(a_list), torch.cat(b_list)

    @torch.no_grad()
    def refresh(self, train: MultimodalData, device: torch.device | None = None,
                batch_size: int = 1024) -> None:
        """Dynamic mode: recompute ``P``, ``mu`` from the current encoders on ``train``."""
        device = device or self.P_a.device
        was = self.training
        self.eval()
        m = _Moments(self.d, self.d, device)
        ia, ib = self.pair_idx
        for batch in train.batches(batch_size):
            batch = batch.to(device)
            hs, present = FusionModel.encode(self, batch)
            both = self._pair_rows(present)
            m.add(hs[ia][both].float(), hs[ib][both].float())
        self.train(was)
        self._set(*m.result())

    def on_epoch_start(self, epoch: int, train: MultimodalData, device: torch.device) -> None:
        if self.clear_mode == "dynamic":
            self.refresh(train, device)

    # ------------------------------------------------------------------ projection
    @staticmethod
    def _project(x: Tensor, p: Tensor, mu: Tensor) -> Tensor:
        mu = mu.to(x.dtype)
        return mu + (x - mu) @ p.to(x.dtype)

    def _project_inputs(self, batch: Batch) -> Batch:
        if self.clear_mode != "static":
            return batch
        x = dict(batch.x)
        for name, p, mu in ((self.pair[0], self.P_a, self.mu_a), (self.pair[1], self.P_b, self.mu_b)):
            t = self._project(x[name], p, mu)
            pad = batch.pad.get(name)
            if pad is not None and t.dim() == 3:
                t = torch.where(pad.unsqueeze(-1), t, x[name])  # padded steps stay as they were
            x[name] = t
        return Batch(x, batch.pad, batch.present, batch.y, batch.y_mask)

    def encode(self, batch: Batch) -> tuple[list[Tensor], Tensor]:
        hs, present = super().encode(self._project_inputs(batch))
        if self.clear_mode == "dynamic":
            hs = list(hs)
            for i, p, mu in ((self.pair_idx[0], self.P_a, self.mu_a),
                             (self.pair_idx[1], self.P_b, self.mu_b)):
                # Re-zero missing rows: the mean-preserving projection would move them off zero.
                hs[i] = self._project(hs[i], p, mu) * present[:, i:i + 1].to(hs[i].dtype)
        return hs, present


class ClearEarly(ClearMixin, EarlyFusion):
    """CLEAR + early fusion."""


class ClearLate(ClearMixin, LateFusion):
    """CLEAR + representation-level late fusion."""


class ClearLateLogit(ClearMixin, LateLogitFusion):
    """CLEAR + decision-level late fusion."""


class ClearDSRSD(ClearMixin, DSRSDNet):
    """CLEAR + DSRSD-Net (its losses unchanged)."""


BASES = {"early": ClearEarly, "late": ClearLate, "late_logit": ClearLateLogit, "dsrsd": ClearDSRSD}

__all__ = ["BASES", "ClearMixin", "cross_covariance", "null_space_projectors"]
