r"""GECO: the KL term minimised subject to an expected constraint on the reconstruction.

Rezende and Viola (2018), "Taming VAEs", replace the ELBO's fixed trade-off between the
reconstruction and the KL term by a constrained problem,

$$\min_{\theta, \phi}\ \mathbb{E}_{x}\big[\mathrm{KL}(q_\phi(z \mid x) \,\|\, p(z))\big]
\quad \text{s.t.} \quad \mathbb{E}_{x}\,\mathbb{E}_{q_\phi(z \mid x)}[C(x, z)] \le 0,$$

with $C(x, z) = -\log p_\theta(x \mid z) - \kappa$ by default (reconstruction error at most
$\kappa$ nats per datum), solved through the Lagrangian $\mathcal{L}_\lambda = \mathrm{KL} +
\lambda\,\bar C$. At each training step, with $\hat C$ the constraint on the current batch,

$$C_{ma} \leftarrow \alpha\, C_{ma} + (1 - \alpha)\, \hat C, \qquad
\text{loss} = \mathrm{KL} + \lambda \big(\hat C + \mathrm{sg}(C_{ma} - \hat C)\big), \qquad
\lambda \leftarrow \mathrm{clamp}\big(\lambda\, e^{\nu\, C_{ma}},
\lambda_{\min}, \lambda_{\max}\big):$$

the loss's value uses the moving average while its gradient is the current batch's, and
$\lambda$ grows while the constraint is violated ($C_{ma} > 0$) and shrinks once it holds. As
$1/\lambda$ weighs the KL against the reconstruction, GECO is a $\beta$-VAE whose $\beta =
1/\lambda$ is tuned to meet the constraint. Both terms are per-datum averages (over the
particles and the datum plate), so $\kappa$ and $\lambda$ do not depend on the data set's size
or on minibatching.

Written by hand: Pyro has no constrained objective.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from varinf.estimate import Estimate, make_estimate
from varinf.estimators.objective import Objective, ParticleObjective
from varinf.weights import LogWeights


def reconstruction_error(weights: LogWeights) -> torch.Tensor:
    r"""$-\log p(x \mid z_k)$ per particle and datum: the model's observed sites."""
    return -weights.log_likelihood


def per_datum_mean(values: torch.Tensor, weights: LogWeights) -> torch.Tensor:
    """Average over particles and the datum plate; without a datum plate the whole data set
    is one datum."""
    return values.reshape(weights.num_particles, -1).mean()


