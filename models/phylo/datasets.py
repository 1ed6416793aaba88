r"""The phylogenetic benchmark data shipped with the package: DS1–DS4 and their tree sets.

The files are the standard DS benchmark alignments of Lakner et al. (2008) and the tree samples
published with SBN/VBPI (Zhang & Matsen 2018, 2019) and "19 dubious ways" (Fourment et al. 2020);
`models/phylo/data/README.md` credits each source. They install with the package (about 1.7 MB),
so the tests, the examples and the documentation run from a fresh clone or a wheel.

Short names (`names()` lists them):

| name | file | what |
| --- | --- | --- |
| `DS1` … `DS4` | `alignments_fasta/DSk.fasta` | alignment, full taxon names |
| `DS1-nexus` | `alignments_nexus/DS1.nex` | DS1 as TreeBASE NEXUS |
| `DS1-numbered` | `bito_ds1/ds1.fasta` | DS1 with taxa renamed 1..27 |
| `DS1-credible` … `DS4-credible` | `credible_sets_19dubious/...` | 95 % credible set |
| `DS1-credible-branches` | `bito_ds1/ds1.credible.with-branches.nwk` | 40 trees, branch lengths |
| `DS1-mcmc` | `bito_ds1/DS1.subsampled_10.t` | MrBayes `.t` sample, 10 trees |
| `DS1-topologies` | `bito_ds1/DS1.100_topologies.nwk` | 100 topologies, full names |

The MrBayes golden runs and short runs (`.trprobs`, gzipped, 10 replicates each for DS1–DS4) are
listed by `runs()`. A name that is not in the table is read as a path inside the data folder,
so every shipped file is reachable: `path("bito_ds1/ds1.mb-pp.csv")`.

Examples:
    >>> from models.phylo import datasets, read_alignment, read_trees
    >>> aln = read_alignment(datasets.path("DS1"))
    >>> len(aln.taxa)
    27
    >>> ds2 = read_alignment(datasets.path("DS2"))
    >>> golden = read_trees(datasets.runs("DS2", "golden")[0], taxa=ds2.taxa)
    >>> golden[0].weight  # posterior frequency of the top topology in replicate 1
    0.523645
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["names", "path", "root", "runs"]

_ROOT = Path(__file__).resolve().parent / "data"
_DATA_SETS = ("DS1", "DS2", "DS3", "DS4")
_RUN_KINDS = {"golden": "golden_runs_trprobs", "short": "short_runs_trprobs"}

_NAMED = {
    **{k: f"alignments_fasta/{k}.fasta" for k in _DATA_SETS},
    **{
        f"{k}-credible": f"credible_sets_19dubious/JC_no_gamma_credible_set_{k.lower()}"
        for k in _DATA_SETS
    },
    "DS1-nexus": "alignments_nexus/DS1.nex",
    "DS1-numbered": "bito_ds1/ds1.fasta",
    "DS1-credible-branches": "bito_ds1/ds1.credible.with-branches.nwk",
    "DS1-mcmc": "bito_ds1/DS1.subsampled_10.t",
    "DS1-topologies": "bito_ds1/DS1.100_topologies.nwk",
}


def root() -> Path:
    r"""The folder holding the shipped data (same layout as the full benchmark data folder).

    Returns:
        The absolute path of `models/phylo/data` inside the installed package.

    Examples:
        >>> from models.phylo import datasets
        >>> (datasets.root() / "README.md").exists()
        True
    """
    return _ROOT


def names() -> tuple[str, ...]:
    r"""The short names `path()` accepts, in table order.

    Returns:
        A tuple of names such as `"DS1"`, `"DS1-credible"`.

    Examples:
        >>> from models.phylo import datasets
        >>> datasets.names()[:4]
        ('DS1', 'DS2', 'DS3', 'DS4')
    """
    return tuple(_NAMED)


def path(name: str) -> Path:
    r"""The path of a shipped file, by short name or by its path inside the data folder.

    Args:
        name: a short name from `names()` (e.g. `"DS1"`, `"DS1-credible"`), or a path relative
            to `root()` (e.g. `"bito_ds1/ds1.mb-pp.csv"`).

    Returns:
        The absolute path of the file.

    Raises:
        FileNotFoundError: `name` is neither a short name nor a shipped file; the message lists
            the short names.

    Examples:
        >>> from models.phylo import datasets
        >>> datasets.path("DS1").name
        'DS1.fasta'
        >>> datasets.path("bito_ds1/ds1.mb-pp.csv").exists()
        True
    """
    found = _ROOT / _NAMED.get(name, name)
    if not found.is_file():
        raise FileNotFoundError(
            f"no shipped data file named {name!r}; use one of {', '.join(_NAMED)} "
            f"or a path inside {_ROOT}"
        )
    return found


def runs(data: str, kind: str = "golden") -> list[Path]:
    r"""The 10 replicate MrBayes `.trprobs` files (gzipped) of one data set, in replicate order.

    Golden runs are the long runs SBN/VBPI use as the true topology posterior; short runs are
    the shorter runs SBN trains on. `read_trees` reads the gzipped files directly.

    Args:
        data: `"DS1"`, `"DS2"`, `"DS3"` or `"DS4"`.
        kind: `"golden"` or `"short"`.

    Returns:
        Ten paths, `rep_1` … `rep_10`.

    Raises:
        ValueError: unknown `data` or `kind`.

    Examples:
        >>> from models.phylo import datasets
        >>> len(datasets.runs("DS1", "short"))
        10
    """
    if data not in _DATA_SETS:
        raise ValueError(f"data={data!r}: the runs are shipped for {', '.join(_DATA_SETS)}")
    if kind not in _RUN_KINDS:
        raise ValueError(f"kind={kind!r}: use 'golden' or 'short'")
    folder = _ROOT / _RUN_KINDS[kind] / data
    return [folder / f"rep_{r}" / f"{data}.trprobs.gz" for r in range(1, 11)]
