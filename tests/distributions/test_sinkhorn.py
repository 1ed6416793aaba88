import itertools
import math

import pytest
import torch
from scipy import integrate
from scipy.special import expit

from varinf.distributions.sinkhorn import (
    GumbelSinkhorn,
    doubly_stochastic,
    hungarian,
    log_sinkhorn,
    sinkhorn,
)


@pytest.mark.parametrize("n", [2, 5, 20, 50])
def test_default_iterations_give_doubly_stochastic(n):
    torch.manual_seed(n)
    x = GumbelSinkhorn(torch.randn(40, n, n)).rsample()
    assert (x.sum(-1) - 1).abs().max() < 1e-5
    assert (x.sum(-2) - 1).abs().max() < 1e-5
    assert doubly_stochastic.check(x).all()


def test_fixed_iterations_without_tol():
    x = torch.randn(3, 4, 4)
    one = log_sinkhorn(x, n_iters=1, tol=None)
    manual = x - x.logsumexp(-1, keepdim=True)
    manual = manual - manual.logsumexp(-2, keepdim=True)
    assert torch.allclose(one, manual)
    assert torch.equal(log_sinkhorn(x, n_iters=0), x)


def brute_force_matching(x):
    n = x.shape[-1]
    best = max(itertools.permutations(range(n)), key=lambda p: sum(x[i, p[i]] for i in range(n)))
    return torch.eye(n, dtype=x.dtype)[list(best)]


def test_hungarian_matches_enumeration():
    torch.manual_seed(0)
    x = torch.randn(10, 5, 5, dtype=torch.float64)
    p = hungarian(x)
    assert p.dtype == x.dtype and p.shape == x.shape
    for xi, pi in zip(x, p, strict=True):
        assert torch.equal(pi, brute_force_matching(xi))


def test_low_temperature_approaches_hungarian():
    # The rate is exp(-gap / tau), gap = best minus second-best matching score; a planted
    # permutation keeps the gap away from zero so that tau = 0.01 is deep in the limit.
    torch.manual_seed(1)
    planted = torch.eye(6, dtype=torch.float64)[torch.randperm(6)]
    x = torch.randn(6, 6, dtype=torch.float64) + 2 * planted
    target = hungarian(x)
    assert torch.equal(target, planted)
    dists = []
    for tau in [3.0, 1.0, 0.3, 0.1, 0.03, 0.01]:
        # near a vertex Sinkhorn converges only like 1 / n_iters, hence the many sweeps
        s = sinkhorn(x / tau, n_iters=20_000, tol=1e-10)
        dists.append((s - target).abs().max().item())
    assert all(a > b for a, b in zip(dists, dists[1:], strict=False))
    assert dists[-1] < 1e-4


def logistic_sum_exceeds(c):
    """P(L1 + L2 > c) for independent standard logistic L1, L2, by quadrature."""

    def integrand(t):
        return expit(t) * expit(-t) * (1 - expit(c - t))

    return integrate.quad(integrand, -60, 60, limit=200)[0]


def test_hard_samples_follow_gumbel_matching():
    # For N = 2 the hard sample is the identity iff a11 + a22 + G11 + G22 > a12 + a21 + G12 + G21,
    # and G11 - G12, G22 - G21 are independent standard logistic variables.
    torch.manual_seed(2)
    log_alpha = torch.tensor([[0.4, -0.3], [0.2, 0.5]])
    d = GumbelSinkhorn(log_alpha, temperature=0.7, hard=True)
    n = 20000
    x = d.sample((n,))
    assert set(x.unique().tolist()) == {0.0, 1.0}
    freq = (x[:, 0, 0] == 1).double().mean().item()
    truth = logistic_sum_exceeds(-(0.4 + 0.5 - (-0.3) - 0.2))
    se = math.sqrt(truth * (1 - truth) / n)
    assert abs(freq - truth) < 4 * se


def test_straight_through_gradient():
    log_alpha = torch.randn(4, 4, requires_grad=True)
    w = torch.randn(4, 4)
    torch.manual_seed(3)
    hard = GumbelSinkhorn(log_alpha, 0.5, hard=True).rsample()
    assert torch.equal(hard.detach(), hungarian(hard.detach()))
    (hard * w).sum().backward()
    g_hard, log_alpha.grad = log_alpha.grad.clone(), None
    torch.manual_seed(3)
    (GumbelSinkhorn(log_alpha, 0.5).rsample() * w).sum().backward()
    assert torch.allclose(g_hard, log_alpha.grad)


def test_log_prob_raises_with_reason():
    with pytest.raises(NotImplementedError, match="no tractable density"):
        GumbelSinkhorn(torch.zeros(3, 3)).log_prob(torch.eye(3))


def test_shapes_expand_dtype():
    d = GumbelSinkhorn(torch.randn(2, 3, 4, 4, dtype=torch.float64), temperature=0.3)
    assert d.batch_shape == (2, 3) and d.event_shape == (4, 4)
    x = d.rsample((5,))
    assert x.shape == (5, 2, 3, 4, 4) and x.dtype == torch.float64
    e = GumbelSinkhorn(torch.randn(4, 4), hard=True).expand((7,))
    assert isinstance(e, GumbelSinkhorn) and e.hard and e.batch_shape == (7,)
    assert e.sample((2,)).shape == (2, 7, 4, 4)


@pytest.mark.parametrize("bad", [0.0, -0.5, float("nan"), float("inf")])
def test_bad_temperature(bad):
    with pytest.raises(ValueError, match="temperature"):
        GumbelSinkhorn(torch.zeros(3, 3), temperature=bad)


def test_bad_shapes_and_iterations():
    with pytest.raises(ValueError, match="log_alpha"):
        GumbelSinkhorn(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="log_alpha"):
        log_sinkhorn(torch.zeros(3))
    with pytest.raises(ValueError, match="scores"):
        hungarian(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="n_iters"):
        GumbelSinkhorn(torch.zeros(3, 3), n_iters=-1)
