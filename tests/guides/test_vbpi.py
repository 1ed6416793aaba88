"""The VBPI guide and its trainer: a short run learns, checkpoints resume, bad input is caught."""

from __future__ import annotations

import sys
from pathlib import Path

import pyro
import pytest
import torch

from models.phylo import Alignment, phylo_model, to_newick
from varinf.distributions.sbn import SBNSupport
from varinf.distributions.trees import all_topologies
from varinf.guides import VBPIGuide, VBPITrainer


def simulate(children, lengths, sites, gen):
    """JC69 sequences along a canonical tree (root state at the top node)."""
    n = children.shape[0] + 1
    states = torch.zeros(2 * n - 1, sites, dtype=torch.long)
    states[2 * n - 3] = torch.randint(0, 4, (sites,), generator=gen)

    def mutate(parent, t):
        change = torch.rand(sites, generator=gen) < 1 - torch.exp(torch.tensor(-4 * t / 3))
        return torch.where(change, torch.randint(0, 4, (sites,), generator=gen), parent)

    states[n - 1] = mutate(states[2 * n - 3], lengths[n - 1])
    for j in reversed(range(n - 2)):
        for c in children[j].tolist():
            states[c] = mutate(states[n + j], lengths[c])
    return ["".join("ACGT"[s] for s in states[i].tolist()) for i in range(n)]


@pytest.fixture(scope="module")
def problem():
    gen = torch.Generator().manual_seed(0)
    tops = all_topologies(5)
    true = tops[6]
    sequences = simulate(true, [0.2] * 7, 400, gen)
    aln = Alignment.from_sequences([f"t{i}" for i in range(5)], sequences)
    return aln, tops, true, sequences


def make_trainer(problem, **kwargs):
    aln, tops, true, _ = problem
    guide = VBPIGuide(SBNSupport.from_trees(tops, taxa=aln.taxa), taxa=aln.taxa)
    options = dict(lr=0.02, warm_start=100, eval_every=50, progress=False, seed=1)
    options.update(kwargs)
    golden = (true[None], torch.ones(1, dtype=torch.float64))
    return VBPITrainer(phylo_model(aln), guide, golden=golden, **options)


@pytest.mark.slow
def test_short_run_improves_bound_and_kl(problem):
    # The data (400 JC69 sites on a tree with 0.2 branches) put nearly all posterior mass on
    # the true topology, so KL(posterior || q) is close to -log q(true).
    trainer = make_trainer(problem)
    history = trainer.run(300)
    assert history.iteration == [50, 100, 150, 200, 250, 300]
    assert history.lower_bound[-1] > history.lower_bound[0] + 20
    assert history.kl[-1] < 0.5 * history.kl[0]
    out = trainer.evidence(num_particles=60, chunk=30)
    assert out["num_particles"] == 60
    # IWAE_60 >= ELBO in expectation; with 60 draws this holds with a margin of stderrs
    assert out["marginal_likelihood"] > out["elbo"] - 5 * out["elbo_stderr"]


def test_checkpoint_resume_and_corruption(problem, tmp_path):
    path = tmp_path / "run.pt"
    first = make_trainer(problem, checkpoint=path, checkpoint_every=10, eval_every=10)
    first.run(20)
    second = make_trainer(problem, eval_every=10)
    second.load(path)
    assert second.iteration == 20 and second.history.iteration == [10, 20]
    for a, b in zip(first.guide.parameters(), second.guide.parameters(), strict=True):
        assert torch.equal(a, b)
    second.run(30)
    assert second.history.iteration == [10, 20, 30]
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="unreadable"):
        second.load(path)
    torch.save({"format": "something-else"}, path)
    with pytest.raises(ValueError, match="not a VBPI checkpoint"):
        second.load(path)
    state = second.state_dict()
    del state["guide"]
    with pytest.raises(ValueError, match="corrupt"):
        second.load_state_dict(state)


def test_checkpoint_of_another_support_is_refused(problem, tmp_path):
    aln, tops, _, _ = problem
    trainer = make_trainer(problem)
    other = VBPIGuide(SBNSupport.from_trees(tops[:3]))
    state = trainer.state_dict()
    with pytest.raises(ValueError, match="different SBN support"):
        VBPITrainer(phylo_model(aln), other, progress=False).load_state_dict(state)


