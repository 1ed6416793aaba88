"""Posterior over a credible set: the batched topology density, normalisation, golden scores."""

import math

import pytest
import torch

from models.phylo import datasets, phylo_model, read_alignment, read_trees
from models.phylo.credible import (
    compare_with_golden,
    credible_set_rows,
    posterior_over_topologies,
    split_probabilities,
    topology_problems,
)
from varinf.potential import Potential


@pytest.fixture(scope="module")
def ds1_two():
    alignment = read_alignment(datasets.path("DS1"))
    trees = read_trees(datasets.path("DS1-credible"), taxa=alignment.taxa)[:2]
    return alignment, trees


def test_batched_topologies_equal_the_model_one_tree_at_a_time(ds1_two):
    alignment, trees = ds1_two
    problems = topology_problems(alignment, trees)
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(3, 2, problems.dim, generator=generator, dtype=torch.float64) * 0.3 - 2.5
    batched = problems.log_density(z)  # (3 particles, 2 trees), one call
    for b, tree in enumerate(trees):
        single = Potential(phylo_model(alignment, tree)).log_density(z[:, b])
        assert torch.allclose(batched[:, b], single, atol=1e-8)


def test_posterior_normalises_with_a_uniform_prior():
    probs = posterior_over_topologies(torch.tensor([-7036.5, -7037.5, -7040.0]))
    assert probs.sum().item() == pytest.approx(1.0)
    assert (probs[0] / probs[1]).item() == pytest.approx(math.e)
    with pytest.raises(ValueError, match="finite"):
        posterior_over_topologies(torch.tensor([0.0, float("nan")]))


def test_golden_scores_vanish_for_the_golden_posterior(ds1_two):
    _, trees = ds1_two
    golden = [0.6, 0.4]
    scores = compare_with_golden(trees, torch.tensor(golden, dtype=torch.float64), trees, golden)
    assert scores["kl"] == pytest.approx(0.0, abs=1e-12)
    assert scores["split_rmsd"] == pytest.approx(0.0, abs=1e-12)
    assert scores["golden_mass"] == pytest.approx(1.0)


def test_split_probabilities_count_each_nontrivial_split_once(ds1_two):
    _, trees = ds1_two
    splits = split_probabilities(trees[:1], [1.0])
    assert len(splits) == trees[0].n_taxa - 3  # an unrooted binary tree has n - 3 of them
    assert set(splits.values()) == {1.0}


def test_exact_hessians_agree_with_finite_differences(ds1_two):
    from varinf.estimators.batched import batched_hessians

    alignment, trees = ds1_two
    problems = topology_problems(alignment, trees)
    generator = torch.Generator().manual_seed(1)
    z = torch.randn(2, problems.dim, generator=generator, dtype=torch.float64) * 0.3 - 2.5
    exact = problems.hessian(z)
    numeric = batched_hessians(problems.log_density, z)
    assert torch.allclose(exact, numeric, rtol=1e-5, atol=1e-5)


def test_credible_set_rows_match_the_single_tree_estimator(ds1_two):
    from varinf import Laplace

    alignment, trees = ds1_two
    rows = credible_set_rows(alignment, trees, ["laplace"])
    assert [r["tree"] for r in rows] == [1, 2]
    assert sum(r["posterior"] for r in rows) == pytest.approx(1.0)
    single = Laplace(num_starts=1, seed=0).estimate(phylo_model(alignment, trees[0]))
    assert rows[0]["estimate"] == pytest.approx(single.value, abs=1e-3)
    with pytest.raises(ValueError, match="not batched"):
        credible_set_rows(alignment, trees, ["stepping-stone"])
