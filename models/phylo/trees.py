r"""Reading trees: Newick, NEXUS (with translate tables) and MrBayes ``.t``/``.trprobs``.

Parsing is done by DendroPy; each tree is then checked against the taxa of the alignment
and turned into the canonical tensor encoding of `models.phylo.topology`. MrBayes ``.trprobs``
weights (``[&W p]``) and the leading probabilities of credible-set files
(``p<TAB>newick`` per line) become `Tree.weight`.
"""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import PhyloFormatError
from .topology import from_edges, to_newick

__all__ = ["Tree", "read_trees", "parse_newick", "stack_trees"]

_WEIGHTED_LINE = re.compile(r"^\s*([0-9.eE+-]+)\s+(\(.*)$")


@dataclass(frozen=True, eq=False)
class Tree:
    """One unrooted binary tree in canonical encoding.

    Attributes:
        taxa: taxon names; leaf ``i`` is ``taxa[i]``.
        children: ``(n-1, 2)`` long child table (see `models.phylo.topology`).
        lengths: ``(2n-3,)`` float64 branch lengths, or ``None`` for a bare topology.
        weight: posterior probability or frequency from the file, if it had one.
        name: the tree's name in the file, if any.
    """

    taxa: tuple[str, ...]
    children: Tensor
    lengths: Tensor | None = None
    weight: float | None = None
    name: str | None = None

    @property
    def n_taxa(self) -> int:
        return len(self.taxa)

    def newick(self) -> str:
        """The tree as a Newick string with taxon names (and lengths, if known)."""
        return to_newick(self.children, self.lengths, self.taxa)

    def same_topology(self, other: Tree) -> bool:
        """Whether two trees on the same taxa have the same unrooted topology."""
        return self.taxa == other.taxa and torch.equal(self.children, other.children)


def stack_trees(trees: Sequence[Tree]) -> tuple[Tensor, Tensor | None]:
    """Stack trees into ``(B, n-1, 2)`` topologies and ``(B, 2n-3)`` lengths (or ``None``)."""
    if not trees:
        raise ValueError("stack_trees needs at least one tree")
    children = torch.stack([t.children for t in trees])
    if any(t.lengths is None for t in trees):
        return children, None
    return children, torch.stack([t.lengths for t in trees])


