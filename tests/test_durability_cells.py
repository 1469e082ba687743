"""The measurement model's score cells made once per distinct day (durability.measured._returned_table,
wave 7) are the cells made score by score: bitwise, on crafted scores with fractional days, scores
censored at 0 and at the scale's maximum, a line that changes within a cycle and single-score cycles;
and so is every patient's likelihood over the grids."""
import math

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


# --- wave 8: the pass's arrays reused from chunk to chunk (measured._Scratch, _Workspaces, _sparse_product) ---

def test_a_sparse_product_written_into_a_reused_array_is_scipys_product():
    rng = np.random.default_rng(5)
    for dtype in (np.float32, np.float64):
        starts = np.r_[0, np.cumsum(rng.integers(1, 6, 300))[:-1]]
        n_rows = int(starts[-1]) + 4
        A = measured._sums(starts, n_rows, dtype)
        X = rng.normal(size=(n_rows, 17)).astype(dtype)
        out = np.full((len(starts) + 5) * 17, np.nan, dtype=dtype)[:len(starts) * 17].reshape(len(starts), 17)
        assert np.array_equal(measured._sparse_product(A, X, out), A @ X)


def test_cells_made_in_reused_arrays_are_the_fresh_cells(data):
    """A scratch that made another chunk's cells before (larger, then smaller; censored rows of both sides)
    gives the same cells as fresh arrays, by the table and directly."""
    scratch = measured._Scratch()
    table = measured._returned_table(data, 1.5)
    half = len(data.days) // 2
    for sl in (slice(0, len(data.days)), slice(half, len(data.days)), slice(0, half)):
        part = None if table is None else (table[0], table[1][sl])
        for returned in (part, None):
            fresh = measured._trend_cells(data.days[sl], data.total[sl], data.line[sl], 2.0, 1.5, SCALE_MAX, returned)
            reused = measured._trend_cells(data.days[sl], data.total[sl], data.line[sl], 2.0, 1.5, SCALE_MAX, returned,
                                           scratch)
            assert np.array_equal(fresh.view(np.int32), reused.view(np.int32))


def _old_patient_loglik(data, sigma, kappa, within_sd, scale_max):
    """The pass as it was before its arrays were reused (main at wave 7), one chunk after another."""
    W = measured._within_weights(within_sd).T
    n_depth = len(measured.DEPTHS)
    out = np.empty((data.n_patients, n_depth, len(measured.MU_GRID)))
    returned = measured._returned_table(data, kappa)
    for ch in data.chunks:
        base, neg = measured._chunk_cycle_terms(data, ch, sigma, kappa, scale_max, "trend", returned)
        least = neg.min(axis=2, keepdims=True)
        e = np.subtract(least, neg, out=neg)
        np.exp(e, out=e)
        L = e.reshape(-1, len(measured.T_GRID)) @ W.astype(e.dtype)
        np.maximum(L, 1e-30, out=L)
        np.log(L, out=L)
        top = base[:, None] - least[:, :, 0]
        P = (ch.cycles_to_patients32 @ L.reshape(len(neg), -1)).astype(np.float64)
        P = P.reshape(-1, n_depth, len(measured.MU_GRID))
        P += (ch.cycles_to_patients @ top.astype(np.float64))[:, :, None]
        out[ch.p:ch.q] = P
    return np.ascontiguousarray(np.transpose(out, (0, 2, 1)))


@pytest.mark.parametrize("threads", [1, 2])
def test_the_likelihoods_with_reused_arrays_are_the_old_ones_on_any_number_of_threads(data, monkeypatch, threads):
    """Several chunks (a small chunk size), one set of workspaces shared by passes with other parameters,
    one or two chunk threads: every patient's likelihood bitwise the one of the old pass; no thread is left."""
    import threading

    monkeypatch.setattr(measured, "FIT_THREADS", threads)
    monkeypatch.setattr(measured, "CHUNK_CELLS", 60 * len(measured.T_GRID) * len(measured.DEPTHS))
    monkeypatch.setattr(measured, "MIN_CHUNK_SCORES", 30)
    d = measured._Data(data.days, data.total, data.line, data.cycle_start, data.cycle_patient, data.patient_start,
                       data.patient_ids)   # its own chunks at this chunk size
    assert len(d.chunks) >= 4
    before = threading.active_count()
    spaces = measured._Workspaces()
    for sigma, kappa, within in ((2.2, 1.7, 0.45), (0.8, 0.5, 1.2), (2.2, 1.7, 0.45)):
        assert np.array_equal(measured._patient_loglik(d, sigma, kappa, within, SCALE_MAX, spaces=spaces),
                              _old_patient_loglik(d, sigma, kappa, within, SCALE_MAX))
    assert threading.active_count() == before


