"""COrAL: Orthogonalized multimodal contrastive learning with asymmetric masking (arXiv 2602.14983).

Follows the official code (github.com/Caro-Ci/COrAL, book/papers.md section 2, [V-code]):

* **Dual path.** A *shared* path and a *unique* path, each with its own copy of every modality
  encoder (``copy.deepcopy``: identical initial weights, trained independently). Encoders give
  token sequences; a tabular vector becomes ``tab_tokens`` tokens through COrAL's
  ``FeaturesInputAdapter`` (``token_j = f_j w_j + b_j`` over features ``f = Linear(h)``).
* **Shared path.** ``[CLS; tokens_1; ...; tokens_M]`` -> one residual attention block (pre-norm
  MHA + QuickGELU MLP, width ``d``, ``heads`` heads) -> LayerNorm -> ``z`` = the CLS output.
* **Asymmetric masking** (training views only, ratio 0.75): in view 1 every token of modality 1
  is zeroed independently with probability 0.75 and modality 2 is left intact; view 2 does the
  reverse. Validation/test inputs are never masked. *M > 2* [R]: each sample's modalities are
  split at random into two non-empty complementary groups; view 1 masks group A, view 2 masks
  group B. For ``M = 2`` this is exactly the code's scheme up to swapping the views of some
  samples, to which the NT-Xent loss below is invariant (each sample's negatives are both views
  of every other sample).
* **Unique path** per modality: ``Linear(d, d) -> LayerNorm -> GELU -> Linear(d, d/2)`` on the
  (never masked) tokens, then attention pooling with a learned query: ``u_m`` in ``R^{d/2}``.
* **Projection heads** (SimCLR): ``Linear -> BN -> ReLU -> Linear -> BN -> ReLU -> Linear``
  (hidden ``proj_hidden`` = 512, output ``proj_dim`` = 256 as in the code; SyncBN = BN on one
  device), one for ``z`` and one per unique embedding.
* **Augmentations** "drop+noise" (the code's MultiBench/MIMIC setting), each with p = 0.5 per
  sample: *drop* zeroes a random 0-80% of a sequence's (or set's) steps (token ids -> 0, i.e.
  an empty bag); *noise* adds Gaussian noise (``noise`` = 0.1) to float features. Tabular
  vectors get noise only (MIMIC: "tabular gets noise"). [R] The code drops the same time indices
  in both (aligned) modalities; our modalities are not aligned, so each draws its own.
* **Losses** on L2-normalised head outputs, NT-Xent (SimCLR, 2N - 2 negatives, ``tau`` = 0.1):
  ``w_s NT(z^1, z^2) + w_u sum_m NT(u_m^1, u_m^2) + w_o sum_v [sum_{a<b} o(u_a^v, u_b^v) +
  sum_m o(u_m^v, z^v)]``; for ``M = 2`` this is the paper's three orthogonality terms per view.
  ``ortho="cos2"``: ``o = mean cos^2`` (July 2026 code, default ``w_o = 10``);
  ``ortho="relu_cos"``: ``o = mean max(0, cos)`` (January 2026 code, default ``w_o = 1``).
* **Representation** ``[z; u_1; ...; u_M]`` (``d + M d/2``; a missing modality's ``u_m`` = 0).

Protocols (method_params ``protocol``):

* ``"supervised"`` (:class:`COrAL`): the generic training loop; the task head reads the clean
  (unaugmented, unmasked) representation. The COrAL objective is returned as ONE aux term,
  ``"coral"``, already combining ``w_s``, ``w_u``, ``w_o`` (method_params); its overall weight is
  ``cfg.weights["coral"]`` (the builder sets it to 1.0 when absent, so the run's recorded config
  shows it). ``coral_shared``, ``coral_unique``, ``coral_orth`` are also returned for logging only:
  leave them out of ``cfg.weights`` or they are counted twice.
* ``"probe"`` (:class:`COrALProbe`, fitted by :func:`dsrsd.fitting.fit_coral_probe`): the
  paper's protocol. Self-supervised pre-training (:meth:`COrAL.ssl_loss`, the COrAL loss only) for ``cfg.epochs`` epochs with AdamW (``cfg.lr``, ``cfg.weight_decay`` on weights
  of rank >= 2 only), no early stopping; then a logistic-regression linear probe on the frozen
  representation: cost ``C`` chosen on validation balanced accuracy over a coarse grid
  ``1e-6 .. 1e6`` then ``probe_fine`` log-spaced values within two decades of the best; the final
  probe is fit on train + val. [R] Features are standardised (fitted on the probe's training
  rows) before the logistic regression.

Per-step tasks (supervised only; the probe raises): the encoders' per-step outputs (causal where
the modality is) are read at the scored steps, so each row has one token per modality; the
masking then hides a whole modality token with probability 0.75, and attention pooling over one
token is the identity. Contrastive terms use at most ``max_aux_rows`` rows per batch.
"""

