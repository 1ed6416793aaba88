r"""Training the VBPI guide: annealed VIMCO through ``SVI``, checkpoints, KL and evidence.

The objective (Zhang & Matsen 2019) is the $K$-sample bound with a likelihood annealed by
$\beta_t = \min(1, \beta_0 + t / T_{\text{warm}})$:

$$
\hat L_\beta = \log \frac1K \sum_k \frac{p(D \mid \tau_k, b_k)^{\beta_t}\, p(\tau_k, b_k)}
    {q(\tau_k)\, q(b_k \mid \tau_k)},
$$

VIMCO (Mnih & Rezende 2016, `varinf.gradients.vimco`) for the SBN's parameters and the
reparameterised gradient for the branch-length parameters, Adam with the step size decayed by
``lr_decay`` every ``decay_every`` steps. The value reported is the true bound ($\beta = 1$)
from the same particles. All $K$ topologies of a step go through the batched pruning
likelihood in one call (`models.phylo.phylo_model`).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pyro
import torch
from pyro.infer import SVI
from pyro.optim import Adam

from varinf.estimators.elbo import IWAE, iwae, iwae_stderr
from varinf.estimators.objective import Objective
from varinf.gradients.vimco import vimco_surrogate
from varinf.guides.vbpi import VBPIGuide

__all__ = ["AnnealedVIMCO", "VBPITrainer", "VBPIHistory", "tree_kl"]

CHECKPOINT_FORMAT = "varinf-vbpi-checkpoint-1"
LOG_EPS = math.log(torch.finfo(torch.float64).eps)


class AnnealedVIMCO(IWAE):
    r"""``IWAE(K, gradient="vimco")`` on likelihood-annealed log weights.

    The training weights are $\beta \log p(D\mid z) + \log p(z) - \log q(z)$; the value
    reported is the untempered IWAE bound from the same particles.

    Args:
        num_particles: $K \ge 2$.
        inverse_temperature: $\beta$, the likelihood's power in the training weights; set it
            between steps (`VBPITrainer` does).
    """

    name = "annealed-vimco"

    def __init__(self, num_particles: int = 10, inverse_temperature: float = 1.0, **options):
        super().__init__(num_particles, gradient="vimco", **options)
        self.inverse_temperature = inverse_temperature

    def objective(self, weights) -> Objective:
        beta = self.inverse_temperature
        log_w = beta * weights.log_likelihood + weights.log_prior - weights.log_q
        surrogate = vimco_surrogate(log_w, weights.log_q_score).sum()
        return Objective(value=iwae(weights.log_weights), surrogate=surrogate)


def tree_kl(guide: VBPIGuide, tables: torch.Tensor, probs: torch.Tensor) -> float:
    r"""$\mathrm{KL}(p \,\|\, q_\phi)$ over given topologies with probabilities $p$ (golden runs).

    As in the SBN/VBPI papers, $q$ is floored at machine epsilon inside the log (a topology the
    SBN cannot produce costs $\log(1/\epsilon) = 36$, not an infinite KL).
    """
    with torch.no_grad():
        log_q = guide.topology_distribution(outside="zero").log_prob(tables)
    return float((probs * (probs.log() - log_q.clamp(min=LOG_EPS))).sum())


@dataclass
class VBPIHistory:
    """What a run recorded every ``eval_every`` steps."""

    iteration: list[int] = field(default_factory=list)
    lower_bound: list[float] = field(default_factory=list)  # mean K-sample bound since last
    kl: list[float] = field(default_factory=list)
    wall_time: list[float] = field(default_factory=list)  # training seconds so far


class VBPITrainer:
    r"""Fit a `VBPIGuide` to a phylogenetic model with annealed VIMCO (see module docstring).

    Args:
        model: a Pyro model with sites ``topology``, ``branch_lengths`` and a likelihood factor
            (`models.phylo.phylo_model`).
        guide: the `VBPIGuide`.
        num_particles: $K$.
        lr: Adam step size,
        lr_decay: multiplied into it
        decay_every: every this many steps.
        beta0: the likelihood's initial power $\beta_0$ in $\beta_t = \min(1, \beta_0 + t/T)$,
        warm_start: $T$ (0: no annealing).
        golden: optional ``(tables, probs)`` ground truth for the KL trace.
        eval_every: steps between records of the history.
        checkpoint: path of the checkpoint file (written every ``checkpoint_every`` steps and at
            the end of `run`); ``None`` for none.
        progress: show a progress bar.
        seed: seeds Pyro's random streams at the start.

    Examples:
        >>> import pyro, torch
        >>> from models.phylo import Alignment, phylo_model
        >>> from varinf.distributions.sbn import SBNSupport
        >>> aln = Alignment.from_sequences(list("abcd"), ["ACGTAA", "ACGAAC", "TCGAAA", "TCGGAC"])
        >>> trees = torch.tensor([[[0, 1], [4, 2], [5, 3]], [[0, 2], [4, 1], [5, 3]]])
        >>> trainer = VBPITrainer(phylo_model(aln), VBPIGuide(SBNSupport.from_trees(trees)),
        ...                       warm_start=0, eval_every=10, progress=False, seed=0)
        >>> history = trainer.run(20)
        >>> history.iteration
        [10, 20]
    """

    def __init__(
        self,
        model: Callable,
        guide: VBPIGuide,
        *,
        num_particles: int = 10,
        lr: float = 1e-3,
        lr_decay: float = 0.75,
        decay_every: int = 20000,
        beta0: float = 1e-3,
        warm_start: int = 100000,
        golden: tuple[torch.Tensor, torch.Tensor] | None = None,
        eval_every: int = 1000,
        checkpoint: str | os.PathLike | None = None,
        checkpoint_every: int = 5000,
        progress: bool = True,
        seed: int | None = None,
    ) -> None:
        if not isinstance(guide, VBPIGuide):
            raise TypeError(f"guide must be a VBPIGuide, got {type(guide).__name__}")
        for name, value in [("eval_every", eval_every), ("checkpoint_every", checkpoint_every)]:
            if value < 1:
                raise ValueError(f"{name} must be a positive number of steps, got {value}")
        self.model, self.guide = model, guide
        self.loss = AnnealedVIMCO(num_particles, max_plate_nesting=0)
        self.lr, self.lr_decay, self.decay_every = lr, lr_decay, decay_every
        self.beta0, self.warm_start = beta0, warm_start
        self.golden = golden
        self.eval_every, self.checkpoint_every = eval_every, checkpoint_every
        self.checkpoint = None if checkpoint is None else os.fspath(checkpoint)
        self.progress = progress
        self.optim = Adam({"lr": lr})
        self.svi = SVI(model, guide, self.optim, loss=self.loss)
        self.iteration = 0
        self.elapsed = 0.0
        self.history = VBPIHistory()
        if seed is not None:
            pyro.set_rng_seed(seed)

    def beta(self, step: int) -> float:
        """Inverse temperature of the likelihood at ``step``."""
        return 1.0 if self.warm_start <= 0 else min(1.0, self.beta0 + step / self.warm_start)

    def _set_lr(self) -> None:
        lr = self.lr * self.lr_decay ** (self.iteration // self.decay_every)
        for opt in self.optim.optim_objs.values():
            for group in opt.param_groups:
                group["lr"] = lr

    def run(self, iterations: int) -> VBPIHistory:
        """Train until ``iterations`` steps in total (continuing a resumed run)."""
        from tqdm.auto import tqdm

        bounds: list[float] = []
        bar = tqdm(total=iterations, initial=self.iteration, disable=not self.progress)
        while self.iteration < iterations:
            self.loss.inverse_temperature = self.beta(self.iteration + 1)
            start = time.perf_counter()
            bounds.append(-self.svi.step())
            self.iteration += 1
            if self.iteration % self.decay_every == 0 or self.iteration == 1:
                self._set_lr()
            self.elapsed += time.perf_counter() - start
            if not math.isfinite(bounds[-1]):
                raise FloatingPointError(
                    f"the lower bound is {bounds[-1]} at step {self.iteration}; lower lr or "
                    "check the model's likelihood"
                )
            bar.update(1)
            if self.iteration % self.eval_every == 0:
                self._record(bounds)
                bar.set_postfix(lower_bound=f"{self.history.lower_bound[-1]:.2f}")
                bounds = []
            if self.checkpoint and self.iteration % self.checkpoint_every == 0:
                self.save(self.checkpoint)
        bar.close()
        if self.checkpoint:
            self.save(self.checkpoint)
        return self.history

    def _record(self, bounds: list[float]) -> None:
        h = self.history
        h.iteration.append(self.iteration)
        h.lower_bound.append(sum(bounds) / len(bounds))
        h.wall_time.append(self.elapsed)
        if self.golden is not None:
            h.kl.append(tree_kl(self.guide, *self.golden))

    # ------------------------------------------------------------------ evidence
    def evidence(self, num_particles: int = 1000, chunk: int = 100) -> dict:
        r"""ELBO and importance-sampling marginal likelihood from ``num_particles`` draws.

        Draws go through `IWAE.estimate` in chunks of ``chunk`` particles (memory); the
        pooled log weights give $\mathrm{IWAE}_N$ (the IS estimate of $\log p(D)$) with its
        delta-method standard error, and the ELBO (mean log weight) with its standard error.
        """
        with torch.no_grad():
            logs = self._log_weights(num_particles, chunk)
        log_w = torch.cat(logs).to(torch.float64)
        return {
            "marginal_likelihood": float(iwae(log_w)),
            "marginal_likelihood_stderr": float(iwae_stderr(log_w)),
            "elbo": float(log_w.mean()),
            "elbo_stderr": float(log_w.std() / math.sqrt(log_w.numel())),
            "num_particles": int(log_w.numel()),
        }

    def _log_weights(self, num_particles: int, chunk: int) -> list[torch.Tensor]:
        logs = []
        for start in range(0, num_particles, chunk):
            k = min(chunk, num_particles - start)
            estimator = IWAE(num_particles=max(k, 2), max_plate_nesting=0)
            logs.append(estimator.estimate(self.model, self.guide).log_weights[:k])
        return logs

    # --------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        h = self.history
        return {
            "format": CHECKPOINT_FORMAT,
            "iteration": self.iteration,
            "elapsed": self.elapsed,
            "guide": self.guide.state_dict(),
            "optim": self.optim.get_state(),
            "rng": {"torch": torch.get_rng_state(), "pyro": pyro.util.get_rng_state()},
            "history": [h.iteration, h.lower_bound, h.kl, h.wall_time],
            "support": _fingerprint(self.guide),
        }

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("checkpoint: not a VBPI checkpoint (missing or unknown 'format')")
        if state.get("support") != _fingerprint(self.guide):
            raise ValueError(
                "checkpoint: it was written for a different SBN support (taxa, root splits or "
                "subsplit pairs differ); resume with the same --support trees"
            )
        try:
            self.guide.load_state_dict(state["guide"])
            self.optim.set_state(state["optim"])
            pyro.util.set_rng_state(state["rng"]["pyro"])
            self.iteration, self.elapsed = int(state["iteration"]), float(state["elapsed"])
            self.history = VBPIHistory(*[list(x) for x in state["history"]])
        except (KeyError, RuntimeError, TypeError, ValueError) as err:
            raise ValueError(f"checkpoint: corrupt or incomplete ({err})") from err

    def save(self, path: str | os.PathLike) -> None:
        """Write a checkpoint atomically (a crash mid-write keeps the previous one)."""
        path = os.fspath(path)
        tmp = path + ".tmp"
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)

    def load(self, path: str | os.PathLike) -> None:
        """Resume from a checkpoint file; ``ValueError`` if it is unreadable or corrupt."""
        try:
            state = torch.load(os.fspath(path), map_location="cpu", weights_only=False)
        except FileNotFoundError:
            raise
        except Exception as err:  # torch raises many types for damaged files
            raise ValueError(f"checkpoint {os.fspath(path)!r} is unreadable ({err})") from err
        self.load_state_dict(state)


def _fingerprint(guide: VBPIGuide) -> list:
    sup = guide.support
    return [
        sup.n_taxa,
        sup.num_root_splits,
        sup.num_entries,
        int(sup.entry_keys.sum()),
        int(sup.clade_keys.sum()),
        guide.psp,
        len(guide.flow),
    ]
