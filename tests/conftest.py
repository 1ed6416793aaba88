import pyro
import pytest
import torch


@pytest.fixture(autouse=True)
def clean_param_store():
    """Every test starts with an empty Pyro param store and validation on."""
    pyro.clear_param_store()
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    torch.set_num_threads(1)