def test_guide_with_flow_samples_and_scores(problem):
    aln, tops, _, _ = problem
    guide = VBPIGuide(SBNSupport.from_trees(tops), flow_layers=2, hidden=8)
    with pyro.plate("particles", 4, dim=-1):
        trace = pyro.poutine.trace(guide).get_trace()
    trace.compute_log_prob()
    assert trace.nodes["branch_lengths"]["value"].shape == (4, 7)
    assert (trace.nodes["branch_lengths"]["value"] > 0).all()
    assert torch.isfinite(trace.nodes["branch_lengths"]["log_prob"]).all()
    trainer = VBPITrainer(phylo_model(aln), guide, warm_start=0, eval_every=5, progress=False)
    assert len(trainer.run(5).lower_bound) == 1


def test_bad_input(problem):
    aln, tops, _, _ = problem
    support = SBNSupport.from_trees(tops, taxa=aln.taxa)
    with pytest.raises(ValueError, match="taxa differ"):
        VBPIGuide(support, taxa=["t0", "t1", "t2", "t3", "x"])
    with pytest.raises(ValueError, match="empty"):
        SBNSupport.from_trees([])
    with pytest.raises(TypeError, match="SBNSupport"):
        VBPIGuide(tops)
    with pytest.raises(TypeError, match="VBPIGuide"):
        VBPITrainer(phylo_model(aln), lambda: None)
    with pytest.raises(ValueError, match="eval_every"):
        VBPITrainer(phylo_model(aln), VBPIGuide(support), eval_every=0)


def write_problem(problem, folder):
    aln, tops, true, sequences = problem
    fasta = folder / "aln.fasta"
    lines = [f">{t}\n{s}\n" for t, s in zip(aln.taxa, sequences, strict=True)]
    fasta.write_text("".join(lines))

    support = folder / "support.nwk"
    support.write_text("".join(to_newick(t, taxa=aln.taxa) + "\n" for t in tops))
    golden = folder / "golden.nwk"
    golden.write_text(f"1.0\t{to_newick(true, taxa=aln.taxa)}\n")
    return fasta, support, golden


def test_cli_runs_and_reports(problem, tmp_path, capsys):
    from varinf.cli import main

    fasta, support, golden = write_problem(problem, tmp_path)
    argv = ["phylo", "vbpi", "--alignment", str(fasta), "--support", str(support),
            "--iterations", "20", "--eval-every", "10", "--is-particles", "20",
            "--golden", str(golden), "--plots", str(tmp_path / "plots"), "--quiet",
            "--checkpoint", str(tmp_path / "run.pt"), "--checkpoint-every", "10"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "marginal_likelihood" in out and "kl_golden_q" in out and "elbo" in out
    assert (tmp_path / "plots" / "vbpi.png").exists() and (tmp_path / "run.pt").exists()
    argv[argv.index("20")] = "30"  # resume and continue to 30 steps
    assert main(argv) == 0
    assert "iterations: 30" in capsys.readouterr().out


def test_cli_bad_input(problem, tmp_path, capsys):
    from varinf.cli import main

    fasta, support, _ = write_problem(problem, tmp_path)
    other = tmp_path / "other.nwk"
    other.write_text("((a,b),(c,d),e);\n")
    base = ["phylo", "vbpi", "--alignment", str(fasta), "--iterations", "5", "--quiet"]
    assert main([*base, "--support", str(other)]) == 2
    assert "not among the taxa" in capsys.readouterr().err
    empty = tmp_path / "empty.nwk"
    empty.write_text("")
    assert main([*base, "--support", str(empty)]) == 2
    assert "no trees" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    assert main([*base, "--support", str(support), "--checkpoint", str(bad)]) == 2
    assert "unreadable" in capsys.readouterr().err


def test_example_runs(monkeypatch, capsys):
    import runpy

    root = Path(__file__).parents[2]
    argv = ["vbpi_ds1.py", "--iterations", "4", "--is-particles", "4", "--no-golden"]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(root / "examples" / "vbpi_ds1.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "marginal likelihood" in out and "ms per step" in out
