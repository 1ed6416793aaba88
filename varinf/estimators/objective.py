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
from typing import ClassVar

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
    r"""An estimator computed from the log weights of vectorised particles, usable in ``SVI``.

    Args:
        num_particles: Particles per estimate, $K \geq 1$.
        max_plate_nesting: Deepest plate dimension of model and guide; guessed by one
            unvectorised run when ``None`` (once per model and guide).
        sampler: How particles are drawn: ``"iid"`` or ``"rqmc"`` (randomised quasi-Monte
            Carlo, `varinf.handlers.QuasiMonteCarloMessenger`). RQMC particles are dependent,
            so ``estimate()`` reports no standard error for them: use `varinf.compare` repeats.
        vectorize_particles: ``True`` (default) draws all particles in one batched run;
            ``False`` runs model and guide once per particle, as Pyro's default does, for
            models whose code does not broadcast over a particle dimension (e.g. a
            ``PyroModule[nn.Linear]`` regression).
        seed: Seed for `estimate` (see `varinf.Estimator`).

    Subsampling (``pyro.plate(name, N, subsample_size=B)``): when every latent site lies inside
    the subsampled plate, the weights split per datum and $N/B$ scales the per-datum bounds
    after the particles are averaged, so every estimator stays honest, and ``estimate()`` adds
    the subsampling noise to the standard error (``diagnostics["stderr_subsampling"]``). When a
    latent site outside couples the data (a global latent), $N/B$ sits inside each particle's
    weight: only the ELBO, linear in $\log w$, remains unbiased (its standard error is then
    conditional on the minibatch, and says so); the other estimators refuse.
    """

    #: Whether the objective is linear in the log weights (stays unbiased under subsampling).
    linear_in_log_weights: ClassVar[bool] = False

    def __init__(
        self,
        num_particles: int = 1,
        *,
        sampler: str = "iid",
        vectorize_particles: bool = True,
        max_plate_nesting: int | None = None,
        seed: int | None = None,
    ) -> None:
        num_particles = check_num_particles(num_particles)
        check_sampler(sampler)
        if not isinstance(vectorize_particles, bool):
            raise TypeError(f"vectorize_particles must be a bool, got {vectorize_particles!r}")
        Estimator.__init__(self, seed=seed)
        PyroELBO.__init__(
            self, num_particles=num_particles, vectorize_particles=vectorize_particles
        )
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
            vectorize_particles=self.vectorize_particles,
            **self.trace_options(),
        )
        if weights.subsampled_plates and not self.linear_in_log_weights:
            raise ValueError(
                f"{type(self).__name__}: the subsampled plate(s) {list(weights.subsampled_plates)} "
                "hold data that a latent site outside them couples, so the N/B scale would sit "
                "inside the log-mean-exp and the result would bound nothing (it can exceed "
                "log p(x)). Use the full plate (no subsample_size) for evidence estimates, "
                "train with ELBO (unbiased under subsampling), or keep every latent site inside "
                "the plate so the weights split per datum"
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
        stderr, diagnostics = self._with_subsampling(weights, stderr, diagnostics)
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

    def datum_values(self, weights: LogWeights) -> torch.Tensor:
        """The estimate's per-datum terms ``(B,)`` over a subsampled datum plate."""
        raise NotImplementedError

    def _with_subsampling(self, weights, stderr, diagnostics):
        r"""Add the minibatch's sampling noise: $N^2 (1 - B/N)\, s^2 / B$ for the estimate
        $\frac{N}{B} \sum_{i \in \mathcal B} v_i$ of $\sum_{i=1}^N v_i$ (a simple random sample
        without replacement, $s^2$ the variance of the per-datum terms; it includes their Monte
        Carlo noise once more, so the total errs on the large side)."""
        if weights.subsampled_plates:
            note = (
                f"conditional on the minibatch of plate(s) {list(weights.subsampled_plates)}: the "
                "subsampling noise is not included; repeat over minibatches (varinf.compare)"
            )
            return stderr, {**diagnostics, "stderr": note}
        if weights.datum_scale == 1.0 or weights.log_weights.dim() != 2:
            return stderr, diagnostics
        values = self.datum_values(weights).double()
        batch = len(values)
        size = round(batch * weights.datum_scale)
        variance = size**2 * (1 - batch / size) * values.var().item() / batch if batch > 1 else 0.0
        total = math.sqrt(stderr**2 + variance) if math.isfinite(stderr) else stderr
        return total, {**diagnostics, "stderr_subsampling": math.sqrt(variance)}

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
