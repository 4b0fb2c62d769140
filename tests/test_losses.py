"""Property tests of every loss in dsrsd.losses: zero where it should be, positive otherwise,
invariant to what it should ignore, efficient forms equal to naive ones, finite gradients."""

import math

import pytest
import torch

from dsrsd import losses

torch.manual_seed(0)


def hadamard(n: int) -> torch.Tensor:
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def naive_orth(s, p):
    s = s - s.mean(0)
    p = p - p.mean(0)
    s = s / s.norm(dim=1, keepdim=True)
    p = p / p.norm(dim=1, keepdim=True)
    total = 0.0
    for a in range(s.shape[1]):
        for b in range(p.shape[1]):
            total += float((s[:, a] * p[:, b]).sum()) ** 2
    return total / (s.shape[1] * p.shape[1])


def test_info_nce_aligned_beats_shuffled_and_bounds():
    z = torch.randn(64, 16)
    aligned = losses.info_nce(z, z + 0.01 * torch.randn_like(z))
    shuffled = losses.info_nce(z, z[torch.randperm(64)])
    assert aligned < shuffled
    assert aligned < 0.05  # near-identical pairs at tau = 0.07: positives dominate
    assert shuffled > math.log(64) * 0.5


def test_info_nce_scale_invariant_and_symmetric():
    a, b = torch.randn(32, 8), torch.randn(32, 8)
    base = losses.info_nce(a, b, 0.1)
    assert torch.allclose(base, losses.info_nce(3 * a, 0.5 * b, 0.1), atol=1e-6)
    assert torch.allclose(base, losses.info_nce(b, a, 0.1), atol=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        losses.info_nce(a, b, 0.0)


def test_regression_losses_zero_iff_equal():
    a = torch.randn(16, 8)
    assert losses.regression_mse(a, a) == 0
    assert losses.regression_cosine(a, 2 * a).abs() < 1e-6  # cosine ignores scale
    assert losses.regression_mse(a, a + 1) > 0
    assert losses.regression_cosine(a, -a) > 1.99


def test_vicreg_zero_on_whitened_and_positive_on_collapse():
    # Columns of a Hadamard matrix are exactly uncorrelated with unit variance after scaling.
    h = hadamard(64)[:, 1:17]
    white = h * math.sqrt(63 / 64) * 1.0 / h.std(0, unbiased=True).mean()
    assert losses.vicreg_covariance(white) < 1e-10
    assert losses.vicreg_variance(white * 2) == 0  # std above gamma = 1: no hinge
    collapsed = torch.randn(64, 1).repeat(1, 16)
    assert losses.vicreg_covariance(collapsed) > 0.5
    assert losses.vicreg_variance(torch.zeros(64, 16)) > 0.98
    # Invariant to a shift of every feature (covariance is centred).
    x = torch.randn(64, 16)
    assert torch.allclose(losses.decorrelation(x), losses.decorrelation(x + 5), atol=1e-5)


@pytest.mark.parametrize("n,k", [(8, 64), (256, 16), (64, 64)])
def test_gram_and_covariance_forms_agree(n, k):
    x, y = torch.randn(n, k, dtype=torch.float64), torch.randn(n, k + 3, dtype=torch.float64)
    assert torch.allclose(losses.vicreg_covariance(x, "cov"), losses.vicreg_covariance(x, "gram"),
                          rtol=1e-5, atol=1e-8)
    assert torch.allclose(losses.orthogonality(x, y, "cov"), losses.orthogonality(x, y, "gram"),
                          rtol=1e-5, atol=1e-8)
    assert torch.allclose(losses.barlow_twins(x, x[:, :k], form="cov"),
                          losses.barlow_twins(x, x[:, :k], form="gram"), rtol=1e-5, atol=1e-8)
    assert abs(float(losses.orthogonality(x, y)) - naive_orth(x, y)) < 1e-5


def test_orthogonality_zero_for_orthogonal_streams_positive_for_shared():
    h = hadamard(32)
    s = h[:, 1:2] @ torch.randn(1, 8)  # rank one, rows of equal norm
    p = h[:, 2:3] @ torch.randn(1, 8)  # another Hadamard column: uncorrelated over the batch
    assert losses.orthogonality(s, p) < 1e-10
    assert losses.orthogonality(s, s) > 0.5
    z = torch.randn(32, 8)
    assert losses.orthogonality_cos2(z, z) > 0.99
    q = torch.stack([torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])])
    assert losses.orthogonality_cos2(q, q.flip(1)) < 1e-12
    assert losses.orthogonality_relu_cos(q, -q) == 0  # anti-aligned is not penalised


def test_barlow_twins_zero_for_identical_whitened():
    h = hadamard(64)[:, 1:9]
    assert losses.barlow_twins(h, h) < 1e-8
    assert losses.barlow_twins(h, h[:, torch.randperm(8)]) > 1


def test_cmd_zero_for_equal_distributions():
    x = torch.randn(100, 4)
    assert losses.cmd(x, x) == 0
    assert losses.cmd(x, x * 2 + 1) > 1


def test_gradients_finite_even_for_degenerate_inputs():
    for make in (lambda: torch.zeros(16, 8), lambda: torch.randn(16, 8)):
        s = make().requires_grad_()
        p = make().requires_grad_()
        total = (losses.decorrelation(s) + losses.orthogonality(s, p) + losses.info_nce(s, p)
                 + losses.regression_cosine(s, p) + losses.orthogonality_cos2(s, p)
                 + losses.barlow_twins(s, p))
        total.backward()
        assert torch.isfinite(s.grad).all() and torch.isfinite(p.grad).all()


def test_total_objective_weights_and_warmup():
    terms = {"task": torch.tensor(1.0), "orth": torch.tensor(2.0), "decor": torch.tensor(3.0)}
    total, logged = losses.total_objective(terms, {"orth": 0.5, "decor": 0.0}, epoch=0,
                                           warmup={"orth": 4})
    assert float(total) == pytest.approx(1 + 0.5 * 0.25 * 2)
    assert set(logged) == {"task", "orth", "decor", "total"}  # zero-weight terms still logged
    total, _ = losses.total_objective(terms, {"orth": 0.5}, epoch=10, warmup={"orth": 4})
    assert float(total) == pytest.approx(2.0)


def test_task_loss_binary_and_multiclass():
    assert losses.task_loss(torch.tensor([20.0, -20.0]), torch.tensor([1.0, 0.0])) < 1e-6
    assert losses.task_loss(torch.tensor([[5.0, -5.0]]), torch.tensor([1])) > 5
