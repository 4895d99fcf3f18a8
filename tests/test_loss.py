import numpy as np
import pytest
import torch

from training.loss import NORM_EPS, BarlowTwinsLoss, barlow_twins_loss


def _reference(z1: np.ndarray, z2: np.ndarray, lambd: float, alpha: float, eps: float = NORM_EPS):
    """The loss by explicit loops in float64."""
    n, d = z1.shape

    def normalise(z):
        out = np.empty_like(z)
        for j in range(d):
            mean = sum(z[b, j] for b in range(n)) / n
            var = sum((z[b, j] - mean) ** 2 for b in range(n)) / n
            for b in range(n):
                out[b, j] = (z[b, j] - mean) / np.sqrt(var + eps)
        return out

    a, b_ = normalise(z1), normalise(z2)
    c = np.zeros((d, d))
    for i in range(d):
        for j in range(d):
            c[i, j] = sum(a[b, i] * b_[b, j] for b in range(n)) / n
    on = sum((1 - c[i, i]) ** 2 for i in range(d))
    off = sum(c[i, j] ** 2 for i in range(d) for j in range(d) if i != j)
    return alpha * on + lambd * off, on, off, c


def test_matches_hand_computation():
    rng = np.random.default_rng(0)
    z1 = rng.normal(size=(4, 3))
    z2 = z1 + 0.5 * rng.normal(size=(4, 3))
    lambd, alpha = 0.3, 0.7
    want_loss, want_on, want_off, want_c = _reference(z1, z2, lambd, alpha)
    out = barlow_twins_loss(torch.tensor(z1), torch.tensor(z2), lambd=lambd, alpha=alpha)
    assert out.loss.dtype == torch.float32
    np.testing.assert_allclose(out.c.numpy(), want_c, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.on_diag.item(), want_on, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.off_diag.item(), want_off, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.loss.item(), want_loss, rtol=1e-5, atol=1e-6)
    assert not out.c.requires_grad


def test_diagonal_is_a_correlation():
    g = torch.Generator().manual_seed(1)
    z1 = torch.randn(16, 5, generator=g) * 7 + 3
    out = barlow_twins_loss(z1, -2 * z1 + 1)
    np.testing.assert_allclose(torch.diagonal(out.c).numpy(), -1.0, atol=1e-4)


def test_zero_for_identical_decorrelated_views():
    # Columns of a Hadamard matrix (without the constant one): zero mean, unit std, orthogonal.
    h = torch.tensor([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], dtype=torch.float32)
    z = h[:, 1:] * 3.0 + 2.0
    out = barlow_twins_loss(z, z.clone())
    assert out.loss.item() < 1e-6
    assert out.off_diag.item() < 1e-10


def test_positive_for_independent_views():
    g = torch.Generator().manual_seed(2)
    out = barlow_twins_loss(torch.randn(64, 8, generator=g), torch.randn(64, 8, generator=g))
    assert out.on_diag.item() > 4.0  # C_ii ~ 0 for each of 8 dims
    assert out.loss.item() > 4.0


def test_half_input_computed_in_float32():
    g = torch.Generator().manual_seed(3)
    z1 = torch.randn(32, 6, generator=g).half()
    z2 = (z1.float() + 0.3 * torch.randn(32, 6, generator=g)).half()
    out_half = barlow_twins_loss(z1, z2)
    out_float = barlow_twins_loss(z1.float(), z2.float())
    assert out_half.loss.dtype == torch.float32 and out_half.c.dtype == torch.float32
    torch.testing.assert_close(out_half.loss, out_float.loss, rtol=1e-6, atol=1e-6)


def test_module_without_process_group_equals_function():
    g = torch.Generator().manual_seed(4)
    z1, z2 = torch.randn(10, 5, generator=g), torch.randn(10, 5, generator=g)
    a = BarlowTwinsLoss(lambd=0.01, alpha=2.0)(z1, z2)
    b = barlow_twins_loss(z1, z2, lambd=0.01, alpha=2.0)
    torch.testing.assert_close(a.loss, b.loss)


def test_rejects_bad_shapes():
    with pytest.raises(ValueError):
        barlow_twins_loss(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError):
        barlow_twins_loss(torch.randn(1, 3), torch.randn(1, 3))
