import subprocess
import sys

import torch

import models.phylo
import varinf.distributions as vd
from varinf.distributions.trees import clade_keys, clades, random_topologies


def test_trees_import_without_the_likelihood():
    code = (
        "import sys, varinf.distributions.trees as t; "
        "t.UniformTopology(5).sample(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'models'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_models_phylo_reexports_the_same_objects():
    for name in ("UniformTopology", "PhyloFormatError", "canonicalize", "clades", "from_edges",
                 "parents", "random_topologies", "to_newick"):  # fmt: skip
        assert getattr(models.phylo, name) is getattr(vd, name)


def test_clade_keys_match_boolean_masks():
    trees = random_topologies(70, 3, torch.Generator().manual_seed(2))
    masks = clades(trees)
    for tree, mask in zip(trees, masks, strict=True):
        keys = clade_keys(70, tree.tolist())
        from_masks = [sum(1 << i for i in row.nonzero().flatten().tolist()) for row in mask]
        assert keys == from_masks
