from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "phylo"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.exists():
        pytest.skip("shared phylogenetic data not available")
    return DATA


@pytest.fixture(scope="session")
def ds1(data_dir):
    """DS1 with numeric taxon names and the 40 credible trees with branch lengths."""
    from models.phylo import read_alignment, read_trees

    aln = read_alignment(data_dir / "bito_ds1" / "ds1.fasta")
    trees = read_trees(data_dir / "bito_ds1" / "ds1.credible.with-branches.nwk", taxa=aln.taxa)
    return aln, trees
