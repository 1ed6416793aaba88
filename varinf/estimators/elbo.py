r"""The evidence lower bound and the importance-weighted bound.

With $K$ particles $z_k \sim q(z \mid x)$ and log weights $\log w_k = \log p(x, z_k) - \log q(z_k
\mid x)$ (per datum when the model has a datum plate, see `varinf.weights`):

$$\mathrm{ELBO}_K = \frac1K \sum_k \log w_k, \qquad
\mathrm{IWAE}_K = \log \frac1K \sum_k w_k,$$

with $\mathbb{E}[\mathrm{ELBO}] \le \mathbb{E}[\mathrm{IWAE}_K] \le \mathbb{E}[\mathrm{IWAE}_{2K}]
\le \log p(x)$ (Burda, Grosse and Salakhutdinov 2016, "Importance Weighted Autoencoders").
$\exp \mathrm{IWAE}_K$ is the plain importance-sampling estimate of $p(x)$, unbiased; its log is
consistent as $K \to \infty$.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from varinf.diagnostics import importance_diagnostics
from varinf.estimators.dreg import dreg_guide_surrogate
from varinf.estimators.objective import Objective, ParticleObjective
from varinf.weights import LogWeights


def elbo(log_weights: torch.Tensor) -> torch.Tensor:
    """Mean log weight over particles (dim 0), summed over the other (datum) dims."""
    return log_weights.mean(0).sum()


def iwae(log_weights: torch.Tensor) -> torch.Tensor:
    r"""$\sum_i \log \frac1K \sum_k w_{ki}$ for log weights of shape ``(K, *datum_shape)``."""
    return (log_weights.logsumexp(0) - math.log(log_weights.shape[0])).sum()


def iwae_stderr(log_weights: torch.Tensor) -> torch.Tensor:
    r"""Delta-method standard error of $\mathrm{IWAE}_K$: $\sqrt{\sum_i \widehat{\mathrm{Var}}
    (w_{\cdot i}) / (K \bar w_i^2)}$. Optimistic when the weights are heavy-tailed (check
    ``khat``)."""
    num_particles = log_weights.shape[0]
    if num_particles < 2:
        return torch.tensor(float("nan"))
    relative = torch.exp(log_weights - log_weights.logsumexp(0)) * num_particles  # w_k / w̄
    return (relative.var(0) / num_particles).sum().sqrt()


def score_surrogate(value: torch.Tensor, log_q_score: torch.Tensor) -> torch.Tensor:
    r"""Add the score-function term $\mathrm{sg}(f)\,\log q$ of non-reparameterised sites.

    Zero in value; its gradient is $f \nabla \log q$ (Williams 1992)."""
    term = value.detach() * log_q_score
    return term - term.detach()


class ELBO(ParticleObjective):
    r"""Evidence lower bound $\frac1K \sum_k \log w_k$ with $K$ vectorised particles.

    Prefer `IWAE` for a tighter bound or an evidence estimate; ELBO's gradients have the
    lowest variance for training the guide.

    Examples:
        >>> from models.conjugate import ConjugateGaussian
        >>> problem = ConjugateGaussian.example()
        >>> exact = ELBO(num_particles=100).estimate(problem.model, problem.exact_guide)
        >>> round(exact.value, 4), round(problem.log_evidence, 4)  # q = posterior: no gap
        (-28.1025, -28.1025)
    """

    name = "elbo"
    kind = "lower-bound"

    def objective(self, weights: LogWeights) -> Objective:
        per_datum = weights.log_weights
        value = weights.datum_scale * elbo(per_datum)
        score = score_surrogate(per_datum, weights.log_q_score).mean(0).sum()
        return Objective(value=value, surrogate=value + weights.datum_scale * score)

    def summarize(self, weights):
        per_particle = weights.datum_scale * weights.log_weights.reshape(
            weights.num_particles, -1
        ).sum(1)
        stderr = (
            per_particle.std() / math.sqrt(len(per_particle)) if len(per_particle) > 1 else math.nan
        )
        return (
            per_particle.mean().item(),
            float(stderr),
            importance_diagnostics(weights.log_weights),
        )


class IWAE(ParticleObjective):
    r"""Importance-weighted bound $\log \frac1K \sum_k w_k$, also the importance-sampling
    estimate of the log evidence.

    Args:
        num_particles: $K$.
        gradient: ``"reparam"`` (the standard IWAE gradient, with score-function terms for
            discrete guide sites) or ``"dreg"``: doubly reparameterised gradients for the guide
            (Tucker, Lawson, Gu and Maddison 2019, "Doubly Reparameterized Gradient Estimators
            for Monte Carlo Objectives"): $\sum_k \tilde w_k^2 \, \partial \log w_k / \partial
            z_k \cdot \partial z_k / \partial \phi$ with $\tilde w$ the normalised weights and
            the guide density's parameters held fixed; needs a fully reparameterised guide and
            is applied by ``loss_and_grads`` (``SVI``).
        **options: ``max_plate_nesting`` and ``seed``, see `ParticleObjective`.

    Diagnostics: ``ess``, ``ess_fraction`` and PSIS ``khat`` of the weights.
    """

    name = "iwae"
    kind = "lower-bound"

    def __init__(
        self, num_particles: int = 10, *, gradient: str = "reparam", **options: Any
    ) -> None:
        if gradient not in ("reparam", "dreg"):
            raise ValueError(f"gradient must be 'reparam' or 'dreg', got {gradient!r}")
        super().__init__(num_particles, **options)
        self.gradient = gradient

    def objective(self, weights: LogWeights) -> Objective:
        log_w = weights.log_weights
        value = weights.datum_scale * iwae(log_w)
        per_datum = log_w.logsumexp(0) - math.log(log_w.shape[0])
        score = score_surrogate(per_datum, weights.log_q_score.sum(0)).sum()
        surrogate = value + weights.datum_scale * score
        if self.gradient == "reparam":
            return Objective(value=value, surrogate=surrogate)
        if weights.has_score_terms:
            raise ValueError("gradient='dreg' needs a fully reparameterised guide")
        return Objective(value, surrogate, weights.datum_scale * dreg_guide_surrogate(weights))

    def trace_options(self) -> dict:
        # DReG's guide density with detached parameters; only worth a guide run for gradients.
        return {"stop_guide_params": self.gradient == "dreg" and torch.is_grad_enabled()}

    def summarize(self, weights):
        log_w = weights.log_weights
        value = weights.datum_scale * iwae(log_w)
        stderr = weights.datum_scale * iwae_stderr(log_w)
        return value.item(), stderr.item(), importance_diagnostics(log_w)


class RQMCELBO(ELBO):
    r"""The ELBO with particles from randomised quasi-Monte Carlo: ``ELBO(sampler="rqmc")``.

    Buchholz, Wenzel and Mandt (2018), "Quasi-Monte Carlo Variational Inference": a scrambled
    Sobol point set through the guide's inverse CDFs gives an unbiased ELBO estimate whose
    variance (and that of its reparameterised gradient) falls faster than $1/K$ for smooth
    integrands. The gain fades as the latent dimension grows, and each estimate's points are
    dependent, so the standard error comes from repeats.
    """

    name = "rqmc-elbo"

    def __init__(self, num_particles: int = 64, **options: Any) -> None:
        super().__init__(num_particles, sampler="rqmc", **options)
