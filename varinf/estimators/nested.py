r"""Nested sampling of the evidence, on dynesty.

Skilling (2006), "Nested sampling for general Bayesian computation": with $X(\lambda)$ the
prior mass where the likelihood exceeds $\lambda$, $p(x) = \int_0^1 L(X)\, dX$; live points
drawn from the prior under a rising likelihood bound shrink $X$ by about $e^{-1/n}$ per
iteration for $n$ live points, which gives the quadrature and its error. The sampler is
dynesty's (Speagle 2020, "dynesty: a dynamic nested sampling package"), on the unit cube:
the prior transform maps $u \in (0,1)^D$ to the latents through each site's inverse CDF
(`varinf.handlers.quantile_sample`), and the likelihood is the model's observed sites and
factors (`varinf.potential.Potential.log_likelihood`).

Batching: the initial live points are drawn and evaluated in one batched model call and handed
to dynesty as ``live_points``. After that dynesty proposes one point at a time (each proposal
draws inside its own sampler call, ``rwalk``/``slice`` walks are sequential, and dynesty's
``pool`` only parallelises whole proposals across processes), so the likelihood is evaluated
one point per call; use ``pool=`` for process parallelism. For likelihoods that are cheap only
in batches (DS1: 7 ms per single-point call, 0.5 ms per point in batches of a hundred) use
`varinf.BatchedNestedSampling`, whose every likelihood call is a batch.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import pyro.poutine as poutine
import torch

from varinf.estimate import Estimate, Estimator, make_estimate
from varinf.handlers import quantile_sample
from varinf.potential import Potential


class PriorTransform:
    r"""Unit cube $\to$ unconstrained latents: $z = T^{-1}(F^{-1}(u))$ site by site.

    Args:
        model: the Pyro model.
        args: its positional arguments.
        kwargs: its keyword arguments.
        potential: its `varinf.potential.Potential` (fixes the order of the coordinates).

    Raises:
        ValueError: when a site's prior has no inverse CDF, or depends on other latents
            (hierarchical priors need a sequential transform, not written yet).
    """

    def __init__(self, model: Callable, args: tuple, kwargs: dict, potential: Potential) -> None:
        first, second = (_prior_trace(model, args, kwargs) for _ in range(2))
        self.priors, self.potential = {}, potential
        for name, *_ in potential.sites:
            fn = first.nodes[name]["fn"]
            value = first.nodes[name]["value"]
            other = second.nodes[name]["fn"].log_prob(value)
            if not torch.allclose(fn.log_prob(value), other):
                raise ValueError(
                    f"NestedSampling: the prior of site {name!r} depends on other latents; "
                    "only fixed priors have a unit-cube transform here"
                )
            self.priors[name] = fn

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        """``(C, D)`` uniforms to ``(C, D)`` unconstrained points."""
        values = {}
        for name, shape, _, where in self.potential.sites:
            fn = self.priors[name].expand(torch.Size([u.shape[0]]) + self.priors[name].batch_shape)
            values[name] = _quantile(fn, u[:, where], name).reshape(u.shape[0], *shape)
        return self.potential.unconstrain(values)


def _quantile(fn, u: torch.Tensor, name: str) -> torch.Tensor:
    """Inverse CDF by `quantile_sample`; Gamma priors (no torch icdf) through SciPy."""
    base = fn
    while isinstance(base, torch.distributions.Independent):
        base = base.base_dist
    if isinstance(base, torch.distributions.Gamma):
        from scipy.special import gammaincinv

        shape = base.batch_shape + base.event_shape
        unit = u.reshape(shape).clamp(1e-16, 1 - 1e-16).cpu().numpy()
        standard = gammaincinv(base.concentration.expand(shape).cpu().numpy(), unit)
        return torch.as_tensor(standard, dtype=u.dtype) / base.rate.to(u.dtype)
    return quantile_sample(fn, u, name)


def _prior_trace(model, args, kwargs):
    with poutine.block(), torch.no_grad():
        return poutine.trace(model).get_trace(*args, **kwargs)


class NestedSampling(Estimator):
    r"""Nested sampling with dynesty's static sampler; needs no guide.

    Args:
        num_live: live points $n$.
        sample: dynesty's proposal, ``"rwalk"`` (default; robust in many dimensions),
            ``"slice"``, ``"rslice"`` or ``"unif"``.
        bound: dynesty's bounding, ``"multi"`` (default), ``"single"``, ``"none"``, ...
        dlogz: stop when the estimated remaining evidence is below this (log units).
        max_calls: cap on likelihood calls (``None``: none).
        pool: optional pool for dynesty (process parallelism over proposals).
        seed: see `varinf.Estimator`; also seeds dynesty's generator.

    The standard error is dynesty's ``logzerr`` (from the prior-volume shrinkage, the
    information $H$ and $n$: about $\sqrt{H/n}$). Diagnostics: ``information`` ($H$),
    ``iterations``, ``efficiency``, and ``warnings``: dynesty's warnings (a stop at
    ``max_calls`` before ``dlogz`` is reached, too few live points, ...), recorded there
    rather than raised.

    Examples:
        >>> from models.conjugate import ConjugateGaussian
        >>> problem = ConjugateGaussian.example()
        >>> nested = NestedSampling(num_live=100, sample="unif", dlogz=0.5, seed=0)
        >>> result = nested.estimate(problem.model)
        >>> abs(result.value - problem.log_evidence) < 5 * result.stderr
        True
    """

    name = "nested"
    kind: ClassVar[str] = "consistent"
    requires_guide: ClassVar[bool] = False

    def __init__(
        self,
        num_live: int = 500,
        *,
        sample: str = "rwalk",
        bound: str = "multi",
        dlogz: float = 0.1,
        max_calls: int | None = None,
        pool: Any = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(seed=seed)
        if not isinstance(num_live, int) or num_live < 2:
            raise ValueError(f"num_live must be an int of at least 2, got {num_live!r}")
        self.num_live, self.sample, self.bound = num_live, sample, bound
        self.dlogz, self.max_calls, self.pool = dlogz, max_calls, pool

    def _estimate(self, model, guide, args, kwargs) -> Estimate:
        import dynesty

        potential = Potential(model, args, kwargs)
        transform = PriorTransform(model, args, kwargs, potential)
        dtype = torch.float64
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
        rstate = np.random.default_rng(seed)
        live_u = rstate.uniform(size=(self.num_live, potential.dim))
        live_z = transform(torch.as_tensor(live_u, dtype=dtype))
        live_logl = potential.log_likelihood(live_z).detach()
        if not torch.isfinite(live_logl).all():
            raise FloatingPointError("the log-likelihood is not finite at some prior draws")

        def prior_transform(u: np.ndarray) -> np.ndarray:
            return transform(torch.as_tensor(u, dtype=dtype)[None])[0].numpy()

        def log_likelihood(z: np.ndarray) -> float:
            with torch.no_grad():
                return potential.log_likelihood(torch.as_tensor(z, dtype=dtype)[None]).item()

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            results = self._run(dynesty, potential, prior_transform, log_likelihood, rstate,
                                [live_u, live_z.numpy(), live_logl.numpy()])  # fmt: skip
        diagnostics = {
            "information": float(results.information[-1]),
            "iterations": int(results.niter),
            "efficiency": float(results.eff),
        }
        if caught:  # dynesty's own warnings (a stop at max_calls, a risky num_live, ...)
            diagnostics["warnings"] = sorted({str(w.message) for w in caught})
        if guide is not None:
            diagnostics["guide"] = "ignored: nested sampling samples the prior"
        calls = int(np.sum(results.ncall)) + self.num_live
        value, stderr = float(results.logz[-1]), float(results.logzerr[-1])
        if not math.isfinite(stderr):
            diagnostics["stderr"] = "dynesty returned a non-finite logzerr"
        return make_estimate(value, stderr, num_evaluations=max(calls, potential.num_evaluations),
                             diagnostics=diagnostics)  # fmt: skip

    def _run(self, dynesty, potential, prior_transform, log_likelihood, rstate, live_points):
        sampler = dynesty.NestedSampler(
            log_likelihood,
            prior_transform,
            potential.dim,
            nlive=self.num_live,
            sample=self.sample,
            bound=self.bound,
            rstate=rstate,
            pool=self.pool,
            queue_size=getattr(self.pool, "size", None) if self.pool is not None else None,
            live_points=live_points,
        )
        sampler.run_nested(dlogz=self.dlogz, maxcall=self.max_calls, print_progress=False)
        return sampler.results
