"""Exceptions raised on bad phylogenetic input."""

from __future__ import annotations


class PhyloFormatError(ValueError):
    """A phylogenetic data file or value is malformed or inconsistent.

    Raised for unreadable alignments and trees, unknown characters, taxa missing from a tree
    or an alignment, duplicated taxa, non-binary trees, negative branch lengths and empty
    alignments. The message names the offending file, taxon and, where known, the line.
    Subclasses `ValueError` so callers that already catch bad values keep working.
    """
