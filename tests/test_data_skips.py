"""A test skipped because its data is missing fails the run (the conftest's guard)."""

from pathlib import Path

import pytest

CONFTEST = Path(__file__).with_name("conftest.py").read_text()


def test_skips_for_missing_data_fail_the_run(pytester):
    pytester.makeconftest(CONFTEST.replace('pytest_plugins = ["pytester"]', ""))
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("reason", [
            "shared phylogenetic data not available", "DS1 data missing", "no data for DS9",
        ])
        def test_data(reason):
            pytest.skip(reason)

        @pytest.mark.skipif(True, reason="torchtree is not installed")
        def test_optional_peer():
            pass
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(skipped=4)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    summary = result.stdout.str().split("skipped for missing data")[1]
    assert summary.count("test_data[") == 3 and "test_optional_peer" not in summary
