import argparse
import importlib.util
import math
from pathlib import Path

import pyro.distributions as dist
import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "birkhoff_matching.py"


@pytest.fixture(scope="module")
def bench():
    if not SCRIPT.exists():
        pytest.skip("benchmarks/birkhoff_matching.py not found")
    spec = importlib.util.spec_from_file_location("birkhoff_matching", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_exact_posterior_matches_pyro_one_one_matching(bench):
    sigma = 0.5
    centres, y = bench.make_problem(6, sigma, seed=3)
    perms, p = bench.exact_posterior(centres, y, sigma)
    assert len(perms) == 720 and torch.isclose(p.sum(), torch.tensor(1.0, dtype=p.dtype))
    # independent route: OneOneMatching with potentials -||y_n - mu_m||^2 / 2 sigma^2
    logits = -((y.unsqueeze(-2) - centres) ** 2).sum(-1) / (2 * sigma**2)
    matching = dist.OneOneMatching(logits)
    assert torch.allclose(matching.log_prob(perms).exp(), p, atol=1e-12)


def test_permutation_probs_and_distance(bench):
    centres, y = bench.make_problem(4, 0.3, seed=4)
    perms, p = bench.exact_posterior(centres, y, 0.3)

    class PointMass:  # a "distribution" whose samples are one permutation matrix
        def sample(self, shape):
            return torch.eye(4)[perms[5]].expand(*shape, 4, 4)

    q = bench.permutation_probs(PointMass(), perms, 10)
    assert q[5] == 1 and q.sum() == 1
    assert bench.bhattacharyya(p, p) == pytest.approx((0.0, 0.0), abs=1e-6)


@pytest.mark.slow
def test_rounding_fit_recovers_low_noise_posterior(bench):
    args = argparse.Namespace(steps=150, particles=16, lr=0.1, eta=0.2, likelihood="mean", seed=0)
    centres, y = bench.make_problem(6, 0.1, seed=7)
    perms, p = bench.exact_posterior(centres, y, 0.1)
    q, elbo = bench.fit("rounding", centres, y, 0.1, 0.9, args)
    assert math.isfinite(elbo)
    hellinger, _ = bench.bhattacharyya(p, bench.permutation_probs(q, perms, 2000))
    assert hellinger < 0.2  # a uniform q would score about 0.98
