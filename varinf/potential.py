r"""From (model, args) to a batched log density over unconstrained latents: the sampling core.

MCMC, sequential Monte Carlo, Laplace approximations and nested sampling work on
$\mathbb{R}^D$. Each continuous latent site $x_j$ of a Pyro model, with support $S_j$, is
reached from an unconstrained $z_j$ by Pyro's bijection $T_j = \texttt{biject\_to}(S_j)$,
$x_j = T_j(z_j)$ (exp for positive sites, stick-breaking for simplices, ...). By the change of
variables the prior density of $z = (z_1, \dots, z_J)$ is

$$\log p_Z(z) = \sum_j \Big[\log p\big(x_j = T_j(z_j) \mid x_{<j}\big)
    + \log \big|\det J_{T_j}(z_j)\big|\Big],$$

and the tempered log density at inverse temperature $\beta$ (a power posterior, Friel and
Pettitt 2008) is

$$\log \pi_\beta(z) = \beta \log p(x \mid T(z)) + \log p_Z(z).$$

`Potential` evaluates both terms for a batch of $C$ points ``z`` of shape ``(C, D)`` in one run
of the model, under a plate of the $C$ chains placed left of all the model's own plates, so a
vectorised likelihood (such as the phylogenetic pruning likelihood) is called once for all
chains. Written by hand because Pyro's ``potential_fn`` (``pyro.infer.mcmc.util``) evaluates one
unbatched point per call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import pyro
import pyro.poutine as poutine
import torch
from torch.distributions import Transform, biject_to

from varinf.potential_layout import (
    ModelLayout,
    PotentialTerms,
    SetLatents,
    default_dtype,
    model_device,
    prototype_trace,
)

__all__ = ["Potential", "PotentialTerms", "Site"]

CHAIN_PLATE = "varinf_chains"


class Site(NamedTuple):
    """One latent site as `Potential` lays it out in ``z``.

    Attributes:
        name: The Pyro site name.
        shape: Its constrained shape per chain (batch and event shape of one unvectorised run).
        transform: ``biject_to(support)``, from unconstrained to constrained values.
        slice: The columns of ``z`` holding the site's unconstrained values.
    """

    name: str
    shape: torch.Size
    transform: Transform
    slice: slice


class Potential:
    r"""The log prior, log-likelihood and tempered log density of a Pyro model over a batch of
    unconstrained points, all chains in one model call.

    For ``z`` of shape ``(C, D)`` (``C`` chains or particles, ``D = dim`` unconstrained
    dimensions) every method returns per-chain values of shape ``(C,)``:

    - `log_prior`: $\log p_Z(z) = \sum_j \log p(T_j(z_j) \mid \cdot) + \log|\det J_{T_j}(z_j)|$,
      the latent sites' log densities plus the log-Jacobians of the ``biject_to`` transforms;
    - `log_likelihood`: $\log p(x \mid T(z))$, the observed sites and ``pyro.factor`` terms;
      ``per_datum=True`` gives ``(C, N)`` when one plate of size ``N`` holds every likelihood
      site;
    - `log_density`: $\beta \log p(x \mid T(z)) + \log p_Z(z)$ for a float $\beta$ or one per
      chain, shape ``(C,)``;
    - `value_and_grad`: that value and its gradient ``(C, D)`` from one model call.

    Values are log densities, to be maximised; HMC's potential energy is their negative.
    Everything is computed in ``dtype`` (float64 by default, as evidence estimates accumulate
    many terms): the model runs with ``dtype`` as torch's default dtype, so constants it creates
    from Python numbers have that precision. Written by hand because Pyro's ``potential_fn`` is
    unbatched over chains.

    Args:
        model: A Pyro model with continuous latent sites that broadcasts over a leading batch
            dimension (as Pyro's ``vectorize_particles=True`` requires).
        args: Positional arguments of the model.
        kwargs: Keyword arguments of the model.
        dtype: Floating-point type of ``z`` and of every returned value.
        max_plate_nesting: Batch dimensions the model uses; the chain plate goes at
            ``-(max_plate_nesting + 1)``. Found from one unvectorised run when ``None``.
        check_vectorised: Before the first call with more than one chain, check on two fixed
            points that every site's log density per chain is the same with the other chain
            beside it as alone (a model that sums or mixes over the chains' batch dimension
            fails this); three model runs, not counted in ``num_evaluations``. A model that
            does not vectorise can still be evaluated one chain at a time (``C = 1``), as
            Pyro's NUTS does.

    Attributes:
        dim: $D$, the total unconstrained dimension.
        sites: The latent sites (`Site`: name, shape, transform, slice), in model order.
        num_data: $N$ when one plate holds every likelihood site, else ``None``.
        num_evaluations: Likelihood evaluations so far: ``C`` per batched model call.
        device: Where the model's latent values live (``initial_points`` returns ``z`` there).

    Raises:
        ValueError: discrete latent sites (named), a subsampled plate, a model without latent
            sites, a support that depends on other latents, or a model that does not vectorise
            over the chain plate (the site named); later, a ``z`` or ``beta`` of the wrong
            shape.

    Examples:
        >>> import pyro, pyro.distributions as dist
        >>> def model(data):
        ...     rate = pyro.sample("rate", dist.Gamma(2.0, 1.0))
        ...     with pyro.plate("data", len(data)):
        ...         pyro.sample("x", dist.Exponential(rate), obs=data)
        >>> potential = Potential(model, (torch.tensor([0.5, 1.5, 1.0]),))
        >>> potential.dim, potential.num_data, potential.sites[0].name
        (1, 3, 'rate')
        >>> z = torch.zeros(4, 1)  # rate = 1 in every chain
        >>> potential.log_likelihood(z, per_datum=True)[0]
        tensor([-0.5000, -1.5000, -1.0000], dtype=torch.float64)
        >>> value, grad, terms = potential.value_and_grad(z, beta=torch.tensor([0, 0.5, 1, 1]))
        >>> value.shape, grad.shape, potential.num_evaluations
        (torch.Size([4]), torch.Size([4, 1]), 8)
    """

    def __init__(
        self,
        model: Callable,
        args: tuple = (),
        kwargs: dict | None = None,
        *,
        dtype: torch.dtype = torch.float64,
        max_plate_nesting: int | None = None,
        check_vectorised: bool = True,
    ) -> None:
        self.model = model
        self.args = tuple(args)
        self.kwargs = {} if kwargs is None else dict(kwargs)
        self.dtype = dtype
        self.num_evaluations = 0
        prototype = prototype_trace(model, self.args, self.kwargs)
        self.layout = ModelLayout(prototype, max_plate_nesting)
        self.device = model_device(prototype, self.layout)
        self.sites = _lay_out(self.layout)
        self.dim = self.sites[-1].slice.stop
        self.num_data = self.layout.num_data
        self._vectorisation_unchecked = check_vectorised

    # -- evaluation ------------------------------------------------------------------------

    def terms(self, z: torch.Tensor) -> PotentialTerms:
        """Log prior (Jacobians included), log-likelihood and its per-datum terms at ``z``.

        Differentiable with respect to ``z`` when ``z`` requires a gradient. Rows where ``z`` is not
        finite, or its transform leaves the support (``exp`` of a large ``z`` overflowing to
        inf, of a very negative one underflowing to 0), get NaN terms and a zero gradient
        without running the model on them.
        """
        z = self._check_z(z)
        values, log_jacobian = self._constrain(z)
        broken = _broken_rows(z, values, self.layout.latents)
        if broken.any():
            # A wild leapfrog step must not stop the batched model call for every other chain:
            # its row runs at a stand-in point and gets NaN terms, which the samplers reject
            # as a divergence.
            z = torch.where(broken[:, None], torch.zeros_like(z), z)
            values, log_jacobian = self._constrain(z)
        trace = self._run(values, z.shape[0])
        terms = self.layout.terms(trace, log_jacobian, self.dtype)
        return terms.masked(broken) if broken.any() else terms

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """$\\log p_Z(z)$, shape ``(C,)``."""
        return self.terms(z).log_prior

    def log_likelihood(self, z: torch.Tensor, per_datum: bool = False) -> torch.Tensor:
        """$\\log p(x \\mid T(z))$, shape ``(C,)``, or ``(C, N)`` with ``per_datum=True``."""
        terms = self.terms(z)
        if not per_datum:
            return terms.log_likelihood
        if terms.log_likelihood_per_datum is None:
            raise ValueError(
                "per_datum=True needs one plate around every likelihood site of the model; "
                "this model has none (num_data is None)"
            )
        return terms.log_likelihood_per_datum

    def log_density(self, z: torch.Tensor, beta: float | torch.Tensor = 1.0) -> torch.Tensor:
        """$\\beta \\log p(x \\mid T(z)) + \\log p_Z(z)$, shape ``(C,)``; ``beta`` a float or
        ``(C,)``."""
        return self.terms(z).log_density(beta)

    def value_and_grad(
        self, z: torch.Tensor, beta: float | torch.Tensor = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor, PotentialTerms]:
        """`log_density` at ``z``, its gradient ``(C, D)`` and the (detached) terms, from one
        model call and one backward pass."""
        z = self._check_z(z).detach().requires_grad_(True)
        with torch.enable_grad():
            terms = self.terms(z)
            value = terms.log_density(beta)
            (grad,) = torch.autograd.grad(value.sum(), z)
        return value.detach(), grad, terms.detach()

    # -- the maps between z and sample values ----------------------------------------------

    def constrain(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """The constrained value of every latent site, ``name -> (C, *site.shape)``."""
        return self._constrain(self._check_z(z))[0]

    def unconstrain(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """The inverse of `constrain`: ``(C, *site.shape)`` values to ``z`` of shape ``(C, D)``."""
        missing = [site.name for site in self.sites if site.name not in values]
        if missing:
            raise ValueError(f"values lacks the latent site(s) {missing} of the model")
        num_chains = _num_chains(values, self.sites)
        return self._unconstrain(values, num_chains)

    def initial_points(self, num_chains: int, init: dict | None = None) -> torch.Tensor:
        """Starting points ``(num_chains, D)``: prior draws from one batched model run.

        Args:
            num_chains: $C$.
            init: Optional constrained values ``name -> site.shape`` (shared by every chain)
                or ``(C, *site.shape)``; sites it lacks are drawn from the prior given it.
        """
        from varinf.weights import check_num_particles

        num_chains = check_num_particles(num_chains, "num_chains")
        given = self._broadcast_init(init or {}, num_chains)
        with torch.no_grad():
            trace = self._run(given, num_chains)
        values = {
            site.name: trace.nodes[site.name]["value"].reshape((num_chains, *site.shape))
            for site in self.sites
        }
        z = self._unconstrain(values, num_chains)
        bad = [s.name for s in self.sites if not torch.isfinite(z[:, s.slice]).all()]
        if bad:
            raise ValueError(
                f"the prior draws of site(s) {bad} lie on the boundary of their support; pass "
                "initial values for them as init={name: value}"
            )
        return z

    # -- internals ---------------------------------------------------------------------------

    def _check_vectorised(self) -> None:
        self._vectorisation_unchecked = False
        num_evaluations = self.num_evaluations
        generator = torch.Generator().manual_seed(0)
        z = torch.rand(2, self.dim, generator=generator, dtype=self.dtype) * 4 - 2
        z = z.to(self.device)
        with torch.no_grad():
            batched = self._site_log_densities(z)
            alone = [self._site_log_densities(z[i : i + 1]) for i in range(2)]
        self.num_evaluations = num_evaluations
        for name, value in batched.items():
            single = torch.cat([one[name] for one in alone])
            if not torch.isclose(value, single, rtol=1e-6, atol=1e-8, equal_nan=True).all():
                raise ValueError(
                    f"site {name!r} does not vectorise over the chain plate: its log density "
                    "for a chain changes when another chain is evaluated beside it; the model "
                    "must keep a leading batch dimension of its latent values apart (no sums or "
                    "reshapes over it). Pass check_vectorised=False to skip this check"
                )

    def _site_log_densities(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        values, _ = self._constrain(z)
        trace = self._run(values, z.shape[0])
        return self.layout.site_log_densities(trace, z.shape[0], self.dtype)

    def _check_z(self, z: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(z) or z.dim() != 2 or z.shape[1] != self.dim or not len(z):
            shape = tuple(z.shape) if torch.is_tensor(z) else type(z).__name__
            raise ValueError(
                f"z must be a tensor of shape (num_chains, {self.dim}) (one row of unconstrained "
                f"latents per chain), got {shape}"
            )
        return z.to(self.dtype)

    def _constrain(self, z: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        values = {}
        log_jacobian = z.new_zeros(z.shape[0])
        for site in self.sites:
            u = z[:, site.slice].reshape((z.shape[0], *site.transform.inverse_shape(site.shape)))
            x = site.transform(u)
            values[site.name] = x
            ladj = site.transform.log_abs_det_jacobian(u, x)
            log_jacobian = log_jacobian + ladj.reshape(z.shape[0], -1).sum(-1)
        return values, log_jacobian

    def _unconstrain(self, values: dict, num_chains: int) -> torch.Tensor:
        columns = []
        for site in self.sites:
            value = torch.as_tensor(values[site.name]).to(self.dtype)
            if value.shape != (num_chains, *site.shape):
                raise ValueError(
                    f"values[{site.name!r}] must have shape {(num_chains, *site.shape)} "
                    f"(chains, *site shape), got {tuple(value.shape)}"
                )
            columns.append(site.transform.inv(value).reshape(num_chains, -1))
        return torch.cat(columns, dim=-1)

    def _broadcast_init(self, init: dict, num_chains: int) -> dict[str, torch.Tensor]:
        shapes = {site.name: site.shape for site in self.sites}
        unknown = sorted(set(init) - set(shapes))
        if unknown:
            raise ValueError(f"init names site(s) {unknown} that are not latent sites of the model")
        given = {}
        for name, value in init.items():
            value = torch.as_tensor(value, dtype=self.dtype)
            if value.shape == shapes[name]:
                value = value.expand((num_chains, *shapes[name]))
            if value.shape != (num_chains, *shapes[name]):
                raise ValueError(
                    f"init[{name!r}] must have shape {tuple(shapes[name])} or "
                    f"{(num_chains, *shapes[name])}, got {tuple(value.shape)}"
                )
            given[name] = value
        return given

    def _run(self, values: dict, num_chains: int) -> poutine.Trace:
        """One traced run of the model under the chain plate, latent sites set to ``values``
        (``(C, *shape)`` each; sites not given are drawn from the prior)."""
        if num_chains > 1 and self._vectorisation_unchecked:
            self._check_vectorised()
        padded = {name: self.layout.pad(name, value) for name, value in values.items()}
        plate = pyro.plate(CHAIN_PLATE, num_chains, dim=self.layout.chain_dim)
        model = plate(SetLatents(padded)(self.model))
        self.num_evaluations += num_chains
        try:
            with default_dtype(self.dtype):
                return poutine.trace(model).get_trace(*self.args, **self.kwargs)
        except (RuntimeError, ValueError, IndexError) as error:
            raise ValueError(
                f"the model failed when run for {num_chains} chains at once, in a plate at dim "
                f"{self.layout.chain_dim} left of its own plates: {error}. Potential needs a "
                "model that broadcasts over a leading batch dimension of its latent values "
                "(index with `...`, avoid reshapes that assume a shape); declare batch "
                "dimensions with pyro.plate, or set max_plate_nesting"
            ) from error


def _lay_out(layout: ModelLayout) -> list[Site]:
    sites, start = [], 0
    for name, shape, support in layout.latents:
        transform = biject_to(support)
        width = transform.inverse_shape(shape).numel()
        sites.append(Site(name, shape, transform, slice(start, start + width)))
        start += width
    return sites


def _broken_rows(z: torch.Tensor, values: dict, latents) -> torch.Tensor:
    """Rows with a non-finite ``z``, or a value its transform sent off the support (``exp``
    overflowing to inf or underflowing to 0); ``latents`` as in `ModelLayout`."""
    broken = ~z.isfinite().all(-1)
    for name, _, support in latents:
        value = values[name].detach()
        inside = support.check(value).reshape(len(z), -1).all(-1)
        broken = broken | ~inside | ~value.reshape(len(z), -1).isfinite().all(-1)
    return broken


def _num_chains(values: dict, sites: list[Site]) -> int:
    first = torch.as_tensor(values[sites[0].name])
    extra = first.dim() - len(sites[0].shape)
    if extra != 1:
        raise ValueError(
            f"values[{sites[0].name!r}] must have shape (num_chains, *{tuple(sites[0].shape)}), "
            f"got {tuple(first.shape)}"
        )
    return first.shape[0]
