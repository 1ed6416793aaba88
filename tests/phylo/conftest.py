from pathlib import Path

import pytest

from models.phylo import datasets


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The phylogenetic data shipped with the package (`models.phylo.datasets.root()`)."""
    return datasets.root()


@pytest.fixture(scope="session")
def ds1():
    """DS1 with numeric taxon names and the 40 credible trees with branch lengths."""
    from models.phylo import read_alignment, read_trees

    aln = read_alignment(datasets.path("DS1-numbered"))
    trees = read_trees(datasets.path("DS1-credible-branches"), taxa=aln.taxa)
    return aln, trees
