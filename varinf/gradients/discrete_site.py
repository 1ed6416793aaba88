r"""The guide's one discrete latent site, and the model's log density at chosen states of it.

Estimators that pick the states themselves (sum-and-sample, the unordered set estimator,
Pyro's ``TraceEnum``-style losses) need the site's distribution as one joint variable and the
model's log density with the site conditioned on a stack of states; these two functions give
them, without the particle plate `varinf.weights` traces under.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro.poutine as poutine
import torch
from pyro.distributions import Independent
from torch.distributions import Distribution

from varinf.site_checks import is_latent


def discrete_guide_site(guide: Callable, args: tuple, kwargs: dict) -> tuple[str, Distribution]:
    """The guide's one latent sample site, discrete, and its distribution as one joint variable
    (batch dimensions folded into the event), for estimators that choose the states themselves.

    Raises:
        ValueError: the guide has no latent site, several, or a reparameterised one.
    """
    trace = poutine.trace(guide).get_trace(*args, **kwargs)
    latent = [(name, site) for name, site in trace.nodes.items() if is_latent(site)]
    if len(latent) != 1 or latent[0][1]["fn"].has_rsample:
        names = [name for name, _ in latent]
        raise ValueError(
            "this loss needs a guide with exactly one latent site, discrete; got "
            f"{names or 'none'} (use IWAE(gradient='vimco') or ELBO(gradient='score') for "
            "other guides)"
        )
    name, site = latent[0]
    fn = site["fn"]
    if isinstance(fn, Independent):
        fn = Independent(fn.base_dist, fn.reinterpreted_batch_ndims + len(fn.batch_shape))
    elif fn.batch_shape:
        fn = Independent(fn, len(fn.batch_shape))
    return name, fn


def log_density_given(
    model: Callable,
    values: dict[str, torch.Tensor],
    args: tuple,
    kwargs: dict,
    *,
    batch_ndim: int = 0,
    exclude: frozenset[str] = frozenset(),
) -> torch.Tensor:
    """The model's log density with the sites in ``values`` conditioned on them.

    Sums every sample site except those in ``exclude`` over all but its leftmost
    ``batch_ndim`` dimensions (the stacked states of the conditioned values), shape
    ``values' leading batch_ndim dims``.
    """
    trace = poutine.trace(poutine.condition(model, data=values)).get_trace(*args, **kwargs)
    trace.compute_log_prob(site_filter=lambda name, site: name not in exclude)
    reference = next(iter(values.values()))
    total = reference.new_zeros(reference.shape[:batch_ndim])  # promoted by the first site
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and name not in exclude:
            log_prob = site["log_prob"]
            if log_prob.dim() > batch_ndim:
                log_prob = log_prob.sum(tuple(range(batch_ndim, log_prob.dim())))
            total = total + log_prob
    return total