class GECO(ParticleObjective):
    r"""Generalised ELBO with Constrained Optimisation, a Pyro loss for ``SVI``.

    Args:
        tolerance: $\kappa$, subtracted from the constraint (nats per datum for the default
            reconstruction error).
        num_particles: Particles per datum.
        constraint: ``constraint(weights) -> tensor`` of per-particle, per-datum values
            $C(x, z)$, differentiable in the parameters (`varinf.weights.LogWeights` gives the
            log densities and traces). Default: `reconstruction_error`.
        alpha: $\alpha$, the moving average's decay. The paper's 0.99 lags by about 100
            steps, long enough for $\lambda$ to overshoot by orders of magnitude on the digits
            VAE; 0.9 settled there (see ``examples/geco_vae.py``).
        rate: $\nu$, the multiplier's learning rate, per nat of constraint.
        multiplier: Initial $\lambda > 0$.
        bounds: $(\lambda_{\min}, \lambda_{\max})$.
        warmup: Training steps before $\lambda$ starts to move (the moving average is kept from
            the first step): an early, badly fitted decoder would otherwise make $\lambda$
            explode, GECO's known failure.
        **options: ``max_plate_nesting``, ``sampler``, ``seed`` (see `ParticleObjective`).

    Training steps are the calls of `loss_and_grads` (what ``SVI.step`` calls) and
    `differentiable_loss`; `loss` and `estimate` only read the state. `state_dict` and
    `load_state_dict` save and restore $(\lambda, C_{ma})$ and the step count.

    Examples:
        >>> import pyro
        >>> from models.vae import DigitsVAE, load_digits_images
        >>> x = load_digits_images()[:64]
        >>> vae, geco = DigitsVAE(latent_dim=2, hidden=16), GECO(tolerance=20.0)
        >>> svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), geco)
        >>> loss = svi.step(x)
        >>> state = geco.state_dict()
        >>> loss == state["kl"] + state["multiplier_used"] * state["constraint_ma"]
        True
    """

    name = "geco"
    kind = "objective"

    def __init__(
        self,
        tolerance: float = 0.0,
        num_particles: int = 1,
        *,
        constraint: Callable[[LogWeights], torch.Tensor] | None = None,
        alpha: float = 0.9,
        rate: float = 5e-3,
        multiplier: float = 1.0,
        bounds: tuple[float, float] = (1e-6, 1e6),
        warmup: int = 0,
        **options: Any,
    ) -> None:
        _check_options(tolerance, alpha, rate, multiplier, bounds, warmup)
        super().__init__(num_particles, **options)
        self.tolerance = float(tolerance)
        self.constraint = constraint
        self.alpha, self.rate, self.warmup = float(alpha), float(rate), int(warmup)
        self.bounds = (float(bounds[0]), float(bounds[1]))
        self.initial_multiplier = float(multiplier)
        self.multiplier = float(multiplier)
        self.constraint_ma: float | None = None
        self.step = 0
        self._last: dict[str, float] = {}

    # -- the math ------------------------------------------------------------------------------
    def terms(self, weights: LogWeights) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Per-datum KL estimate $\mathbb{E}_q[\log q - \log p(z)]$ and constraint $\hat C$."""
        if weights.has_score_terms:
            raise ValueError(
                "GECO needs a reparameterised guide: its KL and constraint gradients are "
                "pathwise (a discrete guide site has no rsample)"
            )
        kl = per_datum_mean(weights.log_q - weights.log_prior, weights)
        constraint = self.constraint or reconstruction_error
        values = constraint(weights)
        if not isinstance(values, torch.Tensor):
            raise TypeError(f"constraint must return a tensor, got {type(values).__name__}")
        return kl, per_datum_mean(values, weights) - self.tolerance

    def objective(self, weights: LogWeights) -> Objective:
        """Value $-(\\mathrm{KL} + \\lambda C_{ma})$ at the stored state (no update)."""
        kl, batch = self.terms(weights)
        average = batch if self.constraint_ma is None else batch.new_tensor(self.constraint_ma)
        value = -(kl + self.multiplier * average)
        surrogate = -(kl + self.multiplier * (batch + (average - batch).detach()))
        return Objective(value=value, surrogate=surrogate)

    def training_objective(self, weights: LogWeights) -> Objective:
        """Update $C_{ma}$ with this batch, build the loss, then update $\\lambda$."""
        kl, batch = self.terms(weights)
        if not torch.isfinite(batch) or not torch.isfinite(kl):
            raise FloatingPointError(
                f"GECO: non-finite KL ({kl.item()}) or constraint ({batch.item()}) on this batch"
            )
        observed = batch.item()
        first = self.constraint_ma is None
        self.constraint_ma = (
            observed if first else self.alpha * self.constraint_ma + (1 - self.alpha) * observed
        )
        average = batch.new_tensor(self.constraint_ma)
        used = self.multiplier
        loss = kl + used * (batch + (average - batch).detach())
        self.step += 1
        if self.step > self.warmup:
            grown = used * math.exp(self.rate * self.constraint_ma)
            self.multiplier = min(max(grown, self.bounds[0]), self.bounds[1])
        self._last = {"kl": kl.item(), "constraint": observed, "multiplier_used": used}
        # the reported loss is exactly KL + lambda * C_ma, in Python floats
        reported = kl.new_tensor(
            -(self._last["kl"] + used * self.constraint_ma), dtype=torch.float64
        )
        return Objective(value=reported, surrogate=-loss)

    # -- Pyro loss -------------------------------------------------------------------------------
    def loss_and_grads(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        """One training step: $\\mathrm{KL} + \\lambda C_{ma}$, its gradient into ``.grad``."""
        result = self.training_objective(self.log_weights(model, guide, args, kwargs))
        if result.surrogate.requires_grad:
            (-result.surrogate).backward(retain_graph=self.retain_graph)
        return -result.value.item()

    def differentiable_loss(self, model: Callable, guide: Callable, *args, **kwargs):
        """One training step as a differentiable tensor (its value is the reported loss)."""
        result = self.training_objective(self.log_weights(model, guide, args, kwargs))
        return -result.surrogate

    # -- estimate ------------------------------------------------------------------------------
    def _estimate(self, model, guide, args, kwargs) -> Estimate:
        with torch.no_grad():
            weights = self.log_weights(model, guide, args, kwargs)
            kl, batch = self.terms(weights)
        average = batch.item() if self.constraint_ma is None else self.constraint_ma
        value = -(kl.item() + self.multiplier * average)
        diagnostics = {
            "stderr": "GECO's value is a training objective at a moving average: no Monte "
            "Carlo standard error",
            "kl": kl.item(),
            "constraint": batch.item(),
            "constraint_ma": average,
            "multiplier": self.multiplier,
            "reconstruction": (batch.item() + self.tolerance)
            if self.constraint is None
            else math.nan,
            "step": self.step,
        }
        return make_estimate(
            value,
            math.nan,
            num_evaluations=weights.num_particles,
            log_weights=weights.log_weights.detach(),
            diagnostics=diagnostics,
        )

    def state_dict(self) -> dict[str, Any]:
        """$\\lambda$, $C_{ma}$, the step count, and the last step's KL and multiplier."""
        return {
            "multiplier": self.multiplier,
            "constraint_ma": self.constraint_ma,
            "step": self.step,
            **self._last,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"multiplier", "constraint_ma", "step"} - set(state)
        if missing:
            raise KeyError(f"state is missing {sorted(missing)}; pass GECO.state_dict()")
        if not state["multiplier"] > 0:
            raise ValueError(f"state['multiplier'] must be positive, got {state['multiplier']}")
        self.multiplier = float(state["multiplier"])
        self.constraint_ma = state["constraint_ma"]
        self.step = int(state["step"])
        self._last = {k: state[k] for k in ("kl", "constraint", "multiplier_used") if k in state}


def _check_options(tolerance, alpha, rate, multiplier, bounds, warmup) -> None:
    if not math.isfinite(tolerance):
        raise ValueError(f"tolerance must be finite, got {tolerance}")
    if not 0 <= alpha < 1:
        raise ValueError(f"alpha must be in [0, 1), got {alpha}")
    if not (math.isfinite(rate) and rate >= 0):
        raise ValueError(f"rate must be a finite non-negative number, got {rate}")
    low, high = bounds
    if not 0 < low <= multiplier <= high:
        raise ValueError(
            f"multiplier must lie in bounds with 0 < low <= multiplier <= high, got "
            f"multiplier={multiplier}, bounds={bounds}"
        )
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
