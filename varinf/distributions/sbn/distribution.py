r"""The subsplit Bayesian network (SBN) as a Pyro distribution over unrooted topologies.

Zhang & Matsen (2018), "Generalizing tree probability estimation via Bayesian networks"
(NeurIPS). A rooted tree is drawn top-down: a root split $\{X, \bar X\}$ with probability
$p(X)$, then every clade $Y$ of size $\ge 2$ with sister $Z$ splits into $Y_1|Y_2$ with
probability $p(Y_1|Y_2 \mid Y, Z)$ (the parent-child subsplit pairs, PCSPs, shared wherever
they occur). Forgetting the root gives an unrooted topology $\tau$ with

$$
q(\tau) = \sum_{k=1}^{2n-3} p(X_k)\prod_{Y \in \tau^{(k)}} p(s_Y \mid Y, Z_Y),
$$

the sum over its $2n-3$ rootings, computed for a batch of trees in linear time per tree by
the two-pass method of `varinf.distributions.sbn.terms`.

**Outside the support** (``outside=``):

- ``"strict"`` (default): ``log_prob`` of a topology none of whose rootings lies in the
  support raises ``ValueError`` naming it. Rootings outside the support have probability 0.
- ``"zero"``: such topologies get ``-inf``; the distribution is the same.
- ``"smooth"``: a different, still normalised distribution with full support: every
  conditional (and the root split) is the mixture $(1-\epsilon)\,p + \epsilon\,u$ with $u$
  uniform over *all* $2^{|Y|-1}-1$ subsplits of $Y$ (all $2^{n-1}-1$ root splits);
  conditionals whose context $(Y, Z)$ is not in the support are $u$ itself. ``sample`` draws
  from the same mixture, so samples and ``log_prob`` agree; nothing is renormalised behind the
  user's back (the bias reported against other SBN codes).
"""

from __future__ import annotations

import math

import torch
from pyro.distributions import TorchDistribution
from torch import Tensor
from torch.distributions import constraints

from varinf.distributions.sbn.bits import BITS, all_words, check_tables, contains, popcount
from varinf.distributions.sbn.canonical import tables_from_subsplits
from varinf.distributions.sbn.support import SBNSupport
from varinf.distributions.sbn.terms import rooting_log_probs_masked, tree_terms

_OUTSIDE = ("strict", "zero", "smooth")
_EMPTY = torch.Size()


class _Tables(constraints.Constraint):
    is_discrete = True
    event_dim = 2

    def __init__(self, n: int) -> None:
        self.n = n
        super().__init__()

    def check(self, value: Tensor) -> Tensor:
        try:
            check_tables(value, self.n)
        except ValueError:
            return torch.zeros(value.shape[:-2], dtype=torch.bool, device=value.device)
        return torch.ones(value.shape[:-2], dtype=torch.bool, device=value.device)


def _log_num_subsplits(size: Tensor) -> Tensor:
    r"""$\log(2^{m-1}-1)$, the log number of ways to split a clade of $m \ge 2$ taxa."""
    m = size.to(torch.float64)
    return (m - 1) * math.log(2.0) + torch.log1p(-torch.exp2(1 - m))


