"""Every loss of DSRSD-Net and its peers, one function per paper name. Pure functions of tensors.

Tags follow ``book/papers.md``: [V-abs] stated by the DSRSD-Net abstract, [R] our
reconstruction from the closest published method (named in each docstring).

Shapes: ``B`` rows (samples or scored steps), ``k`` feature dimensions. Where a term has a
``k x k`` (covariance) form and a ``B x B`` (Gram) form, both are implemented; the public
function picks the cheaper one by shape (``form="auto"``), and the tests check they agree.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# ---------------------------------------------------------------- alignment [V-abs] + [R]


def info_nce(za: Tensor, zb: Tensor, temperature: float = 0.07) -> Tensor:
    """Symmetric InfoNCE (CLIP form) between paired rows of ``za`` and ``zb``.

    Row i of ``za`` and row i of ``zb`` are the positive pair; every other row of the other
    modality is a negative. Inputs are L2-normalised here, so scale does not matter.
    [V-abs] "contrastive" alignment; form [R] from CLIP.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    a = F.normalize(za.float(), dim=-1)
    b = F.normalize(zb.float(), dim=-1)
    logits = a @ b.T / temperature
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def dense_groups(groups: Tensor | None, n: int, device: torch.device | None = None) -> Tensor:
    """Group ids as ``0..G-1`` (sorted order of the given ids); ``None``: every row its own group."""
    if groups is None:
        return torch.arange(n, device=device)
    return torch.unique(groups, return_inverse=True)[1]


def pool_groups(x: Tensor, groups: Tensor) -> Tensor:
    """Mean of ``x``'s rows per group (``groups`` dense ids ``0..G-1``): ``[G, k]``."""
    g = int(groups.max()) + 1 if groups.numel() else 0
    sums = x.new_zeros((g, *x.shape[1:])).index_add(0, groups, x)
    counts = torch.bincount(groups, minlength=g).clamp_min(1).to(x.dtype)
    return sums / counts.reshape(-1, *([1] * (x.dim() - 1)))


def info_nce_masked(za: Tensor, zb: Tensor, temperature: float = 0.07,
                    keys: list[Tensor] | tuple[Tensor, ...] = ()) -> Tensor:
    """Symmetric InfoNCE in which rows sharing a key are not each other's negatives. [R].

    ``keys`` are ``[B]`` integer ids (for example the window a per-step row belongs to, or a
    hash of a modality's input, so that two rows with the same item are not negatives). Row
    ``j != i`` is left out of row ``i``'s softmax (in both directions) when ``key[i] == key[j]``
    for any of the keys; the positive pair stays. With no keys it equals :func:`info_nce`.
    On per-step data the plain form asks to tell apart identical items (ASSISTments: 89
    distinct skill sets in 1,024 rows), so its floor is ``ln`` (duplicates per row), not 0.
    [V-abs] "contrastive" alignment; the false-negative mask is ours [R] (as in supervised or
    debiased contrastive learning).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    a = F.normalize(za.float(), dim=-1)
    b = F.normalize(zb.float(), dim=-1)
    logits = a @ b.T / temperature
    n = a.shape[0]
    if len(keys):
        same = torch.zeros(n, n, dtype=torch.bool, device=a.device)
        for k in keys:
            same |= k[:, None] == k[None, :]
        same &= ~torch.eye(n, dtype=torch.bool, device=a.device)
        logits = logits.masked_fill(same, float("-inf"))
    target = torch.arange(n, device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def info_nce_pooled(za: Tensor, zb: Tensor, temperature: float = 0.07,
                    groups: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE between per-group means (per-step tasks: one vector per window). [R].

    Rows are averaged per group first, so the positives and negatives are windows, not steps:
    duplicating rows inside a group leaves it unchanged. ``groups=None`` (every row its own
    group) gives :func:`info_nce`. Fewer than 2 groups: 0.
    """
    g = dense_groups(groups, za.shape[0], za.device)
    if g.numel() == 0 or int(g.max()) < 1:
        return za.float().sum() * 0 + zb.float().sum() * 0
    return info_nce(pool_groups(za.float(), g), pool_groups(zb.float(), g), temperature)


def regression_mse(za: Tensor, zb: Tensor) -> Tensor:
    """Regression-style alignment: mean over rows of ``||za_i - zb_i||^2``. [V-abs] + [R]."""
    return (za.float() - zb.float()).pow(2).sum(-1).mean()


