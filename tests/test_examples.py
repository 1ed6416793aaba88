"""The examples run (quick settings) and print what they promise."""

import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_phylo_evidence_example(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["phylo_evidence.py", "--steps", "30", "--particles", "40"])
    runpy.run_path(str(ROOT / "examples" / "phylo_evidence.py"), run_name="__main__")
    out = capsys.readouterr().out
    for name in ("elbo", "iwae", "sumo", "khat"):
        assert name in out
