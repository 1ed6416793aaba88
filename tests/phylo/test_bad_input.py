"""Junk in alignments and absurd command-line values are errors, never silent numbers."""

import pytest

from models.phylo import PhyloFormatError, read_alignment
from tests.phylo.test_cli import run


@pytest.mark.parametrize(
    "data, where, what",
    [
        (">a\nACGT\n>b\nACΩT\n".encode(), "line 4, column 3", "'Ω'"),
        (b">a\nACGT\n>b\nAC\xffT\n", "line 4, column 3", "(byte 0xFF)"),
        (b">a\nACGT\n>b\nA C\n  G\xff\n", "line 5, column 4", "(byte 0xFF)"),
        (b">a\nACGT\n>b\nACGJ\n", "line 4, column 4", "'J'"),
        ("3 4\nalpha ACGT\nbeta ACΩA\ngamma AYGT\n".encode(), "line 3, column 8", "'Ω'"),
        (b"2 4\nalpha ACGT\nbeta \xffCGA\n", "line 3, column 6", "(byte 0xFF)"),
        (b"#NEXUS\nbegin data;\ndimensions ntax=2 nchar=4;\nformat datatype=dna;\nmatrix\n"
         b"a ACGT\nb AC\xffT\n;\nend;\n", "line 7, column 5", "(byte 0xFF)"),
    ],
)  # fmt: skip
def test_non_iupac_characters_are_errors_with_line_and_column(tmp_path, data, where, what):
    path = tmp_path / "junk.txt"
    path.write_bytes(data)
    with pytest.raises(PhyloFormatError) as info:
        read_alignment(path)
    message = str(info.value)
    assert f"junk.txt, {where}" in message and f"unknown character {what}" in message


@pytest.mark.parametrize(
    "header, message",
    [
        ("3 5", r"x.phy, line 1: the PHYLIP header says 5 sites, taxon 'alpha' has 4"),
        ("3 3", r"x.phy, line 1: the PHYLIP header says 3 sites, taxon 'alpha' has 4"),
        ("2 4", r"x.phy: not a valid PHYLIP alignment \(do the counts of the header"),
        ("4 4", r"x.phy: not a valid PHYLIP alignment \(do the counts of the header"),
    ],
)
def test_phylip_header_must_match_the_rows(tmp_path, header, message):
    path = tmp_path / "x.phy"
    path.write_text(f"{header}\nalpha ACGT\nbeta ACGA\ngamma AYGT\n")
    with pytest.raises(PhyloFormatError, match=message):
        read_alignment(path)


def _files(tmp_path, newick="(a:0.1,b:0.2,c:0.3);"):
    (tmp_path / "a.fasta").write_text(">a\nACGT\n>b\nACGA\n>c\nACGG\n")
    (tmp_path / "t.nwk").write_text(newick + "\n")
    return ["phylo", "loglik", "--alignment", str(tmp_path / "a.fasta"),
            "--tree", str(tmp_path / "t.nwk")]  # fmt: skip


def test_cli_refuses_infinite_branch_lengths(tmp_path, capsys):
    assert run(_files(tmp_path, "(a:inf,b:0.2,c:0.3);")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "t.nwk, tree 1: infinite branch length" in err


@pytest.mark.parametrize(
    "extra, option",
    [
        (["--model", "k80", "--kappa", "inf"], "--kappa must be positive and finite"),
        (["--model", "k80", "--kappa", "nan"], "--kappa must be positive and finite"),
        (["--model", "hky", "--kappa", "1e300"], "--kappa must lie in"),
        (["--model", "gtr", "--rates", "1", "1", "1", "1", "1", "1e-30"], "--rates must lie in"),
        (["--model", "gtr", "--rates", "1", "1", "inf", "1", "1", "1"], "--rates must be"),
        (["--model", "hky", "--freqs", "1", "1", "1", "inf"], "--freqs must be positive"),
        (["--model", "hky", "--freqs", "1", "1", "1", "1e-12"], "--freqs differ by more"),
        (["--gamma-shape", "inf"], "--gamma-shape must lie in"),
        (["--gamma-shape", "nan"], "--gamma-shape must lie in"),
        (["--gamma-shape", "1e-9"], "--gamma-shape must lie in"),
        (["--gamma-shape", "0.5", "--gamma-categories", "0"], "--gamma-categories must be"),
        (["--gamma-shape", "0.5", "--gamma-categories", "100000"], "--gamma-categories must be"),
    ],
)
def test_cli_refuses_infinite_or_absurd_parameters(tmp_path, capsys, extra, option):
    assert run(_files(tmp_path) + extra) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and option in err


def test_cli_accepts_sensible_parameters(tmp_path, capsys):
    extra = ["--model", "hky", "--kappa", "3", "--gamma-shape", "0.5"]
    assert run(_files(tmp_path) + extra) == 0
    assert float(capsys.readouterr().out) < 0


@pytest.mark.parametrize("header", ["0 4", "3 0"])
def test_a_phylip_header_with_no_taxa_or_sites_is_an_error(tmp_path, header):
    """Biopython loops forever on a '0 4' header (hypothesis found it): we refuse it first."""
    path = tmp_path / "empty.phy"
    path.write_text(f"{header}\na AGT\nb ACGA\nc AC-T\n")
    with pytest.raises(PhyloFormatError, match="both must be positive"):
        read_alignment(path)