def regression_cosine(za: Tensor, zb: Tensor) -> Tensor:
    """Regression-style alignment, cosine variant: mean of ``1 - cos(za_i, zb_i)``. [R]."""
    return (1 - F.cosine_similarity(za.float(), zb.float(), dim=-1)).mean()


# ------------------------------------------------------------ decorrelation [V-abs] + [R]


def _centre(x: Tensor) -> Tensor:
    return x - x.mean(0, keepdim=True)


def _sum_sq_cross(a: Tensor, b: Tensor, form: str = "auto") -> Tensor:
    """``||a^T b||_F^2`` by the cheaper route: ``k_a x k_b`` product or ``B x B`` Gram matrices.

    ``||a^T b||_F^2 = sum_pq (a a^T)_pq (b b^T)_pq``, so with few rows the Gram form costs
    ``B^2 (k_a + k_b)`` instead of ``B k_a k_b``.
    """
    n, ka = a.shape
    kb = b.shape[1]
    if form == "auto":
        form = "gram" if n * n * (ka + kb) < n * ka * kb else "cov"
    if form == "cov":
        return (a.T @ b).pow(2).sum()
    if form == "gram":
        return ((a @ a.T) * (b @ b.T)).sum()
    raise ValueError(f"form must be auto, cov or gram, got {form!r}")


def vicreg_variance(s: Tensor, gamma: float = 1.0, eps: float = 1e-4) -> Tensor:
    """VICReg variance hinge: ``mean_j max(0, gamma - sqrt(Var(s_j) + eps))``. Prevents collapse."""
    std = torch.sqrt(s.float().var(0) + eps)
    return F.relu(gamma - std).mean()


def vicreg_covariance(s: Tensor, form: str = "auto") -> Tensor:
    """VICReg covariance term: ``(1/k) sum_{i != j} C_ij^2`` with ``C = S_c^T S_c / (B - 1)``.

    Off-diagonal mass = ``||C||_F^2 - sum_i C_ii^2``; ``||C||_F^2`` uses the cheaper form.
    """
    s = _centre(s.float())
    n, k = s.shape
    denom = max(n - 1, 1)
    total = _sum_sq_cross(s, s, form) / denom**2
    diag = (s.pow(2).sum(0) / denom).pow(2).sum()
    return (total - diag) / k


def decorrelation(s: Tensor, form: str = "auto") -> Tensor:
    """Decorrelation of the shared space: VICReg variance + covariance. [V-abs] + [R] VICReg."""
    return vicreg_variance(s) + vicreg_covariance(s, form)


def barlow_twins(sa: Tensor, sb: Tensor, lambd: float = 5e-3, form: str = "auto") -> Tensor:
    """Barlow Twins: ``sum_i (1 - C_ii)^2 + lambd sum_{i != j} C_ij^2`` on batch-standardised rows.

    ``C`` is the cross-correlation of the two modalities' shared vectors; aligning and
    decorrelating in one term. [R] alternative to :func:`decorrelation`.
    """
    a = _centre(sa.float())
    b = _centre(sb.float())
    a = a / a.norm(dim=0, keepdim=True).clamp_min(1e-8)
    b = b / b.norm(dim=0, keepdim=True).clamp_min(1e-8)
    diag = (a * b).sum(0)
    off = _sum_sq_cross(a, b, form) - diag.pow(2).sum()
    return (1 - diag).pow(2).sum() + lambd * off


# ------------------------------------------------------------- orthogonality [V-abs] + [R]


def _centre_rownorm(x: Tensor) -> Tensor:
    return F.normalize(_centre(x.float()), dim=1, eps=1e-8)


def orthogonality(s: Tensor, p: Tensor, form: str = "auto") -> Tensor:
    """Shared-private orthogonality, MISA/DSN difference loss: ``||S~^T P~||_F^2 / (k_s k_p)``.

    ``S~``, ``P~`` are batch-centred then row-L2-normalised. Zero when every shared direction
    is uncorrelated over the batch with every private direction. [V-abs] + [R] MISA.
    """
    a = _centre_rownorm(s)
    b = _centre_rownorm(p)
    return _sum_sq_cross(a, b, form) / (a.shape[1] * b.shape[1])


def orthogonality_cos2(s: Tensor, p: Tensor) -> Tensor:
    """Per-sample orthogonality: ``mean_i cos^2(s_i, p_i)`` (COrAL/DecAlign form). [R]."""
    return F.cosine_similarity(s.float(), p.float(), dim=-1, eps=1e-8).pow(2).mean()


