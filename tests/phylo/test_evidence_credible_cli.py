"""``varinf phylo evidence`` over several trees: the batched fast methods, the posterior over the
trees, its scores against golden runs, the plot, and bad input (through ``varinf.cli.main``)."""

import csv
import math

import pytest
import torch

from models.phylo import phylo_model, read_alignment, read_trees
from models.phylo.credible import compare_with_golden
from varinf import Laplace
from varinf.cli import main

SEQUENCES = {
    "a": "ACGTACGTAAACGTTGCAACACGTACGTAA",
    "b": "ACGTACGAAAACGTTGCTACACGTACGAAA",
    "c": "ACGAACGAATACGTAGCTACACGAACGTAT",
    "d": "TCGAACGAATACCTAGCTGCTCGAACGATT",
    "e": "TCGATCGAATACCTAGGTGCTCGATCGAAT",
}
TREES = "((a,b),c,(d,e));\n((a,c),b,(d,e));\n((a,b),d,(c,e));\n"
GOLDEN = """#NEXUS
begin trees;
   tree tree_1 = [&W 0.6] ((a,b),c,(d,e));
   tree tree_2 = [&W 0.25] ((a,c),b,(d,e));
   tree tree_3 = [&W 0.15] ((a,d),b,(c,e));
end;
"""


@pytest.fixture()
def files(tmp_path):
    (tmp_path / "aln.fasta").write_text("".join(f">{k}\n{v}\n" for k, v in SEQUENCES.items()))
    (tmp_path / "trees.nwk").write_text(TREES)
    (tmp_path / "golden.trprobs").write_text(GOLDEN)
    return tmp_path


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def evidence(*argv):
    return main(["phylo", "evidence", *map(str, argv)])


def test_posterior_over_trees_scored_against_golden_runs(files, capsys):
    out, plot = files / "out.csv", files / "posterior.png"
    argv = ["--alignment", files / "aln.fasta", "--trees", files / "trees.nwk", "--methods",
            "laplace", "glis", "--particles", 300, "--golden", files / "golden.trprobs",
            "--csv", out, "--plot", plot, "--checkpoint", files / "ckpt"]  # fmt: skip
    assert evidence(*argv) == 0
    printed = capsys.readouterr()
    assert "3 trees batched: laplace, glis" in printed.err
    assert "KL(golden||est)" in printed.out and "split RMSD" in printed.out
    rows = read_rows(out)
    assert [(r["tree"], r["method"]) for r in rows] == [
        (str(t), m) for t in (1, 2, 3) for m in ("laplace", "glis")
    ]
    aln = read_alignment(files / "aln.fasta")
    trees = read_trees(files / "trees.nwk", taxa=aln.taxa)
    for method in ("laplace", "glis"):
        mine = [r for r in rows if r["method"] == method]
        log_z = torch.tensor([float(r["estimate"]) for r in mine], dtype=torch.float64)
        probs = torch.tensor([float(r["posterior"]) for r in mine], dtype=torch.float64)
        assert torch.allclose(probs, torch.softmax(log_z, 0), atol=1e-12)
        # Golden frequencies of the trees in the set, renormalised over it: 0.6, 0.25, 0.
        assert [float(r["golden"]) for r in mine] == pytest.approx([0.6 / 0.85, 0.25 / 0.85, 0])
        golden_trees = read_trees(files / "golden.trprobs", taxa=aln.taxa)
        scores = compare_with_golden(trees, probs, golden_trees, [0.6, 0.25, 0.15])
        assert f"{method:<20} {scores['kl']:>16.4f} {scores['split_rmsd']:>11.4f}" in printed.out
    # The batched Laplace equals the single-tree estimator.
    for b, tree in enumerate(trees):
        model = phylo_model(aln, tree)
        single = Laplace(num_starts=1, seed=0).estimate(model)
        assert float(rows[2 * b]["estimate"]) == pytest.approx(single.value, abs=1e-4)
    assert plot.stat().st_size > 0
    # Rerun: every row comes from the checkpoint and nothing is sampled again.
    assert evidence(*argv) == 0
    assert "trees batched" not in capsys.readouterr().err
    assert [r["estimate"] for r in read_rows(out)] == [r["estimate"] for r in rows]


def test_glis_rows_agree_with_a_long_independent_run(files, capsys):
    from varinf import GLIS

    out = files / "out.csv"
    argv = ["--alignment", files / "aln.fasta", "--trees", files / "trees.nwk", "--methods",
            "glis", "--particles", 500, "--csv", out]  # fmt: skip
    assert evidence(*argv) == 0
    assert "golden" not in capsys.readouterr().out  # no golden runs for a user's alignment
    aln = read_alignment(files / "aln.fasta")
    trees = read_trees(files / "trees.nwk", taxa=aln.taxa)
    for row, tree in zip(read_rows(out), trees, strict=True):
        reference = GLIS(20000, seed=1).estimate(phylo_model(aln, tree))
        both = math.hypot(float(row["stderr"]), reference.stderr)
        assert abs(float(row["estimate"]) - reference.value) < 5 * both


def test_shipped_data_sets_resolve_their_credible_set_and_golden_runs():
    from models.phylo import datasets
    from models.phylo.evidence_posterior import resolve_alignment, resolve_golden, resolve_trees

    path, name = resolve_alignment("DS1")
    assert (path, name) == (datasets.path("DS1"), "DS1")
    assert resolve_alignment(str(path)) == (path, "DS1")
    assert resolve_trees("credible-set", name) == datasets.path("DS1-credible")
    assert resolve_golden(None, name) == datasets.runs("DS1", "golden")
    assert resolve_golden(None, None) == []


@pytest.mark.slow
def test_shipped_credible_set_against_a_golden_run(tmp_path, capsys):
    from models.phylo import datasets

    out = tmp_path / "ds1.csv"
    argv = ["--alignment", "DS1", "--trees", "credible-set", "--max-trees", 2, "--methods",
            "laplace", "--golden", datasets.runs("DS1")[0], "--csv", out]  # fmt: skip
    assert evidence(*argv) == 0
    rows = read_rows(out)
    # The two most probable DS1 trees hold 0.281 and 0.200 of replicate 1's golden mass:
    # renormalised over the two, 0.584 and 0.416.
    assert float(rows[0]["golden"]) == pytest.approx(0.281014 / (0.281014 + 0.199961))
    assert float(rows[0]["golden"]) + float(rows[1]["golden"]) == pytest.approx(1.0)
    assert abs(float(rows[0]["posterior"]) - float(rows[0]["golden"])) < 0.02  # Laplace: KL~0
    assert "against the golden runs" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--trees": "credible-set"}, "--trees credible-set"),
        ({"--particles": "1"}, "--particles"),
        ({"--golden": "missing.trprobs"}, "missing.trprobs"),
        ({"--golden": "elsewhere.trprobs"}, "none of the 3 trees"),
    ],
)
def test_bad_input_exits_2_with_one_line(files, capsys, change, message):
    elsewhere = GOLDEN.replace("((a,b),c,(d,e))", "((a,e),c,(d,b))")
    (files / "elsewhere.trprobs").write_text(
        elsewhere.replace("((a,c),b,(d,e))", "((a,d),c,(b,e))")
    )
    options = {"--alignment": files / "aln.fasta", "--trees": files / "trees.nwk",
               "--methods": "laplace", "--particles": "10"}  # fmt: skip
    for key, value in change.items():
        options[key] = files / value if key == "--golden" else value
    argv = [str(item) for pair in options.items() for item in pair]
    assert evidence(*argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("varinf phylo evidence: error:"), err
    assert message in err[0]
