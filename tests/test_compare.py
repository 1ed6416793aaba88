"""compare() and gradient_variance(): numbers, exports, interruption, plots."""

import math

import numpy as np
import pyro
import pytest
import torch

from models.conjugate import ConjugateGaussian
from tests.estimators.problems import perturbed_conjugate
from varinf import ELBO, IWAE, SUMO, Estimate, NaiveMonteCarlo, compare, gradient_variance


def test_table_statistics_match_the_estimates():
    problem, guide = perturbed_conjugate()
    truth = problem.log_evidence
    result = compare(
        [ELBO(5), IWAE(5), IWAE(50)], problem.model, guide, repeats=30, truth=truth, progress=False
    )
    table = result.table
    assert list(table.index) == ["elbo", "iwae(K=5)", "iwae(K=50)"]
    values = np.array([e.value for e in result.estimates["iwae(K=5)"]])
    row = table.loc["iwae(K=5)"]
    assert row["mean"] == pytest.approx(values.mean())
    assert row["std"] == pytest.approx(values.std(ddof=1))
    assert row["bias"] == pytest.approx(values.mean() - truth)
    assert row["rmse"] == pytest.approx(math.sqrt(((values - truth) ** 2).mean()))
    assert row["work_variance"] == pytest.approx(values.var(ddof=1) * 5)
    assert row["cost"] == 5
    # bounds: the larger K is tighter, and both are below the truth on average
    assert table.loc["elbo", "mean"] < table.loc["iwae(K=5)", "mean"] < truth
    assert table.loc["iwae(K=50)", "rmse"] < table.loc["iwae(K=5)", "rmse"]


def test_repeats_are_reproducible_and_independent():
    problem, guide = perturbed_conjugate()
    first = compare([IWAE(5)], problem.model, guide, repeats=5, seed=7, progress=False)
    second = compare([IWAE(5)], problem.model, guide, repeats=5, seed=7, progress=False)
    a = [e.value for e in first.estimates["iwae"]]
    assert a == [e.value for e in second.estimates["iwae"]]
    assert len(set(a)) == 5


