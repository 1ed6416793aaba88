"""The Estimate result type."""

import math

import pytest

from varinf import Estimate


def make(value, stderr, **kw):
    fields = dict(kind="lower-bound", estimator="iwae", num_evaluations=1000, elapsed=0.31)
    fields.update(kw)
    return Estimate(value=value, stderr=stderr, **fields)


@pytest.mark.parametrize(
    "value, stderr, text",
    [
        (-7108.4213, 0.05, "Estimate(iwae: -7108.421 ± 0.050, lower-bound, 1000 evals, 0.31 s)"),
        (-1.82814, 0.00093, "Estimate(iwae: -1.82814 ± 0.00093, lower-bound, 1000 evals, 0.31 s)"),
        (3.0, math.nan, "Estimate(iwae: 3.0000 ± nan, lower-bound, 1000 evals, 0.31 s)"),
        (2.5, 12.0, "Estimate(iwae: 2.50 ± 12.00, lower-bound, 1000 evals, 0.31 s)"),
    ],
)
def test_repr_shows_two_significant_digits_of_the_error(value, stderr, text):
    assert repr(make(value, stderr)) == text


def test_kind_is_checked_and_estimate_is_frozen():
    with pytest.raises(ValueError, match="kind"):
        make(1.0, 0.1, kind="guess")
    estimate = make(1.0, 0.1)
    with pytest.raises(AttributeError):
        estimate.value = 2.0
