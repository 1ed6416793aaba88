"""Exceptions raised on bad phylogenetic input.

`PhyloFormatError` is defined in `varinf.distributions.tree_edges` (tree encodings raise it
without importing `models`) and re-exported here, so both import paths name one class.
"""

from varinf.distributions.tree_edges import PhyloFormatError

__all__ = ["PhyloFormatError"]
