r"""The evidence lower bound and the importance-weighted bound, with their gradient knobs.

With $K$ particles $z_k \sim q(z \mid x)$ and log weights $\log w_k = \log p(x, z_k) - \log q(z_k
\mid x)$ (per datum when the model has a datum plate, see `varinf.weights`):

$$\mathrm{ELBO}_K = \frac1K \sum_k \log w_k, \qquad
\mathrm{IWAE}_K = \log \frac1K \sum_k w_k,$$

with $\mathbb{E}[\mathrm{ELBO}] \le \mathbb{E}[\mathrm{IWAE}_K] \le \mathbb{E}[\mathrm{IWAE}_{2K}]
\le \log p(x)$ (Burda, Grosse and Salakhutdinov 2016, "Importance Weighted Autoencoders").
$\exp \mathrm{IWAE}_K$ is the plain importance-sampling estimate of $p(x)$, unbiased; its log is
consistent as $K \to \infty$.

How the guide's gradient is estimated is a knob, ``gradient=``, not a class per combination:
ELBO takes ``"reparam"`` (Pyro's ``Trace_ELBO``: pathwise, plus a plain score-function term for
non-reparameterised sites) or ``"score"`` (the leave-one-out baseline of Kool, van Hoof and
Welling 2019); IWAE takes ``"reparam"``, ``"dreg"`` (Tucker et al. 2019) or ``"vimco"`` (Mnih
and Rezende 2016). The surrogates live in `varinf.gradients` and `varinf.estimators.dreg`.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, ClassVar

import torch

from varinf.diagnostics import importance_diagnostics
from varinf.estimators.dreg import dreg_guide_surrogate
from varinf.estimators.objective import Objective, ParticleObjective
from varinf.gradients.base import leave_one_out_mean, score_term
from varinf.gradients.vimco import vimco_surrogate
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


def _check_gradient(gradient: str, choices: tuple[str, ...], num_particles: int) -> None:
    if gradient not in choices:
        raise ValueError(f"gradient must be one of {choices}, got {gradient!r}")
    if gradient in ("score", "vimco") and num_particles < 2:
        raise ValueError(
            f"num_particles must be at least 2 for gradient={gradient!r} (its leave-one-out "
            f"baseline needs another particle), got {num_particles}"
        )


class ELBO(ParticleObjective):
    r"""Evidence lower bound $\frac1K \sum_k \log w_k$ with $K$ vectorised particles.

    Prefer `IWAE` for a tighter bound or an evidence estimate; ELBO's gradients have the
    lowest variance for training the guide.

    Args:
        num_particles: $K$.
        gradient: ``"reparam"`` (as Pyro's ``Trace_ELBO``: pathwise gradients, and the plain
            score-function term $\log w_k \nabla \log q(z_k)$ for non-reparameterised sites) or
            ``"score"``: the score term uses the leave-one-out baseline, $\big(\log w_k -
            \frac1{K-1}\sum_{j\ne k} \log w_j\big) \nabla \log q(z_k)$ (Kool, van Hoof and
            Welling 2019, "Buy 4 REINFORCE samples, get a baseline for free!"), free with
            $K \ge 2$ and much lower in variance for discrete guides.
        **options: ``sampler``, ``vectorize_particles``, ``max_plate_nesting`` and ``seed``,
            see `ParticleObjective`.

    Examples:
        >>> from models.conjugate import ConjugateGaussian
        >>> problem = ConjugateGaussian.example()
        >>> exact = ELBO(num_particles=100).estimate(problem.model, problem.exact_guide)
        >>> round(exact.value, 4), round(problem.log_evidence, 4)  # q = posterior: no gap
        (-28.1025, -28.1025)
        >>> ELBO(10, sampler="rqmc").label
        'elbo(K=10, sampler=rqmc)'
    """

    name = "elbo"
    kind = "lower-bound"
    gradients: ClassVar[tuple[str, ...]] = ("reparam", "score")
    linear_in_log_weights = True

    def __init__(
        self, num_particles: int = 1, *, gradient: str = "reparam", **options: Any
    ) -> None:
        super().__init__(num_particles, **options)
        _check_gradient(gradient, self.gradients, self.num_particles)
        self.gradient = gradient

    def objective(self, weights: LogWeights) -> Objective:
        log_w = weights.log_weights
        value = weights.datum_scale * elbo(log_w)
        signal = log_w.detach()
        if self.gradient == "score":
            signal = signal - leave_one_out_mean(signal)
        score = score_term(signal, weights.log_q_score).mean(0).sum()
        return Objective(value=value, surrogate=value + weights.datum_scale * score)

    def summarize(self, weights: LogWeights) -> tuple[float, float, dict]:
        log_w = weights.log_weights
        per_particle = weights.datum_scale * log_w.reshape(weights.num_particles, -1).sum(1)
        stderr = per_particle.std() / math.sqrt(len(per_particle)) if len(log_w) > 1 else math.nan
        return per_particle.mean().item(), float(stderr), importance_diagnostics(log_w)

    def datum_values(self, weights: LogWeights) -> torch.Tensor:
        return weights.log_weights.mean(0)


class IWAE(ParticleObjective):
    r"""Importance-weighted bound $\log \frac1K \sum_k w_k$, also the importance-sampling
    estimate of the log evidence.

    Args:
        num_particles: $K$.
        gradient: How the guide's gradient is estimated:

            - ``"reparam"``: the standard IWAE gradient, with plain score-function terms for
              non-reparameterised guide sites (which have high variance: a warning says so
              when such a guide is trained);
            - ``"dreg"``: doubly reparameterised gradients (Tucker, Lawson, Gu and Maddison
              2019, "Doubly Reparameterized Gradient Estimators for Monte Carlo Objectives"),
              $\sum_k \tilde w_k^2 \, \partial \log w_k / \partial z_k \cdot \partial z_k /
              \partial \phi$ with the guide density's parameters held fixed; needs a fully
              reparameterised guide and is applied by ``loss_and_grads`` (``SVI``);
            - ``"vimco"``: VIMCO's leave-one-out learning signals for the non-reparameterised
              sites (Mnih and Rezende 2016, `varinf.gradients.vimco`), $K \ge 2$.
        **options: ``sampler``, ``vectorize_particles``, ``max_plate_nesting`` and ``seed``,
            see `ParticleObjective`.

    Diagnostics: ``ess``, ``ess_fraction`` and PSIS ``khat`` of the weights.

    Examples:
        >>> from models.conjugate import ConjugateGaussian
        >>> problem = ConjugateGaussian.example()
        >>> exact = IWAE(10).estimate(problem.model, problem.exact_guide)
        >>> round(exact.value, 4), round(exact.stderr, 10)  # q = posterior: every weight is p(x)
        (-28.1025, 0.0)
        >>> IWAE(8, gradient="dreg").label
        'iwae(K=8, gradient=dreg)'
    """

    name = "iwae"
    kind = "lower-bound"
    gradients: ClassVar[tuple[str, ...]] = ("reparam", "dreg", "vimco")

    def __init__(
        self, num_particles: int = 10, *, gradient: str = "reparam", **options: Any
    ) -> None:
        super().__init__(num_particles, **options)
        _check_gradient(gradient, self.gradients, self.num_particles)
        self.gradient = gradient

    def objective(self, weights: LogWeights) -> Objective:
        log_w = weights.log_weights
        scale = weights.datum_scale
        value = scale * iwae(log_w)
        if self.gradient == "vimco":
            return Objective(value, scale * vimco_surrogate(log_w, weights.log_q_score).sum())
        per_datum = log_w.logsumexp(0) - math.log(log_w.shape[0])
        score = score_term(per_datum, weights.log_q_score.sum(0)).sum()
        surrogate = value + scale * score
        if self.gradient == "reparam":
            if weights.has_score_terms and torch.is_grad_enabled():
                _warn_score_terms(type(self).__name__)
            return Objective(value=value, surrogate=surrogate)
        if weights.has_score_terms:
            raise ValueError(
                "gradient='dreg' needs a fully reparameterised guide; for discrete guide sites "
                "use gradient='vimco'"
            )
        return Objective(value, surrogate, scale * dreg_guide_surrogate(weights))

    def trace_options(self) -> dict:
        # DReG's guide density with detached parameters; only worth a guide run for gradients.
        return {"stop_guide_params": self.gradient == "dreg" and torch.is_grad_enabled()}

    def summarize(self, weights: LogWeights) -> tuple[float, float, dict]:
        log_w = weights.log_weights
        value = weights.datum_scale * iwae(log_w)
        stderr = weights.datum_scale * iwae_stderr(log_w)
        return value.item(), stderr.item(), importance_diagnostics(log_w)

    def datum_values(self, weights: LogWeights) -> torch.Tensor:
        log_w = weights.log_weights
        return log_w.logsumexp(0) - math.log(len(log_w))


def _warn_score_terms(name: str) -> None:
    warnings.warn(
        f"{name} with gradient='reparam' trains non-reparameterised (discrete) guide sites with "
        "plain score-function terms, whose variance is often tens of times VIMCO's (training "
        "then degrades); use gradient='vimco' (or ELBO(gradient='score'))",
        UserWarning,
        stacklevel=4,
    )


class RQMCELBO(ELBO):
    r"""The ELBO with particles from randomised quasi-Monte Carlo: ``ELBO(sampler="rqmc")``.

    Buchholz, Wenzel and Mandt (2018), "Quasi-Monte Carlo Variational Inference": a scrambled
    Sobol point set through the guide's inverse CDFs gives an unbiased ELBO estimate whose
    variance (and that of its reparameterised gradient) falls faster than $1/K$ for smooth
    integrands. The gain fades as the latent dimension grows, and each estimate's points are
    dependent, so the standard error comes from repeats.

    Examples:
        >>> RQMCELBO(32).label
        'rqmc-elbo(K=32)'
    """

    name = "rqmc-elbo"
    label_defaults: ClassVar[dict] = {"sampler": "rqmc"}

    def __init__(self, num_particles: int = 64, **options: Any) -> None:
        options.setdefault("sampler", "rqmc")
        super().__init__(num_particles, **options)


class ScoreELBO(ELBO):
    r"""``ELBO(num_particles, gradient="score")``: the ELBO with leave-one-out score-function
    gradients for discrete guide sites (Kool et al. 2019); see `ELBO`.

    Examples:
        >>> ScoreELBO(4).label
        'score-elbo(K=4)'
    """

    name = "score-elbo"
    label_defaults: ClassVar[dict] = {"gradient": "score"}

    def __init__(self, num_particles: int = 2, **options: Any) -> None:
        options.setdefault("gradient", "score")
        super().__init__(num_particles, **options)


class VIMCO(IWAE):
    r"""``IWAE(num_particles, gradient="vimco")``: the IWAE bound trained with VIMCO gradients
    for discrete guide sites (Mnih and Rezende 2016); see `IWAE`.

    Use with ``SVI(model, guide, optim, loss=VIMCO(num_particles=K))``.

    Examples:
        >>> VIMCO(5).label
        'vimco(K=5)'
    """

    name = "vimco"
    label_defaults: ClassVar[dict] = {"gradient": "vimco"}

    def __init__(self, num_particles: int = 5, **options: Any) -> None:
        options.setdefault("gradient", "vimco")
        super().__init__(num_particles, **options)
