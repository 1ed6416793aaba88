"""Second derivatives: `log_likelihood_hessian`, the twice-differentiable kernel, Gamma shape."""

import pyro
import pytest
import torch

from models.phylo import (
    HKY,
    discrete_gamma_rates,
    log_likelihood,
    log_likelihood_hessian,
    phylo_model,
    pruning_log_likelihood,
    random_topologies,
)
from models.phylo.substitution import _gamma_rates_derivative, _gamma_rates_np
from tests.phylo.test_likelihood import _random_alignment


def _gradient(aln, children, lengths, **kw):
    x = lengths.clone().requires_grad_()
    log_likelihood(aln, children, x, **kw).backward()
    return x.grad


def _fd_jacobian_of_gradient(aln, children, lengths, **kw):
    """Central differences of the analytic gradient, one branch at a time."""
    cols = []
    for k in range(lengths.shape[-1]):
        h = 1e-6 * max(lengths[k].item(), 1e-3)
        e = torch.zeros_like(lengths)
        e[k] = h
        up = _gradient(aln, children, lengths + e, **kw)
        down = _gradient(aln, children, lengths - e, **kw)
        cols.append((up - down) / (2 * h))
    return torch.stack(cols, 1)


@pytest.mark.parametrize("gamma", [None, 0.5])
def test_ds1_hessian_matches_finite_differences_of_the_gradient(ds1, gamma):
    aln, trees = ds1
    children, lengths = trees[0].children, trees[0].lengths
    kw = {} if gamma is None else dict(substitution=HKY(2.5, torch.tensor([0.3, 0.2, 0.2, 0.3])),
                                       rates=discrete_gamma_rates(gamma, 4))  # fmt: skip
    exact = log_likelihood_hessian(aln, children, lengths, **kw)
    assert exact.shape == (51, 51)
    assert torch.equal(exact, exact.T) or torch.allclose(exact, exact.T, rtol=1e-12)
    fd = _fd_jacobian_of_gradient(aln, children, lengths, **kw)
    assert ((fd - exact).abs().max() / exact.abs().max()).item() < 1e-6
    assert ((fd - exact).norm() / exact.norm()).item() < 1e-6
    # in log branch lengths: the chain rule on the same two ingredients
    log_h = log_likelihood_hessian(aln, children, lengths, log_lengths=True, **kw)
    grad = _gradient(aln, children, lengths, **kw)
    expected = lengths[:, None] * exact * lengths[None, :] + torch.diag(lengths * grad)
    assert torch.allclose(log_h, expected, rtol=1e-10, atol=1e-8 * expected.abs().max())


def test_hessian_batches_trees():
    aln = _random_alignment(7, 30, seed=5)
    g = torch.Generator().manual_seed(3)
    children = random_topologies(7, 3, g)
    lengths = 0.02 + 0.3 * torch.rand(3, 11, generator=g, dtype=torch.float64)
    batched = log_likelihood_hessian(aln, children, lengths)
    for i in range(3):
        one = log_likelihood_hessian(aln, children[i], lengths[i])
        assert torch.allclose(batched[i], one, rtol=1e-13)
        fd = _fd_jacobian_of_gradient(aln, children[i], lengths[i])
        assert ((fd - one).abs().max() / one.abs().max()).item() < 1e-6


def test_kernel_is_twice_differentiable_through_phylo_model():
    aln = _random_alignment(6, 40, seed=4)
    tree = random_topologies(6, 1, torch.Generator().manual_seed(6))[0]
    g = torch.Generator().manual_seed(7)
    lengths = 0.05 + 0.2 * torch.rand(9, generator=g, dtype=torch.float64)
    model = phylo_model(aln, topology=tree)

    def loglik(x):
        return pyro.condition(model, data={"branch_lengths": x})()

    through_model = torch.autograd.functional.hessian(loglik, lengths)
    exact = log_likelihood_hessian(aln, tree, lengths)
    assert torch.allclose(through_model, exact, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("shared", [True, False])
def test_pruning_gradgradcheck(shared):
    aln = _random_alignment(4, 6, seed=7)
    g = torch.Generator().manual_seed(1)
    children = random_topologies(4, 2, g)
    topo = children[0] if shared else children
    tips, weights = aln.partials().mT.contiguous(), aln.weights
    trans = torch.rand(2, 5, 1, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    pi = torch.rand(2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    cat = torch.rand(1, generator=g, dtype=torch.float64, requires_grad=True)
    for per_pattern in (False, True):

        def f(trans, pi, cat, per_pattern=per_pattern):
            return pruning_log_likelihood(tips, weights, topo, trans, pi, cat, rescale_every=3,
                                          per_pattern=per_pattern)  # fmt: skip

        assert torch.autograd.gradgradcheck(f, (trans, pi, cat))


@pytest.mark.parametrize("shape", [0.05, 0.4, 1.0, 7.0, 120.0])
@pytest.mark.parametrize("categories", [2, 4, 8])
def test_gamma_rates_derivative_matches_finite_differences(shape, categories):
    a = torch.tensor(shape, dtype=torch.float64)
    h = 1e-5 * shape
    fd = (_gamma_rates_np(a + h, categories) - _gamma_rates_np(a - h, categories)) / (2 * h)
    exact = _gamma_rates_derivative(a, categories)
    # central differences here are good to ~1e-9 relative, except at tiny shapes (~1e-6)
    assert torch.allclose(exact, fd, rtol=2e-6, atol=2e-6 * fd.abs().max().item())
    assert exact.sum().abs() < 1e-9 * exact.abs().max()  # the rates' mean is always one


def test_gamma_shape_gradient_of_the_log_likelihood(ds1):
    aln, trees = ds1
    children, lengths = trees[0].children, trees[0].lengths

    def loglik(alpha):
        return log_likelihood(aln, children, lengths, rates=discrete_gamma_rates(alpha, 4))

    alpha = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)
    loglik(alpha).backward()
    h = 1e-5
    with torch.no_grad():
        fd = (loglik(alpha + h) - loglik(alpha - h)) / (2 * h)
    assert alpha.grad.item() == pytest.approx(fd.item(), rel=1e-6)
