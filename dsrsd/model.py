"""DSRSD-Net: Dual-Stream Residual Semantic Decorrelation Network (arXiv 2512.07568).

What the abstract states [V-abs]: a dual-stream module that separates private (intra-modal) and
shared (inter-modal) factors *via residual projection*; a *residual semantic alignment head*
mapping shared factors into a common space with contrastive + regression-style objectives; a
decorrelation loss on the shared-space covariance and an orthogonality loss between shared and
private streams. The TL;DR adds *gated fusion* and a task-specific predictor [TLDR].

Everything concrete below is our reconstruction [R] (book/papers.md section 1.3):

* ``s_m = P_s(A_m h_m)``: one shared projector for all modalities, after a per-modality adapter.
* ``p_m = P_p^m(h_m - W_m s_m)``: the private stream reads the *residual* that the shared
  component's back-projection leaves in ``h_m``.
* ``z_m = s_m + A(s_m)``: the alignment head is residual, so its identity path keeps ``s_m``.
* Gated fusion: per-modality weights ``alpha_m`` (softmax over *present* modalities, readable),
  a shared consensus ``s_bar = sum_m alpha_m z_m``, a private summary over present modalities,
  and a feature gate ``g`` mixing the two: ``f = g * s_bar + (1 - g) * p_bar``.
* Losses (``dsrsd.losses``): InfoNCE + cosine (or MSE) between modality pairs of ``z``; VICReg
  variance + covariance on each modality's ``z``; MISA orthogonality between ``z_m`` and
  ``p_m``; reconstruction of each float modality's input summary from ``s_m + p_m``.
  The regularisers act on ``z``, the shared stream *in the common space*: with them on ``s``
  the task gradient kept private factors in ``s`` (measured in chapter 2's probes).

Options beyond the book's configuration (issue 12; all [R], defaults unchanged):

* ``orthogonality="xcorr"``: the shared-private cross-correlation with its finite-sample floor
  removed (:func:`dsrsd.losses.orthogonality_xcorr`), cross-fitted over windows in per-step
  tasks, so its expectation is 0 for independent streams at any batch size and row grouping
  (the Frobenius form is about ``N / k^2`` there). ``"cos2_window"``: per-sample ``cos^2``
  averaged per window, then over windows.
* ``contrastive="masked"``: InfoNCE without false negatives: rows of the same window (per-step
  tasks) and rows whose input to either modality of the pair is identical (same item) are not
  negatives. ``"pooled"``: InfoNCE between per-window means.
* ``task_reads="streams"``: the fusion reads the streams ``s_m`` (and ``p_m``), while the
  alignment and decorrelation shape the projection ``z_m = s_m + A(s_m)``, as a SimCLR
  projection head.
* ``fusion="blocks"``: no 64-d bottleneck: the head reads ``[s_bar; w_1 p_1; ...; w_M p_M]``
  with block weights ``w_m = M alpha_m`` (1 for every present modality under uniform ``alpha``),
  so early fusion on the private streams is a special case and ``alpha`` stays a distribution
  over present modalities.
* ``modality_task_weight > 0``: a task head per modality on ``[z_m; p_m]`` (against one
  modality dominating), returned pre-weighted as the term ``modality_task``.
* ``recon_rows="aux"``: the reconstruction uses the same bounded row sample as the other
  auxiliary terms (per-step tasks otherwise decode every scored step).
* ``stream_layers=1, score_hidden=16`` (issue 13): lean streams, each one Linear instead of a
  two-layer MLP, and a narrower fusion scorer; the full-budget real-data runs use them (chosen for
  cost, validated on validation data, measured on test as the ablation ``dsrsd-lean``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from itertools import combinations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dsrsd import losses
from dsrsd.base import FusionModel, Output, aux_row_sample
from dsrsd.data.batch import Batch, ModalitySpec, TaskSpec, flat_targets
from dsrsd.encoders import mlp
from dsrsd.errors import DsrsdError

FUSIONS = ("gate", "mean", "concat", "blocks")
ORTHOGONALITY = ("frobenius", "cos2", "xcorr", "cos2_window")
CONTRASTIVE = ("clip", "masked", "pooled")
TASK_READS = ("aligned", "streams")
RECON_ROWS = ("all", "aux")
# The auxiliary terms DSRSD-Net returns, and those that read the aligned stream z.
AUX_TERMS = frozenset({"align_con", "align_reg", "decor", "orth", "recon", "modality_task"})
Z_TERMS = frozenset({"align_con", "align_reg", "decor", "orth"})
_HASH_SEED = 20251208


def input_keys(x: Tensor) -> Tensor:
    """An int64 hash of each row of ``x`` (``[N, ...]``): equal rows, equal keys.

    Exact (it hashes the bits, not the values), position-free (a row's key does not depend on
    the other rows), and computed the same on every rank, so keys can be gathered. Used to
    find rows with the same input (the same item) among InfoNCE negatives.
    """
    flat = x.reshape(x.shape[0], -1)
    if flat.is_floating_point():
        flat = flat.float().contiguous().view(torch.int32)
    flat = flat.long()
    g = torch.Generator().manual_seed(_HASH_SEED)
    coef = torch.randint(1, 2**62, (flat.shape[1],), generator=g).to(flat.device)
    # int64 arithmetic wraps: a hash modulo 2**64, the same in any summation order, so the
    # CPU's integer matrix-vector product (one pass, ~10x faster than the product tensor and
    # its sum) gives the same bits; CUDA has no int64 matmul.
    if flat.device.type == "cpu":
        return torch.mv(flat, coef)
    return (flat * coef).sum(1)


def _rows(mask: Tensor) -> tuple[int, Callable[[Tensor], Tensor]]:
    """How many rows ``mask`` keeps, and a selector; all rows kept (the common case) skips the
    copy that boolean indexing makes, and its backward scatter."""
    n = int(mask.sum())
    if n == mask.shape[0]:
        return n, lambda t: t
    return n, lambda t: t[mask]


class DSRSDNet(FusionModel):
    """DSRSD-Net for any number ``M >= 2`` of modalities.

    Args (beyond :class:`~dsrsd.base.FusionModel`):
        k: size of the shared and private streams.
        fusion: ``gate`` (default), ``mean`` (uniform weights) or ``concat`` (ablation).
        temperature: InfoNCE temperature.
        regression: ``mse`` or ``cosine`` for the regression-style alignment.
        decorrelation: ``vicreg`` (variance + covariance) or ``barlow`` (Barlow Twins).
        orthogonality: ``frobenius`` (MISA, the default), ``cos2`` (per-sample), ``xcorr``
            (cross-correlation with the finite-sample floor removed, ~0 for independent streams
            at any batch size and row grouping) or ``cos2_window`` (per-sample ``cos^2``
            averaged per window). All forms are [R]; the abstract [V-abs] only says that the
            loss "enforces orthogonality between shared and private streams".
        max_aux_rows: rows used by the alignment/decorrelation terms (subsampled beyond it, so
            per-step tasks with many scored steps stay cheap).
        contrastive: ``clip`` (default: symmetric InfoNCE over all rows), ``masked`` (rows of
            the same window, or with the same input in either modality of the pair, are not
            negatives) or ``pooled`` (InfoNCE between per-window means). [V-abs] "contrastive";
            the forms are [R].
        task_reads: ``aligned`` (default: the fusion reads ``z_m``) or ``streams`` (it reads
            ``s_m``, and the alignment and decorrelation shape only the projection ``z_m``). [R].
        modality_task_weight: weight of per-modality auxiliary task heads on ``[z_m; p_m]``
            (term ``modality_task``, returned already weighted; 0 = not built). [R].
        recon_rows: ``all`` (default: reconstruction over every row) or ``aux`` (over the same
            bounded sample as the other auxiliary terms). [R].
        residual: ``True`` (default): the private stream reads ``h_m - W_m s_m``; ``False``
            (ablation "no residual"): it reads ``h_m``, and only the losses separate the streams.
        align_head: ``True`` (default): ``z_m = s_m + A(s_m)``; ``False`` (ablation "no
            alignment head"): ``z_m = s_m``, the alignment terms act on the shared stream itself.
        skip_unweighted: auxiliary terms the objective weighs 0 (:meth:`set_term_weights`)
            are not computed, nor ``z`` when no computed term reads it (``task_reads="streams"``);
            the auxiliary row sample is still drawn, so the random stream, the trained weights
            and the test numbers are those of the default, bit for bit; only the unweighted
            terms are missing from the logged losses (hence off by default). Speed only.
        batched_streams: compute the per-modality projections (adapters, back-projections,
            private MLPs, fusion scores) as batched matmuls over stacked weights, the adapter
            composed into the shared projector's first Linear, and the shared projector and
            alignment head once over all modalities' rows. Same model and parameters
            (checkpoints interchange), same values up to float rounding (not bit-identical, so
            off by default).
        batched_aux: the auxiliary terms with every modality pair (and modality) in one call on
            stacked rows and masks of the present rows (:meth:`_aux_batched`, the batched forms
            in :mod:`dsrsd.losses`), no per-pair copies; with ``task_reads="streams"`` and
            ``batched_streams``, ``z`` is computed only on the sampled auxiliary rows. Same
            values up to float rounding (tests/test_speed_options.py); contrastive ``clip`` or
            ``masked``, decorrelation ``vicreg``. Speed only. With ``max_aux_rows=256,
            recon_rows="aux"`` and ``batched_streams`` (``dsrsd_fast`` in
            ``benchmarks/methods_cost.py``) the CPU step measured 1.33x early fusion at the
            OULAD shape and 1.45x at the ASSISTments shape (against 1.57x and 2.55x for the same
            options on the reference paths with 1024 rows); at the ASSISTments shape the stream
            layers themselves (about 7 ``k x d`` products per modality on each of ~2,260 scored
            steps) cost about as much as the 1.25x target allows.
        stream_layers: 2 (default): the shared projector and each private stream are two-layer
            MLPs (Linear -> GELU -> LayerNorm -> Linear); 1: one Linear each (the "lean"
            streams; with ``batched_streams`` the adapter and the shared Linear compose into one
            ``d -> k`` product per modality). [R], chosen for cost (issue 13).
        score_hidden: width of each modality's fusion scorer (default ``k``). [R].
    """

    def __init__(self, specs: list[ModalitySpec], task: TaskSpec, d: int = 128, k: int = 64,
                 seq_encoder: str = "gru", dropout: float = 0.1, modality_dropout: float = 0.0,
                 fusion: str = "gate", temperature: float = 0.1, regression: str = "cosine",
                 decorrelation: str = "vicreg", orthogonality: str = "frobenius",
                 max_aux_rows: int = 1024, contrastive: str = "clip", task_reads: str = "aligned",
                 modality_task_weight: float = 0.0, recon_rows: str = "all",
                 batched_streams: bool = False, batched_aux: bool = False,
                 residual: bool = True, align_head: bool = True, skip_unweighted: bool = False,
                 stream_layers: int = 2, score_hidden: int | None = None):
        super().__init__(specs, task, d, seq_encoder, dropout, modality_dropout)
        if len(specs) < 2:
            raise DsrsdError(f"DSRSD-Net needs at least 2 modalities, got {len(specs)}")
        for name, value, allowed in [("fusion", fusion, FUSIONS),
                                     ("regression", regression, ("mse", "cosine")),
                                     ("decorrelation", decorrelation, ("vicreg", "barlow")),
                                     ("orthogonality", orthogonality, ORTHOGONALITY),
                                     ("contrastive", contrastive, CONTRASTIVE),
                                     ("task_reads", task_reads, TASK_READS),
                                     ("recon_rows", recon_rows, RECON_ROWS)]:
            if value not in allowed:
                raise DsrsdError(f"unknown {name} {value!r} (expected one of {', '.join(allowed)})")
        if k <= 0:
            raise DsrsdError(f"stream size k must be positive, got {k}")
        if not modality_task_weight >= 0:
            raise DsrsdError(f"modality_task_weight must be >= 0, got {modality_task_weight}")
        if batched_aux and (contrastive == "pooled" or decorrelation == "barlow"):
            raise DsrsdError("batched_aux supports contrastive clip|masked and decorrelation "
                             f"vicreg, got contrastive={contrastive!r}, decorrelation={decorrelation!r}")
        if max_aux_rows < 2:
            raise DsrsdError(f"max_aux_rows must be >= 2, got {max_aux_rows}")
        if stream_layers not in (1, 2):
            raise DsrsdError(f"stream_layers must be 1 or 2, got {stream_layers}")
        score_hidden = k if score_hidden is None else score_hidden
        if score_hidden <= 0:
            raise DsrsdError(f"score_hidden must be positive, got {score_hidden}")
        m = len(specs)
        self.k, self.fusion, self.temperature = k, fusion, temperature
        self.regression, self.decorrelation_form = regression, decorrelation
        self.orthogonality_form, self.max_aux_rows = orthogonality, max_aux_rows
        self.contrastive, self.task_reads = contrastive, task_reads
        self.modality_task_weight, self.recon_rows = float(modality_task_weight), recon_rows
        self.batched_streams, self.batched_aux = bool(batched_streams), bool(batched_aux)
        self.residual, self.align_head = bool(residual), bool(align_head)
        self.skip_unweighted = bool(skip_unweighted)
        self.stream_layers = stream_layers
        self.term_weights: dict[str, float] | None = None  # set_term_weights

        self.adapters = nn.ModuleList(nn.Linear(d, d) for _ in range(m))

        def stream() -> nn.Module:  # d -> k: the MLP, or one Linear (stream_layers=1)
            return mlp(d, d, k) if stream_layers == 2 else nn.Linear(d, k)

        self.shared = stream()
        # The ablations build no layer they do not use (DDP rejects parameters without grads).
        if self.residual:
            self.back = nn.ModuleList(nn.Linear(k, d, bias=False) for _ in range(m))
        self.private = nn.ModuleList(stream() for _ in range(m))
        if self.align_head:
            self.align = mlp(k, k, k)
        if fusion == "concat":
            self.concat = nn.Linear(2 * m * k, k)
        else:
            self.score = nn.ModuleList(nn.Sequential(nn.Linear(2 * k, score_hidden), nn.Tanh(),
                                                     nn.Linear(score_hidden, 1))
                                       for _ in range(m))
            if fusion != "blocks":
                self.private_mix = nn.Linear(m * k, k)
                self.gate = nn.Linear(2 * k, k)
        self.head = self.make_head((m + 1) * k if fusion == "blocks" else k)
        # Reconstruction targets: a float summary of each modality's input (skipped for token
        # inputs and causal per-step histories, whose "input" at step t is not a fixed vector).
        self.recon_dims = {s.name: s.dim for s in specs
                           if s.vocab == 0 and not (self.per_step and s.kind == "sequence")}
        self.decoders = nn.ModuleDict({n: nn.Linear(k, dim) for n, dim in self.recon_dims.items()})
        if self.modality_task_weight > 0:  # built last: the default model's init is unchanged
            self.modality_heads = nn.ModuleList(self.make_head(2 * k) for _ in range(m))

    # ------------------------------------------------------------------ streams
    def streams(self, batch: Batch, aligned: bool = True,
                need_z: bool = True) -> dict[str, Tensor | list[Tensor]]:
        """Shared ``s``, private ``p`` and aligned ``z`` per modality, plus ``present``
        (``aligned=False``, batched path: ``z`` is None, computed later on the rows that need it;
        ``need_z=False``: ``z`` is None, not computed at all)."""
        hs, present = self.encode(batch)
        if self.batched_streams:
            # The stacked [M, N, k] tensors are what the fusion and the losses read; the lists
            # are views of them for callers that index modalities (unused views cost nothing,
            # whereas unbinding and re-stacking would copy every row twice, forward and back).
            s, p = self._streams_batched(hs)
            z = self._aligned_stacked(s) if aligned and need_z else None
            return {"h": hs, "s": list(s.unbind(0)), "p": list(p.unbind(0)),
                    "z": None if z is None else list(z.unbind(0)), "present": present,
                    "stacked": {"s": s, "p": p, "z": z}}
        s = [self.shared(a(h)) for a, h in zip(self.adapters, hs, strict=False)]
        if self.residual:
            p = [f(h - b(sm)) for f, b, h, sm in zip(self.private, self.back, hs, s, strict=False)]
        else:
            p = [f(h) for f, h in zip(self.private, hs, strict=False)]
        if not need_z:
            z = None
        else:
            z = [sm + self.align(sm) for sm in s] if self.align_head else list(s)
        return {"h": hs, "s": s, "p": p, "z": z, "present": present}

    def aligned(self, s: list[Tensor]) -> list[Tensor]:
        """``z_m = s_m + A(s_m)``, the alignment head run once over every modality's rows
        (``z_m = s_m`` without the head)."""
        if not self.align_head:
            return list(s)
        return list(self._aligned_stacked(torch.stack(s)).unbind(0))

    def _aligned_stacked(self, s: Tensor) -> Tensor:
        """:meth:`aligned` on stacked ``[M, N, k]`` streams."""
        if not self.align_head:
            return s
        return s + self.align(s.flatten(0, 1)).view_as(s)

    @staticmethod
    def _stacked(layers, x: Tensor) -> Tensor:
        """``[M, N, d_in] -> [M, N, d_out]``: modality ``m``'s rows through ``layers[m]`` (Linear),
        one batched matmul over the stacked weights."""
        w = torch.stack([lin.weight for lin in layers]).transpose(1, 2)
        if layers[0].bias is None:
            return torch.bmm(x, w)
        return torch.baddbmm(torch.stack([lin.bias for lin in layers]).unsqueeze(1), x, w)

    def _streams_batched(self, hs: list[Tensor]) -> tuple[Tensor, Tensor]:
        """``s`` and ``p`` of :meth:`streams`, stacked ``[M, N, k]``, with stacked per-modality
        weights (``batched_streams=True``)."""
        m, n = len(hs), hs[0].shape[0]
        h = torch.stack(hs)
        lean = self.stream_layers == 1  # each stream one Linear: no MLP tail to run
        # The adapter and the shared projector's first Linear compose into one Linear per
        # modality (no nonlinearity between them): one d x d product per step, not per row.
        first = self.shared if lean else self.shared[0]
        w = first.weight @ torch.stack([a.weight for a in self.adapters])
        b = torch.stack([a.bias for a in self.adapters]) @ first.weight.T + first.bias
        s = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
        if not lean:
            s = self.shared[1:](s.reshape(m * n, -1)).reshape(m, n, -1)
        r = h - self._stacked(self.back, s) if self.residual else h
        if lean:
            return s, self._stacked(self.private, r)
        # The private MLPs (Linear -> GELU -> LayerNorm -> Dropout -> Linear), stacked.
        first, norm, drop, last = ([f[i] for f in self.private] for i in (0, 2, 3, 4))
        x = F.gelu(self._stacked(first, r))
        x = F.layer_norm(x, norm[0].normalized_shape, eps=norm[0].eps)
        x = x * torch.stack([ln.weight for ln in norm]).unsqueeze(1) + torch.stack(
            [ln.bias for ln in norm]).unsqueeze(1)
        x = F.dropout(x, drop[0].p, self.training)
        return s, self._stacked(last, x)

    def _scores_batched(self, s: Tensor, p: Tensor) -> Tensor:
        """Fusion scores ``[N, M]`` from stacked ``[M, N, k]`` streams."""
        # The first Linear reads [s; p]: split its weight instead of concatenating the inputs.
        w = torch.stack([sc[0].weight for sc in self.score]).transpose(1, 2)  # [M, 2k, k]
        b = torch.stack([sc[0].bias for sc in self.score]).unsqueeze(1)
        x = torch.tanh(torch.baddbmm(b, s, w[:, :self.k]).baddbmm_(p, w[:, self.k:]))
        return self._stacked([sc[2] for sc in self.score], x).squeeze(-1).T

    def _fuse_stacked(self, s: Tensor, p: Tensor, z: Tensor,
                      present: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`fuse` on stacked ``[M, N, k]`` streams (``batched_streams=True``)."""
        if self.fusion == "concat":
            return self.fuse(list(s.unbind(0)), list(p.unbind(0)), list(z.unbind(0)), present)
        m, n = p.shape[:2]
        pres = present.to(z.dtype)
        n_present = pres.sum(1, keepdim=True)
        if self.fusion == "mean":
            alpha = pres / n_present
        else:
            scores = self._scores_batched(s, p)
            alpha = torch.softmax(scores.float().masked_fill(~present, float("-inf")), 1)
            alpha = alpha.to(z.dtype)
        s_bar = (alpha.T.unsqueeze(-1) * z).sum(0)
        if self.fusion == "blocks":
            w = (alpha * m).T.unsqueeze(-1)  # block weights M * alpha_m, as in fuse
            f = torch.cat([s_bar, (p * w).transpose(0, 1).reshape(n, -1)], 1)
            return f, alpha, torch.ones_like(s_bar)
        p_cat = p.transpose(0, 1).reshape(n, -1)
        if bool(present.all()):
            p_bar = self.private_mix(p_cat)
        else:
            p_cat = (p * pres.T.unsqueeze(-1)).transpose(0, 1).reshape(n, -1)
            p_bar = self.private_mix(p_cat) * (m / n_present)
        g = torch.sigmoid(self.gate(torch.cat([s_bar, p_bar], 1)))
        return g * s_bar + (1 - g) * p_bar, alpha, g

    def fuse(self, s: list[Tensor], p: list[Tensor], z: list[Tensor],
             present: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Fused vector ``f`` plus readable per-modality weights ``alpha`` and gate ``g``."""
        pres = present.to(z[0].dtype)
        n_present = pres.sum(1, keepdim=True)
        if self.fusion == "concat":
            parts = [t * pres[:, i:i + 1] for i in range(len(z)) for t in (z[i], p[i])]
            f = self.concat(torch.cat(parts, 1)) * (len(z) / n_present)
            return f, pres / n_present, torch.ones_like(f)
        if self.fusion == "mean":
            alpha = pres / n_present
        else:
            scores = torch.cat([sc(torch.cat([si, pi], 1))
                                for sc, si, pi in zip(self.score, s, p, strict=False)], 1)
            alpha = torch.softmax(scores.float().masked_fill(~present, float("-inf")), 1)
            alpha = alpha.to(z[0].dtype)
        s_bar = alpha[:, :1] * z[0]  # (not sum(): its 0 + ... start is one more op per step)
        for i in range(1, len(z)):
            s_bar = s_bar + alpha[:, i:i + 1] * z[i]
        if self.fusion == "blocks":
            # Block weights M * alpha_m: 1 for every present modality when alpha is uniform (so
            # the head can read the private streams as early fusion reads the encodings), 0 for
            # missing ones (alpha_m = 0 there).
            w = alpha * len(z)
            f = torch.cat([s_bar, *(p[i] * w[:, i:i + 1] for i in range(len(p)))], 1)
            return f, alpha, torch.ones_like(s_bar)
        # Missing private streams are zero; rescaling by M / n_present keeps the summary's scale.
        # With every modality present both factors are exactly 1: skipped (the same numbers).
        if bool(present.all()):
            p_bar = self.private_mix(torch.cat(p, 1))
        else:
            p_cat = torch.cat([p[i] * pres[:, i:i + 1] for i in range(len(p))], 1)
            p_bar = self.private_mix(p_cat) * (len(p) / n_present)
        g = torch.sigmoid(self.gate(torch.cat([s_bar, p_bar], 1)))
        return g * s_bar + (1 - g) * p_bar, alpha, g

    # ------------------------------------------------------------------ losses
    def aux_losses(self, st: dict, batch: Batch,
                   want: frozenset[str] = AUX_TERMS) -> dict[str, Tensor]:
        """Alignment (contrastive, regression), decorrelation, orthogonality, reconstruction
        (the terms in ``want``)."""
        gather, pick, present, pres, _ = self._aux_rows(st)
        s, p = ([pick(t) for t in st[key]] for key in ("s", "p"))
        z = None if st["z"] is None else [pick(t) for t in st["z"]]
        # Window ids (per-step tasks) and input keys, only for the forms (and terms) that use them.
        con_on, reg_on, dec_on, orth_on = (t in want for t in ("align_con", "align_reg", "decor",
                                                                "orth"))
        need_groups = self.per_step and ((con_on and self.contrastive != "clip") or (
            orth_on and self.orthogonality_form in ("xcorr", "cos2_window")))
        grp = pick(self._row_groups(batch, present.shape[0])) if need_groups else None
        keys = ([None if k is None else pick(k) for k in self._input_keys(batch)]
                if con_on and self.contrastive == "masked" else None)
        zero = s[0].new_zeros(()).float()
        con, reg, dec, orth, n_pairs, n_mod = zero, zero, zero, zero, 0, 0
        reg_fn = losses.regression_mse if self.regression == "mse" else losses.regression_cosine
        form = self.orthogonality_form
        if form in ("frobenius", "cos2"):
            base = losses.orthogonality if form == "frobenius" else losses.orthogonality_cos2
            ortho = lambda x, y, g: base(x, y)  # noqa: E731
        else:
            ortho = (losses.orthogonality_xcorr if form == "xcorr"
                     else losses.orthogonality_cos2_grouped)
        barlow = dec_on and self.decorrelation_form == "barlow"
        for a, b in combinations(range(len(s)), 2) if con_on or reg_on or barlow else ():
            n, sel = _rows(pres[:, a] & pres[:, b])
            if n < 2:
                continue
            za, zb = sel(z[a]), sel(z[b])
            if not con_on:
                pass
            elif self.contrastive == "clip":
                con = con + losses.info_nce(za, zb, self.temperature)
            elif self.contrastive == "pooled":
                con = con + losses.info_nce_pooled(za, zb, self.temperature,
                                                   None if grp is None else sel(grp))
            else:
                ks = [sel(t) for t in (grp, keys[a], keys[b]) if t is not None]
                con = con + losses.info_nce_masked(za, zb, self.temperature, ks)
            if reg_on:
                reg = reg + reg_fn(za, zb)
            if barlow:
                dec = dec + losses.barlow_twins(za, zb)
            n_pairs += 1
        vicreg = dec_on and self.decorrelation_form == "vicreg"
        for m in range(len(s)) if vicreg or orth_on else ():
            n, sel = _rows(pres[:, m])
            if n < 2:
                continue
            zm, pm, gm = sel(z[m]), sel(p[m]), None if grp is None else sel(grp)
            if vicreg:
                dec = dec + losses.decorrelation(zm)
            # Private is kept orthogonal to the shared stream before and after the alignment head:
            # either alone left shared factors readable from p (chapter 2 probes).
            if orth_on:
                orth = orth + 0.5 * (ortho(zm, pm, gm) + ortho(sel(s[m]), pm, gm))
            n_mod += 1
        dec_n = n_pairs if self.decorrelation_form == "barlow" else n_mod
        out = {"align_con": con / max(n_pairs, 1), "align_reg": reg / max(n_pairs, 1),
               "decor": dec / max(dec_n, 1), "orth": orth / max(n_mod, 1)}
        out = {k: v for k, v in out.items() if k in want}
        if self.recon_dims and "recon" in want:
            rec, n_rec = zero, 0
            sub = self.recon_rows == "aux"
            for m, spec in enumerate(self.specs):
                if spec.name not in self.recon_dims:
                    continue
                n, sel = _rows(pres[:, m] if sub else present[:, m])
                if n == 0:
                    continue
                fetch = pick if sub else gather
                target = sel(fetch(self.input_summary(spec, batch)))
                pred = self.decoders[spec.name](sel(fetch(st["s"][m] + st["p"][m])))
                rec = rec + losses.reconstruction(target, pred)
                n_rec += 1
            out["recon"] = rec / max(n_rec, 1)
        return out

    def _aux_rows(self, st: dict) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor],
                                           Tensor, Tensor, Callable[[Tensor], Tensor]]:
        """The rows the auxiliary terms use: ``gather`` (all ranks' rows), ``pick`` (gathered,
        then the bounded row sample), the gathered presence mask, its sampled rows, and
        ``pick_stacked``, ``pick`` along dimension 1 of a stacked ``[M, N, ...]`` tensor."""
        # Under torchrun every auxiliary term is a statistic of the *global* batch (InfoNCE
        # negatives, covariances), so the rows of all ranks are gathered first.
        gather = self.batch_gather or (lambda t: t)
        present: Tensor = gather(st["present"])
        rows = aux_row_sample(present.shape[0], self.max_aux_rows, present.device)

        def pick(t: Tensor) -> Tensor:
            t = gather(t)
            return t if rows is None else t[rows]

        def pick_stacked(t: Tensor) -> Tensor:
            if self.batch_gather is not None:
                return torch.stack([pick(x) for x in t.unbind(0)])
            return t if rows is None else t[:, rows]

        return gather, pick, present, present if rows is None else present[rows], pick_stacked

    def _aux_batched(self, st: dict, batch: Batch,
                     want: frozenset[str] = AUX_TERMS) -> dict[str, Tensor]:
        """:meth:`aux_losses` with every modality pair (and modality) in one call on stacked
        ``[P, n, k]`` rows and masks of the present rows, not copies (``batched_aux=True``);
        ``z`` is computed here, on the sampled rows, when the forward did not need it."""
        gather, pick, present, pres, pick_stacked = self._aux_rows(st)
        pres = pres.T  # [M, n]
        stk = st.get("stacked")
        if stk is not None:
            s, p = pick_stacked(stk["s"]), pick_stacked(stk["p"])
            z = None if stk["z"] is None else pick_stacked(stk["z"])
        else:
            s, p = (torch.stack([pick(t) for t in st[key]]) for key in ("s", "p"))
            z = None if st["z"] is None else torch.stack([pick(t) for t in st["z"]])
        out: dict[str, Tensor] = {}
        if want & Z_TERMS:
            out.update(self._aux_z_terms(st, batch, want, pick, present, pres, s, p, z))
        if self.recon_dims and "recon" in want:
            if self.recon_rows == "aux":
                out["recon"] = self._recon_masked(batch, pick, pres, list((s + p).unbind(0)))
            else:
                sp = [gather(a + b) for a, b in zip(st["s"], st["p"], strict=True)]
                out["recon"] = self._recon_masked(batch, gather, present.T, sp)
        return out

    def _aux_z_terms(self, st: dict, batch: Batch, want: frozenset[str],
                     pick: Callable[[Tensor], Tensor], present: Tensor, pres: Tensor, s: Tensor,
                     p: Tensor, z: Tensor | None) -> dict[str, Tensor]:
        """The alignment, decorrelation and orthogonality terms of :meth:`_aux_batched` (those
        in ``want``) on the sampled rows: ``pres`` ``[M, n]``, ``s``, ``p`` and ``z``
        ``[M, n, k]`` (``z`` None: computed here from ``s``)."""
        if z is None:
            z = self._aligned_stacked(s)
        con_on, orth_on = "align_con" in want, "orth" in want
        need_groups = self.per_step and ((con_on and self.contrastive != "clip") or (
            orth_on and self.orthogonality_form in ("xcorr", "cos2_window")))
        grp = pick(self._row_groups(batch, present.shape[0])) if need_groups else None
        ia, ib = (torch.tensor(i, device=z.device)
                  for i in zip(*combinations(range(len(s)), 2), strict=True))
        pair = pres[ia] & pres[ib]
        ok_pair, ok_mod = pair.sum(1) >= 2, pres.sum(1) >= 2

        def mean(x: Tensor, ok: Tensor) -> Tensor:
            return (x * ok).sum() / ok.sum().clamp_min(1)

        out = {}
        za, zb = z[ia], z[ib]
        if con_on:
            same = None
            if self.contrastive == "masked":  # one comparison per key, shared by the pairs

                def equal(k: Tensor) -> Tensor:
                    return k[:, None] == k[None, :]

                none = pres.new_zeros(pres.shape[1], pres.shape[1])
                eq = torch.stack([none if k is None else equal(pick(k))
                                  for k in self._input_keys(batch)])
                same = eq[ia] | eq[ib] | (none if grp is None else equal(grp))
            out["align_con"] = mean(losses.info_nce_pairs(za, zb, pair, self.temperature, same),
                                    ok_pair)
        if "align_reg" in want:
            reg = ((za.float() - zb.float()).pow(2).sum(-1) if self.regression == "mse"
                   else 1 - F.cosine_similarity(za.float(), zb.float(), dim=-1))
            out["align_reg"] = mean(losses.masked_row_mean(reg, pair), ok_pair)
        if "decor" in want:
            out["decor"] = mean(losses.decorrelation_rows(z, pres), ok_mod)
        if orth_on:
            form = self.orthogonality_form
            if form == "xcorr":  # [z; s] against p: both of the reference's terms in one product
                orth = losses.orthogonality_xcorr_rows(torch.cat([z, s], 2), p, pres, grp)
            else:
                fn = {"frobenius": lambda a, b: losses.orthogonality_rows(a, b, pres),
                      "cos2": lambda a, b: losses.orthogonality_cos2_rows(a, b, pres),
                      "cos2_window": lambda a, b: losses.orthogonality_cos2_rows(a, b, pres,
                                                                                 grp)}[form]
                orth = 0.5 * (fn(z, p) + fn(s, p))
            out["orth"] = mean(orth, ok_mod)
        return out

    def _recon_masked(self, batch: Batch, fetch: Callable[[Tensor], Tensor], pres: Tensor,
                      sp: list[Tensor]) -> Tensor:
        """The reconstruction term of :meth:`aux_losses` on the rows ``pres`` marks, from the
        rows ``fetch`` selects of each input summary and ``sp`` (``s_m + p_m`` on those rows)."""
        total, n_rec = sp[0].new_zeros(()).float(), 0
        for m, spec in enumerate(self.specs):
            if spec.name not in self.recon_dims or not bool(pres[m].any()):
                continue
            target = fetch(self.input_summary(spec, batch)).float()
            pred = self.decoders[spec.name](sp[m]).float()
            err = (pred - target).pow(2).mean(1, keepdim=True)
            total = total + losses.masked_row_mean(err.T, pres[m:m + 1])[0]
            n_rec += 1
        return total / max(n_rec, 1)

    def _row_groups(self, batch: Batch, n: int) -> Tensor:
        """The window (batch row) each output row belongs to, unique across ranks."""
        if self.per_step:
            b, t = batch.y_mask.shape
            grp = torch.arange(b, device=batch.y_mask.device)[:, None].expand(b, t)[batch.y_mask]
        else:
            grp = torch.arange(n, device=batch.present.device)
        if self.batch_gather is not None:
            import torch.distributed as dist
            if dist.is_available() and dist.is_initialized():
                grp = grp + (dist.get_rank() << 32)
        return grp

    def _input_keys(self, batch: Batch) -> list[Tensor | None]:
        """Per modality, a hash of each output row's input (``None`` for causal histories,
        whose input at a step is the whole past, not an item)."""
        out: list[Tensor | None] = []
        for spec in self.specs:
            x = batch.x[spec.name]
            if self.per_step:
                out.append(None if spec.kind == "sequence" else input_keys(x[batch.y_mask]))
                continue
            key = input_keys(x)
            if spec.name in batch.pad:  # padding decides what a sequence or set is
                key = key + 31 * input_keys(batch.pad[spec.name])
            out.append(key)
        return out

    def modality_task(self, st: dict, batch: Batch) -> Tensor:
        """Mean over modalities of the task loss of a head reading ``[z_m; p_m]`` (present rows)."""
        y = flat_targets(batch)
        total, n_mod = st["s"][0].new_zeros(()).float(), 0
        for m, head in enumerate(self.modality_heads):
            n, sel = _rows(st["present"][:, m])
            if n == 0:
                continue
            src = st["s"] if self.task_reads == "streams" else st["z"]
            logits = self.head_logits(head, torch.cat([sel(src[m]), sel(st["p"][m])], 1))
            total = total + losses.task_loss(logits, sel(y))
            n_mod += 1
        return self.modality_task_weight * total / max(n_mod, 1)

    def input_summary(self, spec: ModalitySpec, batch: Batch) -> Tensor:
        """What the reconstruction decodes to: the input itself, or a sequence's masked mean."""
        x = batch.x[spec.name]
        if spec.kind == "tabular":
            return self.flatten_steps(x, batch)
        w = batch.pad[spec.name].unsqueeze(-1).to(x.dtype)
        return (x * w).sum(1) / w.sum(1).clamp_min(1)

    # ------------------------------------------------------------------ forward
    def set_term_weights(self, weights: Mapping[str, float]) -> None:
        """Keep the objective's weights: with ``skip_unweighted`` the terms weighed 0 are skipped."""
        self.term_weights = dict(weights)

    def computed_terms(self) -> frozenset[str]:
        """The auxiliary terms the forward computes: all, but with ``skip_unweighted`` (and
        weights told) only those the objective weighs."""
        if not self.skip_unweighted or self.term_weights is None:
            return AUX_TERMS
        return frozenset(t for t in AUX_TERMS if self.term_weights.get(t, 0.0))

    def forward(self, batch: Batch) -> Output:
        with_aux = self.training or torch.is_grad_enabled()
        want = self.computed_terms() if with_aux else frozenset()
        lazy_z = self.batched_aux and self.task_reads == "streams"  # z only on the aux rows
        need_z = self.task_reads == "aligned" or not self.skip_unweighted or bool(want & Z_TERMS)
        st = self.streams(batch, aligned=not lazy_z, need_z=need_z)
        stk = st.get("stacked")
        if stk is not None:
            reads = stk["s"] if self.task_reads == "streams" else stk["z"]
            f, alpha, g = self._fuse_stacked(stk["s"], stk["p"], reads, st["present"])
        else:
            reads = st["s"] if self.task_reads == "streams" else st["z"]
            f, alpha, g = self.fuse(st["s"], st["p"], reads, st["present"])
        logits = self.head_logits(self.head, f)
        aux = {}
        if want - {"modality_task"}:
            aux = (self._aux_batched if self.batched_aux else self.aux_losses)(st, batch, want)
        elif with_aux:  # nothing to compute: the row sample is drawn all the same (same RNG)
            self._aux_rows(st)
        if with_aux and self.modality_task_weight > 0 and "modality_task" in want:
            aux["modality_task"] = self.modality_task(st, batch)
        return Output(logits, aux, {"alpha": alpha.detach(), "gate": g.detach().mean(1),
                                    "present": st["present"]})
