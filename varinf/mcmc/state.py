"""The resumable state of a batched HMC run: chains, adaptation, draws so far."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from varinf.mcmc.adaptation import DualAveraging, PrincipalScale, WelfordVariance
from varinf.mcmc.leapfrog import _FIELDS, Points

DRAW_FIELDS = (
    "z", "grad", "log_likelihood", "log_prior", "acceptance_rate", "diverging", "n_steps",
)  # fmt: skip


def empty_draws(num_chains: int, num_draws: int, like: torch.Tensor) -> dict:
    """Preallocated per-draw records (``(C, S, D)`` positions and log-density gradients,
    ``(C, S)`` statistics)."""
    dim = like.shape[-1]
    per_draw = like.new_zeros(num_chains, num_draws)
    return {
        "z": like.new_zeros(num_chains, num_draws, dim),
        "grad": like.new_zeros(num_chains, num_draws, dim),
        "log_likelihood": per_draw.clone(),
        "log_prior": per_draw.clone(),
        "acceptance_rate": per_draw.clone(),
        "diverging": torch.zeros_like(per_draw, dtype=torch.bool),
        "n_steps": torch.zeros_like(per_draw, dtype=torch.long),
    }


@dataclass
class RunState:
    """Everything a run needs to continue exactly where it stopped."""

    iteration: int
    points: Points
    beta: torch.Tensor
    group: torch.Tensor
    inv_metric: torch.Tensor
    step_size: torch.Tensor
    dual: DualAveraging
    welford: WelfordVariance
    trajectory: PrincipalScale
    draws: dict
    warmup_divergences: torch.Tensor
    num_evaluations: int = 0
    elapsed: float = 0.0
    warnings: list = field(default_factory=list)

    def state_dict(self) -> dict:
        out = {}
        for name, value in vars(self).items():
            if isinstance(value, Points):
                value = {f: getattr(value, f).clone() for f in _FIELDS}
            elif hasattr(value, "state_dict"):
                value = value.state_dict()
            elif isinstance(value, dict):
                value = {k: v.clone() for k, v in value.items()}
            elif torch.is_tensor(value):
                value = value.clone()
            elif isinstance(value, list):
                value = list(value)
            out[name] = value
        return out

    @classmethod
    def from_state_dict(cls, state: dict) -> RunState:
        points = Points(**{f: state["points"][f].clone() for f in _FIELDS})
        dual = DualAveraging.__new__(DualAveraging)
        welford = WelfordVariance.__new__(WelfordVariance)
        trajectory = PrincipalScale.__new__(PrincipalScale)
        for obj, key in ((dual, "dual"), (welford, "welford"), (trajectory, "trajectory")):
            obj.load_state_dict(state[key])
        plain = {
            k: (v.clone() if torch.is_tensor(v) else v)
            for k, v in state.items()
            if k not in ("points", "dual", "welford", "trajectory", "draws")
        }
        draws = {k: v.clone() for k, v in state["draws"].items()}
        return cls(
            points=points, dual=dual, welford=welford, trajectory=trajectory, draws=draws, **plain
        )
