"""``varinf phylo evidence`` on a small alignment: table, CSV, plot, resume, and bad input."""

import argparse
import csv

import pytest

from models.phylo.cli import add_parser

SEQUENCES = {
    "a": "ACGTACGTAAACGTTGCAAC",
    "b": "ACGTACGAAAACGTTGCTAC",
    "c": "ACGAACGAATACGTAGCTAC",
    "d": "TCGAACGAATACCTAGCTGC",
    "e": "TCGATCGAATACCTAGGTGC",
}
TREE = "((a,b),c,(d,e));\n"
FAST = ["--num-steps", "3", "--replicates", "2", "--chains", "4", "--warmup", "20",
        "--draws", "30"]  # fmt: skip


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def run(argv):
    parser = argparse.ArgumentParser(prog="varinf")
    add_parser(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture()
def files(tmp_path):
    fasta = "".join(f">{name}\n{seq}\n" for name, seq in SEQUENCES.items())
    (tmp_path / "aln.fasta").write_text(fasta)
    (tmp_path / "trees.nwk").write_text(TREE)
    return tmp_path


@pytest.mark.slow
def test_evidence_table_csv_plot_and_resume(files, capsys):
    out = files / "out.csv"
    argv = ["phylo", "evidence", "--alignment", str(files / "aln.fasta"), "--trees",
            str(files / "trees.nwk"), "--methods", "stepping-stone", "path-sampling",
            "harmonic-mean", "--csv", str(out), "--plot", str(files / "out.png"),
            "--checkpoint", str(files / "ckpt"), *FAST]  # fmt: skip
    assert run(argv) == 0
    table = capsys.readouterr().out
    assert "stepping-stone" in table and "harmonic-mean" in table
    rows = read_rows(out)
    assert [r["method"] for r in rows] == ["stepping-stone", "path-sampling", "harmonic-mean"]
    ss, ps, hm = (float(r["estimate"]) for r in rows)
    stderr = max(float(rows[0]["stderr"]), float(rows[1]["stderr"]))
    assert abs(ss - ps) < 10 * stderr + 0.5  # two estimates of one number (PS: trapezoid bias)
    assert hm > ss  # the harmonic mean's overestimate
    assert (files / "out.png").stat().st_size > 0
    # A second call finds every row in the checkpoint and samples nothing.
    assert run(argv) == 0
    captured = capsys.readouterr()
    assert "tree 1/1" not in captured.err
    assert read_rows(out) == rows


@pytest.mark.slow
def test_control_variates_option(files, capsys):
    rows = {}
    settings = ["--num-steps", "10", "--replicates", "4", "--warmup", "100", "--draws", "100"]
    for choice in ("none", "quadratic"):
        out = files / f"{choice}.csv"
        argv = ["phylo", "evidence", "--alignment", str(files / "aln.fasta"), "--trees",
                str(files / "trees.nwk"), "--methods", "stepping-stone",
                "modified-path-sampling", "--csv", str(out), "--control-variates", choice,
                *settings]  # fmt: skip
        assert run(argv) == 0
        rows[choice] = [(float(r["estimate"]), float(r["stderr"])) for r in read_rows(out)]
    capsys.readouterr()
    for (plain, plain_error), (controlled, error) in zip(*rows.values(), strict=True):
        assert error < plain_error / 2  # 3.5x and 5.9x on these draws
        assert abs(controlled - plain) < 5 * plain_error


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--alignment": "missing.fasta"}, "missing.fasta"),
        ({"--trees": "bad_taxa.nwk"}, "bad_taxa.nwk"),
        ({"--methods": "no-such-method"}, "unknown estimator"),
        ({"--methods": "elbo"}, "need a guide"),
        ({"--branch-prior": "exp:ten"}, "--branch-prior"),
        ({"--branch-prior": "uniform:1"}, "--branch-prior"),
    ],
)
def test_bad_input_exits_2_with_one_line(files, capsys, change, message):
    (files / "bad_taxa.nwk").write_text("((a,b),c,(d,x));\n")
    options = {"--alignment": "aln.fasta", "--trees": "trees.nwk", "--methods": "stepping-stone"}
    options.update(change)
    argv = ["phylo", "evidence"]
    for key, value in options.items():
        argv += [key, value if key in ("--methods", "--branch-prior") else str(files / value)]
    assert run(argv + FAST) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("varinf phylo evidence: error:")
    assert message in err[0]
