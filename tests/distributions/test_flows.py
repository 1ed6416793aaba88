"""Flows: every layer's log-determinant against autograd's Jacobian, inverses, save and load."""

import pytest
import torch

from varinf.distributions.flows import (
    FLOWS,
    ActNorm,
    AdditiveCoupling,
    InverseTransformModule,
    build_flow,
)

DIM = 3


@pytest.fixture(autouse=True)
def float64():
    """Pyro's autoregressive inverse allocates with the default dtype."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def make(flow):
    torch.manual_seed(0)
    transform = build_flow(DIM, flow, depth=2, hidden=8).double()
    # move every layer away from its (near-identity) initialisation
    with torch.no_grad():
        for parameter in transform.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    return transform


@pytest.mark.parametrize("flow", FLOWS)
def test_log_det_matches_the_jacobian(flow):
    transform = make(flow)
    x = torch.randn(5, DIM, dtype=torch.float64)
    y = transform(x)
    log_det = transform.log_abs_det_jacobian(x, y)
    assert log_det.shape == (5,)
    for i in range(5):
        jacobian = torch.autograd.functional.jacobian(lambda v: transform(v.clone()), x[i])
        assert torch.allclose(log_det[i], torch.linalg.slogdet(jacobian).logabsdet, atol=1e-8)


@pytest.mark.parametrize("flow", FLOWS)
def test_inverse_of_forward_is_the_identity(flow):
    transform = make(flow)
    x = torch.randn(7, DIM, dtype=torch.float64)
    y = transform(x)
    # a clone defeats the transform's cache, so the inverse is really computed
    assert torch.allclose(transform.inv(y.clone()), x, atol=1e-8)
    assert torch.allclose(transform(transform.inv(y.clone())), y, atol=1e-8)


@pytest.mark.parametrize("flow", FLOWS)
def test_state_dict_round_trip(flow):
    transform = make(flow)
    torch.manual_seed(1)  # a different seed: other permutations, other weights
    other = build_flow(DIM, flow, depth=2, hidden=8).double()
    x = torch.randn(4, DIM, dtype=torch.float64)
    other(x.clone())  # an ActNorm's first call would initialise it: after a load it must not
    other.load_state_dict(transform.state_dict())
    assert torch.allclose(other(x.clone()), transform(x.clone()), atol=1e-12)


def test_actnorm_initialises_from_its_first_batch_only():
    layer = ActNorm(2).double()
    first = 5.0 + 3.0 * torch.randn(500, 2, dtype=torch.float64)
    out = layer(first)
    assert torch.allclose(out.mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(out.std(0), torch.ones(2, dtype=torch.float64), atol=1e-10)
    scale = layer.log_scale.detach().clone()
    layer(10.0 * torch.randn(500, 2, dtype=torch.float64))
    assert torch.equal(layer.log_scale.detach(), scale)
    assert bool(layer.initialized)


def test_additive_coupling_preserves_volume_and_inverts():
    layer = AdditiveCoupling(4, [8]).double()
    x = torch.randn(3, 4, dtype=torch.float64)
    y = layer(x)
    assert torch.equal(y[:, :2], x[:, :2])
    assert torch.equal(layer.log_abs_det_jacobian(x, y), torch.zeros(3, dtype=torch.float64))


def test_inverse_module_keeps_parameters_registered():
    inner = build_flow(3, "iaf", depth=1)
    wrapped = InverseTransformModule(inner)
    assert {id(p) for p in wrapped.parameters()} == {id(p) for p in inner.parameters()}
    assert len(list(wrapped.parameters())) > 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="flow must be one of"):
        build_flow(3, "glowworm")
    with pytest.raises(ValueError, match="input_dim >= 2"):
        build_flow(1, "realnvp")
    with pytest.raises(ValueError, match="depth"):
        build_flow(3, "iaf", depth=0)
    with pytest.raises(ValueError, match="flow='spline' for one dimension"):
        build_flow(1, "iaf")
    assert build_flow(1, "spline", depth=2)(torch.zeros(2, 1)).shape == (2, 1)


def test_flow_guide_state_dict_round_trip(tmp_path):
    """Saved with torch.save(guide.state_dict()), loaded into a guide built with another seed
    (so other permutations and weights): the same density."""
    import pyro

    from models.conjugate import ConjugateGaussian
    from varinf.guides import flow_guide

    problem = ConjugateGaussian.example()
    pyro.clear_param_store()
    torch.manual_seed(0)
    guide = flow_guide(problem.model, "iaf", depth=2, hidden=8)
    guide()
    with torch.no_grad():
        for parameter in guide.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    point = torch.tensor([0.2, -0.4])
    expected = guide.get_posterior().log_prob(point)
    torch.save(guide.state_dict(), tmp_path / "guide.pt")

    pyro.clear_param_store()
    torch.manual_seed(1)
    restored = flow_guide(problem.model, "iaf", depth=2, hidden=8)
    restored()  # builds the flow (lazily, as Pyro's autoguides do)
    # fresh copies of the point: a transform caches its last (input, output) pair
    assert not torch.allclose(restored.get_posterior().log_prob(point.clone()), expected)
    restored.load_state_dict(torch.load(tmp_path / "guide.pt"))
    assert torch.allclose(restored.get_posterior().log_prob(point.clone()), expected)
    with pytest.raises(ValueError, match="flow must be one of"):
        flow_guide(problem.model, "glowworm")
