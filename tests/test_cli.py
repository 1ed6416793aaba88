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


def test_naive_monte_carlo_compares_beside_guided_estimators(tmp_path, capsys):
    path = tmp_path / "user.py"
    path.write_text(USER_MODEL)
    argv = [
        "compare",
        f"{path}:model",
        "--guide",
        f"{path}:guide",
        "--estimators",
        "iwae",
        "naive-mc",
        "--repeats",
        "3",
    ]
    assert main(argv) == 0
    assert "naive-mc" in capsys.readouterr().out


def test_model_and_guide_from_one_file_share_its_module_state(tmp_path):
    from varinf.cli import load_callable

    path = tmp_path / "random_user.py"
    path.write_text(
        "import torch\nDATA = torch.randn(3)\ndef model():\n    return DATA\n"
        "def guide():\n    return DATA\n"
    )
    model = load_callable(f"{path}:model", "model")
    guide = load_callable(f"{path}:guide", "--guide")
    assert model() is guide()


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
        (["compare", "models/conjugate.py:ConjugateGaussian.model"], "takes no arguments"),
    ],
)
def test_clear_errors(tmp_path, capsys, argv, message):
    path = tmp_path / "user.py"
    path.write_text(USER_MODEL)
    argv = [a.replace("{user}", str(path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("argv", [["demo", "--repeats", "0"], ["--threads", "0", "demo"]])
def test_bad_option_values_exit_with_usage(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "positive integer" in capsys.readouterr().err


BROKEN_MODEL = """
import pyro, pyro.distributions as dist

def model():
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    raise KeyError("the data dictionary has no 'y'")

def guide():
    pyro.sample("mu", dist.Normal(0.0, 1.0))
"""


def test_an_error_in_the_users_model_is_one_line(tmp_path, capsys):
    path = tmp_path / "broken.py"
    path.write_text(BROKEN_MODEL)
    argv = ["compare", f"{path}:model", "--guide", f"{path}:guide", "--repeats", "3"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "KeyError" in err and "the data dictionary has no 'y'" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_traceback_flag_shows_the_whole_error(tmp_path, monkeypatch, capsys):
    import varinf.cli

    def explode(args):
        raise ZeroDivisionError("inside the user's likelihood")

    monkeypatch.setattr(varinf.cli, "run_demo", explode)
    assert main(["demo"]) == 1
    err = capsys.readouterr().err
    assert "ZeroDivisionError: inside the user's likelihood" in err and "--traceback" in err
    with pytest.raises(ZeroDivisionError):
        main(["--traceback", "demo"])


@pytest.mark.parametrize("where", ["missing-folder", "a-directory"])
def test_an_unwritable_plot_path_fails_before_the_run(tmp_path, capsys, where):
    path = tmp_path / "user.py"
    path.write_text(USER_MODEL)
    plot = tmp_path / "no" / "such" / "c.png" if where == "missing-folder" else tmp_path
    # 10**6 repeats would take minutes: returning at once shows nothing ran
    argv = ["compare", f"{path}:model", "--guide", f"{path}:guide", "--repeats", "1000000"]
    assert main([*argv, "--plot", str(plot)]) == 2
    err = capsys.readouterr().err
    assert "--plot" in err and ("does not exist" in err or "is a directory" in err)
