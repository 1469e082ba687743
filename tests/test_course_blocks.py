"""The course built a block of patients at a time is exactly the course built at once (issue 16).

`course.build_course` splits a large cohort into blocks of whole patients (`block_rows` rows each) to
keep its working memory a block's size; every rule is within one patient, so the frames must not
change: same rows, order, values and dtypes, and the cycles and cycle scores built from them too.
"""
import numpy as np
import pandas as pd
import pytest

from analytics import course, simulate

PARTS = ("infusions", "scores", "baselines", "patients_first_response")


@pytest.fixture(scope="module")
def frames():
    sim = simulate.simulate_clinic(120, 16, days=400)
    return course.frames_from_csv_tables(sim.tables)


@pytest.mark.parametrize("instrument, block_rows", [("PHQ-9", 300), ("MADRS", 700), ("GAD-7", 300)])
def test_a_course_built_in_blocks_is_the_course_built_at_once(frames, instrument, block_rows):
    t, a = frames["treatments"], frames["assessments"]
    whole = course.build_course(t, a, instrument, block_rows=10**9)
    blocks = course.build_course(t, a, instrument, block_rows=block_rows)
    assert len(course._block_edges(*_codes(t, a, instrument), block_rows)) > 2  # really in blocks
    for part in PARTS:
        pd.testing.assert_frame_equal(getattr(whole, part), getattr(blocks, part), check_exact=True)
    pd.testing.assert_frame_equal(course.cycles_from_course(whole, frames["patients"], frames["attributes"]),
                                  course.cycles_from_course(blocks, frames["patients"], frames["attributes"]),
                                  check_exact=True)
    pd.testing.assert_frame_equal(course.cycle_scores(whole), course.cycle_scores(blocks), check_exact=True)


def test_blocks_do_not_depend_on_the_order_rows_come_in(frames):
    t, a = frames["treatments"], frames["assessments"]
    rng = np.random.default_rng(3)
    shuffled_t = t.iloc[rng.permutation(len(t))].reset_index(drop=True)
    shuffled_a = a.iloc[rng.permutation(len(a))].reset_index(drop=True)
    whole = course.build_course(t, a, block_rows=10**9)
    blocks = course.build_course(shuffled_t, shuffled_a, block_rows=500)
    for part in PARTS:
        pd.testing.assert_frame_equal(getattr(whole, part), getattr(blocks, part), check_exact=True)


def test_a_block_holds_whole_patients():
    tc = np.array([0, 0, 0, 1, 2, 2])
    ac = np.array([0, 0, 1, 1, 1, 2])
    edges = course._block_edges(tc, ac, 3, block_rows=4)
    assert edges[0] == 0 and edges[-1] == 3 and list(edges) == sorted(set(edges))
    assert list(course._block_edges(tc, ac, 3, block_rows=100)) == [0, 3]  # small: one block


def _codes(t, a, instrument):
    mine = a[(a["instrument"] == instrument) & a["total"].notna()]
    codes, uniques = pd.factorize(pd.concat([t["patient_id"], mine["patient_id"]], ignore_index=True).astype("string"),
                                  sort=True)
    return codes[:len(t)], codes[len(t):], len(uniques)


@pytest.mark.parametrize("block_rows", [10**9, 300])
def test_a_course_of_some_columns_is_those_columns_of_the_whole_course(frames, block_rows):
    # What the workspace's cycles and the clinic model build (less memory at 100,000 patients)
    from analytics import intervals
    from analytics.screens.workspace import induction_ends

    t, a, p, attrs = frames["treatments"], frames["assessments"], frames["patients"], frames["attributes"]
    whole = course.build_course(t, a, block_rows=10**9)
    for columns in (course.CYCLE_COLUMNS_READ, intervals._model_course_columns()):
        some = course.build_course(t, a, block_rows=block_rows, columns=columns)
        for part in ("infusions", "scores"):
            got = getattr(some, part)
            assert set(got.columns) == set(columns[part]) and len(got.columns) < len(getattr(whole, part).columns)
            pd.testing.assert_frame_equal(got, getattr(whole, part)[got.columns], check_exact=True)
        for part in ("baselines", "patients_first_response"):
            pd.testing.assert_frame_equal(getattr(some, part), getattr(whole, part), check_exact=True)
        pd.testing.assert_frame_equal(course.cycles_from_course(some, p, attrs), course.cycles_from_course(whole, p, attrs),
                                      check_exact=True)
        pd.testing.assert_frame_equal(induction_ends(some), induction_ends(whole), check_exact=True)
    pd.testing.assert_frame_equal(intervals.model_scores(some), intervals.model_scores(whole), check_exact=True)


def test_cycle_scores_of_a_course_with_patient_codes_are_those_with_text_ids(frames):
    """course.cycle_scores takes each score's patient id from the course's patient codes (one string per patient,
    not one made per score row): the same table as from the same course with plain text ids."""
    built = course.build_course(frames["treatments"], frames["assessments"], "PHQ-9")
    assert isinstance(built.scores["patient_id"].dtype, pd.CategoricalDtype)
    scores = course.cycle_scores(built)
    assert len(scores) > 100 and scores["patient_id"].notna().all()
    plain = course.Course(built.instrument, built.infusions, built.scores.assign(
        patient_id=built.scores["patient_id"].astype(str)), built.baselines, built.patients_first_response)
    pd.testing.assert_frame_equal(scores, course.cycle_scores(plain), check_exact=True)


