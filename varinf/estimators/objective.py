r"""The shared base of estimators that are also Pyro losses (ELBO, IWAE, SUMO, ...).

A subclass supplies one function of the log weights, `ParticleObjective.objective`,
returning the value $\mathcal{L}$ (maximised) and a surrogate whose gradient is the
estimator's gradient; loss is $-\mathcal{L}$. Subclasses whose guide parameters follow a
different objective than the model's (DReG, SUMO's variance-minimising encoder) also return a
``guide_surrogate``; `loss_and_grads` then sends each gradient to its own parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from pyro.infer import ELBO as PyroELBO

from varinf.estimate import Estimate, Estimator, make_estimate
from varinf.weights import (
    LogWeights,
    capture_params,
    check_num_particles,
    check_sampler,
    guess_max_plate_nesting,
    trace_log_weights,
)


@dataclass
class Objective:
    """What `ParticleObjective.objective` returns.

    Attributes:
        value: The objective (a log-evidence estimate or bound), a scalar tensor.
        surrogate: Differentiable scalar whose gradient is the gradient estimator for all
            parameters (or for the model's, when ``guide_surrogate`` is given).
        guide_surrogate: Optional surrogate maximised by the guide's parameters instead.
    """

    value: torch.Tensor
    surrogate: torch.Tensor
    guide_surrogate: torch.Tensor | None = None


class ParticleObjective(Estimator, PyroELBO):
    """An estimator computed from the log weights of vectorised particles, usable in ``SVI``.

    Args:
        num_particles: Particles per estimate, $K \\geq 1$.
        max_plate_nesting: Deepest plate dimension of model and guide; guessed by one
            unvectorised run when ``None`` (once per model and guide).
        sampler: How particles are drawn: ``"iid"`` or ``"rqmc"`` (randomised quasi-Monte
            Carlo, `varinf.handlers.QuasiMonteCarloMessenger`). RQMC particles are dependent,
            so ``estimate()`` reports no standard error for them: use `varinf.compare` repeats.
        seed: Seed for `estimate` (see `varinf.Estimator`).
    """

    def __init__(
        self,
        num_particles: int = 1,
        *,
        max_plate_nesting: int | None = None,
        sampler: str = "iid",
        seed: int | None = None,
    ) -> None:
        num_particles = check_num_particles(num_particles)
        check_sampler(sampler)
        Estimator.__init__(self, seed=seed)
        PyroELBO.__init__(self, num_particles=num_particles, vectorize_particles=True)
        self.max_plate_nesting = max_plate_nesting
        self.sampler = sampler

    # -- the math, implemented by subclasses -------------------------------------------------
    def objective(self, weights: LogWeights) -> Objective:
        raise NotImplementedError

    def particles_per_evaluation(self) -> int:
        """Particles drawn per evaluation (SUMO draws a random number)."""
        return self.num_particles

    # -- shared plumbing ---------------------------------------------------------------------
    def log_weights(
        self, model: Callable, guide: Callable | None, args: tuple, kwargs: dict
    ) -> LogWeights:
        weights = trace_log_weights(
            model,
            guide,
            args,
            kwargs,
            num_particles=self.particles_per_evaluation(),
            max_plate_nesting=self.plate_nesting(model, guide, args, kwargs),
            sampler=self.sampler,
            **self.trace_options(),
        )
        self.last_num_evaluations = weights.num_particles  # read by gradient_variance
        return weights

    def trace_options(self) -> dict:
        """Extra keyword arguments for `varinf.weights.trace_log_weights`."""
        return {}

    def plate_nesting(
        self, model: Callable, guide: Callable | None, args: tuple, kwargs: dict
    ) -> int:
        """``max_plate_nesting`` as given, else guessed once per (model, guide) pair, as Pyro's
        ELBO does (assumes static plate structure)."""
        if self.max_plate_nesting is not None:
            return self.max_plate_nesting
        key = (model, guide)
        cache = self.__dict__.setdefault("_nesting_cache", {})
        if key not in cache:
            cache[key] = guess_max_plate_nesting(model, guide, args, kwargs)
        return cache[key]

    def _estimate(self, model, guide, args, kwargs) -> Estimate:
        with torch.no_grad():  # an estimate needs no gradients: no graph, less memory
            weights = self.log_weights(model, guide, args, kwargs)
            value, stderr, diagnostics = self.summarize(weights)
        if self.sampler == "rqmc":
            stderr = float("nan")
            diagnostics = {
                **diagnostics,
                "stderr": "RQMC particles are dependent: estimate the "
                "error from independent repeats (varinf.compare)",
            }
        elif math.isnan(stderr) and "stderr" not in diagnostics:
            diagnostics = {
                **diagnostics,
                "stderr": "one particle: use num_particles >= 2 for a standard error",
            }
        return make_estimate(
            value,
            stderr,
            num_evaluations=weights.num_particles,
            log_weights=weights.log_weights.detach(),
            diagnostics=diagnostics,
        )

    def summarize(self, weights: LogWeights) -> tuple[float, float, dict]:
        """Value, standard error and diagnostics of one estimate."""
        raise NotImplementedError

    def differentiable_loss(
        self, model: Callable, guide: Callable, *args, **kwargs
    ) -> torch.Tensor:
        """$-\\mathcal{L}$ with the estimator's gradient w.r.t. model and guide parameters.

        Raises:
            ValueError: for objectives whose guide follows its own surrogate (DReG, SUMO's
                variance-minimising guide): one tensor cannot carry two gradients, so use
                `loss_and_grads` (which ``SVI`` calls) instead.
        """
        result = self.objective(self.log_weights(model, guide, args, kwargs))
        if result.guide_surrogate is not None:
            raise ValueError(
                f"{type(self).__name__} trains the guide on a separate objective, which one "
                "differentiable tensor cannot express; use loss_and_grads (pyro.infer.SVI does)"
            )
        return _with_value(-result.surrogate, -result.value)

    def loss(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        """$-\\mathcal{L}$ as a float (no gradients)."""
        with torch.no_grad():
            return -self.objective(self.log_weights(model, guide, args, kwargs)).value.item()

    def loss_and_grads(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        """Compute $-\\mathcal{L}$ and accumulate its gradient estimator into ``.grad``."""
        with capture_params() as params:
            weights = self.log_weights(model, guide, args, kwargs)
        result = self.objective(weights)
        if result.guide_surrogate is None:
            if result.surrogate.requires_grad:
                (-result.surrogate).backward(retain_graph=self.retain_graph)
            return -result.value.item()
        names = weights.guide_param_names
        guide_params = [p for name, p in params.items() if name in names]
        model_params = [p for name, p in params.items() if name not in names]
        _accumulate(-result.surrogate, model_params, retain_graph=True)
        _accumulate(-result.guide_surrogate, guide_params, retain_graph=self.retain_graph)
        return -result.value.item()

    def _get_trace(self, model, guide, args, kwargs):  # pragma: no cover - Pyro's hook, unused
        raise NotImplementedError("varinf estimators trace through varinf.weights")


def _with_value(surrogate: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """A tensor equal to ``value`` whose gradient is that of ``surrogate``."""
    return surrogate + (value - surrogate).detach()


def _accumulate(loss: torch.Tensor, params: list[torch.Tensor], retain_graph) -> None:
    params = [p for p in params if p.requires_grad]
    if not params or not loss.requires_grad:
        return
    grads = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
    for param, grad in zip(params, grads, strict=True):
        if grad is None:
            continue
        param.grad = grad if param.grad is None else param.grad + grad