def orthogonality_cos2_grouped(s: Tensor, p: Tensor, groups: Tensor | None = None) -> Tensor:
    """``cos^2(s_i, p_i)`` averaged per group, then over groups (each window weighs the same). [R].

    Invariant to batch size and to duplicating rows inside groups; ``groups=None`` equals
    :func:`orthogonality_cos2`. Note what it measures: per-sample perpendicularity. Independent,
    isotropic streams give ``1/k``, not 0; it is 0 only when each sample's two vectors are
    perpendicular (for example when the streams use disjoint directions).
    """
    c = F.cosine_similarity(s.float(), p.float(), dim=-1, eps=1e-8).pow(2)
    if groups is None:
        return c.mean()
    return pool_groups(c, dense_groups(groups, c.shape[0], c.device)).mean()


def _standardise(x: Tensor, w: Tensor, eps: float = 1e-8) -> Tensor:
    """Columns centred and scaled to unit variance under row weights ``w`` (``[n, 1]``, sum 1)."""
    x = x - (w * x).sum(0, keepdim=True)
    return x / torch.sqrt((w * x.pow(2)).sum(0, keepdim=True) + eps)


def orthogonality_xcorr(s: Tensor, p: Tensor, groups: Tensor | None = None) -> Tensor:
    """Shared-private cross-correlation with the finite-sample floor removed (cross-fitted). [R].

    The groups (per-step tasks: windows; otherwise every row is its own group) are split into
    two halves A and B (even and odd group ids, in sorted order); within each half the
    ``k_s x k_p`` correlation matrix ``R`` between the shared and private dimensions is formed
    (columns standardised in that half), and the loss is ``<R_A, R_B> / (k_s k_p)``. Each
    row weighs ``1 / (rows in its group)``, so every group (window) counts once, whatever its
    length.

    It estimates the mean squared correlation ``mean_ab rho(s_a, p_b)^2`` without bias: when
    the streams are independent and the groups independent of each other, ``R_A`` and ``R_B``
    are independent with mean 0, so the expectation is exactly 0 at any batch size and for any
    dependence between rows of one group; MISA's :func:`orthogonality` is about ``N / k^2`` there
    and grows with duplicated or correlated rows. Repeating every row of a group leaves it
    unchanged. Being unbiased, a single batch can be slightly negative (noise of order
    ``1 / (k sqrt(N_A N_B))``). Fewer than 2 rows in either half: 0.
    """
    s, p = s.float(), p.float()
    g = dense_groups(groups, s.shape[0], s.device)
    w = 1.0 / torch.bincount(g)[g].to(s.dtype)
    half = (g % 2).bool()
    out = []
    for rows in (~half, half):
        if int(rows.sum()) < 2:
            return s.sum() * 0 + p.sum() * 0
        wh = w[rows].unsqueeze(1)
        wh = wh / wh.sum()
        xs, ys = _standardise(s[rows], wh), _standardise(p[rows], wh)
        out.append((wh * xs).T @ ys)
    return (out[0] * out[1]).sum() / (s.shape[1] * p.shape[1])


def orthogonality_relu_cos(s: Tensor, p: Tensor) -> Tensor:
    """``mean_i max(0, cos(s_i, p_i))``: COrAL's January 2026 code version."""
    return F.relu(F.cosine_similarity(s.float(), p.float(), dim=-1, eps=1e-8)).mean()


# --------------------------------------------------------------------- reconstruction [R]


def reconstruction(target: Tensor, recon: Tensor) -> Tensor:
    """MSE between a modality's input summary and its decoding from ``s + p`` (MISA-style). [R]."""
    return F.mse_loss(recon.float(), target.float())


def cmd(x: Tensor, y: Tensor, moments: int = 5) -> Tensor:
    """Central moment discrepancy (MISA similarity loss), without the 1/|b-a|^k factors."""
    mx, my = x.float().mean(0), y.float().mean(0)
    cx, cy = x.float() - mx, y.float() - my
    total = (mx - my).norm()
    for k in range(2, moments + 1):
        total = total + (cx.pow(k).mean(0) - cy.pow(k).mean(0)).norm()
    return total


# ------------------------------------------- batched forms: many pairs / modalities per call
# DSRSD-Net's ``batched_aux`` path: every modality pair (or modality) in one call on stacked
# ``[P, n, k]`` tensors, with a ``valid`` mask ``[P, n]`` of the rows each one uses instead of a
# copy of those rows. Each returns ``[P]``, equal to float rounding to the per-pair function
# above on ``x[p][valid[p]]`` (tests/test_speed_options.py).


