r"""Concrete (Gumbel-softmax) relaxation of the categorical distribution.

A Concrete variable (Maddison, Mnih & Teh 2017; Jang, Gu & Poole 2017) with class
probabilities $\alpha_k / \sum_i \alpha_i$ and temperature $\lambda > 0$ is

$$
x = \mathrm{softmax}\big((\log \alpha + g) / \lambda\big),
\qquad g_k \sim \mathrm{Gumbel}(0, 1),
$$

a point of the simplex with density (w.r.t. Lebesgue measure on its first $K - 1$
coordinates)

$$
p(x) = (K-1)!\,\lambda^{K-1} \prod_{k=1}^K
    \frac{\alpha_k x_k^{-\lambda-1}}{\sum_i \alpha_i x_i^{-\lambda}}.
$$

Torch already has the sampler and this density (``RelaxedOneHotCategorical``) and its log-space
twin ``ExpRelaxedCategorical`` (the *ExpConcrete* of Maddison et al., $y = \log x$); Pyro has
the straight-through variant.  This module adds only what they lack: a `Concrete` front
whose ``log_prob`` reads the exact log-space sample (at low temperature $x_k$ underflows to
0 and the simplex density of torch becomes ``nan``), hard straight-through samples behind a flag,
`ExpConcrete` with the validated temperature, the log-space relaxed KL Maddison et al.
recommend (`relaxed_kl()`), and temperature schedules usable from a guide.
"""

from __future__ import annotations

import math

import torch
from pyro.distributions import RelaxedOneHotCategorical
from pyro.distributions.relaxed_straight_through import QuantizeCategorical
from pyro.distributions.torch_distribution import TorchDistributionMixin
from torch import Tensor
from torch.distributions.relaxed_categorical import ExpRelaxedCategorical

_EMPTY = torch.Size()

__all__ = [
    "Concrete",
    "ConstantTemperature",
    "ExpConcrete",
    "ExponentialAnnealing",
    "TemperatureSchedule",
    "as_temperature",
    "relaxed_kl",
]


class TemperatureSchedule:
    r"""A temperature as a function of the optimisation step.

    ``schedule(step)`` is the temperature at ``step``; a schedule also keeps its own step
    counter so that a guide can read ``schedule.value`` while the training loop calls
    ``schedule.step()``.  A schedule can be passed wherever a temperature is expected.
    """

    def __init__(self) -> None:
        self.current_step = 0

    def __call__(self, step: int) -> float:
        raise NotImplementedError

    @property
    def value(self) -> float:
        """The temperature at the schedule's own step counter."""
        return self(self.current_step)

    def step(self) -> float:
        """Advance the step counter by one and return the new temperature."""
        self.current_step += 1
        return self.value


def _check_positive(value: float, name: str) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number in (0, inf), got {value}")
    return value


class ConstantTemperature(TemperatureSchedule):
    r"""The constant schedule $\lambda_t = \lambda$.

    Examples:
        >>> ConstantTemperature(0.5)(1000)
        0.5
    """

    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.temperature = _check_positive(temperature, "temperature")

    def __call__(self, step: int) -> float:
        return self.temperature