def _as_objects(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.astype({c: object for c in frame.columns if isinstance(frame[c].dtype, pd.StringDtype)})


def test_a_course_of_arrow_text_is_the_course_of_python_strings(frames):
    """course.py builds its text columns (patient ids, phase, route, start_kind, censor_reason) as Arrow text
    from codes; from object columns it takes the Python strings as before: the same frames."""
    t = frames["treatments"].copy()
    t.loc[t.index[:9], "phase"] = [" Induction", "MAINTENANCE ", "", None, "rescue", "taper", "Taper", "", None]
    t.loc[t.index[3:6], "route"] = None
    p, attrs = frames["patients"], frames["attributes"]
    for instrument in ("PHQ-9", "MADRS"):
        arrow = course.build_course(t, frames["assessments"], instrument, block_rows=400)
        python = course.build_course(_as_objects(t), _as_objects(frames["assessments"]), instrument, block_rows=400)
        for part in PARTS:
            pd.testing.assert_frame_equal(getattr(arrow, part), getattr(python, part), check_exact=True)
        assert {"taper", "induction"} <= set(arrow.infusions["phase"])
        pd.testing.assert_frame_equal(course.cycles_from_course(arrow, p, attrs),
                                      course.cycles_from_course(python, p, attrs),
                                      check_exact=True)
        pd.testing.assert_frame_equal(course.cycle_scores(arrow), course.cycle_scores(python), check_exact=True)


def test_an_empty_course_keeps_the_column_types_it_had(frames):
    t, a = frames["treatments"].iloc[:0], frames["assessments"].iloc[:0]
    built = course.build_course(t, a)
    assert built.infusions["phase"].dtype == object and built.infusions["start_kind"].dtype == object
    assert isinstance(built.infusions["phase_source"].dtype, pd.StringDtype)
    cycles = course.cycles_from_course(built, frames["patients"], frames["attributes"])
    assert cycles["patient_id"].dtype == object and isinstance(cycles["censor_reason"].dtype, pd.StringDtype)
    assert len(course.cycle_scores(built)) == 0


@pytest.mark.parametrize("instrument", ["PHQ-9", "MADRS"])
def test_the_settled_in_response_scores_are_those_rows_of_the_whole_table(frames, instrument):
    """What the measurement model reads (intervals.model_scores), made without the whole table first."""
    built = course.build_course(frames["treatments"], frames["assessments"], instrument)
    whole = course.cycle_scores(built)
    kept = whole["settled"].to_numpy(dtype=bool) & (whole["start_kind"].to_numpy() == "in_response")
    assert 0 < kept.sum() < len(whole)
    pd.testing.assert_frame_equal(course.cycle_scores(built, settled_in_response=True), whole[kept], check_exact=True)
    none = built.infusions.assign(start_kind="recaptured")  # rows, but none kept: the same empty frame
    gone = course.Course(built.instrument, none, built.scores, built.baselines, built.patients_first_response)
    pd.testing.assert_frame_equal(course.cycle_scores(gone, settled_in_response=True),
                                  course.cycle_scores(gone).iloc[:0], check_exact=True)


@pytest.mark.parametrize("instrument", ["PHQ-9", "MADRS"])
def test_blocks_worked_on_two_threads_give_the_course_of_one(frames, instrument, monkeypatch):
    """build_course works on BLOCK_THREADS blocks at once (speed at 100,000 patients): the blocks are put
    together in their order, so the course is the same on one thread or two, and no thread is left."""
    import threading

    t, a = frames["treatments"], frames["assessments"]
    monkeypatch.setattr(course, "BLOCK_THREADS", 1)
    one = course.build_course(t, a, instrument, block_rows=300)
    seen, real = set(), course._course_block

    def spy(*args, **kwargs):
        seen.add(threading.get_ident())
        return real(*args, **kwargs)

    monkeypatch.setattr(course, "BLOCK_THREADS", 2)
    monkeypatch.setattr(course, "_course_block", spy)
    before = threading.active_count()
    two = course.build_course(t, a, instrument, block_rows=300)
    assert seen and threading.get_ident() not in seen   # on worker threads (one or both of them)
    assert threading.active_count() == before
    for part in PARTS:
        pd.testing.assert_frame_equal(getattr(one, part), getattr(two, part), check_exact=True)


def test_the_blocks_working_memory_is_handed_back_once_before_the_columns_are_put_together(frames, monkeypatch):
    """Handed back after every block, the next block's arrays were fresh pages again (100,000 patients: 365,000
    page faults in the course against 150,000-165,000): the freed memory goes back once, after the last block and
    before the columns are put together (and again after), whatever the number of blocks; the same course."""
    t, a = frames["treatments"], frames["assessments"]
    events = []
    monkeypatch.setattr(course.memory, "release_freed", lambda: events.append("release"))
    real_block, real_assemble = course._course_block, course._assemble

    def block(*args, **kwargs):
        events.append("block")
        return real_block(*args, **kwargs)

    def assemble(*args, **kwargs):
        events.append("assemble")
        return real_assemble(*args, **kwargs)

    monkeypatch.setattr(course, "_course_block", block)
    monkeypatch.setattr(course, "_assemble", assemble)
    blocks = course.build_course(t, a, "PHQ-9", block_rows=300)
    assert events.count("block") > 2
    assert events[events.count("block"):] == ["release", "assemble", "release"]
    whole = course.build_course(t, a, "PHQ-9", block_rows=10**9)
    for part in PARTS:
        pd.testing.assert_frame_equal(getattr(whole, part), getattr(blocks, part), check_exact=True)
