r"""Tree topologies as tensors: re-exported from `varinf.distributions.trees`.

The encoding (the canonical `(n-1, 2)` child table, clades, `UniformTopology`) lives in
`varinf.distributions` so that tree distributions can use it without the likelihood; this
module keeps the old import path `models.phylo.topology` working.
"""

from varinf.distributions.trees import (
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
