"""The varinf command: demo, compare on a user file, clear errors."""

import pytest

from varinf.cli import main

USER_MODEL = """
import pyro, pyro.distributions as dist, torch

data = torch.tensor([0.3, -0.1, 0.8])

def model():
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", 3):
        pyro.sample("x", dist.Normal(mu, 1.0), obs=data)

def guide():
    pyro.sample("mu", dist.Normal(0.25, 0.5))
"""


def test_demo_prints_tables_and_writes_plots(tmp_path, capsys):
    assert main(["demo", "--repeats", "20", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "SUMO note toy" in out and "conjugate Gaussian" in out
    for name in ("elbo", "iwae", "sumo", "1.8379"):
        assert name in out
    assert (tmp_path / "comparison_sumo_toy.png").stat().st_size > 10000
    assert (tmp_path / "comparison_conjugate.png").exists()


def test_compare_on_a_user_file(tmp_path, capsys):
    path = tmp_path / "user.py"
    path.write_text(USER_MODEL)
    code = main(
        [
            "compare",
            f"{path}:model",
            "--guide",
            f"{path}:guide",
            "--estimators",
            "elbo",
            "iwae",
            "--repeats",
            "5",
            "--plot",
            str(tmp_path / "c.png"),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "elbo" in out and "iwae" in out
    assert (tmp_path / "c.png").exists()


def test_compare_loads_bundled_class_methods(capsys):
    code = main(
        [
            "compare",
            "models/energies.py:SumoMixture.model",
            "--guide",
            "models/energies.py:SumoMixture.guide",
            "--repeats",
            "3",
            "--truth",
            "1.8379",
        ]
    )
    assert code == 0
    assert "rmse" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["compare", "nowhere.py:model", "--guide", "nowhere.py:guide"], "no such file"),
        (["compare", "justaname"], "PATH.py:NAME"),
        (["compare", "{user}:missing", "--guide", "{user}:guide"], "no attribute 'missing'"),
        (["compare", "{user}:model"], "need a guide"),
        (
            ["compare", "{user}:model", "--guide", "{user}:guide", "--estimators", "naive-mc"],
            "takes no guide",
        ),
    ],
)
def test_clear_errors(tmp_path, capsys, argv, message):
    path = tmp_path / "user.py"
    path.write_text(USER_MODEL)
    argv = [a.replace("{user}", str(path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bad_option_values_exit_with_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--repeats", "0"])
    assert exit_info.value.code == 2
    assert "positive integer" in capsys.readouterr().err
