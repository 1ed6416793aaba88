"""Phylogenetic models: alignments, trees, substitution models and a batched likelihood.

See ``docs/phylo.md``. The public API::

    from models.phylo import read_alignment, read_trees, phylo_model
"""

from .alignment import Alignment, read_alignment
from .errors import PhyloFormatError
from .hessian import log_likelihood_hessian
from .likelihood import log_likelihood, pruning_log_likelihood
from .model import UniformTopology, phylo_model
from .substitution import GTR, HKY, JC69, K80, SubstitutionModel, discrete_gamma_rates, get_model
from .topology import canonicalize, clades, from_edges, parents, random_topologies, to_newick
from .trees import Tree, parse_newick, read_trees, stack_trees

__all__ = [
    "Alignment",
    "read_alignment",
    "PhyloFormatError",
    "log_likelihood",
    "pruning_log_likelihood",
    "log_likelihood_hessian",
    "UniformTopology",
    "phylo_model",
    "SubstitutionModel",
    "JC69",
    "K80",
    "HKY",
    "GTR",
    "discrete_gamma_rates",
    "get_model",
    "canonicalize",
    "clades",
    "from_edges",
    "parents",
    "random_topologies",
    "to_newick",
    "Tree",
    "parse_newick",
    "read_trees",
    "stack_trees",
]