class SubsplitBayesianNetwork(TorchDistribution):
    r"""A subsplit Bayesian network over unrooted topologies on a given support.

    Values are canonical ``(n-1, 2)`` long child tables (leaves ``0 … n-1``, internal nodes in
    postorder, see ``models.phylo.topology``); ``log_prob`` is the exact normalised log
    probability of the unrooted topology (counting measure), batched over any leading shape.

    Args:
        support: an `SBNSupport` (e.g. ``SBNSupport.from_trees(trees)``).
        root_logits: ``(S,)`` unnormalised log probabilities of the root splits; zeros (uniform
            within each conditional) if omitted.
        pcsp_logits: ``(E,)`` unnormalised log probabilities of the PCSPs, normalised within
            each context $(Y, Z)$.
        outside: ``"strict"``, ``"zero"`` or ``"smooth"`` (see the module docstring).
        smoothing: $\epsilon \in (0, 1)$ for ``outside="smooth"``.

    Examples:
        >>> import torch
        >>> trees = torch.tensor([[[0, 1], [5, 2], [6, 3], [7, 4]]])  # (((0,1),2),3),4 unrooted
        >>> sbn = SubsplitBayesianNetwork(SBNSupport.from_trees(trees))
        >>> tau = sbn.sample((3,))
        >>> tau.shape, sbn.log_prob(tau).shape
        (torch.Size([3, 4, 2]), torch.Size([3]))
        >>> round(float(sbn.log_prob(trees[0]).exp()), 6)
        1.0
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(
        self,
        support: SBNSupport,
        root_logits: Tensor | None = None,
        pcsp_logits: Tensor | None = None,
        outside: str = "strict",
        smoothing: float = 0.0,
        validate_args=None,
    ) -> None:
        if not isinstance(support, SBNSupport):
            raise TypeError(
                f"support must be an SBNSupport, got {type(support).__name__}; "
                "build one with SBNSupport.from_trees(trees)"
            )
        if outside not in _OUTSIDE:
            raise ValueError(f"outside must be one of {_OUTSIDE}, got {outside!r}")
        if outside == "smooth" and not 0.0 < smoothing < 1.0:
            raise ValueError(f"outside='smooth' needs 0 < smoothing < 1, got {smoothing}")
        self.support_tables = support
        self.outside = outside
        self.smoothing = float(smoothing) if outside == "smooth" else 0.0
        dev = support.clades.device
        if root_logits is None:
            root_logits = torch.zeros(support.num_root_splits, dtype=torch.float64, device=dev)
        if pcsp_logits is None:
            pcsp_logits = torch.zeros(support.num_entries, dtype=root_logits.dtype, device=dev)
        for name, x, size in [
            ("root_logits", root_logits, support.num_root_splits),
            ("pcsp_logits", pcsp_logits, support.num_entries),
        ]:
            if x.shape != (size,):
                raise ValueError(f"{name} must have shape ({size},), got {tuple(x.shape)}")
        self.root_logits, self.pcsp_logits = root_logits, pcsp_logits
        self._lookup_cache: dict = {}  # shared with expanded copies
        self.n_taxa = support.n_taxa
        n = self.n_taxa
        super().__init__(torch.Size(), torch.Size([n - 1, 2]), validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=2)
    def support(self):
        return _Tables(self.n_taxa)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(SubsplitBayesianNetwork, _instance)
        new.__dict__.update({k: v for k, v in self.__dict__.items() if not k.startswith("_")})
        new._lookup_cache = self._lookup_cache
        super(SubsplitBayesianNetwork, new).__init__(
            torch.Size(batch_shape), self.event_shape, validate_args=False
        )
        new._validate_args = self._validate_args
        return new

    @property
    def root_log_probs(self) -> Tensor:
        """``(S,)`` normalised log probabilities of the root splits."""
        return self.root_logits.log_softmax(-1)

    @property
    def pcsp_log_probs(self) -> Tensor:
        """``(E,)`` log conditional probabilities of the PCSPs (normalised per context)."""
        table = self.support_tables.context_entries
        padded = torch.where(table >= 0, self.pcsp_logits[table.clamp(min=0)], -math.inf)
        norm = padded.logsumexp(-1)
        return self.pcsp_logits - norm[self.support_tables.entry_context]

    # ----------------------------------------------------------------- density
    def rooting_log_prob(self, value: Tensor) -> Tensor:
        r"""$\log p(\tau, k)$ of every rooting, ``(..., 2n-3)`` (``-inf`` outside the support)."""
        if self._validate_args:
            self._validate_sample(value)
        n = self.n_taxa
        terms, root_idx, entry_idx = self.lookup(value)
        root_lp, cond_lp = self._factor_log_probs(terms, root_idx, entry_idx)
        total = rooting_log_probs_masked(terms, root_lp, cond_lp)
        return total.reshape(*value.shape[:-2], 2 * n - 3)

    def lookup(self, value: Tensor):
        r"""The factors of every rooting of ``value`` and their indices in the support.

        Returns ``(terms, root_index, pcsp_index)`` for the flattened batch (see
        `SBNSupport.lookup`). The last result is kept (by identity of ``value``), so that a
        guide which reads the splits of a sampled tree and then its ``log_prob`` does the
        work once.
        """
        cache = self._lookup_cache
        if cache.get("value") is value:
            return cache["result"]
        n = self.n_taxa
        terms = tree_terms(value.reshape(-1, n - 1, 2).long())
        result = (terms, *self.support_tables.lookup(terms))
        cache.clear()
        cache.update(value=value, result=result)
        return result

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        out = self.rooting_log_prob(value).logsumexp(-1)
        if self.outside == "strict" and bool(torch.isneginf(out).any()):
            bad = torch.isneginf(out).nonzero()[0].tolist()
            raise ValueError(
                f"log_prob: the topology at index {bad} of `value` is outside the SBN's support "
                "(no rooting of it uses only known root splits and subsplit pairs); build the "
                "support from more trees, or pass outside='zero' (probability 0) or "
                "outside='smooth' with a smoothing > 0"
            )
        return out.expand(torch.broadcast_shapes(out.shape, self.batch_shape))

    def _factor_log_probs(self, terms, root_idx, entry_idx):
        sup = self.support_tables
        root_all, entry_all = self.root_log_probs, self.pcsp_log_probs
        root_lp = root_all[root_idx.clamp(min=0)]
        entry_lp = entry_all[entry_idx.clamp(min=0)]
        missing_root = root_idx < 0
        missing = entry_idx == -1
        if self.outside == "smooth":
            eps = self.smoothing
            n = self.n_taxa
            log_u_root = -_log_num_subsplits(torch.tensor(n, device=root_lp.device))
            root_lp = torch.logaddexp(
                torch.where(missing_root, -math.inf, root_lp + math.log1p(-eps)),
                log_u_root.to(root_lp) + math.log(eps),
            )
            size = popcount(terms.cond[..., 0, :]).clamp(min=2)
            log_u = -_log_num_subsplits(size).to(entry_lp)
            ctx_known = sup.context_known(terms)
            mixed = torch.logaddexp(
                torch.where(missing, -math.inf, entry_lp + math.log1p(-eps)), log_u + math.log(eps)
            )
            entry_lp = torch.where(ctx_known, mixed, log_u)
            missing_root, missing = torch.zeros_like(missing_root), torch.zeros_like(missing)
        root_lp = torch.where(missing_root, -math.inf, root_lp)
        entry_lp = torch.where(missing, -math.inf, entry_lp)
        return root_lp, torch.where(terms.cond_valid, entry_lp, 0.0)

    # ---------------------------------------------------------------- sampling
    def sample(self, sample_shape=_EMPTY) -> Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        num = max(shape.numel(), 1)
        with torch.no_grad():
            tables = self._sample_tables(num)
        return tables[: shape.numel()].reshape(*shape, *self.event_shape)

    def _sample_tables(self, num: int) -> Tensor:
        if self.smoothing > 0:
            return self._sample_tables_smoothed(num)
        sup = self.support_tables
        n, dev = self.n_taxa, sup.clades.device
        rows = torch.arange(num, device=dev)
        table = sup.context_entries
        logits = self.pcsp_log_probs.detach()
        logits = torch.where(table >= 0, logits[table.clamp(min=0)], -math.inf)
        gumbel = -torch.log(-torch.log(torch.rand(num, n - 2, table.shape[1], device=dev)))
        pick = torch.distributions.Categorical(logits=self.root_log_probs.detach()).sample((num,))
        stack = torch.full((num, n), -1, dtype=torch.long, device=dev)
        ptr = torch.zeros(num, dtype=torch.long, device=dev)
        ptr = _push_ids(stack, ptr, rows, sup.root_child_contexts[pick])
        ctx_seq = torch.empty(num, n - 2, dtype=torch.long, device=dev)
        entry_seq = torch.empty(num, n - 2, dtype=torch.long, device=dev)
        for step in range(n - 2):
            ptr = ptr - 1
            ctx = stack[rows, ptr]
            choice = (logits[ctx] + gumbel[:, step]).argmax(-1)
            entry = table[ctx, choice]
            ctx_seq[:, step], entry_seq[:, step] = ctx, entry
            ptr = _push_ids(stack, ptr, rows, sup.entry_child_contexts[entry])
        y = sup.clades[sup.context_clade[ctx_seq]]
        a = sup.clades[sup.entry_first[entry_seq]]
        return tables_from_subsplits(y, a, y ^ a, n)

    def _sample_tables_smoothed(self, num: int) -> Tensor:
        sup = self.support_tables
        n, dev = self.n_taxa, sup.clades.device
        full = all_words(n, dev)
        eps = self.smoothing
        root_lp = self.root_log_probs.detach()
        pick = torch.distributions.Categorical(logits=root_lp).sample((num,))
        x = sup.clades[sup.root_clades[pick]]
        if eps > 0:
            uniform = torch.rand(num, device=dev) < eps
            part = _random_part(full.expand(num, -1), n)
            part = torch.where(contains(part, n - 1)[:, None], full ^ part, part)
            x = torch.where(uniform[:, None], part, x)
        width = sup.num_words
        stack = torch.zeros(num, n, 2, width, dtype=torch.long, device=dev)
        ptr = torch.zeros(num, dtype=torch.long, device=dev)
        rows = torch.arange(num, device=dev)
        ptr = _push(stack, ptr, rows, x, full ^ x)
        ptr = _push(stack, ptr, rows, full ^ x, x)
        entry_lp = self.pcsp_log_probs.detach()
        nodes = torch.zeros(num, n - 2, 3, width, dtype=torch.long, device=dev)
        for step in range(n - 2):
            ptr = ptr - 1
            y, z = stack[rows, ptr, 0], stack[rows, ptr, 1]
            a = self._sample_part(y, z, entry_lp)
            b = y ^ a
            nodes[:, step, 0], nodes[:, step, 1], nodes[:, step, 2] = y, a, b
            ptr = _push(stack, ptr, rows, a, b)
            ptr = _push(stack, ptr, rows, b, a)
        return tables_from_subsplits(nodes[:, :, 0], nodes[:, :, 1], nodes[:, :, 2], n)

    def _sample_part(self, y: Tensor, z: Tensor, entry_lp: Tensor) -> Tensor:
        sup = self.support_tables
        ctx = sup.context_index(y, z)
        entries = sup.context_entries[ctx.clamp(min=0)]
        logits = torch.where(entries >= 0, entry_lp[entries.clamp(min=0)], -math.inf)
        if self.outside != "smooth" and bool((ctx < 0).any()):  # pragma: no cover
            raise RuntimeError("SBN sampling left its support; please report this")
        choice = torch.distributions.Categorical(logits=logits).sample()
        part = sup.clades[sup.entry_first[entries.gather(1, choice[:, None])[:, 0]]]
        if self.smoothing > 0:
            uniform = (torch.rand(y.shape[0], device=y.device) < self.smoothing) | (ctx < 0)
            part = torch.where(uniform[:, None], _random_part(y, self.n_taxa), part)
        return part


def _random_part(y: Tensor, n: int) -> Tensor:
    """A uniform non-empty proper subset of each clade (by rejection; accepts >= 1/2)."""
    out = torch.zeros_like(y)
    todo = torch.ones(y.shape[0], dtype=torch.bool, device=y.device)
    while bool(todo.any()):
        bits = torch.randint(0, 1 << BITS, y.shape, device=y.device) & y
        ok = (bits != 0).any(-1) & (bits != y).any(-1)
        take = todo & ok
        out = torch.where(take[:, None], bits, out)
        todo &= ~ok
    return out


def _push_ids(stack: Tensor, ptr: Tensor, rows: Tensor, contexts: Tensor) -> Tensor:
    """Push the non-leaf child contexts ``(B, 2)`` (``-1`` = leaf, skipped); new pointer."""
    for side in (1, 0):
        ctx = contexts[:, side]
        inner = ctx >= 0
        slot = torch.where(inner, ptr, stack.shape[1] - 1)
        stack[rows, slot] = torch.where(inner, ctx, stack[rows, slot])
        ptr = ptr + inner.long()
    return ptr


def _push(stack: Tensor, ptr: Tensor, rows: Tensor, clade: Tensor, sister: Tensor) -> Tensor:
    """Push ``(clade, sister)`` where the clade has two or more taxa; return the new pointer."""
    big = popcount(clade) >= 2
    slot = torch.where(big, ptr, stack.shape[1] - 1)
    keep = stack[rows, slot]
    new = torch.stack([clade, sister], 1)
    stack[rows, slot] = torch.where(big[:, None, None], new, keep)
    return ptr + big.long()


__all__ = ["SubsplitBayesianNetwork"]
