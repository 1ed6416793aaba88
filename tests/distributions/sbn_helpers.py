"""Enumeration and brute-force references for the SBN tests (independent of the two-pass code)."""

from __future__ import annotations

import torch


def _adjacency(children: torch.Tensor) -> dict[int, list[int]]:
    rows = children.tolist()
    n = len(rows) + 1
    adj: dict[int, list[int]] = {}
    edges = [(c, n + j) for j, row in enumerate(rows[:-1]) for c in row] + [(2 * n - 3, n - 1)]
    for u, v in edges:
        adj.setdefault(u, []).append(v)
        adj.setdefault(v, []).append(u)
    return adj


def brute_log_prob(children, n, root_prob, cond_prob) -> float:
    """log q(tau) = log sum over edges of p(root split) prod p(subsplit | clade, sister).

    root_prob: {frozenset clade without n-1: p}; cond_prob: {(Y, Z, frozenset({A, B})): p}
    with clades as frozensets of taxa. Missing keys have probability 0.
    """
    adj = _adjacency(children)
    total = 0.0

    def clade(node, came_from):
        if node < n:
            return frozenset([node])
        out = frozenset()
        for nb in adj[node]:
            if nb != came_from:
                out |= clade(nb, node)
        return out

    def down(node, came_from, sister):
        if node < n:
            return 1.0
        kids = [nb for nb in adj[node] if nb != came_from]
        a, b = clade(kids[0], node), clade(kids[1], node)
        p = cond_prob.get((a | b, sister, frozenset([a, b])), 0.0)
        return p * down(kids[0], node, b) * down(kids[1], node, a)

    seen = set()
    for u in adj:
        for v in adj[u]:
            if (v, u) in seen:
                continue
            seen.add((u, v))
            x, y = clade(v, u), clade(u, v)
            split = x if n - 1 not in x else y
            p = root_prob.get(split, 0.0)
            total += p * down(v, u, y) * down(u, v, x)
    return float(torch.log(torch.tensor(total, dtype=torch.float64)))


def tables_as_sets(sbn):
    """The SBN's probabilities as dictionaries over frozensets (for brute_log_prob)."""
    from varinf.distributions.sbn.bits import to_masks

    sup = sbn.support_tables
    n = sup.n_taxa
    sets = [frozenset(torch.nonzero(m).flatten().tolist()) for m in to_masks(sup.clades, n)]
    probs = sbn.root_log_probs.exp().tolist()
    root = {sets[c]: p for c, p in zip(sup.root_clades.tolist(), probs, strict=True)}
    cond = {}
    for e, p in enumerate(sbn.pcsp_log_probs.exp().tolist()):
        ctx = int(sup.entry_context[e])
        y, z = sets[int(sup.context_clade[ctx])], sets[int(sup.context_sister[ctx])]
        a, b = sets[int(sup.entry_first[e])], sets[int(sup.entry_second[e])]
        cond[(y, z, frozenset([a, b]))] = p
    return root, cond
