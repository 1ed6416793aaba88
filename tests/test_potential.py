"""The batched potential: Jacobians, gradients, per-datum terms, temperatures and bad input,
checked against densities by hand, quadrature, finite differences and Pyro's own potential."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.mcmc.util import initialize_model

from varinf.potential import Potential

X = torch.tensor([0.3, -1.2, 2.0, 0.7, 1.1])
Y = torch.tensor([0, 2, 2, 1, 2])
GROUPS = torch.tensor([[1.0, 0.4, -0.3, 2.2, 0.9], [0.1, -0.8, 1.5, 0.2, 0.0]])


def mixed_model(x=X, y=Y, groups=GROUPS):
    """Real, positive and simplex sites, a latent in a plate at dim -2, data in a plate (as
    under Pyro's particle plate, global latents then have shape (C, 1, 1))."""
    loc = pyro.sample("loc", dist.Normal(0.0, 2.0))
    scale = pyro.sample("scale", dist.LogNormal(0.0, 0.5))
    probs = pyro.sample("probs", dist.Dirichlet(torch.tensor([2.0, 3.0, 4.0])))
    with pyro.plate("groups", 2, dim=-2):
        spread = pyro.sample("spread", dist.Gamma(3.0, 2.0))
    with pyro.plate("data", len(x), dim=-1):
        pyro.sample("x", dist.Normal(loc, scale), obs=x)
        pyro.sample("y", dist.Categorical(probs), obs=y)
        pyro.sample("g", dist.Normal(loc, spread), obs=groups)
        pyro.factor("shrink", -0.1 * (x - loc) ** 2)


def mixed_by_hand(values, beta):
    """beta * log-likelihood + log prior (constrained densities, without Jacobians)."""
    loc, scale, probs, spread = (values[k] for k in ("loc", "scale", "probs", "spread"))
    log_prior = (
        dist.Normal(0.0, 2.0).log_prob(loc)
        + dist.LogNormal(0.0, 0.5).log_prob(scale)
        + dist.Dirichlet(torch.tensor([2.0, 3.0, 4.0]).double()).log_prob(probs)
        + dist.Gamma(3.0, 2.0).log_prob(spread).sum((-2, -1))
    )
    per_datum = (
        dist.Normal(loc[:, None], scale[:, None]).log_prob(X)
        + probs.log()[:, Y]
        + dist.Normal(loc[:, None, None], spread).log_prob(GROUPS).sum(-2)
        - 0.1 * (X - loc[:, None]) ** 2
    )
    loglik = per_datum.sum(-1)
    return log_prior, loglik, per_datum, beta * loglik + log_prior


@pytest.fixture
def mixed():
    return Potential(mixed_model)


def test_layout(mixed):
    assert [s.name for s in mixed.sites] == ["loc", "scale", "probs", "spread"]
    assert [tuple(s.shape) for s in mixed.sites] == [(), (), (3,), (2, 1)]
    assert mixed.dim == 1 + 1 + 2 + 2 and mixed.num_data == 5
    assert mixed.sites[2].slice == slice(2, 4)


def test_terms_match_the_densities_by_hand(mixed):
    pyro.set_rng_seed(0)
    z = mixed.initial_points(6)
    values = mixed.constrain(z)
    betas = torch.tensor([0.0, 0.1, 0.3, 0.5, 0.9, 1.0])
    log_prior, loglik, per_datum, total = mixed_by_hand(values, betas)
    terms = mixed.terms(z)
    log_jacobian = terms.log_prior - log_prior
    torch.testing.assert_close(terms.log_likelihood, loglik)
    torch.testing.assert_close(terms.log_likelihood_per_datum, per_datum)
    torch.testing.assert_close(mixed.log_density(z, betas), total + log_jacobian)
    assert terms.log_prior.dtype == torch.float64


def test_log_density_equals_pyros_potential_energy(mixed):
    """An independent reference: Pyro's unbatched potential_fn, one chain at a time."""
    pyro.set_rng_seed(1)
    z = mixed.initial_points(3)
    _, potential_fn, _, _ = initialize_model(mixed_model, max_plate_nesting=2)
    value, grad, _ = mixed.value_and_grad(z)
    for chain in range(3):
        params = {
            s.name: z[chain, s.slice].reshape(s.transform.inverse_shape(s.shape)).clone()
            for s in mixed.sites
        }
        for p in params.values():
            p.requires_grad_(True)
        energy = potential_fn(params)
        pyro_grads = torch.autograd.grad(energy, list(params.values()))
        torch.testing.assert_close(-energy.double(), value[chain], rtol=1e-5, atol=1e-5)
        flat = torch.cat([g.reshape(-1) for g in pyro_grads]).double()
        torch.testing.assert_close(-flat, grad[chain], rtol=1e-4, atol=1e-4)


def test_gradient_matches_finite_differences(mixed):
    pyro.set_rng_seed(2)
    z = mixed.initial_points(4)
    betas = torch.tensor([0.0, 0.3, 0.7, 1.0], dtype=torch.float64)
    value, grad, terms = mixed.value_and_grad(z, betas)
    torch.testing.assert_close(value, terms.log_density(betas))
    step = 1e-6
    eye = torch.eye(mixed.dim, dtype=torch.float64)
    numeric = torch.stack(
        [
            (mixed.log_density(z + step * e, betas) - mixed.log_density(z - step * e, betas))
            / (2 * step)
            for e in eye
        ],
        dim=-1,
    )
    torch.testing.assert_close(grad, numeric, rtol=1e-6, atol=1e-6)


def test_unconstrained_exponential_prior_is_the_density_of_log_x():
    """For X ~ Exp(r), Z = log X has density r e^z exp(-r e^z); it integrates to one."""
    rate = 10.0

    def model():
        pyro.sample("length", dist.Exponential(rate))

    potential = Potential(model)
    z = torch.linspace(-25.0, 5.0, 30001, dtype=torch.float64)[:, None]
    log_prior = potential.log_prior(z)
    expected = math.log(rate) + z[:, 0] - rate * z[:, 0].exp()
    torch.testing.assert_close(log_prior, expected)
    integral = torch.trapezoid(log_prior.exp(), z[:, 0])
    assert abs(integral.item() - 1) < 1e-6


def test_unconstrained_simplex_prior_integrates_to_one():
    """The stick-breaking Jacobian: a Dirichlet's density over R^2 integrates to one."""

    def model():
        pyro.sample("probs", dist.Dirichlet(torch.tensor([2.0, 3.0, 1.5])))

    potential = Potential(model)
    grid = torch.linspace(-15.0, 15.0, 601, dtype=torch.float64)
    z = torch.cartesian_prod(grid, grid)
    density = potential.log_prior(z).exp().reshape(601, 601)
    integral = torch.trapezoid(torch.trapezoid(density, grid), grid)
    assert abs(integral.item() - 1) < 1e-4


def test_constrain_inverts_unconstrain(mixed):
    pyro.set_rng_seed(3)
    z = mixed.initial_points(5)
    values = mixed.constrain(z)
    assert values["spread"].shape == (5, 2, 1) and values["probs"].shape == (5, 3)
    torch.testing.assert_close(mixed.unconstrain(values), z)
    torch.testing.assert_close(mixed.constrain(mixed.unconstrain(values)), values)


def test_per_datum_terms_sum_to_the_total(mixed):
    pyro.set_rng_seed(4)
    z = mixed.initial_points(7)
    per_datum = mixed.log_likelihood(z, per_datum=True)
    assert per_datum.shape == (7, 5)
    torch.testing.assert_close(per_datum.sum(-1), mixed.log_likelihood(z))


def test_a_factor_outside_the_data_plate_leaves_no_per_datum_terms():
    def model():
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        with pyro.plate("data", 3):
            pyro.sample("x", dist.Normal(loc, 1.0), obs=torch.zeros(3))
        pyro.factor("global", -(loc**2))

    potential = Potential(model)
    assert potential.num_data is None
    z = torch.ones(2, 1, dtype=torch.float64)
    torch.testing.assert_close(
        potential.log_likelihood(z),
        torch.full(
            (2,),
            3 * dist.Normal(1.0, 1.0).log_prob(torch.tensor(0.0)).item() - 1,
            dtype=torch.float64,
        ),
    )
    with pytest.raises(ValueError, match="per_datum=True needs one plate"):
        potential.log_likelihood(z, per_datum=True)


def test_per_datum_terms_of_a_model_whose_likelihood_is_all_in_one_plate():
    def model():
        rate = pyro.sample("rate", dist.Gamma(2.0, 1.0))
        with pyro.plate("data", 3):
            pyro.sample("x", dist.Exponential(rate), obs=torch.tensor([0.5, 1.5, 1.0]))

    potential = Potential(model)
    z = torch.randn(4, 1, dtype=torch.float64)
    per_datum = potential.log_likelihood(z, per_datum=True)
    torch.testing.assert_close(per_datum.sum(-1), potential.log_likelihood(z))
    rate = z.exp()
    torch.testing.assert_close(per_datum, rate.log() - rate * torch.tensor([0.5, 1.5, 1.0]))


def test_beta_per_chain_equals_a_loop_over_beta(mixed):
    pyro.set_rng_seed(5)
    z = mixed.initial_points(4)
    betas = torch.tensor([0.0, 0.25, 0.5, 1.0])
    batched = mixed.log_density(z, betas)
    looped = torch.cat([mixed.log_density(z[i : i + 1], b.item()) for i, b in enumerate(betas)])
    torch.testing.assert_close(batched, looped)
    terms = mixed.terms(z)
    torch.testing.assert_close(batched, terms.log_prior + betas.double() * terms.log_likelihood)
    torch.testing.assert_close(mixed.log_density(z, 0.0), terms.log_prior)


def test_beta_zero_ignores_an_infinite_likelihood():
    def model():
        p = pyro.sample("p", dist.Beta(2.0, 2.0))
        pyro.factor("impossible", torch.where(p > 0.5, 0.0, -math.inf))

    potential = Potential(model)
    z = torch.tensor([[-1.0], [1.0]], dtype=torch.float64)  # p < 0.5, p > 0.5
    value, grad, terms = potential.value_and_grad(z, torch.tensor([0.0, 0.0]))
    torch.testing.assert_close(value, terms.log_prior)
    assert torch.isfinite(grad).all()
    assert potential.log_density(z, 1.0)[0] == -math.inf


def lognormal_scale_model():
    scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
    pyro.sample("x", dist.Normal(0.0, scale), obs=torch.tensor(0.5))


def test_non_finite_rows_get_nan_terms_and_leave_the_others_alone():
    """A NaN row, and a row whose exp overflows (scale = inf, where Normal(0, inf) would fail
    Pyro's validation), are not run through the model: NaN terms, zero gradient."""
    potential = Potential(lognormal_scale_model)
    z = torch.tensor([[0.1], [math.nan], [800.0], [-0.3]], dtype=torch.float64)
    value, grad, terms = potential.value_and_grad(z, torch.ones(4, dtype=torch.float64))
    finite = potential.value_and_grad(z[[0, 3]], torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(value[[0, 3]], finite[0])
    torch.testing.assert_close(grad[[0, 3]], finite[1])
    assert value[[1, 2]].isnan().all() and terms.log_likelihood[[1, 2]].isnan().all()
    assert (grad[[1, 2]] == 0).all()


def test_batch_dimensions_outside_plates_go_right_of_the_chains():
    def model():
        loc = pyro.sample("loc", dist.Normal(torch.zeros(3), 1.0))  # batch shape (3,), no plate
        pyro.sample("x", dist.Normal(loc, 0.5), obs=torch.tensor([0.1, 0.2, 0.3]))

    potential = Potential(model)
    assert potential.layout.chain_dim == -2 and potential.sites[0].shape == (3,)
    z = torch.randn(4, 3, dtype=torch.float64)
    expected = dist.Normal(z, 0.5).log_prob(torch.tensor([0.1, 0.2, 0.3]).double()).sum(-1)
    torch.testing.assert_close(potential.log_likelihood(z), expected)


def test_float32_on_request():
    def model():
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(loc, 1.0), obs=torch.tensor(0.5))

    potential = Potential(model, dtype=torch.float32)
    value, grad, _ = potential.value_and_grad(torch.zeros(2, 1))
    assert value.dtype == grad.dtype == torch.float32
    assert torch.get_default_dtype() == torch.float32  # restored after the model runs


def test_counts_likelihood_evaluations(mixed):
    z = mixed.initial_points(8)  # one batched run of 8 chains
    mixed.value_and_grad(z)
    mixed.log_prior(z[:3])
    assert mixed.num_evaluations == 8 + 8 + 3


def test_initial_points_from_prior_draws_and_a_given_dict():
    def model():
        pyro.sample("length", dist.Exponential(10.0))
        pyro.sample("loc", dist.Normal(0.0, 1.0))

    potential = Potential(model)
    pyro.set_rng_seed(6)
    lengths = potential.constrain(potential.initial_points(4000))["length"]
    # prior mean 0.1, sd 0.1: 5 standard errors of the mean of 4000 draws
    assert abs(lengths.mean().item() - 0.1) < 5 * 0.1 / math.sqrt(4000)
    z = potential.initial_points(3, init={"loc": 0.5})
    values = potential.constrain(z)
    torch.testing.assert_close(values["loc"], torch.full((3,), 0.5, dtype=torch.float64))
    assert len(set(values["length"].tolist())) == 3  # drawn from the prior, chain by chain


# -- the phylogenetic model: one batched likelihood call --------------------------------------


def small_phylo_model(**options):
    from models.phylo import Alignment, phylo_model, random_topologies

    aln = Alignment.from_sequences(
        ["a", "b", "c", "d", "e"], ["ACGTAC", "ACGAAC", "TCGAAT", "TCGGAT", "TCGGTT"]
    )
    topology = random_topologies(5, 1, generator=torch.Generator().manual_seed(0))[0]
    return aln, phylo_model(aln, topology, **options)


def test_phylo_model_runs_one_batched_likelihood_call(monkeypatch):
    import models.phylo.model as phylo

    aln, model = small_phylo_model()
    calls, original = [], phylo.pruning_log_likelihood

    def counted(*args, **kwargs):
        result = original(*args, **kwargs)
        calls.append(result.shape)
        return result

    monkeypatch.setattr(phylo, "pruning_log_likelihood", counted)
    potential = Potential(model)
    assert potential.dim == 2 * 5 - 3
    z = potential.initial_points(16)  # prior draws (after a one-off vectorisation check)
    calls.clear()
    value, grad, terms = potential.value_and_grad(z)
    assert calls == [torch.Size([16])]  # all 16 chains in one likelihood call
    assert value.shape == (16,) and grad.shape == (16, 7) and torch.isfinite(grad).all()


def test_ds1_top_topology_matches_the_pruning_likelihood():
    from models.phylo import datasets, log_likelihood, phylo_model, read_alignment, read_trees

    aln = read_alignment(datasets.path("DS1"))
    tree = read_trees(datasets.path("DS1-credible"), aln.taxa)[0]
    potential = Potential(phylo_model(aln, tree))
    assert potential.dim == 51
    pyro.set_rng_seed(7)
    z = potential.initial_points(8)
    lengths = potential.constrain(z)["branch_lengths"]
    direct = log_likelihood(aln, tree.children, lengths)
    terms = potential.terms(z)
    torch.testing.assert_close(terms.log_likelihood, direct.double())
    prior = dist.Exponential(10.0).log_prob(lengths).sum(-1) + z.sum(-1)  # Jacobian of exp
    torch.testing.assert_close(terms.log_prior, prior)


def test_phylo_per_site_terms_are_per_datum():
    """phylo_model(per_site=True) puts the patterns in a plate: one term per site pattern."""
    aln, model = small_phylo_model(per_site=True)
    per_site, whole = Potential(model), Potential(small_phylo_model()[1])
    assert per_site.num_data == len(aln.weights) and whole.num_data is None
    z = torch.randn(6, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    terms = per_site.terms(z)
    assert terms.log_likelihood_per_datum.shape == (6, len(aln.weights))
    torch.testing.assert_close(terms.log_likelihood_per_datum.sum(-1), terms.log_likelihood)
    torch.testing.assert_close(terms.log_likelihood, whole.log_likelihood(z))


# -- bad input ----------------------------------------------------------------------------------


def test_discrete_latent_sites_are_named():
    def model():
        pyro.sample("loc", dist.Normal(0.0, 1.0))
        pyro.sample("k", dist.Categorical(torch.ones(3) / 3))
        pyro.sample("flip", dist.Bernoulli(0.5))

    with pytest.raises(ValueError, match=r"discrete latent site\(s\) \['k', 'flip'\]"):
        Potential(model)


def test_subsampled_plates_are_refused():
    def model():
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        with pyro.plate("data", 100, subsample_size=10):
            pyro.sample("x", dist.Normal(loc, 1.0), obs=torch.zeros(10))

    with pytest.raises(ValueError, match=r"\['data'\] are subsampled.*full likelihood"):
        Potential(model)


def test_bad_z_shape_names_the_argument(mixed):
    for z in (torch.zeros(3), torch.zeros(3, 5), torch.zeros(0, 6), [[0.0] * 6]):
        with pytest.raises(ValueError, match=r"z must be a tensor of shape \(num_chains, 6\)"):
            mixed.log_density(z)


def test_bad_beta_shape(mixed):
    z = torch.zeros(3, 6)
    with pytest.raises(ValueError, match=r"beta must be a float or have shape \(3,\)"):
        mixed.log_density(z, torch.ones(4))
    with pytest.raises(ValueError, match="non-negative"):
        mixed.log_density(z, -1.0)


def test_a_model_that_sums_over_the_chains_is_refused():
    def model():
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        pyro.factor("total", dist.Normal(loc, 1.0).log_prob(torch.tensor(0.3)).sum())

    potential = Potential(model)
    one = potential.log_density(torch.zeros(1, 1))  # one chain at a time works
    torch.testing.assert_close(
        one, dist.Normal(0.0, 1.0).log_prob(torch.tensor([0.0, 0.3])).sum().double()[None]
    )
    with pytest.raises(ValueError, match="'total' does not vectorise over the chain plate"):
        potential.log_density(torch.zeros(3, 1))
    assert potential.num_evaluations == 1


def test_a_model_whose_shapes_break_under_the_chain_plate_is_refused():
    def model():
        loc = pyro.sample("loc", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.factor("first", loc.reshape(2)[0])  # assumes the unbatched shape

    potential = Potential(model)
    with pytest.raises(ValueError, match="failed when run for 2 chains at once"):
        potential.initial_points(3)


def test_a_support_that_depends_on_another_latent_is_refused():
    def model():
        upper = pyro.sample("upper", dist.Exponential(1.0))
        pyro.sample("u", dist.Uniform(0.0, upper))

    pyro.set_rng_seed(8)
    with pytest.raises(ValueError, match="support of site 'u' depends on other latent sites"):
        Potential(model).log_density(torch.zeros(2, 2))


def test_bad_init_and_values(mixed):
    with pytest.raises(ValueError, match=r"init names site\(s\) \['nope'\]"):
        mixed.initial_points(2, init={"nope": 1.0})
    with pytest.raises(ValueError, match=r"init\['probs'\] must have shape \(3,\)"):
        mixed.initial_points(2, init={"probs": torch.ones(4) / 4})
    with pytest.raises(ValueError, match="num_chains must be a positive integer"):
        mixed.initial_points(0)
    with pytest.raises(ValueError, match=r"lacks the latent site\(s\) \['spread'\]"):
        mixed.unconstrain(
            {"loc": torch.zeros(2), "scale": torch.ones(2), "probs": torch.ones(2, 3)}
        )


def test_a_model_without_latent_sites_is_refused():
    with pytest.raises(ValueError, match="no latent sample sites"):
        Potential(lambda: pyro.sample("x", dist.Normal(0.0, 1.0), obs=torch.tensor(0.0)))
