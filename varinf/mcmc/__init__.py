r"""Hamiltonian Monte Carlo over many chains in one batched potential call.

The target of chain $c$ is the power posterior over unconstrained latents $z \in \mathbb R^D$,

$$\pi_{\beta_c}(z) \propto p(x \mid z)^{\beta_c}\, p(z), \qquad \beta_c \in [0, 1],$$

($p(z)$ includes the log-Jacobians of the transforms to the constrained space; see
`varinf.potential`). All $C$ chains advance together: each leapfrog step is **one** call of the
potential on a ``(C, D)`` batch, so a vectorised model (the phylogenetic likelihood, a plate
over chains) costs one batched likelihood evaluation per step whatever $C$ is.

**Transition** (Neal 2011, "MCMC using Hamiltonian dynamics"). Draw $p \sim N(0, M)$ with a
diagonal mass matrix $M = \mathrm{diag}(m_c)^{-1}$ per chain, run $L_c$ leapfrog steps of size
$\epsilon_c$ (`varinf.mcmc.leapfrog`), accept with probability
$\min(1, e^{H(z, p) - H(z', p')})$, $H = -\log\pi_\beta(z) + \tfrac12 p^\top M^{-1} p$.
A transition whose energy error passes 1000 (or turns non-finite) is *divergent*, rejected and
counted. The trajectory length is jittered: $L_c = \lceil u\,T_c / \epsilon_c \rceil$ with
$u \sim U(0, 1)$ drawn afresh each iteration, which keeps HMC from resonating on periodic orbits
(Neal 2011, §5.4.2.2; Hoffman, Radul & Sountsov 2021).

**Warm-up** (`varinf.mcmc.adaptation`), Stan's windowed schedule (Stan Reference Manual,
"HMC algorithm parameters: automatic parameter tuning"): an initial fast window, slow windows
that double in length, a final fast window. Throughout, $\epsilon$ follows dual averaging
towards the target acceptance $\delta$ (Hoffman & Gelman 2014, §3.2), driven by the mean
acceptance statistic of the chains that share a $\beta$ (cross-chain adaptation: they take the
same number of steps, so no batched call runs on a few stragglers); at the end of
each slow window the inverse metric becomes the regularised variance of the window's draws,
pooled over the chains that share a $\beta$ (one chain alone: its own draws), and the step
sizes are re-initialised (Hoffman & Gelman 2014, Algorithm 4). The integration time is
$T = \pi\sqrt{\lambda_{\max}}$, with $\lambda_{\max}$ the variance of the slowest direction in
whitened coordinates, tracked by a running power iteration over the chains of each $\beta$
(the direction SNAPER targets, Sountsov & Hoffman 2022), started afresh with the first
metric (before it, chains drawn from the prior are still falling towards the typical set,
their spread is no guide, and trajectories are capped at 8 steps): with $u \sim U(0, 1)$,
$\mathbb E[\cos(uT)] = 0$, so a Gaussian's slowest direction decorrelates in one transition,
while faster directions see random phases. A power-posterior run thus adapts every
temperature separately inside the same batched calls.

Written by hand because no maintained PyTorch library runs chains vectorised with per-chain
adaptation: Pyro's HMC/NUTS run one chain per process, and the vectorised samplers with
per-chain step sizes (BlackJAX, TFP, NumPyro's ``chain_method="vectorized"``) are JAX or
TensorFlow. ``kernel="nuts"`` runs Pyro's NUTS (`pyro.infer.mcmc`) on the same potential,
one chain at a time, for models that do not vectorise over chains.

Examples:
    >>> from varinf.mcmc import MCMC, MCMCRun
    >>> MCMC.__name__, MCMCRun.__name__
    ('MCMC', 'MCMCRun')
"""

from varinf.mcmc.result import MCMCRun
from varinf.mcmc.sampler import MCMC

__all__ = ["MCMC", "MCMCRun"]
