import importlib.util
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sorting.py"


def load_example():
    if not EXAMPLE.exists():
        pytest.skip("examples/sorting.py not found")
    spec = importlib.util.spec_from_file_location("sorting_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sorting_network_learns_n5():
    sorting = load_example()
    ((n, wrong_elements, wrong_sequences),) = sorting.main(["--n", "5", "--steps", "400"])
    # random placement gets 1 - 1/5 = 0.8 of the elements and 1 - 1/120 of the sequences wrong
    assert n == 5
    assert wrong_elements < 0.05
    assert wrong_sequences < 0.15
