"""One ordering rule per patient (issue 12, finding 1).

By date, then by time where given; an assessment without a time on an infusion
day is before the dose; anything on a later day is after it. Baseline 20, so a
PHQ-9 of 10 or less is in response.
"""
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analytics import course

INDUCTION = ["2024-01-01", "2024-01-03", "2024-01-05", "2024-01-08", "2024-01-10", "2024-01-12"]


def infusions(pid, days):
    """days: 'YYYY-MM-DD' or 'YYYY-MM-DD HH:MM' (timed)."""
    return pd.DataFrame({"patient_id": pid, "administered_at": pd.to_datetime(days, format="mixed"),
                         "has_time": [len(d) > 10 for d in days], "route": "iv", "phase": None})


def scores(pid, rows):
    days = [r[0] for r in rows]
    return pd.DataFrame({"patient_id": pid, "instrument": "PHQ-9", "administered_at": pd.to_datetime(days, format="mixed"),
                         "has_time": [len(d) > 10 for d in days], "total": [float(r[1]) for r in rows]})


def segment_of(crs, patient, when):
    """The infusion number whose segment holds the patient's score at `when`."""
    sc = crs.scores
    row = sc[(sc["patient_id"].astype(str) == patient) & (sc["at"] == pd.Timestamp(when))]
    assert len(row) == 1
    return int(row["segment"].iloc[0])


# --- the next-day cases, as named regression tests -------------------------------------------

def test_a_score_the_day_after_the_first_infusion_of_the_first_patient_does_not_crash():
    # The first patient's first infusion is the earliest clock in the table: the old
    # millisecond key tied it with a 00:00 score the next day, sorted the score first, and the
    # course builder raised IndexError (on every page and in `durability`).
    t = infusions("a", ["2024-01-01", "2024-01-03"])
    a = scores("a", [("2023-12-30", 20), ("2024-01-02", 12), ("2024-01-13", 8), ("2024-01-19", 6),
                     ("2024-01-26", 6), ("2024-02-02", 6)])
    crs = course.build_course(t, a)
    assert segment_of(crs, "a", "2024-01-02") == 1  # after infusion 1, before infusion 2
    cycles = course.cycles_from_course(crs)
    assert list(cycles["started_on"].dt.strftime("%m-%d")) == ["01-03"]


def test_a_next_day_score_follows_an_untimed_infusion_and_can_end_its_cycle():
    # Infusion on 02-02 (no time), scores out of response on 02-03 and 02-09: the loss belongs
    # to the cycle the 02-02 infusion started, not to the one before it.
    t = infusions("a", INDUCTION + ["2024-02-02"])
    a = scores("a", [("2023-12-30", 20), ("2024-01-12", 8), ("2024-01-19", 6), ("2024-02-02", 7),
                     ("2024-02-03", 14), ("2024-02-09", 15)])
    crs = course.build_course(t, a)
    assert segment_of(crs, "a", "2024-02-02") == 6   # untimed on the infusion day: pre-dose
    assert segment_of(crs, "a", "2024-02-03") == 7   # the next day: after the dose
    c = course.cycles_from_course(crs).set_index("started_on")
    before = c.loc[pd.Timestamp("2024-01-12")]
    assert (before["event"], before["censor_reason"], before["left_days"]) == (False, "next_infusion", 21.0)
    after = c.loc[pd.Timestamp("2024-02-02")]
    assert (after["event"], after["left_days"], after["right_days"]) == (True, 0.0, 1.0)


def test_a_next_day_score_of_a_patient_in_the_middle_stays_with_that_patient():
    # The old "last infusion so far" search ran across patient boundaries: b's score on the
    # day after b's first infusion was attached to a's last cycle.
    ta = infusions("a", INDUCTION)
    aa = scores("a", [("2023-12-30", 20), ("2024-01-12", 8), ("2024-01-19", 6), ("2024-01-26", 7)])
    tb = infusions("b", ["2023-12-01", "2023-12-04"])
    ab = scores("b", [("2023-11-30", 20), ("2023-12-02", 15), ("2023-12-11", 9), ("2023-12-18", 9)])
    tc = infusions("c", ["2023-11-01"])
    ac = scores("c", [("2023-11-01", 18), ("2023-11-08", 5)])
    together = course.build_course(pd.concat([tc, ta, tb]), pd.concat([ac, aa, ab]))
    assert segment_of(together, "b", "2023-12-02") == 1
    alone = course.cycles_from_course(course.build_course(ta, aa))
    mixed = course.cycles_from_course(together)
    pd.testing.assert_frame_equal(mixed[mixed["patient_id"] == "a"][course.CYCLE_COLUMNS].reset_index(drop=True),
                                  alone[course.CYCLE_COLUMNS].reset_index(drop=True))


def test_times_decide_within_a_day_and_untimed_scores_are_pre_dose():
    t = infusions("a", INDUCTION + ["2024-01-26 10:00", "2024-02-09"])
    a = scores("a", [("2023-12-30", 20), ("2024-01-12", 8), ("2024-01-19", 6),
                     ("2024-01-26", 7),            # untimed on a timed infusion's day: pre-dose
                     ("2024-01-26 09:59", 7),      # timed before it: pre-dose
                     ("2024-01-26 10:00", 7),      # at the same minute: pre-dose
                     ("2024-01-26 10:01", 4),      # after it
                     ("2024-02-09 23:30", 5),      # timed, on an untimed infusion's day: pre-dose
                     ("2024-02-10 00:00", 5)])     # the next day: after
    crs = course.build_course(t, a)
    for when in ("2024-01-26", "2024-01-26 09:59", "2024-01-26 10:00"):
        assert segment_of(crs, "a", when) == 6, when
    assert segment_of(crs, "a", "2024-01-26 10:01") == 7
    assert segment_of(crs, "a", "2024-02-09 23:30") == 7
    assert segment_of(crs, "a", "2024-02-10 00:00") == 8


