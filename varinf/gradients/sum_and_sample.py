r"""Sum-and-sample: Rao-Blackwellised score-function gradients.

Liu, Regier, Tripuraneni, Jordan and McAuliffe (2019), "Rao-Blackwellized stochastic gradients
for discrete distributions". With $C$ the $k-1$ most probable joint states and one
sample $z$ from $q$ restricted to the rest,

$$
\hat g = \sum_{c \in C} \nabla\big[q_\theta(c) f(c)\big]
    + \big(1 - q_\theta(C)\big)\big[f(z)\,\nabla\log q_\theta(z) + \nabla f(z)\big],
$$

unbiased because $C$ is a deterministic function of $\theta$ and the sampled term
averages to $\sum_{z\notin C}\nabla[q(z)f(z)]$. The $k$ evaluations of $f$ are
the $k-1$ summed states and the sample; with $k \geq n^m$ (the support size) the sum
is exact. Best when $q$ puts most of its mass on a few states (peaked posteriors, late in
training). The states are enumerated jointly (see
`joint_log_probs`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from varinf.gradients.base import CategoricalView, GradientEstimator, Surrogate, gumbel_like


class SumAndSample(GradientEstimator):
    r"""Exact sum over the $k-1$ most probable states plus one sample from the rest.

    Examples:
        >>> import torch
        >>> from torch.distributions import Categorical
        >>> logits = torch.tensor([2.0, 1.0, 0.0, -1.0], requires_grad=True)
        >>> out = SumAndSample().surrogate(Categorical(logits=logits), lambda z: z.float(), 4)
        >>> round(out.value.item(), 4)  # k = support size: exact E[z]
        0.5073
    """

    name = "sum-and-sample"

    def _surrogate(
        self, view: CategoricalView, f: Callable, num_particles: int, generator
    ) -> Surrogate:
        joint = view.joint_log_probs()  # (*B, S)
        num_states = joint.shape[-1]
        num_summed = min(num_particles - 1, num_states)
        top = joint.detach().topk(num_summed, dim=-1).indices  # (*B, k-1)
        summed_log_q = joint.gather(-1, top)
        values = self._evaluate(view, f, top)
        total = (summed_log_q.exp() * values).sum(-1)
        if num_summed == num_states:
            return Surrogate(total.detach(), total, num_states)
        rest_mass = 1 - summed_log_q.exp().sum(-1)
        state = self._sample_rest(joint, top, generator)
        value = self._evaluate(view, f, state.unsqueeze(-1)).squeeze(-1)
        log_q = joint.gather(-1, state.unsqueeze(-1)).squeeze(-1)
        term = rest_mass.detach() * (value + value.detach() * (log_q - log_q.detach()))
        surrogate = total + term
        return Surrogate(surrogate.detach(), surrogate, num_summed + 1)

    @staticmethod
    def _sample_rest(joint: torch.Tensor, top: torch.Tensor, generator) -> torch.Tensor:
        """One state from $q$ restricted to the complement of ``top`` (Gumbel-max)."""
        masked = joint.detach().scatter(-1, top, float("-inf"))
        return (masked + gumbel_like(masked, generator)).argmax(-1)

    @staticmethod
    def _evaluate(view: CategoricalView, f: Callable, states: torch.Tensor) -> torch.Tensor:
        """``f`` at joint states ``(*B, j)``; values ``(*B, j)``."""
        samples = view.decode(view.joint_to_indices(states.movedim(-1, 0)))
        return f(samples).movedim(0, -1)
