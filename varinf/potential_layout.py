r"""How `varinf.potential.Potential` reads a model's traces: which sites are latent and which are
likelihood, where the chain and datum dimensions sit, and the per-chain sums of their log
densities.

With $M$ batch dimensions in the model (its plates and any other batch dimension of its
sites), the chain plate sits at dimension $-(M + 1)$, so every site's log density, right-aligned
to rank $M + 1$, has the chains first. The log prior sums the latent sites over every other
dimension; the log-likelihood sums the observed sites and factors, over every dimension but
the datum plate's when ``per_datum`` terms are kept.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, fields

import pyro.poutine as poutine
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from varinf.handlers import check_beta


@dataclass(frozen=True)
class PotentialTerms:
    """The parts of the tempered log density at a batch of ``C`` points.

    Attributes:
        log_prior: $\\log p_Z(z)$ with the transforms' log-Jacobians, shape ``(C,)``.
        log_likelihood: $\\log p(x \\mid T(z))$, shape ``(C,)``.
        log_likelihood_per_datum: Its terms over the datum plate, ``(C, N)``, or ``None``
            when no plate holds every likelihood site.
    """

    log_prior: torch.Tensor
    log_likelihood: torch.Tensor
    log_likelihood_per_datum: torch.Tensor | None

    def log_density(self, beta: float | torch.Tensor = 1.0) -> torch.Tensor:
        """$\\beta \\log p(x \\mid T(z)) + \\log p_Z(z)$, shape ``(C,)``; ``beta`` a float or
        ``(C,)`` (a likelihood of $-\\infty$ counts 0 where $\\beta = 0$)."""
        beta = check_beta(beta, None if _is_number(beta) else -1)
        if _is_number(beta):
            if beta == 0:  # the prior, also where the likelihood is -inf
                return self.log_prior + torch.zeros_like(self.log_likelihood)
            return self.log_prior + beta * self.log_likelihood
        if beta.shape != self.log_prior.shape:
            raise ValueError(
                f"beta must be a float or have shape {tuple(self.log_prior.shape)} (one per "
                f"chain), got {tuple(beta.shape)}"
            )
        beta = beta.to(self.log_likelihood)
        tempered = torch.where(beta == 0, 0.0, beta * self.log_likelihood)
        return self.log_prior + tempered

    def masked(self, rows: torch.Tensor) -> PotentialTerms:
        """The same terms with NaN at ``rows`` (a ``(C,)`` boolean mask)."""
        return self._map(lambda v: v.masked_fill(_expand(rows, v), math.nan))

    def detach(self) -> PotentialTerms:
        """The same terms cut from the autograd graph."""
        return self._map(torch.Tensor.detach)

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> PotentialTerms:
        values = (getattr(self, f.name) for f in fields(self))
        return PotentialTerms(*(None if v is None else fn(v) for v in values))


class ModelLayout:
    """The sites and dimensions of a model, read from one unvectorised trace.

    Attributes:
        latents: ``(name, shape, support)`` of every latent sample site, in model order.
        likelihood: Names of the observed sites and factors (``pyro.deterministic`` excluded).
        max_plate_nesting: $M$.
        chain_dim: $-(M + 1)$.
        datum_frame: ``(name, dim, size)`` of the plate holding every likelihood site, or
            ``None``.
    """

    def __init__(self, trace: poutine.Trace, max_plate_nesting: int | None) -> None:
        sites = [
            s for s in trace.nodes.values() if s["type"] == "sample" and not site_is_subsample(s)
        ]
        _check_not_subsampled(sites)
        latent = [s for s in sites if not s["is_observed"]]
        _check_continuous(latent)
        self.latents = [
            (s["name"], s["fn"].batch_shape + s["fn"].event_shape, s["fn"].support) for s in latent
        ]
        self._batch_ndim = {s["name"]: len(s["fn"].batch_shape) for s in latent}
        self.likelihood = [
            s["name"] for s in sites if s["is_observed"] and not s["infer"].get("_deterministic")
        ]
        if max_plate_nesting is None:
            max_plate_nesting = _batch_ndim(sites)
        self.max_plate_nesting = max_plate_nesting
        self.chain_dim = -(max_plate_nesting + 1)
        self.datum_frame = _datum_frame([trace.nodes[name] for name in self.likelihood])

    @property
    def num_data(self) -> int | None:
        return None if self.datum_frame is None else self.datum_frame[2]

    def pad(self, name: str, value: torch.Tensor) -> torch.Tensor:
        """A ``(C, *shape)`` value reshaped to what the site holds under the chain plate."""
        ones = (1,) * (self.max_plate_nesting - self._batch_ndim[name])
        return value.reshape(value.shape[:1] + ones + value.shape[1:])

    def site_log_densities(
        self, trace: poutine.Trace, num_chains: int, dtype: torch.dtype
    ) -> dict[str, torch.Tensor]:
        """Each latent and likelihood site's log density per chain, ``(C, N)`` for likelihood
        sites when a datum plate exists, else ``(C, 1)``, in ``dtype``."""
        self._check_same_sites(trace)
        for name, _, support in self.latents:
            _check_same_support(name, support, trace.nodes[name]["fn"].support)
        trace.compute_log_prob()
        names = [name for name, _, _ in self.latents] + self.likelihood
        return {name: self._per_chain(trace.nodes[name], num_chains, dtype) for name in names}

    def terms(
        self, trace: poutine.Trace, log_jacobian: torch.Tensor, dtype: torch.dtype
    ) -> PotentialTerms:
        """Per-chain log prior (plus ``log_jacobian``) and log-likelihood of a chain-plate
        trace, in ``dtype``."""
        num_chains = log_jacobian.shape[0]
        sites = self.site_log_densities(trace, num_chains, dtype)
        log_prior = log_jacobian.to(dtype)
        for name, _, _ in self.latents:
            log_prior = log_prior + sites[name].sum(-1)
        per_datum = torch.zeros(
            (num_chains, self.num_data or 1), dtype=dtype, device=log_prior.device
        )
        for name in self.likelihood:
            per_datum = per_datum + sites[name]
        log_likelihood = per_datum.sum(-1)
        return PotentialTerms(log_prior, log_likelihood, per_datum if self.num_data else None)

    def _per_chain(self, site: dict, num_chains: int, dtype: torch.dtype) -> torch.Tensor:
        """The site's log density summed to ``(C, N)`` (datum plate kept) or ``(C, 1)``."""
        rank = self.max_plate_nesting + 1
        log_prob = site["log_prob"]
        if log_prob.dim() != rank or log_prob.shape[0] != num_chains:
            raise ValueError(_not_vectorised(site, num_chains, self.chain_dim))
        keep = [0]
        if self.datum_frame is not None and site["name"] in self.likelihood:
            keep.append(rank + self.datum_frame[1])
        summed = [d for d in range(rank) if d not in keep]
        log_prob = log_prob.sum(summed, keepdim=True) if summed else log_prob
        log_prob = log_prob.reshape(num_chains, -1).to(dtype)
        return log_prob

    def _check_same_sites(self, trace: poutine.Trace) -> None:
        latent = [
            name
            for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
        ]
        if latent != [name for name, _, _ in self.latents]:
            raise ValueError(
                f"the model's latent sites changed between runs ({[n for n, _, _ in self.latents]} "
                f"then {latent}); Potential needs a fixed set of latent sites (no stochastic "
                "control flow over which sites exist)"
            )


