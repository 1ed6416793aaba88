r"""Normalizing-flow guides for any Pyro model with continuous latents.

`flow_guide` is Pyro's `AutoNormalizingFlow` with a flow from `varinf.distributions.flows`:
the model's latent sites are packed into one unconstrained vector $u \in \mathbb{R}^D$ (through
`biject_to` of each site's support), and

$$u = f(\varepsilon), \quad \varepsilon \sim N(0, I_D), \qquad
\log q(u) = \log N(\varepsilon; 0, I_D) - \log\left|\det \partial f / \partial \varepsilon\right|.$$

It is an ordinary Pyro guide: train it with ``SVI`` and any varinf loss, and pass it to any
estimator (IWAE, SUMO, importance sampling, RQMC: the Sobol points drive $\varepsilon$).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from pyro.infer.autoguide import AutoNormalizingFlow
from pyro.infer.autoguide.initialization import InitMessenger
from torch.distributions import transform_to

from varinf.distributions.flows import FLOWS, build_flow


def flow_guide(
    model: Callable,
    flow: str = "realnvp",
    depth: int = 4,
    hidden: int | list[int] = 32,
) -> AutoNormalizingFlow:
    r"""A flow guide for ``model``.

    Args:
        model: A Pyro model with continuous latent sites.
        flow: ``"realnvp"``, ``"nice"``, ``"glow"``, ``"iaf"``, ``"maf"`` or ``"spline"`` (see
            `varinf.distributions.flows`); ``"iaf"`` scores its own samples in one pass, what a
            guide mostly does, ``"maf"`` samples sequentially.
        depth: Flow layers.
        hidden: Hidden width (or widths) of each layer's network.

    Returns:
        A `pyro.infer.autoguide.AutoNormalizingFlow`, an ``nn.Module``: save it with
        ``torch.save(guide.state_dict(), path)``; to restore, build the same guide, call it once
        (it builds its flow lazily, as Pyro's autoguides do), then
        ``guide.load_state_dict(torch.load(path))``. The permutations between layers are
        buffers, so they are saved too.

    Examples:
        >>> from models.energies import SumoMixture
        >>> toy = SumoMixture()  # an energy: a flat improper prior and a factor
        >>> guide = flow_guide(toy.model, "iaf", depth=2, hidden=16)
        >>> guide()["x"].shape  # one draw of the model's latent site
        torch.Size([2])
    """
    if flow not in FLOWS:
        raise ValueError(f"flow must be one of {FLOWS}, got {flow!r}")
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    # Pyro's default init draws from each prior, which improper priors (an energy's flat
    # ImproperUniform) cannot do; a flow starts from its base anyway, so any feasible point does.
    prototype_model = InitMessenger(init_to_unconstrained_zero)(model)
    transform = partial(build_flow, flow=flow, depth=depth, hidden=hidden)
    return AutoNormalizingFlow(prototype_model, transform)


def init_to_unconstrained_zero(site: dict) -> torch.Tensor:
    """The point of the site's support at zero in unconstrained space, without sampling."""
    fn = site["fn"]
    to_support = transform_to(fn.support)
    shape = fn.batch_shape + fn.event_shape
    zeros = torch.zeros(
        to_support.inverse_shape(shape) if hasattr(to_support, "inverse_shape") else shape
    )
    return to_support(zeros).detach()
