import math

import pytest
import torch

from train.losses import nt_xent


def brute_force_nt_xent(z1, z2, t):
    """The formula of paper S eq. 2, one anchor and one pair at a time, in float64."""
    z = torch.cat([z1, z2]).double()
    z = z / z.norm(dim=1, keepdim=True)
    n2 = z.shape[0]
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        j = (i + n) % n2
        num = math.exp(float(z[i] @ z[j]) / t)
        den = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(n2) if k != i)
        total += -math.log(num / den)
    return total / n2


@pytest.mark.parametrize("t", [0.05, 0.1, 0.2, 0.5, 1.0])
def test_nt_xent_matches_brute_force(t):
    g = torch.Generator().manual_seed(int(t * 100))
    z1 = torch.randn(7, 5, generator=g, dtype=torch.float64)
    z2 = torch.randn(7, 5, generator=g, dtype=torch.float64)
    assert float(nt_xent(z1, z2, t)) == pytest.approx(brute_force_nt_xent(z1, z2, t), abs=1e-5)


def test_nt_xent_float32_close_to_float64():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(2, 16, 8, generator=g)
    assert float(nt_xent(z1, z2, 0.1)) == pytest.approx(
        float(nt_xent(z1.double(), z2.double(), 0.1)), abs=1e-5)


def test_nt_xent_finite_at_low_temperature_with_large_logits():
    z1 = torch.randn(64, 32) * 1e4
    z2 = z1 + torch.randn(64, 32)
    loss = nt_xent(z1, z2, 0.05)
    assert torch.isfinite(loss)
    z1.requires_grad_(True)
    nt_xent(z1, z2, 0.05).backward()
    assert torch.isfinite(z1.grad).all()


def test_nt_xent_perfect_pairs_beat_random_pairs():
    z = torch.eye(8)
    aligned = nt_xent(z, z, 0.5)
    shuffled = nt_xent(z, z[torch.roll(torch.arange(8), 1)], 0.5)
    assert aligned < shuffled


def test_nt_xent_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="one shape"):
        nt_xent(torch.randn(4, 3), torch.randn(5, 3))
