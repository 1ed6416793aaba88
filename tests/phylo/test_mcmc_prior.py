"""Batched HMC at beta = 0 on DS1's top topology reproduces the branch-length prior, Exp(10)
(mean 0.1, variance 0.01), so the potential's log-Jacobians are right."""

import pytest
import torch

from tests.test_mcmc import Potential, assert_moments
from varinf.mcmc import MCMC


@pytest.mark.slow
def test_prior_moments_of_ds1_branch_lengths(data_dir):
    from models.phylo import phylo_model, read_alignment
    from models.phylo.trees import parse_newick

    alignment = read_alignment(data_dir / "alignments_fasta" / "DS1.fasta")
    line = (data_dir / "credible_sets_19dubious" / "JC_no_gamma_credible_set_ds1").read_text()
    tree = parse_newick(line.splitlines()[0].split("\t")[1], alignment.taxa)
    potential = Potential(phylo_model(alignment, tree))
    assert potential.dim == 51
    run = MCMC(potential, num_chains=8, num_warmup=100, num_draws=100, beta=0.0, seed=5,
               progress=False).run()  # fmt: skip
    lengths = run.samples["branch_lengths"]
    assert (lengths > 0).all()
    ones = torch.ones(51, dtype=lengths.dtype)
    assert_moments(run, slice(None), 0.1 * ones, 0.01 * ones, values=lengths)
