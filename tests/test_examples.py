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


def test_pyro_idioms_example_agrees_with_every_truth(capsys):
    """Eight schools (quadrature), a PyroModule regression (analytic) and a minibatch VAE
    (its full-data bound), each within 5 reported standard errors; the VAE trains."""
    example = runpy.run_path(str(ROOT / "examples" / "pyro_idioms.py"))
    results = example["main"](quick=True)
    for name, result in results.items():
        assert example["agrees"](result), (name, result["estimate"], result["truth"])
    assert abs(example["eight_schools_quadrature"]() - (-31.31)) < 0.01
    vae = results["digits VAE, pyro.module + IWAE-DReG"]
    assert vae["end"] > vae["start"] + 1000  # the bound improved, nothing diverged
    assert "agrees" in capsys.readouterr().out


def test_geco_vae_example(monkeypatch, capsys, tmp_path):
    plot = tmp_path / "geco.png"
    monkeypatch.setattr(sys, "argv", ["geco_vae.py", "--steps", "120", "--plot", str(plot)])
    runpy.run_path(str(ROOT / "examples" / "geco_vae.py"), run_name="__main__")
    out = capsys.readouterr().out
    for name in ("ELBO", "beta-VAE", "GECO", "final lambda", "reconstruction"):
        assert name in out
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_rqmc_logistic_regression_example(monkeypatch, capsys, tmp_path):
    plot = tmp_path / "rqmc.png"
    argv = ["rqmc_logistic_regression.py", "--steps", "50", "--plot", str(plot)]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(ROOT / "examples" / "rqmc_logistic_regression.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "i.i.d. (N=8)" in out and "RQMC (N=8)" in out and "final ELBO" in out
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_flow_guide_evidence_example(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["flow_guide_evidence.py", "--steps", "30"])
    runpy.run_path(str(ROOT / "examples" / "flow_guide_evidence.py"), run_name="__main__")
    out = capsys.readouterr().out
    for name in ("sumo toy", "logistic regression", "mean-field", "realnvp", "ESS"):
        assert name in out
