r"""DNA alignments: reading FASTA, NEXUS and PHYLIP, IUPAC partials and site patterns.

An alignment of $n$ taxa and $S$ sites is stored compressed into its $P$
unique site patterns with integer weights (how many sites share the pattern), because the
likelihood of a site depends only on its column: $\log L = \sum_p w_p \log L_p$.
Each character becomes a 4-bit mask over the states ``A, C, G, T`` (IUPAC ambiguity codes set
several bits; gaps ``-``/``.`` and missing data ``?``/``N``/``X`` set all four, the all-ones
partial used by MrBayes, IQ-TREE, torchtree and VBPI).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import PhyloFormatError

__all__ = ["Alignment", "read_alignment", "IUPAC"]

STATES = "ACGT"
_A, _C, _G, _T = 1, 2, 4, 8
#: IUPAC nucleotide code -> bitmask over (A, C, G, T); U is read as T.
IUPAC: dict[str, int] = {
    "A": _A, "C": _C, "G": _G, "T": _T, "U": _T,
    "R": _A | _G, "Y": _C | _T, "S": _C | _G, "W": _A | _T, "K": _G | _T, "M": _A | _C,
    "B": _C | _G | _T, "D": _A | _G | _T, "H": _A | _C | _T, "V": _A | _C | _G,
    "N": 15, "X": 15, "?": 15, "-": 15, ".": 15,
}  # fmt: skip
_LOOKUP = torch.zeros(256, dtype=torch.uint8)
for _ch, _mask in IUPAC.items():
    _LOOKUP[ord(_ch)] = _mask
    _LOOKUP[ord(_ch.lower())] = _mask


@dataclass(frozen=True, eq=False)
class Alignment:
    r"""A DNA alignment compressed into weighted site patterns.

    Attributes:
        taxa: taxon names, in the order of the rows (leaf ``i`` of every tree is ``taxa[i]``).
        patterns: ``(n_taxa, n_patterns)`` uint8 bitmasks over ``A, C, G, T``.
        weights: ``(n_patterns,)`` float64 counts of sites showing each pattern.
        n_sites: number of alignment columns $S = \sum_p w_p$.
    """

    taxa: tuple[str, ...]
    patterns: Tensor
    weights: Tensor
    n_sites: int

    @property
    def n_taxa(self) -> int:
        return len(self.taxa)

    @property
    def n_patterns(self) -> int:
        return self.patterns.shape[1]

    @classmethod
    def from_sequences(
        cls, taxa: Sequence[str], sequences: Sequence[str], source: str = "<sequences>"
    ) -> Alignment:
        """Validate aligned sequences and compress them into site patterns.

        Raises:
            PhyloFormatError: no taxa, zero-length or unequal-length sequences, a duplicated
                taxon, or a character outside the IUPAC nucleotide alphabet (the message names
                the taxon and the site).
        """
        taxa, sequences = tuple(taxa), tuple(sequences)
        if not taxa:
            raise PhyloFormatError(f"{source}: empty alignment (no sequences)")
        seen: set[str] = set()
        for name in taxa:
            if name in seen:
                raise PhyloFormatError(f"{source}: duplicated taxon {name!r}")
            seen.add(name)
        n_sites = len(sequences[0])
        if n_sites == 0:
            raise PhyloFormatError(f"{source}: empty alignment (taxon {taxa[0]!r} has no sites)")
        codes = torch.empty(len(taxa), n_sites, dtype=torch.uint8)
        for i, (name, seq) in enumerate(zip(taxa, sequences, strict=True)):
            if len(seq) != n_sites:
                raise PhyloFormatError(
                    f"{source}: taxon {name!r} has {len(seq)} sites, "
                    f"taxon {taxa[0]!r} has {n_sites}"
                )
            codes[i] = _encode(name, seq, source, i)
        patterns, counts = torch.unique(codes, dim=1, return_counts=True)
        return cls(taxa, patterns, counts.to(torch.float64), n_sites)

    def likelihood_cache(self, dtype: torch.dtype = torch.float64, device=None):
        """This alignment's `models.phylo.cache.LikelihoodCache` for tips of ``dtype`` on
        ``device`` (made on first use, kept with the alignment; `LikelihoodCache.clear`
        frees it)."""
        from .cache import LikelihoodCache

        device = torch.device("cpu") if device is None else torch.device(device)
        caches = self.__dict__.setdefault("_caches", {})
        key = (dtype, device)
        if key not in caches:
            tips = self.partials(dtype=dtype, device=device).mT.contiguous()
            caches[key] = LikelihoodCache(tips)
        return caches[key]

    def partials(self, dtype: torch.dtype = torch.float64, device=None) -> Tensor:
        """Tip partial likelihoods, shape ``(n_taxa, n_patterns, 4)``, ones where allowed."""
        bits = torch.tensor([_A, _C, _G, _T], dtype=torch.uint8)
        return ((self.patterns[..., None] & bits) != 0).to(dtype=dtype, device=device)

    def empirical_frequencies(self) -> Tensor:
        """Base frequencies of the unambiguous characters, weighted by pattern counts."""
        tips = self.partials()
        unambiguous = tips.sum(-1, keepdim=True) == 1
        counts = (tips * unambiguous * self.weights[:, None]).sum((0, 1))
        return counts / counts.sum()

    def __repr__(self) -> str:
        return f"Alignment({self.n_taxa} taxa, {self.n_sites} sites, {self.n_patterns} patterns)"


class _UnknownCharacter(PhyloFormatError):
    """A character outside the IUPAC alphabet, at ``site`` (0-based) of taxon ``taxon``."""

    def __init__(self, message: str, taxon: int, site: int) -> None:
        super().__init__(message)
        self.taxon, self.site = taxon, site


def _describe(ch: str) -> str:
    """A character for a message: bytes that are not UTF-8 (decoded with surrogateescape)
    by their value, others quoted."""
    return f"(byte 0x{ord(ch) - 0xDC00:02X})" if 0xDC80 <= ord(ch) <= 0xDCFF else repr(ch)


def _encode(name: str, seq: str, source: str, taxon: int = 0) -> Tensor:
    raw = seq.encode("ascii") if seq.isascii() else None
    if raw is None:  # a non-ASCII character is never IUPAC: find the first one
        site = next(i for i, ch in enumerate(seq) if not ch.isascii())
        codes = None
    else:
        codes = _LOOKUP[torch.frombuffer(bytearray(raw), dtype=torch.uint8).long()]
        bad = (codes == 0).nonzero()
        site = int(bad[0]) if len(bad) else None
    if site is not None:
        raise _UnknownCharacter(
            f"{source}: taxon {name!r} has unknown character {_describe(seq[site])} at site "
            f"{site + 1} (not an IUPAC nucleotide code; use ? or N for missing data)",
            taxon, site,
        )  # fmt: skip
    return codes


def read_alignment(path: str | os.PathLike, format: str | None = None) -> Alignment:
    """Read a DNA alignment from FASTA, NEXUS or PHYLIP (relaxed) and compress its patterns.

    Args:
        path: the file.
        format: ``"fasta"``, ``"nexus"`` or ``"phylip"``; guessed from the first line if omitted
            (``>`` for FASTA, ``#NEXUS`` for NEXUS, two integers for PHYLIP).

    FASTA is read here (to report line numbers); NEXUS and PHYLIP are read with Biopython.

    Raises:
        PhyloFormatError: unreadable or malformed file, or invalid content (see
            `Alignment.from_sequences`); never another exception type for bad content.
    """
    source = os.fspath(path)
    try:  # undecodable bytes are kept (as surrogates) so that they can be reported
        with open(source, encoding="utf-8", errors="surrogateescape") as handle:
            text = handle.read()
    except OSError as err:
        raise PhyloFormatError(f"{source}: cannot read alignment ({err.strerror})") from err
    fmt = (format or _guess_format(text, source)).lower()
    if fmt == "fasta":
        taxa, seqs = _parse_fasta(text, source)
    elif fmt in ("nexus", "phylip"):
        _refuse_non_ascii(text, source)
        taxa, seqs = _parse_biopython(text, source, fmt)
    else:
        raise PhyloFormatError(f"{source}: unknown alignment format {format!r}")
    try:
        return Alignment.from_sequences(taxa, seqs, source)
    except _UnknownCharacter as err:
        where = _fasta_position(text, err.taxon, err.site) if fmt == "fasta" else None
        if where is None:
            raise
        line, column = where
        message = str(err).replace(f"{source}: ", f"{source}, line {line}, column {column}: ", 1)
        raise PhyloFormatError(message) from err


def _refuse_non_ascii(text: str, source: str) -> None:
    """NEXUS and PHYLIP files are ASCII: name the first other character by line and column."""
    if text.isascii():
        return
    for lineno, line in enumerate(text.splitlines(), start=1):
        column = next((i for i, ch in enumerate(line) if not ch.isascii()), None)
        if column is not None:
            raise PhyloFormatError(
                f"{source}, line {lineno}, column {column + 1}: unknown character "
                f"{_describe(line[column])} (alignments are ASCII IUPAC nucleotide codes)"
            )


def _fasta_position(text: str, taxon: int, site: int) -> tuple[int, int] | None:
    """Line and column (1-based) of ``site`` of the ``taxon``-th FASTA record."""
    record = -1
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith(">"):
            record += 1
        elif record == taxon and stripped and not stripped.startswith(";"):
            for column, ch in enumerate(line, start=1):
                if not ch.isspace():
                    if site == 0:
                        return lineno, column
                    site -= 1
    return None


def _guess_format(text: str, source: str) -> str:
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if first.startswith(">"):
        return "fasta"
    if first.upper().startswith("#NEXUS"):
        return "nexus"
    fields = first.split()
    if len(fields) == 2 and all(f.isdigit() for f in fields):
        return "phylip"
    raise PhyloFormatError(
        f"{source}: cannot tell the alignment format from the first line {first[:40]!r} "
        "(expected FASTA '>', '#NEXUS' or a PHYLIP header); pass format="
    )


def _parse_fasta(text: str, source: str) -> tuple[list[str], list[str]]:
    taxa: list[str] = []
    chunks: list[list[str]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith(";"):
            continue
        if line.startswith(">"):
            name = line[1:].split()[0] if line[1:].split() else ""
            if not name:
                raise PhyloFormatError(f"{source}, line {lineno}: sequence without a name")
            taxa.append(name)
            chunks.append([])
        elif not chunks:
            raise PhyloFormatError(f"{source}, line {lineno}: sequence data before any '>' name")
        else:
            chunks[-1].append("".join(line.split()))
    return taxa, ["".join(c) for c in chunks]


def _parse_biopython(text: str, source: str, fmt: str) -> tuple[list[str], list[str]]:
    from Bio import AlignIO

    if fmt == "phylip":
        _phylip_header(text, source)  # before Biopython, which loops forever on '0 4'
    try:
        records = list(AlignIO.read(io.StringIO(text),
                                    "phylip-relaxed" if fmt == "phylip" else "nexus"))  # fmt: skip
    except Exception as err:  # Biopython raises many types; ours names the file
        hint = " (do the counts of the header 'taxa sites' match the rows?)" * (fmt == "phylip")
        message = f"{source}: not a valid {fmt.upper()} alignment{hint}: {err}"
        raise PhyloFormatError(message) from err
    taxa, seqs = [r.id for r in records], [str(r.seq) for r in records]
    if fmt == "phylip":
        _check_phylip_header(text, source, taxa, seqs)
    return taxa, seqs


def _phylip_header(text: str, source: str) -> tuple[int, int, int]:
    """Line number, taxa and sites of the header, both positive."""
    lineno, header = next(
        ((i, ln) for i, ln in enumerate(text.splitlines(), 1) if ln.strip()), (1, "")
    )
    fields = header.split()
    if len(fields) < 2 or not all(f.isdigit() for f in fields[:2]):
        raise PhyloFormatError(f"{source}, line {lineno}: a PHYLIP file starts with 'taxa sites'")
    n_taxa, n_sites = int(fields[0]), int(fields[1])
    if n_taxa < 1 or n_sites < 1:
        raise PhyloFormatError(
            f"{source}, line {lineno}: the PHYLIP header says {n_taxa} taxa and {n_sites} sites; "
            "both must be positive"
        )
    return lineno, n_taxa, n_sites


def _check_phylip_header(text: str, source: str, taxa: list[str], seqs: list[str]) -> None:
    """The header's counts must be the file's (Biopython reads past a disagreement)."""
    lineno, n_taxa, n_sites = _phylip_header(text, source)
    if n_taxa != len(taxa):
        raise PhyloFormatError(
            f"{source}, line {lineno}: the PHYLIP header says {n_taxa} taxa, the file has "
            f"{len(taxa)} sequences; fix the header or the rows"
        )
    wrong = next((i for i, seq in enumerate(seqs) if len(seq) != n_sites), None)
    if wrong is not None:
        raise PhyloFormatError(
            f"{source}, line {lineno}: the PHYLIP header says {n_sites} sites, taxon "
            f"{taxa[wrong]!r} has {len(seqs[wrong])}; fix the header or the rows"
        )