from __future__ import annotations

import copy
import math
from itertools import combinations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dsrsd import losses
from dsrsd.base import DirectFit, FusionModel, Output, aux_row_sample, keep_first_valid
from dsrsd.baselines import FeatureTokens
from dsrsd.data.batch import Batch, ModalitySpec, MultimodalData, TaskSpec, flat_targets
from dsrsd.errors import DsrsdError
from dsrsd.step import autocast

ORTHO = {"cos2": (losses.orthogonality_cos2, 10.0), "relu_cos": (losses.orthogonality_relu_cos, 1.0)}


def nt_xent(a: Tensor, b: Tensor, temperature: float = 0.1) -> Tensor:
    """SimCLR NT-Xent as in COrAL's code: ``2N - 2`` negatives (both views of other samples).

    ``M = [[S12, S11], [S22, S12^T]]`` with the self-similarities on the diagonals of ``S11``,
    ``S22`` removed; the loss is ``-mean diag(log_softmax(M, 1))`` over the ``2N`` rows.
    """
    a = F.normalize(a.float(), dim=-1)
    b = F.normalize(b.float(), dim=-1)
    n = a.shape[0]
    eye = torch.eye(n, device=a.device, dtype=torch.bool)
    s12 = a @ b.T / temperature
    s11 = (a @ a.T / temperature).masked_fill(eye, -1e8)
    s22 = (b @ b.T / temperature).masked_fill(eye, -1e8)
    m = torch.cat([torch.cat([s12, s11], 1), torch.cat([s22, s12.T], 1)], 0)
    return -torch.diagonal(torch.log_softmax(m, 1)).mean()