def test_the_pass_gives_the_same_numbers_on_one_or_two_threads(data, monkeypatch):
    """The chunks (and so their float32 sums, which differ in the last bits with the chunk sizes) do not
    depend on how many threads work on them: a one-core machine fits the same model, to the last bit."""
    monkeypatch.setattr(measured, "MIN_CHUNK_SCORES", 30)   # so that this small clinic's passes are split
    passes = []
    for threads in (1, 2):
        monkeypatch.setattr(measured, "FIT_THREADS", threads)
        d = measured._Data(data.days, data.total, data.line, data.cycle_start, data.cycle_patient,
                           data.patient_start, data.patient_ids)
        passes.append(measured._patient_loglik(d, 2.2, 1.7, 0.45, SCALE_MAX))
    assert np.array_equal(passes[0], passes[1])


def _old_prepare_order(scores: pd.DataFrame) -> np.ndarray:
    """The rows' order as _prepare sorted them before wave 8 (always a stable lexsort)."""
    codes = pd.factorize(scores["patient_id"], sort=True)[0]
    return np.lexsort((scores["days"].to_numpy(dtype=float), scores["cycle_no"].to_numpy(), codes))


@pytest.mark.parametrize("shuffle", [False, True])
def test_scores_already_in_order_are_not_sorted_again_and_give_the_same_data(shuffle):
    """_prepare skips the sort of rows already in (patient, cycle, day) order, as course.cycle_scores gives
    them; in order or not (and with ties, a missing day), the prepared rows are the stable sort's."""
    scores = _scores()
    scores = scores.iloc[_old_prepare_order(scores)]
    if shuffle:
        scores = scores.sample(frac=1.0, random_state=4).reset_index(drop=True)
        scores.loc[7, "days"] = np.nan
    assert measured._in_order(pd.factorize(scores["patient_id"], sort=True)[0], scores["cycle_no"].to_numpy(),
                              scores["days"].to_numpy()) is not shuffle
    d = measured._prepare(scores)
    expected = scores.iloc[_old_prepare_order(scores)]
    assert np.array_equal(d.days, expected["days"].to_numpy(), equal_nan=True)
    assert np.array_equal(d.total, expected["total"].to_numpy()) and np.array_equal(d.line, expected["line"].to_numpy())
    ids = expected["patient_id"].to_numpy()
    assert list(d.patient_ids) == list(pd.unique(ids)) and len(d.cycle_start) == len(expected.groupby(["patient_id", "cycle_no"]))


