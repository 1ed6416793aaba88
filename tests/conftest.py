import re

import pyro
import pytest
import torch

pytest_plugins = ["pytester"]  # tests/test_data_skips.py runs this conftest on a skipping test

# Every data file the tests read ships with the package (`models.phylo.datasets`), so a test
# skipped because its data is missing is a packaging bug: the run fails and names it.
MISSING_DATA = re.compile(
    r"\bdata\b.*\b(not available|unavailable|missing|not found|absent)\b"
    r"|\b(missing|no|without)\b.*\bdata\b",
    re.IGNORECASE,
)
_skipped_for_data: list[str] = []


def pytest_runtest_logreport(report):
    if report.skipped and isinstance(report.longrepr, tuple):
        if MISSING_DATA.search(str(report.longrepr[2])):
            _skipped_for_data.append(f"{report.nodeid}: {report.longrepr[2]}")


def pytest_sessionfinish(session, exitstatus):
    if _skipped_for_data and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    if _skipped_for_data:
        terminalreporter.section("tests skipped for missing data (a failure: ship the data)")
        for line in _skipped_for_data:
            terminalreporter.line(line)


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