def test_exports_and_plot(tmp_path):
    problem, guide = perturbed_conjugate()
    result = compare(
        [ELBO(3), SUMO()], problem.model, guide, repeats=10, truth=-28.1, progress=False
    )
    dataset = result.to_xarray()
    assert dataset["value"].shape == (2, 10)
    assert dataset.attrs["truth"] == -28.1
    assert np.allclose(
        dataset["value"].sel(estimator="elbo"), [e.value for e in result.estimates["elbo"]]
    )
    idata = result.to_arviz()
    assert idata.posterior["sumo"].shape == (1, 10)
    path = tmp_path / "comparison.png"
    result.plot(str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_interruption_keeps_finished_repeats():
    problem, guide = perturbed_conjugate()

    class Interrupting(IWAE):
        calls = 0

        def _estimate(self, *args):
            Interrupting.calls += 1
            if Interrupting.calls == 4:
                raise KeyboardInterrupt
            return super()._estimate(*args)

    result = compare([Interrupting(3)], problem.model, guide, repeats=10, progress=False)
    assert result.interrupted
    assert len(result.estimates["iwae"]) == 3
    assert all(isinstance(e, Estimate) for e in result.estimates["iwae"])
    assert "interrupted" in repr(result)


def test_compare_with_a_process_pool_matches_serial():
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

    problem = ConjugateGaussian.example()
    serial = compare([IWAE(4)], problem.model, problem.exact_guide, repeats=4, progress=False)
    with ProcessPoolExecutor(max_workers=2) as pool:
        pooled = compare(
            [IWAE(4)], problem.model, problem.exact_guide, repeats=4, executor=pool, progress=False
        )
    assert [e.value for e in serial.estimates["iwae"]] == [
        e.value for e in pooled.estimates["iwae"]
    ]
    with ThreadPoolExecutor() as pool, pytest.raises(ValueError, match="thread"):
        compare([IWAE(4)], problem.model, problem.exact_guide, executor=pool)


def test_gradient_variance_against_a_closed_form():
    """ELBO(K) reparameterised gradient of the guide loc for x ~ N(mu, 1), mu ~ N(0, 1) with
    guide N(m, s): per particle d/dm [log p - log q] = -(n + 1) (m + s eps) + sum x, variance
    (n + 1)^2 s^2; averaging K particles divides by K."""
    problem = ConjugateGaussian.example(num_data=4, dim=1)
    problem.guide()
    result = gradient_variance(
        [ELBO(1), ELBO(4)], problem.model, problem.guide, repeats=1000, progress=False
    )
    n = 4
    expected = (n + 1) ** 2 * 1.0**2
    per_parameter = result.per_parameter
    for k, label in [(1, "elbo(K=1)"), (4, "elbo(K=4)")]:
        got = per_parameter.loc[label, "mean_loc"]
        # the sample variance of a Gaussian has relative sd sqrt(2 / (R - 1))
        assert got == pytest.approx(expected / k, rel=4 * math.sqrt(2 / 999))
    table = result.table
    assert table.loc["elbo(K=4)", "cost"] == 4
    assert table.loc["elbo(K=4)", "snr"] > table.loc["elbo(K=1)", "snr"]
    # parameters are left as they were
    assert torch.equal(pyro.param("mean_loc").detach(), torch.zeros(1, dtype=torch.float64))


def test_a_seeded_estimator_still_gets_independent_repeats():
    problem, guide = perturbed_conjugate()
    result = compare([IWAE(5, seed=1)], problem.model, guide, repeats=5, progress=False)
    assert len({e.value for e in result.estimates["iwae"]}) == 5


def test_a_failing_estimator_keeps_the_others_and_says_why():
    problem, guide = perturbed_conjugate()

    class Broken(IWAE):
        name = "broken"

        def _estimate(self, *args):
            raise FloatingPointError("the model log density is NaN")

    with pytest.warns(RuntimeWarning, match="broken failed on 4 of 4 repeats"):
        result = compare(
            [ELBO(3), Broken(3), NaiveMonteCarlo(100)],
            problem.model,
            guide,
            repeats=4,
            progress=False,
        )
    assert len(result.estimates["elbo"]) == 4
    assert len(result.estimates["naive-mc"]) == 4  # naive MC ignores the guide
    assert "NaN" in result.failures["broken"]
    assert "broken failed" in repr(result)
    table = result.table
    assert list(table.index) == ["elbo", "broken", "naive-mc"]  # the failed one keeps its row
    assert table.loc["broken", "failed"] == 4 and table.loc["broken", "repeats"] == 0
    assert np.isnan(table.loc["broken", "mean"])
    assert table.loc["elbo", "failed"] == 0
    with pytest.raises(ValueError, match="every estimator failed"):
        compare([Broken(3)], problem.model, guide, repeats=2, progress=False)


def test_gradient_variance_counts_sumo_evaluations():
    problem = ConjugateGaussian.example(num_data=4, dim=1)
    problem.guide()
    result = gradient_variance(
        [SUMO(num_particles=2), IWAE(2)], problem.model, problem.guide, repeats=200, progress=False
    )
    # SUMO spends num_particles * (1 + E[J]) = 2 * 6.08 evaluations on average
    assert result.costs["iwae"] == 2
    assert 8 < result.costs["sumo"] < 20


def test_a_repeat_that_fails_later_is_counted_and_named():
    """Failures after a first success are counted per repeat, whatever the exception type
    (a user's model may raise anything)."""
    problem, guide = perturbed_conjugate()

    class Flaky(IWAE):
        name = "flaky"
        calls = 0

        def _estimate(self, *args):
            Flaky.calls += 1
            if Flaky.calls % 2 == 0:
                raise KeyError("a site the user's model forgot")
            return super()._estimate(*args)

    with pytest.warns(RuntimeWarning, match=r"flaky failed on 3 of 6 repeats .*KeyError"):
        result = compare([Flaky(3)], problem.model, guide, repeats=6, progress=False)
    assert result.table.loc["flaky", "repeats"] == 3
    assert result.table.loc["flaky", "failed"] == 3


def test_labels_identify_estimators_that_share_a_name():
    from varinf import RQMCELBO

    problem, guide = perturbed_conjugate()
    result = compare(
        [ELBO(4), ELBO(4, sampler="rqmc"), SUMO(), SUMO(min_terms=3), IWAE(4), IWAE(4)],
        problem.model,
        guide,
        repeats=2,
        progress=False,
    )
    assert list(result.table.index) == [
        "elbo(K=4)",
        "elbo(K=4, sampler=rqmc)",
        "sumo(K=1)",
        "sumo(K=1, min_terms=3)",
        "iwae(K=4)",
        "iwae(K=4)#5",
    ]
    assert RQMCELBO(4).sampler == "rqmc"


def test_printing_a_comparison_shows_every_column():
    problem, guide = perturbed_conjugate()
    result = compare(
        [ELBO(3), IWAE(3)], problem.model, guide, repeats=3, truth=-28.0, progress=False
    )
    text = str(result)
    header = text.splitlines()[1]
    for column in result.table.columns:
        assert column in header
    assert "..." not in text


def test_gradient_variance_prints_a_summary_not_tensors():
    problem = ConjugateGaussian.example(num_data=4, dim=1)
    problem.guide()
    result = gradient_variance([ELBO(2)], problem.model, problem.guide, repeats=5, progress=False)
    text = repr(result)
    assert text.startswith("GradientVariance: 1 losses, repeats [5]")
    assert "tensor(" not in text and "total_variance" in text


def test_gradient_variance_in_a_process_pool_matches_serial():
    from concurrent.futures import ProcessPoolExecutor

    problem = ConjugateGaussian.example(num_data=4, dim=1)
    problem.guide()
    pyro.param("mean_loc").data.fill_(0.25)  # workers must see the caller's parameter values
    serial = gradient_variance([ELBO(2)], problem.model, problem.guide, repeats=4, progress=False)
    with ProcessPoolExecutor(max_workers=2) as pool:
        pooled = gradient_variance(
            [ELBO(2)], problem.model, problem.guide, repeats=4, executor=pool, progress=False
        )
    for name, grads in serial.gradients["elbo"].items():
        assert torch.equal(grads, pooled.gradients["elbo"][name])
    with pytest.raises(TypeError, match="executor must be"):
        gradient_variance([ELBO(2)], problem.model, problem.guide, executor="dask")


@pytest.mark.slow
def test_compare_on_a_local_dask_cluster_matches_serial():
    """Two worker processes on this machine give the same table as the serial run."""
    distributed = pytest.importorskip("distributed")
    problem, guide = perturbed_conjugate()  # a closure: Dask pickles it with cloudpickle
    estimators = [IWAE(4), ELBO(4), SUMO()]
    serial = compare(estimators, problem.model, guide, repeats=6, seed=3, progress=False)
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,  # ":0": any free port, so a dashboard elsewhere on 8787 does not clash
        distributed.Client(cluster) as client,
    ):
        pooled = compare(
            estimators,
            problem.model,
            guide,
            repeats=6,
            seed=3,
            executor=client.get_executor(),
            progress=False,
        )
    columns = ["repeats", "failed", "mean", "std", "cost"]
    assert serial.table[columns].equals(pooled.table[columns])
