"""The discrete VAE example: its exact metrics against a loop over latent states, and a short
run of every estimator."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "discrete_vae.py"


@pytest.fixture(scope="module")
def example():
    pytest.importorskip("sklearn")
    spec = importlib.util.spec_from_file_location("discrete_vae", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_exact_metrics_match_a_loop_over_states(example):
    torch.manual_seed(0)
    vae = example.VAE(num_latents=2, num_classes=3, hidden=8)
    x = (torch.rand(4, 64) > 0.5).float()
    log_px, elbo = vae.exact_metrics(x)
    q = vae.guide(x)
    joint, bound = [], torch.zeros(4)
    for a in range(3):
        for b in range(3):
            z = torch.zeros(2, 3)
            z[0, a] = z[1, b] = 1.0
            log_joint = vae.log_likelihood(x, z) - 2 * math.log(3)
            log_q = q.log_prob(z)
            joint.append(log_joint)
            bound += log_q.exp() * (log_joint - log_q)
    assert log_px == pytest.approx(torch.stack(joint).logsumexp(0).mean().item(), abs=1e-5)
    assert elbo == pytest.approx(bound.mean().item(), abs=1e-5)
    assert elbo <= log_px


@pytest.mark.slow
def test_short_run_of_every_estimator(example, tmp_path):
    out = tmp_path / "vae.png"
    args = "--steps 6 --eval-every 3 --variance-every 3 --variance-repeats 3 --batch-size 20"
    histories = example.main([*args.split(), "--out", str(out)])
    assert out.exists()
    assert set(histories) == set(example.ESTIMATORS)
    for history in histories.values():
        assert all(math.isfinite(v) for v in history["log_px"] + history["grad_var"])
        assert history["log_px"][-1] > history["log_px"][0]  # six steps already help
