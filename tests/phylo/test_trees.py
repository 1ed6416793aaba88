import pytest
import torch

from models.phylo import PhyloFormatError, parse_newick, read_alignment, read_trees, stack_trees


def test_ds1_credible_trees(ds1, data_dir):
    aln, trees = ds1
    assert len(trees) == 40 and all(t.lengths is not None for t in trees)
    rerooted = read_trees(
        data_dir / "bito_ds1" / "ds1.credible.with-branches.rerooted.nwk", taxa=aln.taxa
    )
    for a, b in zip(trees, rerooted, strict=True):
        assert a.same_topology(b)
        assert torch.allclose(a.lengths, b.lengths, atol=1e-6)  # the file rounds to 1e-7
    children, lengths = stack_trees(trees[:5])
    assert children.shape == (5, 26, 2) and lengths.shape == (5, 51)


def test_newick_round_trip(ds1):
    aln, trees = ds1
    again = parse_newick(trees[3].newick(), aln.taxa)
    assert again.same_topology(trees[3])
    assert torch.equal(again.lengths, trees[3].lengths)


def test_trprobs_translate_and_weights(data_dir):
    aln = read_alignment(data_dir / "alignments_fasta" / "DS1.fasta")
    golden_path = data_dir / "golden_runs_trprobs" / "DS1" / "rep_1" / "DS1.trprobs.gz"
    golden = read_trees(golden_path, aln.taxa)
    assert golden[0].weight == pytest.approx(0.281014)
    assert golden[0].lengths is None
    credible = read_trees(
        data_dir / "credible_sets_19dubious" / "JC_no_gamma_credible_set_ds1", aln.taxa
    )
    assert len(credible) == 42 and credible[0].weight == pytest.approx(0.278152)
    assert credible[0].same_topology(golden[0])
    # MrBayes .t samples: translate table, lengths
    sample = read_trees(data_dir / "bito_ds1" / "DS1.subsampled_10.t", aln.taxa)
    assert len(sample) == 10 and sample[-1].lengths.min() > 0
    topos = {tuple(t.children.flatten().tolist()) for t in golden}
    assert len(topos) == len(golden)  # trprobs lists distinct topologies


@pytest.mark.parametrize(
    "newick, message",
    [
        ("((a,b),c,e);", r"leaf 'e' is not among the taxa"),
        ("((a,b),c);", r"taxon 'd' is missing"),
        ("((a,b),(c,a),d);", r"line 1 at column 11.*[Dd]uplicate taxon labels: a"),
        ("(a,b,c,d);", r"non-binary|root has 4 children"),
        ("((a,b,c),d);", r"non-binary node with 3 children"),
        ("((a:1,b:-1):1,c:1,d:1);", r"negative or invalid branch length -1"),
        ("((a:1,b):1,c:1,d:1);", r"some branches have lengths"),
        ("((a,b),(c,d);", r"not a valid newick"),
    ],
)
def test_bad_trees(tmp_path, newick, message):
    path = tmp_path / "t.nwk"
    path.write_text(newick + "\n")
    with pytest.raises(PhyloFormatError, match=message) as info:
        read_trees(path, taxa=["a", "b", "c", "d"])
    assert "t.nwk" in str(info.value)


def test_rooted_input_is_unrooted(tmp_path):
    rooted = parse_newick("((a:1,b:2):0.5,(c:3,d:4):0.25);", "abcd")
    unrooted = parse_newick("((a:1,b:2):0.75,c:3,d:4);", "abcd")
    assert rooted.same_topology(unrooted)
    assert torch.allclose(rooted.lengths, unrooted.lengths)


def test_gzipped_trees(tmp_path):
    import gzip

    with gzip.open(tmp_path / "t.nwk.gz", "wt") as handle:
        handle.write("((a,b),c,d);\n((a,c),b,d);\n")
    trees = read_trees(tmp_path / "t.nwk.gz", taxa="abcd")
    assert len(trees) == 2 and not trees[0].same_topology(trees[1])
    (tmp_path / "bad.gz").write_bytes(b"not gzip")
    with pytest.raises(PhyloFormatError, match="bad.gz: cannot read trees"):
        read_trees(tmp_path / "bad.gz")


def test_unreadable(tmp_path):
    with pytest.raises(PhyloFormatError, match="cannot read trees"):
        read_trees(tmp_path / "missing.nwk")
    (tmp_path / "empty.nwk").write_text("")
    with pytest.raises(PhyloFormatError, match="no trees"):
        read_trees(tmp_path / "empty.nwk")