def test_the_chunks_are_cut_where_the_patient_by_patient_walk_cut_them(data, monkeypatch):
    """_Data.chunks finds each chunk's end by one search: the same whole-patient chunks as the walk it replaced."""
    for cells, least in ((60, 30), (200, 30), (10**6, 30), (60, 2_000)):
        monkeypatch.setattr(measured, "CHUNK_CELLS", cells * len(measured.T_GRID) * len(measured.DEPTHS))
        monkeypatch.setattr(measured, "MIN_CHUNK_SCORES", least)
        d = measured._Data(data.days, data.total, data.line, data.cycle_start, data.cycle_patient, data.patient_start,
                           data.patient_ids)
        per_chunk = max(min(measured.CHUNK_CELLS // (len(measured.T_GRID) * len(measured.DEPTHS)),
                            -(-len(d.days) // measured.SPLIT_CHUNKS)), measured.MIN_CHUNK_SCORES)
        s_end = np.r_[d.cycle_start[1:], len(d.days)]
        c_end = np.r_[d.patient_start[1:], len(d.cycle_start)]
        walked, p = [], 0
        while p < d.n_patients:
            limit = d.cycle_start[d.patient_start[p]] + per_chunk
            q = p + 1
            while q < d.n_patients and s_end[c_end[q] - 1] <= limit:
                q += 1
            walked.append((p, q))
            p = q
        assert [(ch.p, ch.q) for ch in d.chunks] == walked


@pytest.mark.parametrize("threads", [1, 2])
def test_the_marginal_made_in_blocks_of_patients_is_the_one_pass_marginal(monkeypatch, threads):
    """_Marginal makes exp(P - max) a block of patients at a time on FIT_THREADS threads: the same bits as
    the whole array at once, for any block size and number of threads."""
    rng = np.random.default_rng(4)
    P = rng.normal(-40.0, 15.0, size=(257, len(measured.MU_GRID), len(measured.DEPTHS)))
    top = P.max(axis=(1, 2))
    E = np.exp(P - top[:, None, None])
    monkeypatch.setattr(measured, "FIT_THREADS", threads)
    monkeypatch.setattr(measured, "MARGINAL_BLOCK_PATIENTS", 50)   # 6 blocks, the last one short
    M = measured._Marginal(P)
    assert np.array_equal(M.top, top) and np.array_equal(M.E, E) and M.P is P
    owned = measured._Marginal(P.copy(), own=True)   # the fit's: exp(P - max) made in P's own array
    assert np.array_equal(owned.top, top) and np.array_equal(owned.E, E) and owned.P is None
    prior, q = measured._prior_mu(4.0, 0.7), np.full(len(measured.DEPTHS), 1 / len(measured.DEPTHS))
    whole = measured._Marginal.__new__(measured._Marginal)
    whole.P, whole.top, whole.E, whole._mixed_for = P, top, E, None
    whole.n, whole.n_mu, whole.n_depth = P.shape
    for a, b in zip(M.stats(prior, q, depth=True), whole.stats(prior, q, depth=True)):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("with_nan", [False, True])
def test_the_distinct_days_are_numpys_unique_days(with_nan):
    """The distinct days and each score's index among them, by hashing: what np.unique gives (a missing day,
    which the fit leaves out but other callers may pass, takes np.unique's own path)."""
    rng = np.random.default_rng(5)
    days = np.round(rng.uniform(0, 90, 5000), 1)
    days[::7] = rng.uniform(0, 90, len(days[::7]))   # times of day: many single days
    if with_nan:
        days[3] = np.nan
    n = len(days)
    data = measured._Data(days, np.zeros(n), np.ones(n), np.arange(n), np.arange(n), np.arange(n), np.arange(n).astype(str))
    got_days, got_codes = data.distinct_days
    want_days, want_codes = np.unique(days, return_inverse=True)
    assert np.array_equal(got_days, want_days, equal_nan=True) and np.array_equal(got_codes, want_codes.reshape(-1))
    assert got_days.dtype == want_days.dtype and len(got_codes) == n


def _random_likelihoods(n: int, seed: int = 6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    P = rng.normal(-40.0, 15.0, size=(n, len(measured.MU_GRID), len(measured.DEPTHS)))
    P[5, :40] -= 1000.0   # likely only at the longest medians, where a narrow prior has no mass
    return P


@pytest.mark.parametrize("threads", [1, 2])
def test_an_em_step_in_blocks_of_patients_gives_the_one_pass_figures(monkeypatch, threads):
    """An EM step over a large clinic works a block of patients at a time (the block's cells read twice while
    in the cache): every patient's log-likelihood and posterior are the one-pass ones bit for bit, the mean
    depth posterior the same to 1e-13 (its sum is added up block by block), on one or two threads alike."""
    P = _random_likelihoods(700)
    prior = measured._prior_mu(4.0, 0.05)
    q = np.random.default_rng(7).dirichlet(np.ones(len(measured.DEPTHS)))
    # patient 5's marginal underflows under this prior: computed in log space by both
    assert (measured._Marginal(P)._mixed(q) * prior).sum(axis=1)[5] <= 1e-200
    monkeypatch.setattr(measured, "EM_BLOCK_PATIENTS", 10**9)
    ll0, post0, depth0 = measured._Marginal(P).stats(prior, q, depth=True)
    monkeypatch.setattr(measured, "EM_BLOCK_PATIENTS", 64)   # 11 blocks, the last one short
    monkeypatch.setattr(measured, "EM_THREADS", threads)
    ll, post, depth = measured._Marginal(P).stats(prior, q, depth=True)
    assert np.array_equal(ll, ll0) and np.array_equal(post, post0)
    np.testing.assert_allclose(depth, depth0, rtol=1e-13, atol=0)
    monkeypatch.setattr(measured, "EM_THREADS", 3 - threads)
    assert np.array_equal(measured._Marginal(P).stats(prior, q, depth=True)[2], depth)   # any number of threads


def test_the_em_over_blocks_ends_where_the_one_pass_em_ended(monkeypatch):
    """EM with its steps in blocks reaches the same estimates (to 1e-12) in the same steps as the one-pass EM."""
    P = _random_likelihoods(600)
    start = (math.log(40.0), 0.7, np.full(len(measured.DEPTHS), 1.0 / len(measured.DEPTHS)))
    monkeypatch.setattr(measured, "EM_BLOCK_PATIENTS", 10**9)
    mu0, sd0, w0, ll0 = measured._em(P, *start)
    monkeypatch.setattr(measured, "EM_BLOCK_PATIENTS", 50)
    mu, sd, w, ll = measured._em(P, *start)
    assert mu == pytest.approx(mu0, rel=1e-12) and sd == pytest.approx(sd0, rel=1e-12)
    np.testing.assert_allclose(w, w0, rtol=1e-11)
    assert ll == pytest.approx(ll0, rel=1e-12)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_marginal_made_in_the_likelihoods_own_array_gives_the_same_figures(monkeypatch, threads):
    """_Marginal(P, own=True) (the fit's pass over everyone) overwrites P with exp(P - max) and keeps only the
    rows log space can need: every statistic is the same bits as from a marginal that kept P, for patients
    computed in log space too (there the kept rows are P's own values), on one or two threads."""
    P = _random_likelihoods(700)
    P[9, :20] -= 2000.0   # a second patient deep below their maximum, in another block
    monkeypatch.setattr(measured, "MARGINAL_BLOCK_PATIENTS", 64)
    monkeypatch.setattr(measured, "FIT_THREADS", threads)
    kept = measured._Marginal(P)
    owned = measured._Marginal(P.copy(), own=True)
    where, values = owned._log_rows
    deep = np.flatnonzero((P.min(axis=(1, 2)) - P.max(axis=(1, 2))) < -measured.LOG_SPACE_DEPTH)
    assert 5 in where and 9 in where and np.array_equal(where, deep) and np.array_equal(values, P[deep])
    assert len(where) < len(P)   # the others are not kept
    q = np.random.default_rng(7).dirichlet(np.ones(len(measured.DEPTHS)))
    for prior in (measured._prior_mu(4.0, 0.05), measured._prior_mu(3.0, 0.7)):
        for depth in (False, True):
            a, b = kept.stats(prior, q, depth=depth), owned.stats(prior, q, depth=depth)
            for x, y in zip(a, b):
                assert (x is None and y is None) or np.array_equal(x, y)
    rows = np.array([0, 5, 9, 11])
    np.testing.assert_allclose(owned._P(rows), P[rows], rtol=1e-12)   # not-kept rows: within rounding
    assert np.array_equal(owned._P(rows[1:3]), P[rows[1:3]])


def _supported() -> bool:
    import platform
    import sys
    return sys.platform.startswith("linux") and platform.machine().lower() in ("x86_64", "amd64", "aarch64", "arm64")


def test_subnormal_results_are_flushed_inside_the_block_only_and_on_its_own_thread():
    import threading

    from analytics.durability import arrays

    tiny = np.array([1e-20], dtype=np.float32)
    assert np.multiply(tiny, tiny)[0] > 0            # a subnormal float32 (1e-40) as the machine gives it
    if _supported():
        assert arrays._libm() is not None             # where it can be set, it is (this machine's kind)
    seen = {}
    inside = threading.Event()
    done = threading.Event()

    def other():
        inside.wait(5)
        seen["other"] = float(np.multiply(tiny, tiny)[0])
        done.set()

    worker = threading.Thread(target=other)
    worker.start()
    with arrays.subnormals_flushed():
        inside.set()
        done.wait(5)
        flushed = float(np.multiply(tiny, tiny)[0])
    worker.join()
    assert seen["other"] > 0                          # a thread already running is not touched
    assert np.multiply(tiny, tiny)[0] > 0             # the thread's setting is given back
    if arrays._libm() is not None:
        assert flushed == 0.0


def test_each_patients_likelihood_is_the_same_with_subnormals_flushed(data, monkeypatch):
    """The weights' far tails are subnormal in float32 (what makes the product slow), and flushing them in the
    product changes no patient's figures: a term below 1.2e-38 is lost against the 1e-30 floor."""
    import contextlib

    w = measured._within_weights(0.45).astype(np.float32)
    assert ((w > 0) & (w < np.finfo(np.float32).tiny)).any()
    flushed = measured._patient_loglik(data, 2.2, 1.7, 0.45, SCALE_MAX)
    monkeypatch.setattr(measured, "subnormals_flushed", contextlib.nullcontext)
    assert np.array_equal(measured._patient_loglik(data, 2.2, 1.7, 0.45, SCALE_MAX), flushed)
