"""Pyro distributions and transforms: Concrete relaxations, Gumbel-Sinkhorn, Birkhoff polytope."""

from varinf.distributions.concrete import (
    Concrete,
    ConstantTemperature,
    ExpConcrete,
    ExponentialAnnealing,
    TemperatureSchedule,
    relaxed_kl,
)

__all__ = [
    "Concrete",
    "ConstantTemperature",
    "ExpConcrete",
    "ExponentialAnnealing",
    "TemperatureSchedule",
    "relaxed_kl",
]
