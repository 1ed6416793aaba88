import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions.testing.gof import auto_goodness_of_fit
from scipy import integrate
from torch.autograd.functional import jacobian

from varinf.distributions.birkhoff import (
    RoundingBirkhoff,
    RoundingTransform,
    StickBreakingBirkhoff,
    StickBreakingBirkhoffTransform,
    stick_breaking_centre,
)
from varinf.distributions.sinkhorn import doubly_stochastic, hungarian, sinkhorn

TEST_FAILURE_RATE = 1e-3
F64 = torch.float64


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_stick_breaking_log_det_equals_autograd(n):
    torch.manual_seed(n)
    t = StickBreakingBirkhoffTransform()
    for _ in range(5):
        beta = torch.rand(n - 1, n - 1, dtype=F64)
        x = t(beta)

        def block(b):
            return t(b.reshape(n - 1, n - 1))[:-1, :-1].reshape(-1)

        jac = jacobian(block, beta.reshape(-1))
        expected = torch.linalg.slogdet(jac)[1]
        assert torch.allclose(t.log_abs_det_jacobian(beta, x), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_stick_breaking_distribution_density_by_autograd(n):
    # log q(X) = log N(psi) - log|d block / d psi|, the Jacobian of the whole chain by autograd
    torch.manual_seed(10 + n)
    loc, scale, tau = torch.randn(n - 1, n - 1, dtype=F64), torch.rand(n - 1, n - 1) + 0.5, 0.7
    scale = scale.to(F64)
    d = StickBreakingBirkhoff(loc, scale, temperature=tau)
    t = StickBreakingBirkhoffTransform()
    for _ in range(3):
        psi = loc + scale * torch.randn(n - 1, n - 1, dtype=F64)

        def block(p):
            return t(torch.sigmoid(p.reshape(n - 1, n - 1) / tau))[:-1, :-1].reshape(-1)

        x = t(torch.sigmoid(psi / tau))
        log_det = torch.linalg.slogdet(jacobian(block, psi.reshape(-1)))[1]
        expected = dist.Normal(loc, scale).log_prob(psi).sum() - log_det
        assert torch.allclose(d.log_prob(x), expected, rtol=1e-8)


@pytest.mark.parametrize("n", [3, 4, 6])
def test_stick_breaking_lands_in_polytope(n):
    torch.manual_seed(0)
    t = StickBreakingBirkhoffTransform()
    beta = torch.rand(2000, n - 1, n - 1, dtype=F64) ** 4  # pile up near the faces
    x = t(beta)
    assert doubly_stochastic.check(x).all()
    assert torch.allclose(t(t.inv(x)), x, atol=1e-12)
    # beta itself is recovered to rounding only where u - l is not tiny
    inner = 0.05 + 0.9 * torch.rand(2000, n - 1, n - 1, dtype=F64)
    assert torch.allclose(t.inv(t(inner)), inner, atol=1e-9)
    corners = t(torch.randint(0, 2, (500, n - 1, n - 1)).to(F64))
    assert torch.equal(corners, hungarian(corners))  # 0/1 sticks give permutation matrices


def test_stick_breaking_n2_normalised_by_quadrature():
    d = StickBreakingBirkhoff(torch.tensor([[0.3]], dtype=F64), torch.tensor([[0.8]], dtype=F64))

    def density(a):
        x = torch.tensor([[a, 1 - a], [1 - a, a]], dtype=F64)
        return d.log_prob(x).exp().item()

    assert integrate.quad(density, 0, 1, limit=200)[0] == pytest.approx(1, abs=1e-8)


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_stick_breaking_gof(tau):
    torch.manual_seed(1)
    d = StickBreakingBirkhoff(
        0.5 * torch.randn(2, 2, dtype=F64), 0.5 + torch.rand(2, 2, dtype=F64), temperature=tau
    )
    x = d.sample((5000,))
    probs = d.log_prob(x).exp()
    # the density is w.r.t. Lebesgue measure on the free (N-1) x (N-1) block
    assert auto_goodness_of_fit(x[:, :-1, :-1].reshape(-1, 4), probs, dim=4) > TEST_FAILURE_RATE


# The support is a union of cells shrunk by tau towards their permutation, with gaps between
# them; the nearest-neighbour test assumes a locally continuous density, which fails near those
# edges for small tau, so tau = 0.5 is tested here and normalisation separately below.
@pytest.mark.parametrize("n,tau", [(2, 0.5), (3, 0.5)])
def test_rounding_gof(n, tau):
    torch.manual_seed(2)
    d = RoundingBirkhoff(torch.randn(n, n, dtype=F64), torch.full((n, n), 0.3, dtype=F64), tau)
    x = d.sample((10000,))
    probs = d.log_prob(x).exp()
    assert auto_goodness_of_fit(x.reshape(-1, n * n), probs) > TEST_FAILURE_RATE


def test_rounding_density_and_inverse():
    torch.manual_seed(3)
    n, tau = 4, 0.2
    log_mean, scale = torch.randn(n, n, dtype=F64), torch.full((n, n), 0.4, dtype=F64)
    d = RoundingBirkhoff(log_mean, scale, tau)
    mean = sinkhorn(log_mean)
    psi = mean + scale * torch.randn(50, n, n, dtype=F64)
    x = tau * psi + (1 - tau) * hungarian(psi)
    assert torch.equal(hungarian(x), hungarian(psi))
    expected = dist.Normal(mean, scale).log_prob(psi).sum((-1, -2)) - n * n * math.log(tau)
    assert torch.allclose(d.log_prob(x.clone()), expected)
    t = RoundingTransform(tau)
    assert torch.allclose(t.inv(t(psi)), psi)


def test_rounding_off_support_is_minus_inf():
    d = RoundingBirkhoff(torch.zeros(2, 2), 0.3 * torch.ones(2, 2), 0.2)
    # halfway between the two permutations: its preimage rounds to the other permutation
    assert d.log_prob(torch.full((2, 2), 0.5)).item() == -math.inf


def test_rounding_normalised_by_importance_sampling():
    # int q(X) dX = E_g[q(Y) / g(Y)] = 1 for a broad Gaussian g; checks injectivity + Jacobian
    torch.manual_seed(4)
    n, tau = 2, 0.4
    d = RoundingBirkhoff(torch.tensor([[1.0, 0.0], [0.5, 0.2]], dtype=F64), 0.3, tau)
    g = dist.Normal(torch.full((n, n), 0.5, dtype=F64), 0.8).to_event(2)
    y = g.sample((200_000,))
    w = (d.log_prob(y) - g.log_prob(y)).exp()
    se = w.std().item() / math.sqrt(len(w))
    assert abs(w.mean().item() - 1) < 4 * se


@pytest.mark.parametrize("bad", [0.0, 1.5, float("nan"), -1.0])
def test_rounding_bad_temperature(bad):
    with pytest.raises(ValueError, match="temperature"):
        RoundingBirkhoff(torch.zeros(3, 3), torch.ones(3, 3), temperature=bad)


def test_bad_arguments():
    with pytest.raises(ValueError, match="temperature"):
        StickBreakingBirkhoff(torch.zeros(2, 2), torch.ones(2, 2), temperature=0.0)
    with pytest.raises(ValueError, match="loc"):
        StickBreakingBirkhoff(torch.zeros(2, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="log_mean"):
        RoundingBirkhoff(torch.zeros(3), torch.ones(3))


def test_shapes_expand_batching():
    sb = StickBreakingBirkhoff(torch.zeros(2, 3, 3), torch.ones(2, 3, 3), 0.5)
    assert sb.batch_shape == (2,) and sb.event_shape == (4, 4)
    x = sb.rsample((5,))
    assert x.shape == (5, 2, 4, 4) and sb.log_prob(x).shape == (5, 2)
    e = sb.expand((7, 2))
    assert isinstance(e, StickBreakingBirkhoff) and e.sample().shape == (7, 2, 4, 4)
    assert e.log_prob(e.sample((3,))).shape == (3, 7, 2)
    rb = RoundingBirkhoff(torch.zeros(3, 3), 0.1 * torch.ones(3, 3), 0.2)
    assert rb.batch_shape == () and rb.event_shape == (3, 3)
    e = rb.expand((4,))
    assert isinstance(e, RoundingBirkhoff) and e.log_prob(e.sample((6,))).shape == (6, 4)


def test_reparameterised_gradients():
    loc = torch.zeros(3, 3, requires_grad=True)
    log_mean = torch.randn(4, 4, requires_grad=True)
    w = torch.randn(4, 4)
    sb = StickBreakingBirkhoff(loc, torch.ones(3, 3), 0.5)
    rb = RoundingBirkhoff(log_mean, 0.1 * torch.ones(4, 4), 0.2)
    ((sb.rsample() * w).sum() + (rb.rsample() * w).sum()).backward()
    assert loc.grad.abs().sum() > 0 and log_mean.grad.abs().sum() > 0


@pytest.mark.parametrize("family", ["stick", "round"])
def test_usable_as_pyro_guide_site(family):
    pyro.clear_param_store()
    torch.manual_seed(5)
    n = 3
    target = torch.eye(n)[[2, 0, 1]]

    def model():
        if family == "stick":  # priors whose support contains the guide's
            prior = StickBreakingBirkhoff(torch.zeros(n - 1, n - 1), torch.ones(n - 1, n - 1))
        else:
            prior = RoundingBirkhoff(torch.zeros(n, n), 0.5 * torch.ones(n, n), 0.5)
        x = pyro.sample("x", prior)
        pyro.sample("obs", dist.Normal(x, 0.3).to_event(2), obs=target)

    def guide():
        if family == "stick":
            loc = pyro.param("loc", torch.zeros(n - 1, n - 1))
            pyro.sample("x", StickBreakingBirkhoff(loc, torch.ones(n - 1, n - 1), 0.5))
        else:
            log_mean = pyro.param("log_mean", torch.zeros(n, n))
            pyro.sample("x", RoundingBirkhoff(log_mean, 0.3 * torch.ones(n, n), 0.5))

    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), pyro.infer.Trace_ELBO())
    losses = [svi.step() for _ in range(5)]
    assert all(math.isfinite(v) for v in losses)
    assert all(torch.isfinite(p).all() for p in pyro.get_param_store().values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_stick_breaking_low_temperature_is_finite(dtype):
    # saturated sigmoids collapse later sticks (u = l); log_prob and gradients must stay finite
    torch.manual_seed(6)
    loc = (3 * torch.randn(4, 4, dtype=dtype)).requires_grad_()
    d = StickBreakingBirkhoff(loc, torch.ones(4, 4, dtype=dtype), temperature=0.05)
    x = d.rsample((500,))
    lp = d.log_prob(x)
    assert torch.isfinite(x).all() and torch.isfinite(lp).all()
    lp.mean().backward()
    assert torch.isfinite(loc.grad).all()


@pytest.mark.parametrize("n", [2, 3, 4, 6])
@pytest.mark.parametrize("tau", [1.0, 0.3])
def test_stick_breaking_centre_is_barycentre(n, tau):
    t = StickBreakingBirkhoffTransform()
    loc = stick_breaking_centre(n, tau, dtype=F64)
    assert loc.shape == (n - 1, n - 1)
    centre = torch.full((n, n), 1 / n, dtype=F64)
    assert torch.allclose(t(torch.sigmoid(loc / tau)), centre, atol=1e-12)
    # the median of StickBreakingBirkhoff(loc, scale, tau) is the image of its median logits
    d = StickBreakingBirkhoff(loc, torch.full_like(loc, 0.01), tau)
    assert torch.allclose(d.sample((200,)).median(0).values, centre, atol=0.01)


def test_zero_loc_is_not_central():
    # the defect stick_breaking_centre fixes: beta = 1/2 piles mass near the diagonal
    x = StickBreakingBirkhoffTransform()(torch.full((5, 5), 0.5, dtype=F64))
    assert x[0, 0] == 0.5 and x.diagonal()[:-1].min() > 0.33 and x[0, -1] < 0.04
    assert torch.equal(hungarian(x), torch.eye(6, dtype=F64))


@pytest.mark.parametrize("bad", [1, 0, 2.5, "3"])
def test_stick_breaking_centre_bad_n(bad):
    with pytest.raises(ValueError, match="n must be"):
        stick_breaking_centre(bad)
