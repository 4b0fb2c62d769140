"""DSRSD-Net: Dual-Stream Residual Semantic Decorrelation Network (arXiv 2512.07568).

What the abstract states [V-abs]: a dual-stream module that separates private (intra-modal) and
shared (inter-modal) factors *via residual projection*; a *residual semantic alignment head*
mapping shared factors into a common space with contrastive + regression-style objectives; a
decorrelation loss on the shared-space covariance and an orthogonality loss between shared and
private streams. The TL;DR adds *gated fusion* and a task-specific predictor [TLDR].

Everything concrete below is our reconstruction [R] (papers.md section 1.3):

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
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import combinations

import torch
from torch import Tensor, nn

from dsrsd import losses
from dsrsd.base import FusionModel, Output
from dsrsd.data.batch import Batch, ModalitySpec, TaskSpec
from dsrsd.encoders import mlp
from dsrsd.errors import DsrsdError

FUSIONS = ("gate", "mean", "concat")


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
        orthogonality: ``frobenius`` (MISA) or ``cos2`` (per-sample).
        max_aux_rows: rows used by the alignment/decorrelation terms (subsampled beyond it, so
            per-step tasks with many scored steps stay cheap).
    """

    def __init__(self, specs: list[ModalitySpec], task: TaskSpec, d: int = 128, k: int = 64,
                 seq_encoder: str = "gru", dropout: float = 0.1, modality_dropout: float = 0.0,
                 fusion: str = "gate", temperature: float = 0.1, regression: str = "cosine",
                 decorrelation: str = "vicreg", orthogonality: str = "frobenius",
                 max_aux_rows: int = 1024):
        super().__init__(specs, task, d, seq_encoder, dropout, modality_dropout)
        if len(specs) < 2:
            raise DsrsdError(f"DSRSD-Net needs at least 2 modalities, got {len(specs)}")
        for name, value, allowed in [("fusion", fusion, FUSIONS),
                                     ("regression", regression, ("mse", "cosine")),
                                     ("decorrelation", decorrelation, ("vicreg", "barlow")),
                                     ("orthogonality", orthogonality, ("frobenius", "cos2"))]:
            if value not in allowed:
                raise DsrsdError(f"unknown {name} {value!r} (expected one of {', '.join(allowed)})")
        if k <= 0:
            raise DsrsdError(f"stream size k must be positive, got {k}")
        m = len(specs)
        self.k, self.fusion, self.temperature = k, fusion, temperature
        self.regression, self.decorrelation_form = regression, decorrelation
        self.orthogonality_form, self.max_aux_rows = orthogonality, max_aux_rows

        self.adapters = nn.ModuleList(nn.Linear(d, d) for _ in range(m))
        self.shared = mlp(d, d, k)
        self.back = nn.ModuleList(nn.Linear(k, d, bias=False) for _ in range(m))
        self.private = nn.ModuleList(mlp(d, d, k) for _ in range(m))
        self.align = mlp(k, k, k)
        if fusion == "concat":
            self.concat = nn.Linear(2 * m * k, k)
        else:
            self.score = nn.ModuleList(nn.Sequential(nn.Linear(2 * k, k), nn.Tanh(), nn.Linear(k, 1))
                                       for _ in range(m))
            self.private_mix = nn.Linear(m * k, k)
            self.gate = nn.Linear(2 * k, k)
        self.head = self.make_head(k)
        # Reconstruction targets: a float summary of each modality's input (skipped for token
        # inputs and causal per-step histories, whose "input" at step t is not a fixed vector).
        self.recon_dims = {s.name: s.dim for s in specs
                           if s.vocab == 0 and not (self.per_step and s.kind == "sequence")}
        self.decoders = nn.ModuleDict({n: nn.Linear(k, dim) for n, dim in self.recon_dims.items()})

    # ------------------------------------------------------------------ streams
    def streams(self, batch: Batch) -> dict[str, Tensor | list[Tensor]]:
        """Shared ``s``, private ``p`` and aligned ``z`` per modality, plus ``present``."""
        hs, present = self.encode(batch)
        s = [self.shared(a(h)) for a, h in zip(self.adapters, hs, strict=False)]
        p = [f(h - b(sm)) for f, b, h, sm in zip(self.private, self.back, hs, s, strict=False)]
        z = [sm + self.align(sm) for sm in s]
        return {"h": hs, "s": s, "p": p, "z": z, "present": present}

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
            scores = torch.cat([sc(torch.cat([si, pi], 1)) for sc, si, pi in zip(self.score, s, p, strict=False)], 1)
            alpha = torch.softmax(scores.float().masked_fill(~present, float("-inf")), 1)
            alpha = alpha.to(z[0].dtype)
        s_bar = sum(alpha[:, i:i + 1] * z[i] for i in range(len(z)))
        # Missing private streams are zero; rescaling by M / n_present keeps the summary's scale.
        p_cat = torch.cat([p[i] * pres[:, i:i + 1] for i in range(len(p))], 1)
        p_bar = self.private_mix(p_cat) * (len(p) / n_present)
        g = torch.sigmoid(self.gate(torch.cat([s_bar, p_bar], 1)))
        return g * s_bar + (1 - g) * p_bar, alpha, g

    # ------------------------------------------------------------------ losses
    def _aux_rows(self, n: int, device: torch.device) -> Tensor | None:
        if n <= self.max_aux_rows:
            return None
        return torch.randperm(n, device=device)[: self.max_aux_rows]

    def aux_losses(self, st: dict, batch: Batch) -> dict[str, Tensor]:
        """Alignment (contrastive, regression), decorrelation, orthogonality, reconstruction."""
        # Under torchrun every term below is a statistic of the *global* batch (InfoNCE
        # negatives, covariances), so the rows of all ranks are gathered first.
        gather = self.batch_gather or (lambda t: t)
        present: Tensor = gather(st["present"])
        rows = self._aux_rows(present.shape[0], present.device)

        def pick(t: Tensor) -> Tensor:
            t = gather(t)
            return t if rows is None else t[rows]

        pres = present if rows is None else present[rows]
        s, p, z = ([pick(t) for t in st[key]] for key in ("s", "p", "z"))
        zero = z[0].new_zeros(()).float()
        con, reg, dec, orth, n_pairs, n_mod = zero, zero, zero, zero, 0, 0
        reg_fn = losses.regression_mse if self.regression == "mse" else losses.regression_cosine
        ortho = (losses.orthogonality if self.orthogonality_form == "frobenius"
                 else losses.orthogonality_cos2)
        for a, b in combinations(range(len(z)), 2):
            n, sel = _rows(pres[:, a] & pres[:, b])
            if n < 2:
                continue
            za, zb = sel(z[a]), sel(z[b])
            con = con + losses.info_nce(za, zb, self.temperature)
            reg = reg + reg_fn(za, zb)
            if self.decorrelation_form == "barlow":
                dec = dec + losses.barlow_twins(za, zb)
            n_pairs += 1
        for m in range(len(z)):
            n, sel = _rows(pres[:, m])
            if n < 2:
                continue
            zm, sm, pm = sel(z[m]), sel(s[m]), sel(p[m])
            if self.decorrelation_form == "vicreg":
                dec = dec + losses.decorrelation(zm)
            # Private is kept orthogonal to the shared stream before and after the alignment head:
            # either alone left shared factors readable from p (chapter 2 probes).
            orth = orth + 0.5 * (ortho(zm, pm) + ortho(sm, pm))
            n_mod += 1
        dec_n = n_pairs if self.decorrelation_form == "barlow" else n_mod
        out = {"align_con": con / max(n_pairs, 1), "align_reg": reg / max(n_pairs, 1),
               "decor": dec / max(dec_n, 1), "orth": orth / max(n_mod, 1)}
        if self.recon_dims:
            rec, n_rec = zero, 0
            for m, spec in enumerate(self.specs):
                if spec.name not in self.recon_dims:
                    continue
                n, sel = _rows(present[:, m])
                if n == 0:
                    continue
                target = sel(gather(self.input_summary(spec, batch)))
                pred = self.decoders[spec.name](sel(gather(st["s"][m] + st["p"][m])))
                rec = rec + losses.reconstruction(target, pred)
                n_rec += 1
            out["recon"] = rec / max(n_rec, 1)
        return out

    def input_summary(self, spec: ModalitySpec, batch: Batch) -> Tensor:
        """What the reconstruction decodes to: the input itself, or a sequence's masked mean."""
        x = batch.x[spec.name]
        if spec.kind == "tabular":
            return self.flatten_steps(x, batch)
        w = batch.pad[spec.name].unsqueeze(-1).to(x.dtype)
        return (x * w).sum(1) / w.sum(1).clamp_min(1)

    # ------------------------------------------------------------------ forward
    def forward(self, batch: Batch) -> Output:
        st = self.streams(batch)
        f, alpha, g = self.fuse(st["s"], st["p"], st["z"], st["present"])
        logits = self.head_logits(self.head, f)
        aux = self.aux_losses(st, batch) if self.training or torch.is_grad_enabled() else {}
        return Output(logits, aux, {"alpha": alpha.detach(), "gate": g.detach().mean(1)})