class QuickGELU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """CLIP's block: ``x += MHA(LN(x))``; ``x += MLP(LN(x))`` with ``MLP = e -> 4e -> e``."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), QuickGELU(), nn.Linear(4 * d, d))

    def forward(self, x: Tensor, key_pad: Tensor) -> Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, key_padding_mask=key_pad, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class UniquePath(nn.Module):
    """``lin_mod`` (``d -> d -> d/2``) then attention pooling with a learned query."""

    def __init__(self, d: int):
        super().__init__()
        du = d // 2
        self.lin = nn.Sequential(nn.Linear(d, d), nn.LayerNorm(d), nn.GELU(), nn.Linear(d, du))
        self.query = nn.Parameter(torch.randn(du) / math.sqrt(du))

    def forward(self, tokens: Tensor, valid: Tensor) -> Tensor:
        x = self.lin(tokens)
        score = (x @ self.query).float().masked_fill(~valid, float("-inf"))
        w = torch.softmax(score, 1).to(x.dtype).unsqueeze(-1)
        return (w * x).sum(1)


def projection_head(d_in: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                         nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                         nn.Linear(hidden, out))


class COrAL(FusionModel):
    """COrAL network; supervised protocol when ``with_head`` (see the module docstring).

    Args (beyond :class:`~dsrsd.base.FusionModel`):
        ortho: ``cos2`` (July 2026 code) or ``relu_cos`` (January 2026 code).
        w_s, w_u, w_o: loss weights; ``w_o`` defaults to 10 (cos2) or 1 (relu_cos).
        mask_ratio: probability of zeroing a token of the masked group (0.75 in the code).
        temperature: NT-Xent temperature (0.1).
        heads: heads of the fusion block (8 in the code).
        tab_tokens: tokens per tabular modality (the adapter's feature count).
        proj_hidden, proj_dim: projection-head sizes (512, 256 in the code).
        noise: standard deviation of the Gaussian-noise augmentation.
        max_drop: largest fraction of steps the drop augmentation zeroes (0.8).
        max_aux_rows: rows used by the contrastive terms per batch (subsampled beyond).
        with_head: build the task head (False for the self-supervised probe protocol).
    """

    def __init__(self, specs: list[ModalitySpec], task: TaskSpec, d: int = 128,
                 ortho: str = "cos2", w_s: float = 1.0, w_u: float = 1.0,
                 w_o: float | None = None, mask_ratio: float = 0.75, temperature: float = 0.1,
                 heads: int = 8, tab_tokens: int = 8, proj_hidden: int = 512, proj_dim: int = 256,
                 noise: float = 0.1, max_drop: float = 0.8, max_aux_rows: int = 1024,
                 with_head: bool = True, **kw):
        super().__init__(specs, task, d, **kw)
        if len(specs) < 2:
            raise DsrsdError(f"coral needs at least 2 modalities, got {len(specs)}")
        if ortho not in ORTHO:
            raise DsrsdError(f"unknown ortho {ortho!r} (expected one of {', '.join(ORTHO)})")
        if d % heads or d < 2:
            raise DsrsdError(f"coral: hidden size d={d} must be >= 2 and divisible by heads={heads}")
        if not 0.0 <= mask_ratio < 1.0:
            raise DsrsdError(f"coral: mask_ratio must be in [0, 1), got {mask_ratio}")
        if not 0.0 <= max_drop <= 1.0 or noise < 0 or temperature <= 0:
            raise DsrsdError("coral: need 0 <= max_drop <= 1, noise >= 0 and temperature > 0")
        if min(tab_tokens, proj_hidden, proj_dim, max_aux_rows) < 1:
            raise DsrsdError("coral: tab_tokens, proj_hidden, proj_dim, max_aux_rows must be >= 1")
        self.ortho_form = ortho
        self.ortho_fn, default_wo = ORTHO[ortho]
        self.w_s, self.w_u = float(w_s), float(w_u)
        self.w_o = float(default_wo if w_o is None else w_o)
        self.mask_ratio, self.temperature = mask_ratio, temperature
        self.noise, self.max_drop, self.max_aux_rows = noise, max_drop, max_aux_rows
        m, du = len(specs), d // 2
        # Shared path: self.encoders (from FusionModel) + adapters; unique path: deep copies.
        self.tab_adapters = nn.ModuleDict({
            s.name: FeatureTokens(d, tab_tokens) for s in specs
            if s.kind == "tabular" and not self.per_step})
        self.unique_encoders = copy.deepcopy(self.encoders)
        self.unique_adapters = copy.deepcopy(self.tab_adapters)
        self.cls = nn.Parameter(torch.randn(d) * 0.02)
        # [R] modality-type embeddings: the fusion block must know which modality a token is.
        self.modality_emb = nn.Parameter(torch.randn(m, d) * 0.02)
        self.block = ResidualAttentionBlock(d, heads)
        self.ln_post = nn.LayerNorm(d)
        self.unique = nn.ModuleList(UniquePath(d) for _ in range(m))
        self.head_shared = projection_head(d, proj_hidden, proj_dim)
        self.head_unique = nn.ModuleList(projection_head(du, proj_hidden, proj_dim)
                                         for _ in range(m))
        self.rep_dim = d + m * du
        self.head = self.make_head(self.rep_dim) if with_head else None

    # ------------------------------------------------------------------ tokens
    def _tokens(self, encs: nn.ModuleDict, adapters: nn.ModuleDict, x: dict[str, Tensor],
                batch: Batch) -> tuple[list[Tensor], list[Tensor]]:
        """Each modality's tokens ``[R, L, d]`` and validity ``[R, L]`` (R = output rows)."""
        toks, valid = [], []
        for s in self.specs:
            pad = batch.pad.get(s.name)
            enc = encs[s.name]
            if self.per_step:
                t = self.flatten_steps(enc(x[s.name], pad), batch).unsqueeze(1)
                v = torch.ones(t.shape[:2], dtype=torch.bool, device=t.device)
            elif s.kind == "tabular":
                t = adapters[s.name](enc(x[s.name]))
                v = torch.ones(t.shape[:2], dtype=torch.bool, device=t.device)
            else:
                t, v = enc.tokens(x[s.name], pad)
                v = keep_first_valid(v.bool())  # rows of a missing modality: softmax finite
            toks.append(t)
            valid.append(v)
        return toks, valid

    def view_masks(self, valid: list[Tensor]) -> tuple[list[Tensor], list[Tensor], Tensor]:
        """Asymmetric complementary masks: token keep-masks of view 1 and view 2, and ``group``.

        ``group`` ``[R, M]`` is True for the modalities view 1 masks; view 2 masks the others.
        Masked-group tokens are kept with probability ``1 - mask_ratio``; the other group's
        tokens are all kept.
        """
        r, m = valid[0].shape[0], len(valid)
        dev = valid[0].device
        group = torch.rand(r, m, device=dev) < 0.5
        same = group.all(1) | ~group.any(1)  # a view must mask something and keep something
        flip = torch.randint(0, m, (r,), device=dev)
        group[same, flip[same]] = ~group[same, flip[same]]
        keep1, keep2 = [], []
        for i, v in enumerate(valid):
            drop = torch.rand(v.shape, device=dev) < self.mask_ratio
            g = group[:, i:i + 1]
            keep1.append(~(drop & g))
            keep2.append(~(drop & ~g))
        return keep1, keep2, group

    # ------------------------------------------------------------------ paths
    def shared(self, toks: list[Tensor], valid: list[Tensor], present: Tensor,
               keep: list[Tensor] | None = None) -> Tensor:
        """CLS-token fusion of every present modality's tokens (``keep`` zeroes masked ones)."""
        r = present.shape[0]
        parts = [self.cls.to(toks[0].dtype).expand(r, 1, -1)]
        ok = [torch.ones(r, 1, dtype=torch.bool, device=present.device)]
        for i, (t, v) in enumerate(zip(toks, valid, strict=True)):
            t = t + self.modality_emb[i]
            if keep is not None:
                t = t * keep[i].unsqueeze(-1).to(t.dtype)  # the code zeroes masked tokens
            parts.append(t)
            ok.append(v & present[:, i:i + 1])  # missing modalities: out of attention
        x = self.block(torch.cat(parts, 1), ~torch.cat(ok, 1))
        return self.ln_post(x[:, 0])

    def uniques(self, toks: list[Tensor], valid: list[Tensor], present: Tensor) -> list[Tensor]:
        """Unique embeddings ``u_m`` ``[R, d/2]``, zero where the modality is missing."""
        out = []
        for i, (t, v) in enumerate(zip(toks, valid, strict=True)):
            u = self.unique[i](t, v)
            out.append(torch.where(present[:, i:i + 1], u, torch.zeros_like(u)))
        return out

    def path_tokens(self, batch: Batch, x: dict[str, Tensor] | None = None):
        """Tokens and validity of the shared path (``st, sv``) and the unique path (``ut, uv``)."""
        x = batch.x if x is None else x
        st, sv = self._tokens(self.encoders, self.tab_adapters, x, batch)
        ut, uv = self._tokens(self.unique_encoders, self.unique_adapters, x, batch)
        return st, sv, ut, uv

    def features(self, batch: Batch, present: Tensor | None = None) -> Tensor:
        """The representation ``[z; u_1; ...; u_M]`` of the clean (unmasked) inputs."""
        present = self.present_mask(batch) if present is None else present
        st, sv, ut, uv = self.path_tokens(batch)
        z = self.shared(st, sv, present)
        return torch.cat([z, *self.uniques(ut, uv, present)], 1)

    # ------------------------------------------------------------------ augmentation
    def augment(self, batch: Batch) -> dict[str, Tensor]:
        """One "drop+noise" view of every modality's input (each transform with p = 0.5)."""
        out = {}
        for s in self.specs:
            x = batch.x[s.name]
            b = x.shape[0]
            timed = s.kind in ("sequence", "set") or (self.per_step and x.dim() >= 3)
            if timed and self.max_drop > 0:
                steps = x.shape[1]
                rate = torch.rand(b, 1, device=x.device) * self.max_drop
                rate = rate * (torch.rand(b, 1, device=x.device) < 0.5)
                drop = torch.rand(b, steps, device=x.device) < rate
                shape = (b, steps) + (1,) * (x.dim() - 2)
                x = x.masked_fill(drop.view(shape), 0)
            if x.is_floating_point() and self.noise > 0:
                on = (torch.rand(b, device=x.device) < 0.5).view((b,) + (1,) * (x.dim() - 1))
                x = x + on.to(x.dtype) * self.noise * torch.randn_like(x)
            out[s.name] = x
        return out

    # ------------------------------------------------------------------ losses
    def coral_losses(self, batch: Batch, present: Tensor) -> dict[str, Tensor]:
        """The COrAL objective on two augmented, asymmetrically masked views of ``batch``."""
        rows = aux_row_sample(present.shape[0], self.max_aux_rows, present.device)
        pres = present if rows is None else present[rows]
        keeps = None
        views = []
        for v in range(2):
            parts = self.path_tokens(batch, self.augment(batch))
            if rows is not None:
                parts = tuple([t[rows] for t in part] for part in parts)
            st, sv, ut, uv = parts
            if keeps is None:  # one group draw per sample, shared by both views
                keeps = self.view_masks(sv)[:2]
            z = self.shared(st, sv, pres, keeps[v])
            views.append((z, self.uniques(ut, uv, pres)))
        zero = views[0][0].new_zeros(()).float()
        if pres.shape[0] < 2:
            return {"coral": zero, "coral_shared": zero, "coral_unique": zero, "coral_orth": zero}
        m = len(self.specs)
        heads = []  # per view: normalised shared and per-modality unique head outputs
        for z, us in views:
            zh = F.normalize(self.head_shared(z).float(), dim=-1)
            uh = []
            for i in range(m):
                here = pres[:, i]
                full = zh.new_zeros(zh.shape)
                if int(here.sum()) >= 2:
                    full[here] = F.normalize(self.head_unique[i](us[i][here]).float(), dim=-1)
                uh.append(full)
            heads.append((zh, uh))
        l_s = nt_xent(heads[0][0], heads[1][0], self.temperature)
        l_u, l_o = zero, zero
        for i in range(m):
            here = pres[:, i]
            if int(here.sum()) >= 2:
                l_u = l_u + nt_xent(heads[0][1][i][here], heads[1][1][i][here], self.temperature)
        for zh, uh in heads:
            for a, b in combinations(range(m), 2):
                both = pres[:, a] & pres[:, b]
                if int(both.sum()) >= 2:
                    l_o = l_o + self.ortho_fn(uh[a][both], uh[b][both])
            for i in range(m):
                here = pres[:, i]
                if int(here.sum()) >= 2:
                    l_o = l_o + self.ortho_fn(uh[i][here], zh[here])
        total = self.w_s * l_s + self.w_u * l_u + self.w_o * l_o
        return {"coral": total, "coral_shared": l_s.detach(), "coral_unique": l_u.detach(),
                "coral_orth": l_o.detach()}

    def ssl_loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """The probe protocol's pre-training objective as a loss function of the one train
        step (:func:`dsrsd.step.train_step`): the COrAL loss alone, and its terms to log."""
        terms = self.coral_losses(batch, self.present_mask(batch))
        return terms["coral"], {k: v.detach() for k, v in terms.items()}

    # ------------------------------------------------------------------ forward
    def forward(self, batch: Batch) -> Output:
        if self.head is None:
            raise DsrsdError("this COrAL network has no task head (probe protocol)")
        present = self.present_mask(batch)
        logits = self.head_logits(self.head, self.features(batch, present))
        aux = self.coral_losses(batch, present) if self.training else {}
        return Output(logits, aux)


class COrALProbe(DirectFit):
    """COrAL's own protocol: a self-supervised network plus a linear probe on its frozen
    representation. It holds and predicts; :func:`dsrsd.fitting.fit_coral_probe` fits it
    (pre-training with the one train step, then the probe search).

    ``history`` holds the mean pre-training losses per epoch; ``probe_C`` the chosen cost.
    """

    def __init__(self, net: COrAL, probe_fine: int = 29):
        if net.per_step:
            raise DsrsdError("coral protocol='probe' does not support per-step tasks "
                             "(use protocol='supervised')")
        self.net = net
        self.probe_fine = probe_fine
        self.history: list[dict] = []
        self.probe = None
        self.scaler = None
        self.probe_C = float("nan")
        self.amp = True

    @torch.no_grad()
    def embed(self, data: MultimodalData, device: torch.device | None = None,
              batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """Frozen representations ``[z; u_1; ...; u_M]`` and targets of ``data``."""
        device = device or next(self.net.parameters()).device
        was = self.net.training
        self.net.eval()
        xs, ys = [], []
        for batch in data.batches(batch_size):
            batch = batch.to(device)
            with autocast(device, self.amp):
                xs.append(self.net.features(batch).float().cpu())
            ys.append(flat_targets(batch).cpu())
        self.net.train(was)
        y = torch.cat(ys).numpy()
        return torch.cat(xs).numpy(), (y if y.dtype == np.int64 else y.astype(np.int64))

    def predict_proba(self, data: MultimodalData) -> tuple[np.ndarray, np.ndarray]:
        if self.probe is None:
            raise DsrsdError("coral probe: predict before fit")
        x, y = self.embed(data)
        p = self.probe.predict_proba(self.scaler.transform(x))
        if data.task.kind != "multiclass":
            return y, p[:, 1]
        full = np.zeros((len(p), data.task.n_classes))
        full[:, self.probe.classes_] = p
        return y, full


__all__ = ["COrAL", "COrALProbe", "nt_xent"]
