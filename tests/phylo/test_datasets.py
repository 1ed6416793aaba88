"""The shipped data: every short name resolves and reads; unknown names fail clearly."""

import pytest

from models.phylo import datasets, read_alignment, read_trees

# tree files, with the alignment whose taxon names they use
TREES = {
    "DS1-credible": "DS1",
    "DS2-credible": "DS2",
    "DS3-credible": "DS3",
    "DS4-credible": "DS4",
    "DS1-credible-branches": "DS1-numbered",
    "DS1-mcmc": "DS1",
    "DS1-topologies": "DS1",
}


def test_every_name_reads():
    alignments = {n: read_alignment(datasets.path(n)) for n in datasets.names() if n not in TREES}
    assert set(alignments) | set(TREES) == set(datasets.names())
    assert [len(alignments[k].taxa) for k in ("DS1", "DS2", "DS3", "DS4")] == [27, 29, 36, 41]
    for name, data in TREES.items():
        assert len(read_trees(datasets.path(name), taxa=alignments[data].taxa)) > 0, name


def test_runs_are_ten_replicates():
    aln = read_alignment(datasets.path("DS3"))
    for kind in ("golden", "short"):
        files = datasets.runs("DS3", kind)
        assert [f.parent.name for f in files] == [f"rep_{r}" for r in range(1, 11)]
        assert all(f.is_file() for f in files)
    golden = read_trees(datasets.runs("DS3")[0], taxa=aln.taxa)
    assert sum(t.weight for t in golden) == pytest.approx(1.0, abs=1e-3)


def test_unknown_names():
    with pytest.raises(FileNotFoundError, match=r"'DS9'.*DS1-credible"):
        datasets.path("DS9")
    with pytest.raises(ValueError, match="data='DS5'"):
        datasets.runs("DS5")
    with pytest.raises(ValueError, match="kind='long'"):
        datasets.runs("DS1", "long")
