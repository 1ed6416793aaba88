"""Pyro distributions and transforms: Concrete relaxations, Gumbel-Sinkhorn, Birkhoff polytope,
tree topologies, subsplit Bayesian networks, normalizing flows."""

from varinf.distributions.birkhoff import (
    RoundingBirkhoff,
    RoundingTransform,
    StickBreakingBirkhoff,
    StickBreakingBirkhoffTransform,
    stick_breaking_centre,
)
from varinf.distributions.concrete import (
    Concrete,
    ConstantTemperature,
    ExpConcrete,
    ExponentialAnnealing,
    TemperatureSchedule,
    relaxed_kl,
)
from varinf.distributions.flows import (
    ActNorm,
    AdditiveCoupling,
    InverseTransformModule,
    Permutation,
    build_flow,
)
from varinf.distributions.sbn import SBNSupport, SubsplitBayesianNetwork
from varinf.distributions.sinkhorn import (
    GumbelSinkhorn,
    doubly_stochastic,
    hungarian,
    log_sinkhorn,
    sinkhorn,
)
from varinf.distributions.trees import (
    PhyloFormatError,
    UniformTopology,
    canonicalize,
    clade_keys,
    clades,
    from_edges,
    num_topologies_log,
    parents,
    random_topologies,
    to_newick,
    topology_constraint,
)

__all__ = [
    "ActNorm",
    "AdditiveCoupling",
    "InverseTransformModule",
    "Permutation",
    "build_flow",
    "stick_breaking_centre",
    "Concrete",
    "ConstantTemperature",
    "ExpConcrete",
    "ExponentialAnnealing",
    "TemperatureSchedule",
    "relaxed_kl",
    "GumbelSinkhorn",
    "doubly_stochastic",
    "hungarian",
    "log_sinkhorn",
    "sinkhorn",
    "RoundingBirkhoff",
    "RoundingTransform",
    "StickBreakingBirkhoff",
    "StickBreakingBirkhoffTransform",
    "SBNSupport",
    "SubsplitBayesianNetwork",
    "PhyloFormatError",
    "UniformTopology",
    "canonicalize",
    "clade_keys",
    "clades",
    "from_edges",
    "num_topologies_log",
    "parents",
    "random_topologies",
    "to_newick",
    "topology_constraint",
]
