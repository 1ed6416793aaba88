"""``kernel="nuts"``: Pyro's NUTS on the same potential, one chain after another.

For models that do not vectorise over chains, and as the reference the batched sampler is
tested and benchmarked against. Each chain is its own `pyro.infer.mcmc.MCMC` run (Pyro's
multi-chain mode forks processes); its potential energy is ``-log_density`` at one point, with
the gradient from the same ``value_and_grad`` call.
"""

from __future__ import annotations

import time
import warnings

import torch
from pyro.infer.mcmc import MCMC as PyroMCMC
from pyro.infer.mcmc import NUTS

from varinf.mcmc.result import MCMCRun


class _LogDensity(torch.autograd.Function):
    """$\\log\\pi_\\beta(z)$ at one point ``(D,)`` whose backward is the potential's gradient."""

    @staticmethod
    def forward(ctx, z, potential, beta, counter):
        value, grad, _ = potential.value_and_grad(z.detach()[None], beta)
        counter[0] += 1
        ctx.save_for_backward(grad[0])
        return value[0]

    @staticmethod
    def backward(ctx, upstream):
        (grad,) = ctx.saved_tensors
        return upstream * grad, None, None, None


def run_pyro_nuts(mcmc, init) -> MCMCRun:
    """Run `mcmc` (an `MCMC` with ``kernel="nuts"``) chain by chain with Pyro's NUTS."""
    potential = mcmc.potential
    z0 = mcmc._initial_points(init)
    beta = mcmc.beta.to(z0)
    counter = [0]
    chains, steps, accept, divergences = [], [], [], []
    started = time.perf_counter()
    interrupted = False
    for c in range(mcmc.num_chains):
        chain_beta = beta[c : c + 1]

        def potential_fn(params, chain_beta=chain_beta):
            return -_LogDensity.apply(params["z"], potential, chain_beta, counter)

        kernel = NUTS(
            potential_fn=potential_fn,
            target_accept_prob=mcmc.target_accept,
            max_tree_depth=10,
        )
        seed = int(torch.randint(0, 2**62, (), generator=mcmc.generator))
        runner = PyroMCMC(
            kernel,
            num_samples=mcmc.num_draws,
            warmup_steps=mcmc.num_warmup,
            initial_params={"z": z0[c].clone()},
            disable_progbar=not mcmc.progress,
        )
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                runner.run()
        except KeyboardInterrupt:
            interrupted = True
            warnings.warn(
                f"Pyro NUTS interrupted: returning the {c} chains finished so far",
                RuntimeWarning,
                stacklevel=3,
            )
            break
        chains.append(runner.get_samples()["z"].detach())
        with warnings.catch_warnings():  # Pyro's R-hat of a single chain warns
            warnings.simplefilter("ignore")
            stats = runner.diagnostics()
        steps.append(float(kernel.step_size))
        accept.append(float(stats["acceptance rate"]["chain 0"]))
        divergences.append(len(stats["divergences"]["chain 0"]))
    if not chains:
        raise KeyboardInterrupt("Pyro NUTS interrupted before its first chain finished")
    z = torch.stack(chains)
    done = z.shape[0]
    terms = potential.terms(z.reshape(-1, z.shape[-1]))
    return MCMCRun(
        z=z,
        log_likelihood=terms.log_likelihood.reshape(done, -1),
        log_prior=terms.log_prior.reshape(done, -1),
        beta=beta[:done].clone(),
        acceptance=torch.tensor(accept, dtype=z.dtype),
        step_size=torch.tensor(steps, dtype=z.dtype),
        divergences=torch.tensor(divergences),
        num_evaluations=counter[0],
        potential=potential,
        diagnostics={
            "elapsed": time.perf_counter() - started,
            "interrupted": interrupted,
            "warnings": [],
            "kernel": "pyro-nuts",
        },
    )
