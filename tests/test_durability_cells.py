"""The measurement model's score cells made once per distinct day (durability.measured._returned_table,
wave 7) are the cells made score by score: bitwise, on crafted scores with fractional days, scores
censored at 0 and at the scale's maximum, a line that changes within a cycle and single-score cycles;
and so is every patient's likelihood over the grids."""
import numpy as np
import pandas as pd
import pytest

from analytics.durability import measured

SCALE_MAX = 27.0


def _scores(seed: int = 3) -> pd.DataFrame:
    """40 patients, cycles of 1 to 5 scores on few distinct days (so the table is used), with the cases
    above in them."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(40):
        line = float(rng.choice([6.5, 7.0, 9.25, 11.0]))
        for c in range(1, 5):
            n = int(rng.integers(1, 6))
            days = np.sort(rng.choice([3.0, 7.0, 14.0, 14.5, 21.0, 27.75, 35.0, 0.0], n))
            for k, d in enumerate(days):
                total = float(rng.integers(0, 28))
                total = 0.0 if k == 0 and p % 5 == 0 else (SCALE_MAX if k == n - 1 and p % 7 == 0 else total)
                # a line that changes within some cycles
                rows.append((f"P{p:03d}", c, float(d), total, line + (0.5 * k if p % 6 == 0 else 0.0)))
    return pd.DataFrame(rows, columns=list(measured.REQUIRED))


@pytest.fixture(scope="module")
def data():
    d = measured._prepare(_scores())
    assert len(d.distinct_days[0]) <= measured.DISTINCT_DAYS_SHARE * len(d.days)
    per_cycle = np.diff(np.r_[d.cycle_start, len(d.days)])
    assert (per_cycle == 1).any() and (d.total == 0).any() and (d.total == SCALE_MAX).any()
    assert (d.days != np.round(d.days)).any()
    return d


@pytest.mark.parametrize("sigma,kappa", [(2.0, 1.5), (0.7, 0.4), (4.5, 6.0)])
def test_the_cells_from_the_table_of_distinct_days_are_the_direct_cells(data, sigma, kappa):
    table = measured._returned_table(data, kappa)
    assert table is not None
    direct = measured._trend_cells(data.days, data.total, data.line, sigma, kappa, SCALE_MAX)
    fast = measured._trend_cells(data.days, data.total, data.line, sigma, kappa, SCALE_MAX, table)
    assert np.array_equal(direct.view(np.int32), fast.view(np.int32))


def test_each_patients_likelihood_is_the_same_with_or_without_the_table(data, monkeypatch):
    fast = measured._patient_loglik(data, 2.2, 1.7, 0.45, SCALE_MAX)
    monkeypatch.setattr(measured, "DISTINCT_DAYS_SHARE", 0.0)   # every score's cells made directly
    assert measured._returned_table(data, 1.7) is None
    direct = measured._patient_loglik(data, 2.2, 1.7, 0.45, SCALE_MAX)
    assert np.array_equal(direct, fast)


def test_the_model_holds_numpys_blas_at_one_thread_and_gives_it_back():
    blas = measured._numpy_openblas()
    # numpy's wheels (pinned in constraints.txt) bundle OpenBLAS: not finding it means the fit's one-thread
    # setting silently stopped working (e.g. renamed symbols after an upgrade), which must not pass unseen
    assert blas is not None, "numpy's bundled OpenBLAS was not found: one_blas_thread does nothing"
    get, _ = blas
    before = get()
    with measured.one_blas_thread():
        assert get() == 1
        with measured.one_blas_thread():   # nested (a fit inside the suggestions): still one, given back once
            assert get() == 1
        assert get() == 1
    assert get() == before


def test_without_a_bundled_openblas_the_model_runs_as_it_is(monkeypatch):
    monkeypatch.setattr(measured, "_numpy_openblas", lambda: None)   # another BLAS: nothing to set
    with measured.one_blas_thread():
        assert np.allclose(np.ones((3, 3)) @ np.ones(3), 3.0)
