import pytest
import torch

from models.phylo import Alignment, PhyloFormatError, read_alignment


def test_ds1_patterns(data_dir):
    fasta = read_alignment(data_dir / "alignments_fasta" / "DS1.fasta")
    nexus = read_alignment(data_dir / "alignments_nexus" / "DS1.nex")
    assert (fasta.n_taxa, fasta.n_sites, fasta.n_patterns) == (27, 1949, 934)
    assert fasta.weights.sum().item() == 1949
    assert fasta.taxa == nexus.taxa
    assert torch.equal(fasta.patterns, nexus.patterns)
    assert torch.equal(fasta.weights, nexus.weights)


def test_iupac_partials_and_compression():
    aln = Alignment.from_sequences(["a", "b"], ["ARN-a", "ARN-a"])
    assert aln.n_patterns == 3 and aln.weights.sum() == 5
    tips = aln.partials()
    rows = {tuple(r.tolist()) for r in tips[0]}
    assert rows == {(1, 0, 0, 0), (1, 0, 1, 0), (1, 1, 1, 1)}
    # gap and N are both all-ones and "a" is "A": two patterns of weight 2
    assert sorted(aln.weights.tolist()) == [1, 2, 2]


def test_phylip_and_fasta_agree(tmp_path):
    (tmp_path / "x.phy").write_text("3 4\nalpha ACGT\nbeta ACGA\ngamma AYGT\n")
    (tmp_path / "x.fasta").write_text(">alpha\nAC\nGT\n>beta\nACGA\n>gamma\nAYGT\n")
    phy, fa = read_alignment(tmp_path / "x.phy"), read_alignment(tmp_path / "x.fasta")
    assert phy.taxa == fa.taxa == ("alpha", "beta", "gamma")
    assert torch.equal(phy.patterns, fa.patterns)


@pytest.mark.parametrize(
    "text, message",
    [
        (">a\nACGT\n>b\nACJT\n", r"taxon 'b' has unknown character 'J' at site 3"),
        (">a\nACGT\n>a\nACGT\n", r"duplicated taxon 'a'"),
        (">a\nACGT\n>b\nACG\n", r"taxon 'b' has 3 sites"),
        (">a\n>b\n", r"empty alignment"),
        ("ACGT\n>a\nACGT\n", r"cannot tell the alignment format"),
        ("", r"cannot tell the alignment format"),
        ("#NEXUS\nbegin data; garbage\n", r"not a valid NEXUS alignment"),
    ],
)
def test_bad_alignments(tmp_path, text, message):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(PhyloFormatError, match=message) as info:
        read_alignment(path)
    assert "bad.txt" in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(PhyloFormatError, match="cannot read alignment"):
        read_alignment(tmp_path / "nope.fasta")
