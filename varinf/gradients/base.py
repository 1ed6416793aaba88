r"""The interface every discrete gradient estimator shares, and the categorical view behind it.

Every estimator in `varinf.gradients` estimates

$$
\nabla_\theta\, \mathbb{E}_{z \sim q_\theta}[f(z)]
$$

for a discrete $q_\theta$ (categorical, Bernoulli, or a product of them) from ``k``
evaluations of $f$, and returns it as a *surrogate*: a tensor whose value is an estimate of
$\mathbb{E}[f]$ and whose gradient (w.r.t. the distribution's parameters and any
parameters inside $f$) is the gradient estimator. Differentiating
``surrogate.sum()`` therefore gives the estimate, and the estimators are interchangeable.

Internally a distribution is seen as $m$ independent categorical *factors* of $n$
categories each (a Bernoulli is a categorical over $\{0, 1\}$ with log-probabilities
$(\log\sigma(-\eta), \log\sigma(\eta))$); batch dimensions are independent problems, each
with its own value of $f$.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.distributions import Bernoulli, Categorical, Distribution, Independent, OneHotCategorical
from torch.nn.functional import logsigmoid, one_hot

#: Largest joint support that estimators enumerating states (sum-and-sample, unordered set) build.
MAX_JOINT_STATES = 2**16


@dataclass
class Surrogate:
    """What `GradientEstimator.surrogate` returns.

    Attributes:
        value: Estimate of $\\mathbb{E}_q[f]$, shape ``batch_shape``, detached.
        surrogate: Same value, shape ``batch_shape``, carrying the estimator as its gradient.
        num_evaluations: Evaluations of ``f`` per batch element (the cost unit).
    """

    value: torch.Tensor
    surrogate: torch.Tensor
    num_evaluations: int


class GradientEstimator:
    """Base class: ``surrogate(dist, f, num_particles, generator=None) -> Surrogate``.

    ``dist`` is a `Categorical`,
    `OneHotCategorical` or `Bernoulli`,
    or an `Independent` of one of them (its reinterpreted dimensions
    are the factors of one joint variable). ``f`` maps samples of shape
    ``(k, *dist.batch_shape, *dist.event_shape)``, in the format ``dist.sample`` uses, to values
    of shape ``(k, *dist.batch_shape)``.
    """

    name: str = "estimator"
    #: Whether the estimator is unbiased for the gradient of $\mathbb{E}_q[f]$.
    unbiased: bool = True
    min_particles: int = 1

    def surrogate(
        self,
        dist: Distribution,
        f: Callable[[torch.Tensor], torch.Tensor],
        num_particles: int,
        generator: torch.Generator | None = None,
    ) -> Surrogate:
        r"""Estimate $\mathbb{E}_q[f]$ and its gradient from ``num_particles`` evaluations of ``f``.

        Args:
            dist: The discrete distribution $q_\theta$ (see the class docstring), with
                parameters that require grad.
            f: Samples ``(k, *batch_shape, *event_shape)`` to values ``(k, *batch_shape)``.
            num_particles: $k$, the evaluations of ``f`` per batch element.
            generator: Source of the random numbers (on the parameters' device); the global
                one when ``None``.

        Returns:
            A `Surrogate`: differentiate ``surrogate.sum()`` to get the estimator.

        Raises:
            TypeError: ``dist`` of an unsupported family, ``f`` not callable, ``num_particles``
                not an int.
            ValueError: ``num_particles`` below the estimator's minimum.
        """
        if not callable(f):
            raise TypeError(f"f must be a callable from samples to values, got {type(f).__name__}")
        if isinstance(num_particles, bool) or not isinstance(num_particles, int):
            raise TypeError(f"num_particles must be an int, got {type(num_particles).__name__}")
        if num_particles < self.min_particles:
            raise ValueError(
                f"num_particles must be at least {self.min_particles} for {type(self).__name__}, "
                f"got {num_particles}"
            )
        return self._surrogate(CategoricalView(dist), f, num_particles, generator)

    def _surrogate(
        self, view: CategoricalView, f: Callable, num_particles: int, generator
    ) -> Surrogate:
        raise NotImplementedError

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({options})"


class CategoricalView:
    r"""A supported distribution as ``log_probs`` of shape ``(*batch_shape, m, n)``: $m$
    independent categorical factors with $n$ categories, normalised in the last dim.

    Raises:
        TypeError: ``dist`` is not one of the supported families.
    """

    def __init__(self, dist: Distribution) -> None:
        base = dist.base_dist if isinstance(dist, Independent) else dist
        if isinstance(base, Bernoulli):
            logits = base.logits
            log_probs = torch.stack([logsigmoid(-logits), logsigmoid(logits)], -1)
            self.kind = "bernoulli"
        elif isinstance(base, (Categorical, OneHotCategorical)):
            log_probs = base.logits - base.logits.logsumexp(-1, keepdim=True)
            self.kind = "one-hot" if isinstance(base, OneHotCategorical) else "categorical"
        else:
            raise TypeError(
                "dist must be a Bernoulli, Categorical or OneHotCategorical distribution or an "
                f"Independent of one, got {type(dist).__name__}"
            )
        self.batch_shape = dist.batch_shape
        self.factor_shape = log_probs.shape[len(self.batch_shape) : -1]
        self.num_categories = log_probs.shape[-1]
        self.log_probs = log_probs.reshape(*self.batch_shape, -1, self.num_categories)
        self.num_factors = self.log_probs.shape[-2]

    # -- samples ---------------------------------------------------------------------------
    def gumbel(self, num_particles: int, generator: torch.Generator | None) -> torch.Tensor:
        """Standard Gumbel noise of shape ``(k, *batch_shape, m, n)``."""
        return gumbel_like(self.log_probs.expand(num_particles, *self.log_probs.shape), generator)

    def sample(self, num_particles: int, generator: torch.Generator | None) -> torch.Tensor:
        """``k`` independent draws by the Gumbel-max trick: indices ``(k, *batch_shape, m)``."""
        noise = self.gumbel(num_particles, generator)
        return (self.log_probs.detach() + noise).argmax(-1)

    def log_prob(self, indices: torch.Tensor) -> torch.Tensor:
        """$\\log q$ of indices ``(k, *batch_shape, m)``, shape ``(k, *batch_shape)``."""
        log_probs = self.log_probs.expand(indices.shape[0], *self.log_probs.shape)
        return log_probs.gather(-1, indices.unsqueeze(-1)).squeeze(-1).sum(-1)

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices ``(k, *batch_shape, m)`` in the format of ``dist.sample()``."""
        indices = indices.reshape(*indices.shape[:-1], *self.factor_shape)
        if self.kind == "categorical":
            return indices
        dtype = self.log_probs.dtype
        if self.kind == "bernoulli":
            return indices.to(dtype)
        return one_hot(indices, self.num_categories).to(dtype)

    def decode_relaxed(self, soft: torch.Tensor) -> torch.Tensor:
        """Relaxed one-hot samples ``(k, *batch_shape, m, n)`` in the format of ``decode``."""
        if self.kind == "categorical":
            raise ValueError(
                "relaxed samples have no integer form: give a OneHotCategorical (or Bernoulli) "
                "dist so that f can read relaxed one-hot vectors"
            )
        soft = soft.reshape(*soft.shape[:-2], *self.factor_shape, self.num_categories)
        return soft[..., 1] if self.kind == "bernoulli" else soft

    # -- the joint categorical over all factors --------------------------------------------
    def joint_log_probs(self) -> torch.Tensor:
        r"""Log-probabilities of the $n^m$ joint states, ``(*batch_shape, n^m)``.

        State $s$ has factor $j$ in category digit $j$ of $s$ in base
        $n$ (most significant first), see `joint_to_indices`.
        """
        num_states = self.num_categories**self.num_factors
        if num_states > MAX_JOINT_STATES:
            raise ValueError(
                f"dist has {num_states} joint states (> {MAX_JOINT_STATES}); estimators that "
                "enumerate states need a smaller support"
            )
        joint = self.log_probs[..., 0, :]
        for j in range(1, self.num_factors):
            joint = (joint.unsqueeze(-1) + self.log_probs[..., j, None, :]).flatten(-2)
        return joint

    def joint_to_indices(self, states: torch.Tensor) -> torch.Tensor:
        """Joint states ``(...)`` to per-factor indices ``(..., m)``."""
        n, m = self.num_categories, self.num_factors
        powers = n ** torch.arange(m - 1, -1, -1, device=states.device)
        return torch.div(states.unsqueeze(-1), powers, rounding_mode="floor") % n


def gumbel_like(tensor: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard Gumbel noise with the shape, dtype and device of ``tensor``."""
    uniform = uniform_like(tensor, generator)
    return -torch.log(-torch.log(uniform))


def uniform_like(tensor: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Uniform noise on the open interval (0, 1), so that logs of it are finite."""
    uniform = torch.rand(
        tensor.shape, generator=generator, dtype=tensor.dtype, device=tensor.device
    )
    tiny = torch.finfo(tensor.dtype).tiny
    return uniform.clamp(tiny, 1 - torch.finfo(tensor.dtype).eps)


def leave_one_out_mean(values: torch.Tensor) -> torch.Tensor:
    r"""$\frac{1}{k-1} \sum_{j \ne i} v_j$ along dim 0, for $k \geq 2$."""
    num = values.shape[0]
    return (values.sum(0, keepdim=True) - values) / (num - 1)


def score_term(signal: torch.Tensor, log_prob: torch.Tensor) -> torch.Tensor:
    r"""Zero in value, gradient $\mathrm{sg}(\text{signal}) \nabla \log q$."""
    term = signal.detach() * log_prob
    return term - term.detach()


def enumerate_expectation(dist: Distribution, f: Callable) -> torch.Tensor:
    r"""Exact $\mathbb{E}_q[f] = \sum_s q(s) f(s)$ by enumerating the joint support,
    differentiable (its gradient is the exact gradient the estimators target)."""
    view = CategoricalView(dist)
    joint = view.joint_log_probs()
    states = torch.arange(joint.shape[-1], device=joint.device)
    states = states.reshape(-1, *([1] * len(view.batch_shape))).expand(-1, *view.batch_shape)
    values = f(view.decode(view.joint_to_indices(states)))
    return (joint.movedim(-1, 0).exp() * values).sum(0)


def enumerate_tuples(num_states: int, k: int) -> torch.Tensor:
    """All ``num_states ** k`` ordered ``k``-tuples of states, shape ``(k, num_states ** k)``."""
    if num_states**k > 10**6:
        raise ValueError(f"{num_states}**{k} tuples are too many to enumerate")
    grid = list(itertools.product(range(num_states), repeat=k))
    return torch.tensor(grid).T
