"""MISA: modality-invariant and -specific representations (Hazarika et al., ACM MM 2020).

Follows the reference code (declare-lab/MISA, book/papers.md section 4, [V-ref]) on top of this
package's encoders:

* ``u_m = LayerNorm(ReLU(Linear(h_m)))`` (``h_m`` from the shared-by-all-methods encoders);
* shared (invariant) ``c_m = sigmoid(W_c u_m + b_c)``, one ``W_c`` for every modality;
  private (specific) ``p_m = sigmoid(W_p^m u_m + b_p^m)``;
* fusion: the ``2M`` vectors ``[c_1..c_M, p_1..p_M]`` -> one TransformerEncoder layer (2 heads)
  -> concatenation -> ``Linear(2Md, Md) -> Dropout(0.5) -> ReLU -> Linear(Md, out)``;
* losses: ``L_sim`` = mean over modality pairs of CMD_5(c_a, c_b); ``L_diff`` =
  ``sum_m D(p_m, c_m) + sum_{a<b} D(p_a, p_b)`` with ``D`` the MISA/DSN difference loss
  (:func:`dsrsd.losses.orthogonality`: ``||C~^T P~||_F^2 / d^2`` on batch-centred, row-normalised
  matrices); ``L_recon`` = mean over modalities of ``MSE(u_m, D_m(c_m + p_m))`` (linear ``D_m``).

Loss weights (code defaults ``alpha = 1.0``, ``beta = 0.3``, ``gamma = 1.0``) are method_params
``w_sim``, ``w_diff``, ``w_recon``; the model returns ONE aux term ``"misa"`` =
``w_sim L_sim + w_diff L_diff + w_recon L_recon``, weighted by ``cfg.weights["misa"]`` (the
builder sets 1.0 when absent). ``misa_sim``, ``misa_diff``, ``misa_recon`` are returned for
logging only (keep them out of ``cfg.weights``).

Missing modalities: their two vectors are masked out of the fusion attention and zeroed in the
concatenation; every loss uses only the rows where the modalities involved are present.
Per-step tasks work on the scored-step rows; losses use at most ``max_aux_rows`` of them.
"""

from __future__ import annotations

from itertools import combinations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dsrsd import losses
from dsrsd.base import FusionModel, Output, aux_row_sample
from dsrsd.data.batch import Batch, ModalitySpec, TaskSpec
from dsrsd.errors import DsrsdError


class MISA(FusionModel):
    """MISA on ``M >= 2`` modalities (see the module docstring)."""

    def __init__(self, specs: list[ModalitySpec], task: TaskSpec, d: int = 128,
                 w_sim: float = 1.0, w_diff: float = 0.3, w_recon: float = 1.0,
                 heads: int = 2, head_dropout: float = 0.5, cmd_moments: int = 5,
                 max_aux_rows: int = 1024, **kw):
        super().__init__(specs, task, d, **kw)
        m = len(specs)
        if m < 2:
            raise DsrsdError(f"misa needs at least 2 modalities, got {m}")
        if d % heads:
            raise DsrsdError(f"misa: hidden size d={d} must be divisible by heads={heads}")
        self.w_sim, self.w_diff, self.w_recon = float(w_sim), float(w_diff), float(w_recon)
        self.cmd_moments, self.max_aux_rows = cmd_moments, max_aux_rows
        self.project = nn.ModuleList(nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.LayerNorm(d))
                                     for _ in range(m))
        self.shared = nn.Sequential(nn.Linear(d, d), nn.Sigmoid())
        self.private = nn.ModuleList(nn.Sequential(nn.Linear(d, d), nn.Sigmoid())
                                     for _ in range(m))
        self.recon = nn.ModuleList(nn.Linear(d, d) for _ in range(m))
        self.fusion = nn.TransformerEncoderLayer(d, heads, 4 * d, kw.get("dropout", 0.1),
                                                 batch_first=True)
        self.head = nn.Sequential(nn.Linear(2 * m * d, m * d), nn.Dropout(head_dropout), nn.ReLU(),
                                  nn.Linear(m * d, task.out_dim))

    def forward(self, batch: Batch) -> Output:
        hs, present = self.encode(batch)
        u = [f(h) for f, h in zip(self.project, hs, strict=True)]
        c = [self.shared(x) for x in u]
        p = [f(x) for f, x in zip(self.private, u, strict=True)]
        ok = torch.cat([present, present], 1)  # [N, 2M]: c_1..c_M, p_1..p_M
        x = self.fusion(torch.stack(c + p, 1), src_key_padding_mask=~ok)
        x = torch.where(ok.unsqueeze(-1), x, torch.zeros_like(x))
        logits = self.head_logits(self.head, x.flatten(1))
        aux = self.aux_losses(u, c, p, present) if self.training or torch.is_grad_enabled() else {}
        return Output(logits, aux)

    def aux_losses(self, u: list[Tensor], c: list[Tensor], p: list[Tensor],
                   present: Tensor) -> dict[str, Tensor]:
        rows = aux_row_sample(present.shape[0], self.max_aux_rows, present.device)
        if rows is not None:
            u, c, p, present = [t[rows] for t in u], [t[rows] for t in c], [t[rows] for t in p], \
                present[rows]
        zero = c[0].new_zeros(()).float()
        sim, diff, rec, n_pairs, n_rec = zero, zero, zero, 0, 0
        for a, b in combinations(range(len(c)), 2):
            both = present[:, a] & present[:, b]
            if int(both.sum()) >= 2:
                sim = sim + losses.cmd(c[a][both], c[b][both], self.cmd_moments)
                diff = diff + losses.orthogonality(p[a][both], p[b][both])
                n_pairs += 1
        for m in range(len(c)):
            here = present[:, m]
            if int(here.sum()) >= 2:
                diff = diff + losses.orthogonality(p[m][here], c[m][here])
            if bool(here.any()):
                rec = rec + F.mse_loss(self.recon[m](c[m][here] + p[m][here]).float(),
                                       u[m][here].float())
                n_rec += 1
        sim = sim / max(n_pairs, 1)
        rec = rec / max(n_rec, 1)
        total = self.w_sim * sim + self.w_diff * diff + self.w_recon * rec
        return {"misa": total, "misa_sim": sim.detach(), "misa_diff": diff.detach(),
                "misa_recon": rec.detach()}


__all__ = ["MISA"]