def read_trees(
    path: str | os.PathLike, taxa: Sequence[str] | None = None, format: str | None = None
) -> list[Tree]:
    """Read every tree of a Newick or NEXUS file.

    Args:
        path: Newick (one or more trees; lines ``p<TAB>newick`` give weights), NEXUS with or
            without a ``translate`` block, MrBayes ``.t`` and ``.trprobs``; gzipped if the
            name ends in ``.gz`` (e.g. IQ-TREE ``.ufboot`` sets).
        taxa: the alignment's taxa; each tree must have exactly these leaves. If omitted, the
            file's own taxa are used, in the order in which the file declares them.
        format: ``"newick"`` or ``"nexus"``; guessed from a ``#NEXUS`` header if omitted.

    Raises:
        PhyloFormatError: unreadable file, parse error, a leaf not in ``taxa``, a taxon missing
            from a tree, a duplicated leaf, a non-binary tree or a negative branch length.
    """
    import dendropy

    source = os.fspath(path)
    opener = gzip.open if source.endswith(".gz") else open
    try:
        with opener(source, "rt", encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except (OSError, EOFError) as err:  # gzip raises both for damaged archives
        reason = getattr(err, "strerror", None) or err
        raise PhyloFormatError(f"{source}: cannot read trees ({reason})") from err
    if not text.strip():
        raise PhyloFormatError(f"{source}: no trees found (empty file)")
    fmt = format or ("nexus" if text.lstrip().upper().startswith("#NEXUS") else "newick")
    if fmt not in ("newick", "nexus"):
        raise PhyloFormatError(f"{source}: unknown tree format {format!r}")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    weighted = fmt == "newick" and lines and all(_WEIGHTED_LINE.match(ln) for ln in lines)
    namespace = dendropy.TaxonNamespace()
    try:
        if weighted:
            raw = []
            for ln in lines:
                weight, newick = _WEIGHTED_LINE.match(ln).groups()
                tree = dendropy.Tree.get(
                    data=newick,
                    schema="newick",
                    taxon_namespace=namespace,
                    preserve_underscores=True,
                )
                raw.append((tree, float(weight)))
        else:
            tlist = dendropy.TreeList.get(
                data=text,
                schema=fmt,
                taxon_namespace=namespace,
                preserve_underscores=True,
                store_tree_weights=True,
            )
            raw = [(tree, tree.weight) for tree in tlist]
    except Exception as err:  # DendroPy raises many types; ours names the file
        raise PhyloFormatError(f"{source}: not a valid {fmt} tree file: {err}") from err
    if not raw:
        raise PhyloFormatError(f"{source}: no trees found")
    if taxa is None:
        taxa = [t.label for t in namespace]
    taxa = tuple(taxa)
    return [_convert(t, taxa, w, f"{source}, tree {i + 1}") for i, (t, w) in enumerate(raw)]


def parse_newick(newick: str, taxa: Sequence[str]) -> Tree:
    """Parse one Newick string on the given taxa (see `read_trees` for the checks)."""
    import dendropy

    try:
        tree = dendropy.Tree.get(data=newick, schema="newick", preserve_underscores=True)
    except Exception as err:
        raise PhyloFormatError(f"not a valid Newick tree: {err}") from err
    return _convert(tree, tuple(taxa), None, "newick string")


def _convert(tree, taxa: tuple[str, ...], weight, where: str) -> Tree:
    n = len(taxa)
    index = {name: i for i, name in enumerate(taxa)}
    if len(index) != n:
        raise PhyloFormatError(f"{where}: duplicated taxon in the taxa list")
    ids: dict[int, int] = {}
    next_id = n
    for node in tree.preorder_node_iter():
        if node.is_leaf():
            label = node.taxon.label if node.taxon is not None else None
            if label not in index:
                raise PhyloFormatError(f"{where}: leaf {label!r} is not among the taxa")
            if index[label] in ids.values():
                raise PhyloFormatError(f"{where}: taxon {label!r} appears twice")
            ids[id(node)] = index[label]
        else:
            ids[id(node)] = next_id
            next_id += 1
    missing = set(range(n)) - set(ids.values())
    if missing:
        raise PhyloFormatError(f"{where}: taxon {taxa[min(missing)]!r} is missing from the tree")
    edges, lengths = _edges(tree, ids, where)
    has = [x is not None for x in lengths]
    if any(has) and not all(has):
        raise PhyloFormatError(f"{where}: some branches have lengths and some do not")
    bad = next((x for x in lengths if x is not None and not x >= 0), None)
    if bad is not None:
        raise PhyloFormatError(f"{where}: negative or invalid branch length {bad}")
    children, out_len = from_edges_checked(n, edges, lengths if all(has) else None, where)
    return Tree(taxa, children, out_len, weight, tree.label)


def _edges(tree, ids: dict, where: str):
    root = tree.seed_node
    kids = root.child_nodes()
    edges, lengths = [], []
    for node in tree.preorder_node_iter():
        if node is root:
            continue
        if not node.is_leaf() and len(node.child_nodes()) != 2:
            n_kids = len(node.child_nodes())
            raise PhyloFormatError(f"{where}: non-binary node with {n_kids} children")
        if node.parent_node is root and len(kids) == 2:
            continue
        edges.append((ids[id(node)], ids[id(node.parent_node)]))
        lengths.append(node.edge.length)
    if len(kids) == 2:  # rooted input: merge the two root edges into one
        a, b = kids
        la, lb = a.edge.length, b.edge.length
        edges.append((ids[id(a)], ids[id(b)]))
        lengths.append(None if la is None or lb is None else la + lb)
    elif len(kids) != 3:
        raise PhyloFormatError(f"{where}: the root has {len(kids)} children (need 2 or 3)")
    return edges, lengths


def from_edges_checked(n, edges, lengths, where):
    try:
        return from_edges(n, edges, lengths)
    except PhyloFormatError as err:
        raise PhyloFormatError(f"{where}: {err}") from err