class ExponentialAnnealing(TemperatureSchedule):
    r"""Exponential annealing $\lambda_t = \max(\lambda_{\min},
    \lambda_0 \exp(-r \, \lfloor t / T \rfloor T))$.

    The schedule of Jang, Gu & Poole (2017, §4.1), who anneal every $T$ steps from
    $\lambda_0 = 1$ down to $\lambda_{\min} = 0.5$.

    Args:
        initial: $\lambda_0 > 0$.
        rate: $r \ge 0$ per step.
        minimum: $0 < \lambda_{\min} \le \lambda_0$.
        every: $T \ge 1$, steps between updates.

    Examples:
        >>> schedule = ExponentialAnnealing(1.0, rate=1e-3, minimum=0.5, every=100)
        >>> round(schedule(150), 4), schedule(10**6)
        (0.9048, 0.5)
    """

    def __init__(
        self, initial: float = 1.0, rate: float = 1e-4, minimum: float = 0.5, every: int = 1
    ) -> None:
        super().__init__()
        self.initial = _check_positive(initial, "initial")
        self.minimum = _check_positive(minimum, "minimum")
        if self.minimum > self.initial:
            raise ValueError(f"minimum ({minimum}) must not exceed initial ({initial})")
        if not (math.isfinite(rate) and rate >= 0):
            raise ValueError(f"rate must be a finite number >= 0, got {rate}")
        if int(every) != every or every < 1:
            raise ValueError(f"every must be a positive integer, got {every}")
        self.rate, self.every = float(rate), int(every)

    def __call__(self, step: int) -> float:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        t = (step // self.every) * self.every
        return max(self.minimum, self.initial * math.exp(-self.rate * t))


def as_temperature(
    temperature: float | Tensor | TemperatureSchedule, like: Tensor | None = None
) -> Tensor:
    r"""Validate a temperature (number, one-element tensor or schedule); return a 0-d tensor.

    Raises:
        ValueError: if it is not a single finite number in $(0, \infty)$.
    """
    if isinstance(temperature, TemperatureSchedule):
        temperature = temperature.value
    if not isinstance(temperature, Tensor):
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
            raise ValueError(
                f"temperature must be a positive number, tensor or TemperatureSchedule, "
                f"got {type(temperature).__name__}"
            )
        kwargs = {} if like is None else {"dtype": like.dtype, "device": like.device}
        temperature = torch.tensor(float(temperature), **kwargs)
    if temperature.numel() != 1:
        # torch's ExpRelaxedCategorical broadcasts the temperature inconsistently between
        # rsample (against the event) and log_prob (against the batch); only scalars are safe.
        raise ValueError(f"temperature must be a scalar, got shape {tuple(temperature.shape)}")
    temperature = temperature.reshape(())
    bad = ~(torch.isfinite(temperature) & (temperature > 0))
    if bool(bad.any()):
        raise ValueError(
            f"temperature must be finite and in (0, inf), got {temperature.detach().cpu()}"
        )
    return temperature


class ExpConcrete(ExpRelaxedCategorical, TorchDistributionMixin):
    r"""The ExpConcrete distribution of $y = \log x$, $x \sim \mathrm{Concrete}$.

    Torch's ``ExpRelaxedCategorical`` with a validated temperature (or schedule) and Pyro's
    distribution API.  Its log density

    $$
    \log p(y) = \log (K-1)! + (K-1)\log\lambda + \sum_k (\log\alpha_k - \lambda y_k)
        - K \operatorname{logsumexp}_k(\log\alpha_k - \lambda y_k)
    $$

    never leaves log space, so it is the one Maddison et al. (2017, appendix C) recommend for the
    relaxed KL term: sample ``y`` from this distribution in the guide and score it under an
    ExpConcrete prior in the model (use ``y.exp()`` downstream).  KL divergences are invariant under
    the bijection $x = e^y$, so $KL(q_y \| p_y) = KL(q_x \| p_x)$.

    The formula is a density on the constrained set $\{y : \sum_k e^{y_k} = 1\}$; as a density
    in the free coordinates $y_1..y_{K-1}$ it would carry an extra factor $e^{-y_K}$.  That factor
    is common to every ExpConcrete, so density ratios and KL terms are unaffected.

    Shapes: ``logits`` is ``batch_shape + (K,)``; samples are ``sample_shape + batch_shape + (K,)``.
    """

    def __init__(
        self,
        temperature: float | Tensor | TemperatureSchedule,
        probs: Tensor | None = None,
        logits: Tensor | None = None,
        validate_args: bool | None = None,
    ) -> None:
        temperature = as_temperature(temperature, logits if logits is not None else probs)
        super().__init__(temperature, probs=probs, logits=logits, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(ExpConcrete, _instance)
        return super().expand(batch_shape, _instance=new)


class Concrete(RelaxedOneHotCategorical):
    r"""Concrete / Gumbel-softmax distribution on the simplex, safe at low temperature.

    Pyro's ``RelaxedOneHotCategorical`` (the density in the module docstring) with three
    additions:

    * ``rsample`` keeps the exact log-space sample $y = \log x$ on the returned tensor and
      ``log_prob`` uses it, so the density stays finite when entries of $x$ underflow
      (values not produced by this sampler are clamped at the smallest normal float instead);
    * ``hard=True`` returns one-hot samples with straight-through gradients (forward
      $\mathrm{onehot}(\arg\max_k x_k)$, backward $\partial x / \partial \theta$),
      reusing Pyro's quantiser; ``log_prob`` of a hard sample scores its relaxed sample;
    * the temperature may be a `TemperatureSchedule` and is validated.

    Args:
        temperature: $\lambda$, a number, a one-element tensor, or a schedule (its
            current ``value`` is used).
        probs: ``batch_shape + (K,)`` class probabilities, or
        logits: ``batch_shape + (K,)`` unnormalised log probabilities.
        hard: straight-through one-hot samples.

    Examples:
        >>> d = Concrete(0.05, logits=torch.zeros(3))
        >>> x = d.rsample((1000,))
        >>> bool(torch.isfinite(d.log_prob(x)).all())
        True

    References: Maddison, Mnih & Teh (2017), "The Concrete distribution"; Jang, Gu & Poole
    (2017), "Categorical reparameterization with Gumbel-softmax".
    """

    def __init__(
        self,
        temperature: float | Tensor | TemperatureSchedule,
        probs: Tensor | None = None,
        logits: Tensor | None = None,
        hard: bool = False,
        validate_args: bool | None = None,
    ) -> None:
        temperature = as_temperature(temperature, logits if logits is not None else probs)
        super().__init__(temperature, probs=probs, logits=logits, validate_args=validate_args)
        self.hard = bool(hard)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(Concrete, _instance)
        new = super().expand(batch_shape, _instance=new)
        new.hard = self.hard
        return new

    @property
    def exp_concrete(self) -> ExpConcrete:
        """The distribution of $\\log x$ (for KL terms in log space)."""
        return ExpConcrete(self.temperature, logits=self.logits)

    def rsample(self, sample_shape: torch.Size = _EMPTY) -> Tensor:
        log_x = self.base_dist.rsample(sample_shape)
        x = log_x.exp()
        # exp(log_softmax) can miss sum 1 by more than the simplex check's 1e-6 in float32
        x = x / x.sum(-1, keepdim=True)
        x._log_value = log_x
        if self.hard:
            return QuantizeCategorical.apply(x)  # carries the relaxed x as ``_unquantize``
        return x

    def sample(self, sample_shape: torch.Size = _EMPTY) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        value = getattr(value, "_unquantize", value)
        if self._validate_args:
            self._validate_sample(value)
        log_value = getattr(value, "_log_value", None)
        if log_value is None:
            log_value = value.clamp_min(torch.finfo(value.dtype).tiny).log()
        return self.base_dist.log_prob(log_value) - log_value.sum(-1)


def relaxed_kl(
    q: Concrete | ExpConcrete, p: Concrete | ExpConcrete, num_samples: int = 1
) -> Tensor:
    r"""Reparameterised Monte Carlo estimate of $KL(q \| p)$ between Concretes, in log space.

    $$
    \widehat{KL} = \frac1S \sum_{s=1}^S \log q_y(y_s) - \log p_y(y_s),
    \qquad y_s \sim q_y = \mathrm{ExpConcrete},
    $$

    exact in expectation (the KL is invariant under $x = e^y$) and finite at any
    temperature (Maddison et al. 2017, appendix C).  There is no closed form.

    Returns:
        Tensor of shape ``broadcast(q.batch_shape, p.batch_shape)``, differentiable in the
        parameters of both.
    """
    if int(num_samples) != num_samples or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples}")
    qy = q.exp_concrete if isinstance(q, Concrete) else q
    py = p.exp_concrete if isinstance(p, Concrete) else p
    y = qy.rsample((int(num_samples),))
    return (qy.log_prob(y) - py.log_prob(y)).mean(0)