def test_next_day_out_of_response_scores_are_losses_not_lost():
    # A clinic whose check-ins come the day after each dose: every loss must be counted.
    days = INDUCTION + ["2024-02-01", "2024-02-22", "2024-03-14"]
    t = infusions("a", days)
    rows = [("2023-12-30", 20), ("2024-01-12", 8), ("2024-01-19", 6)]
    for d in ("2024-02-01", "2024-02-22", "2024-03-14"):
        day = pd.Timestamp(d)
        rows += [(d, 6), ((day + pd.Timedelta(days=1)).strftime("%Y-%m-%d"), 7),
                 ((day + pd.Timedelta(days=10)).strftime("%Y-%m-%d"), 13),
                 ((day + pd.Timedelta(days=17)).strftime("%Y-%m-%d"), 14)]
    c = course.build_cycles(None, t, scores("a", rows))
    maint = c[~c["post_induction"] & (c["phase"] == "maintenance")]
    assert len(maint) == 3 and maint["event"].all()
    assert (maint["left_days"] == 1.0).all() and (maint["right_days"] == 10.0).all()


def test_rows_without_a_date_or_patient_are_refused_with_a_message():
    t = infusions("a", INDUCTION)
    t.loc[2, "administered_at"] = pd.NaT
    with pytest.raises(ValueError, match="administered_at"):
        course.build_course(t, scores("a", [("2023-12-30", 20)]))


# --- property tests ------------------------------------------------------------------------

BASE = pd.Timestamp("2024-01-01")


@st.composite
def patient_rows(draw, pid):
    """A random time line: infusions on distinct days (some timed), scores on any days (some timed,
    some on infusion days or the day after), a baseline before the first infusion."""
    inf_days = sorted(draw(st.sets(st.integers(0, 80), min_size=1, max_size=9)))
    inf_time = [draw(st.one_of(st.none(), st.integers(0, 24 * 60 - 1))) for _ in inf_days]
    score_days = draw(st.lists(st.one_of(st.integers(-3, 100), st.sampled_from([d + 1 for d in inf_days] + inf_days)),
                               max_size=14))
    score_time = [draw(st.one_of(st.none(), st.integers(0, 24 * 60 - 1))) for _ in score_days]
    totals = [draw(st.integers(0, 27)) for _ in score_days]
    base_day = inf_days[0] - draw(st.integers(0, 5))
    t = pd.DataFrame({
        "patient_id": pid,
        "administered_at": [BASE + pd.Timedelta(days=d, minutes=m or 0) for d, m in zip(inf_days, inf_time)],
        "has_time": [m is not None for m in inf_time], "route": "iv", "phase": None,
    })
    a = pd.DataFrame({
        "patient_id": pid, "instrument": "PHQ-9",
        "administered_at": [BASE + pd.Timedelta(days=base_day)] + [BASE + pd.Timedelta(days=d, minutes=m or 0)
                                                                   for d, m in zip(score_days, score_time)],
        "has_time": [False] + [m is not None for m in score_time],
        "total": [float(draw(st.integers(8, 27)))] + [float(v) for v in totals],
    })
    # one score per patient and clock (the store keys assessments by patient, instrument and time)
    a = a.drop_duplicates(["patient_id", "administered_at"])
    return t, a


@st.composite
def clinics(draw):
    n = draw(st.integers(2, 3))
    parts = [draw(patient_rows(f"p{i}")) for i in range(n)]
    return pd.concat([p[0] for p in parts], ignore_index=True), pd.concat([p[1] for p in parts], ignore_index=True)


SHOWN = course.CYCLE_COLUMNS + ["infusion_no", "interval_days", "n_assessments", "pre_dose_score", "start_kind", "phase"]


def cycles_table(t, a):
    c = course.build_cycles(None, t, a)
    return c[SHOWN].sort_values(["patient_id", "cycle_no"]).reset_index(drop=True)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clinics(), st.randoms(use_true_random=False))
def test_a_patients_cycles_depend_only_on_their_own_rows_in_any_row_order(clinic, rnd):
    t, a = clinic
    whole = cycles_table(t, a)
    # no zero-day cycles, sensible intervals, whatever the mix of dated and timed rows
    assert ((whole["left_days"] > 0) | whole["event"]).all()
    assert (whole["right_days"] > whole["left_days"]).all()
    # the input files' row order changes nothing
    t_shuffled = t.sample(frac=1.0, random_state=rnd.randint(0, 10**6)).reset_index(drop=True)
    a_shuffled = a.sample(frac=1.0, random_state=rnd.randint(0, 10**6)).reset_index(drop=True)
    pd.testing.assert_frame_equal(whole, cycles_table(t_shuffled, a_shuffled))
    # each patient alone gives the same cycles as within the clinic
    for pid in t["patient_id"].unique():
        alone = cycles_table(t[t["patient_id"] == pid], a[a["patient_id"] == pid])
        mine = whole[whole["patient_id"] == pid].reset_index(drop=True)
        pd.testing.assert_frame_equal(mine, alone, check_dtype=False)
    # removing another patient changes nothing for the rest
    gone = t["patient_id"].iloc[0]
    rest = cycles_table(t[t["patient_id"] != gone], a[a["patient_id"] != gone])
    pd.testing.assert_frame_equal(whole[whole["patient_id"] != gone].reset_index(drop=True), rest, check_dtype=False)