def masked_row_mean(x: Tensor, valid: Tensor) -> Tensor:
    """Mean of ``x`` ``[P, n]`` over the valid rows of each ``p`` (0 where none)."""
    w = valid.to(x.dtype)
    return (x * w).sum(1) / w.sum(1).clamp_min(1)


def info_nce_pairs(za: Tensor, zb: Tensor, valid: Tensor, temperature: float = 0.07,
                   same: Tensor | None = None) -> Tensor:
    """:func:`info_nce_masked` for ``P`` pairs at once, on the valid rows of each.

    ``same`` ``[P, n, n]`` (optional): rows that are not each other's negatives (the keys of
    :func:`info_nce_masked`, already compared). Rows outside ``valid`` are neither anchors nor
    negatives.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    a = F.normalize(za.float(), dim=-1) / temperature
    b = F.normalize(zb.float(), dim=-1)
    keep = valid[:, :, None] & valid[:, None, :]
    if same is not None:
        keep &= ~same
    keep |= torch.eye(a.shape[1], dtype=torch.bool, device=a.device)  # the positive stays
    pos = (a * b).sum(-1)
    if temperature >= 0.05:
        # Logits lie in [-1/T, 1/T] (unit rows): exp(logit - 1/T) is in [exp(-2/T), 1], no
        # overflow nor underflow in float32 for T >= 0.05, so one exp and a multiplicative mask
        # replace logsumexp's max pass and its -inf fill (about 3x faster on CPU).
        e = torch.exp(torch.baddbmm(a.new_tensor(-1 / temperature), a, b.transpose(1, 2))) * keep
        rows, cols = e.sum(2).log(), e.sum(1).log()  # (log-sum-exp) - 1/T, a -> b and b -> a
        ce = rows + cols - 2 * (pos - 1 / temperature)
    else:
        logits = torch.bmm(a, b.transpose(1, 2)).masked_fill(~keep, float("-inf"))
        ce = torch.logsumexp(logits, 2) + torch.logsumexp(logits, 1) - 2 * pos
    return 0.5 * masked_row_mean(ce, valid)


def _masked_centre(x: Tensor, w: Tensor) -> Tensor:
    """``x`` ``[P, n, k]`` minus its mean under row weights ``w`` ``[P, n, 1]`` (sum 1)."""
    return x - (w * x).sum(1, keepdim=True)


def decorrelation_rows(z: Tensor, valid: Tensor) -> Tensor:
    """:func:`decorrelation` (VICReg variance + covariance) of each ``z[p]`` on its valid rows."""
    z = z.float()
    v = valid.to(z.dtype).unsqueeze(-1)
    n = v.sum(1, keepdim=True)  # [P, 1, 1]
    x = _masked_centre(z, v / n.clamp_min(1)) * v
    denom = (n - 1).clamp_min(1)
    var = x.pow(2).sum(1, keepdim=True) / denom  # [P, 1, k]
    variance = F.relu(1.0 - torch.sqrt(var + 1e-4)).mean((1, 2))
    cov = torch.bmm(x.transpose(1, 2), x) / denom
    return variance + (cov.pow(2).sum((1, 2)) - var.pow(2).sum((1, 2))) / z.shape[2]


def _group_weights(valid: Tensor, groups: Tensor | None) -> tuple[Tensor, Tensor]:
    """Per row of each ``p``: ``1 / (valid rows of its group)`` (0 outside ``valid``), and its
    group's dense id among the groups with valid rows of that ``p`` (as :func:`dense_groups`
    on the valid rows)."""
    g = dense_groups(groups, valid.shape[1], valid.device)
    n_groups = int(g.max()) + 1 if g.numel() else 0
    counts = valid.new_zeros((valid.shape[0], n_groups), dtype=torch.long)
    counts.scatter_add_(1, g.expand_as(valid), valid.long())
    rank = (counts > 0).long().cumsum(1) - 1
    gid = rank.gather(1, g.expand_as(valid))
    w = valid / counts.gather(1, g.expand_as(valid)).clamp_min(1)
    return w, gid


def orthogonality_xcorr_rows(s: Tensor, p: Tensor, valid: Tensor,
                             groups: Tensor | None = None) -> Tensor:
    """:func:`orthogonality_xcorr` of each ``(s[p], p[p])`` on its valid rows (``groups`` ``[n]``
    shared by all ``p``; the halves are formed per ``p``, from the groups it has rows in)."""
    s, p = s.float(), p.float()
    w, gid = _group_weights(valid, groups)
    out, ok = [], valid.new_ones(valid.shape[0])
    for h in (0, 1):
        rows = valid & (gid % 2 == h)
        ok = ok & (rows.sum(1) >= 2)
        wh = (w * rows).unsqueeze(-1)
        wh = wh / wh.sum(1, keepdim=True).clamp_min(1e-30)
        xs = _masked_centre(s, wh)
        xs = xs / torch.sqrt((wh * xs.pow(2)).sum(1, keepdim=True) + 1e-8)
        ys = _masked_centre(p, wh)
        ys = ys / torch.sqrt((wh * ys.pow(2)).sum(1, keepdim=True) + 1e-8)
        out.append(torch.bmm((wh * xs).transpose(1, 2), ys))
    loss = (out[0] * out[1]).sum((1, 2)) / (s.shape[2] * p.shape[2])
    return torch.where(ok, loss, loss * 0)


def orthogonality_cos2_rows(s: Tensor, p: Tensor, valid: Tensor,
                            groups: Tensor | None = None) -> Tensor:
    """:func:`orthogonality_cos2_grouped` of each ``(s[p], p[p])`` on its valid rows."""
    c = F.cosine_similarity(s.float(), p.float(), dim=-1, eps=1e-8).pow(2)
    w, gid = _group_weights(valid, groups)
    n_groups = (gid.masked_fill(~valid, -1).amax(1) + 1).clamp_min(1)
    return (c * w).sum(1) / n_groups


def orthogonality_rows(s: Tensor, p: Tensor, valid: Tensor) -> Tensor:
    """:func:`orthogonality` (MISA's Frobenius form) of each ``(s[p], p[p])`` on its valid rows."""
    v = valid.to(torch.float32).unsqueeze(-1)
    w = v / v.sum(1, keepdim=True).clamp_min(1)
    a = F.normalize(_masked_centre(s.float(), w), dim=-1, eps=1e-8) * v
    b = F.normalize(_masked_centre(p.float(), w), dim=-1, eps=1e-8) * v
    return torch.bmm(a.transpose(1, 2), b).pow(2).sum((1, 2)) / (s.shape[2] * p.shape[2])


# ------------------------------------------------------------------------ task and total


def task_loss(logits: Tensor, y: Tensor) -> Tensor:
    """BCE-with-logits for 1-d float targets, cross-entropy for long class targets."""
    if y.dtype == torch.long:
        return F.cross_entropy(logits.float(), y)
    return F.binary_cross_entropy_with_logits(logits.float().reshape(y.shape), y.float())


def warmup_factor(epoch: int, warmup_epochs: int) -> float:
    """Linear warm-up of a regulariser's weight: ``(epoch + 1) / warmup_epochs``, capped at 1."""
    if warmup_epochs <= 0:
        return 1.0
    return min(1.0, (epoch + 1) / warmup_epochs)


def effective_weights(names, weights: dict[str, float], epoch: int = 0,
                      warmup: dict[str, int] | None = None) -> dict[str, float]:
    """Each auxiliary term's weight in the objective at ``epoch``: ``w_t * warmup_t(epoch)``
    (0 for a term whose weight is missing or zero). ``names`` may include ``"task"`` (skipped)."""
    warmup = warmup or {}
    out = {}
    for name in names:
        if name != "task":
            w = weights.get(name, 0.0)
            out[name] = w * warmup_factor(epoch, warmup.get(name, 0)) if w else 0.0
    return out


def total_objective(terms: dict[str, Tensor], weights: dict[str, float], epoch: int = 0,
                    warmup: dict[str, int] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """``L = L_task + sum_t w_t * warmup_t(epoch) * L_t``; returns the total and every term.

    ``terms`` must hold ``"task"``; a term whose weight is missing or zero is logged but not
    added. ``warmup`` maps a term name to its warm-up length in epochs.
    """
    eff = effective_weights(terms, weights, epoch, warmup)
    total = terms["task"]
    # Logged values stay detached tensors: no host sync per step on CUDA.
    logged = {"task": terms["task"].detach()}
    for name, value in terms.items():
        if name == "task":
            continue
        logged[name] = value.detach()
        if eff[name]:
            total = total + eff[name] * value
    logged["total"] = total.detach()
    return total, logged