class SetLatents(Messenger):
    """Give latent sites fixed values while leaving them latent (unlike `poutine.condition`,
    which would mark them observed, so that `tempered` and the trace see them as data)."""

    def __init__(self, values: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.values = values

    def _pyro_sample(self, msg: dict) -> None:
        if msg["name"] in self.values and not msg["is_observed"]:
            msg["value"] = self.values[msg["name"]]
            msg["done"] = True


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """Let the model's own constants (``dist.Gamma(3.0, 2.0)``) be created in ``dtype``: torch
    distributions cast values to their parameters' dtype, so float32 parameters would round
    the log densities of float64 values."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def model_device(trace: poutine.Trace, layout: ModelLayout) -> torch.device:
    """The device of the model's latent values (where its tensors live)."""
    return trace.nodes[layout.latents[0][0]]["value"].device


def prototype_trace(model: Callable, args: tuple, kwargs: dict) -> poutine.Trace:
    """One unvectorised run with its own random stream (later draws do not change)."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices), poutine.block(), torch.no_grad():
        return poutine.trace(model).get_trace(*args, **kwargs)


def _check_not_subsampled(sites: list[dict]) -> None:
    subsampled = sorted(
        {
            frame.name
            for site in sites
            for frame in site["cond_indep_stack"]
            if frame.full_size is not None and frame.size != frame.full_size
        }
    )
    if subsampled:
        raise ValueError(
            f"plate(s) {subsampled} are subsampled; a potential (and MCMC on it) needs the full "
            "likelihood: drop subsample_size, or use a guided estimator (ELBO, IWAE) that "
            "handles subsampling"
        )


def _check_continuous(latent: list[dict]) -> None:
    discrete = [site["name"] for site in latent if site["fn"].support.is_discrete]
    if discrete:
        raise ValueError(
            f"the model has discrete latent site(s) {discrete}; a potential over unconstrained "
            "latents needs continuous ones: sum the discrete sites out by hand (or with Pyro's "
            "enumeration in a guided estimator), or observe them"
        )
    if not latent:
        raise ValueError("the model has no latent sample sites: there is nothing to sample")


def _batch_ndim(sites: list[dict]) -> int:
    """$M$: the deepest plate, or the longest batch shape of any site if that is longer."""
    depths = [0]
    for site in sites:
        depths += [-frame.dim for frame in site["cond_indep_stack"] if frame.vectorized]
        depths.append(len(site["fn"].batch_shape))
    return max(depths)


def _datum_frame(likelihood: list[dict]) -> tuple[str, int, int] | None:
    common = None
    for site in likelihood:
        frames = {(f.name, f.dim, f.size) for f in site["cond_indep_stack"] if f.vectorized}
        common = frames if common is None else common & frames
    if not common:
        return None
    return max(common, key=lambda frame: frame[1])  # the outermost when several qualify


def _expand(rows: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return rows.reshape(-1, *[1] * (value.dim() - 1))


def _is_number(beta) -> bool:
    return not torch.is_tensor(beta) or beta.dim() == 0


def _support_tensors(support) -> list[torch.Tensor]:
    """The parameters of a constraint (bounds, ...), of its base constraint included."""
    values = [
        torch.as_tensor(v) for v in vars(support).values() if isinstance(v, torch.Tensor | float)
    ]
    base = getattr(support, "base_constraint", None)
    return values + (_support_tensors(base) if base is not None else [])


def _check_same_support(name: str, prototype, support) -> None:
    """Transforms are fixed from the first run: a support that moves with other latents
    (``Uniform(0, scale)`` with a latent ``scale``) would make them wrong."""
    before, after = _support_tensors(prototype), _support_tensors(support)
    same = type(prototype) is type(support) and len(before) == len(after)
    for a, b in zip(before, after, strict=True) if same else ():
        a, b = torch.broadcast_tensors(a.to(b), b)
        same = same and bool(torch.equal(a, b))
    if not same:
        raise ValueError(
            f"the support of site {name!r} depends on other latent sites; Potential transforms "
            "each site by a fixed biject_to(support): reparameterise it (e.g. sample "
            "Uniform(0, 1) and scale it in the model)"
        )


def _not_vectorised(site: dict, num_chains: int, chain_dim: int) -> str:
    return (
        f"site {site['name']!r} does not vectorise over the chain plate: its log density has "
        f"shape {tuple(site['log_prob'].shape)}, where {num_chains} chains at dim {chain_dim} "
        "were expected; the model must keep a leading batch dimension of its latent values "
        "(no sums or reshapes over it), or declare its batch dimensions with pyro.plate"
    )
