import argparse

import pytest

from models.phylo.cli import add_parser


def run(argv):
    parser = argparse.ArgumentParser(prog="varinf")
    add_parser(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_loglik_prints_one_value_per_tree(data_dir, capsys, tmp_path):
    ds1 = data_dir / "bito_ds1"
    trees = (ds1 / "ds1.credible.with-branches.nwk").read_text().splitlines()[:3]
    (tmp_path / "three.nwk").write_text("\n".join(trees) + "\n")
    status = run(["phylo", "loglik", "--alignment", str(ds1 / "ds1.fasta"),
                  "--tree", str(tmp_path / "three.nwk")])  # fmt: skip
    assert status == 0
    lines = capsys.readouterr().out.split()
    assert len(lines) == 3
    assert float(lines[0]) == pytest.approx(-6884.9702, abs=1e-4)


def test_loglik_gtr_gamma_reference(data_dir, capsys, tmp_path):
    ds1 = data_dir / "bito_ds1"
    first = (ds1 / "ds1.credible.with-branches.nwk").read_text().splitlines()[0]
    (tmp_path / "one.nwk").write_text(first + "\n")
    status = run(["phylo", "loglik", "--alignment", str(ds1 / "ds1.fasta"), "--tree",
                  str(tmp_path / "one.nwk"), "--model", "gtr", "--rates", "1.2", "3.4", "0.8",
                  "1.1", "4.5", "1", "--freqs", "0.3", "0.2", "0.22", "0.28",
                  "--gamma-shape", "0.37", "--gamma-categories", "4"])  # fmt: skip
    assert status == 0
    # IQ-TREE 2.0.7 value, see test_likelihood.test_iqtree_references
    assert float(capsys.readouterr().out) == pytest.approx(-6715.4789, abs=1e-4)


def test_bad_files_exit_2_with_one_line(tmp_path, capsys):
    (tmp_path / "a.fasta").write_text(">a\nACGT\n>b\nACGT\n>c\nACGJ\n")
    (tmp_path / "t.nwk").write_text("(a:1,b:1,c:1);\n")
    status = run(["phylo", "loglik", "--alignment", str(tmp_path / "a.fasta"),
                  "--tree", str(tmp_path / "t.nwk")])  # fmt: skip
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1
    assert "taxon 'c' has unknown character 'J' at site 4" in err
    (tmp_path / "a.fasta").write_text(">a\nACGT\n>b\nACGT\n>c\nACGA\n")
    (tmp_path / "t.nwk").write_text("(a,b,c);\n")
    assert run(["phylo", "loglik", "--alignment", str(tmp_path / "a.fasta"),
                "--tree", str(tmp_path / "t.nwk")]) == 2  # fmt: skip
    assert "no branch lengths" in capsys.readouterr().err


def test_missing_arguments_are_usage_errors():
    with pytest.raises(SystemExit) as info:
        run(["phylo", "loglik", "--alignment", "x.fasta"])
    assert info.value.code == 2
