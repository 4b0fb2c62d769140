"""Every loss of DSRSD-Net and its peers, one function per paper name. Pure functions of tensors.

Tags follow ``../shared/papers.md``: [V-abs] stated by the DSRSD-Net abstract, [R] our
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


def total_objective(terms: dict[str, Tensor], weights: dict[str, float], epoch: int = 0,
                    warmup: dict[str, int] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """``L = L_task + sum_t w_t * warmup_t(epoch) * L_t``; returns the total and every term.

    ``terms`` must hold ``"task"``; a term whose weight is missing or zero is logged but not
    added. ``warmup`` maps a term name to its warm-up length in epochs.
    """
    warmup = warmup or {}
    total = terms["task"]
    # Logged values stay detached tensors: no host sync per step on CUDA.
    logged = {"task": terms["task"].detach()}
    for name, value in terms.items():
        if name == "task":
            continue
        logged[name] = value.detach()
        w = weights.get(name, 0.0)
        if w:
            total = total + w * warmup_factor(epoch, warmup.get(name, 0)) * value
    logged["total"] = total.detach()
    return total, logged
