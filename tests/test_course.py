"""Course segmentation and durability cycles on small hand-made histories.

Baseline 20 throughout, so a PHQ-9 of 10 or less is in response and 11 or
more is out of response.
"""
import math

import numpy as np
import pandas as pd
import pytest

from analytics import course
from analytics.outcomes import OutcomeRules


def infusions(pid, days, phase=None, times=None, route="iv"):
    at = pd.to_datetime(days)
    has_time = [False] * len(days)
    if times:
        at = pd.to_datetime([f"{d} {t}" if t else d for d, t in zip(days, times)], format="mixed")
        has_time = [bool(t) for t in times]
    return pd.DataFrame({"patient_id": pid, "administered_at": at, "has_time": has_time, "route": route,
                         "phase": phase if isinstance(phase, list) else [phase] * len(days)})


def scores(pid, rows, instrument="PHQ-9"):
    days = [r[0] for r in rows]
    at = pd.to_datetime(days, format="mixed")
    return pd.DataFrame({"patient_id": pid, "instrument": instrument, "administered_at": at,
                         "has_time": [len(d) > 10 for d in days], "total": [float(r[1]) for r in rows]})


def cycles_of(treatments, assessments, **kw):
    return course.build_cycles(None, treatments, assessments, **kw)


# A responder: baseline 20 on 12-30, six induction infusions, then in response.
INDUCTION = ["2024-01-01", "2024-01-03", "2024-01-05", "2024-01-08", "2024-01-10", "2024-01-12"]


def test_loss_is_interval_censored_between_last_in_and_first_out():
    t = infusions("a", INDUCTION)
    a = scores("a", [("2023-12-30", 20), ("2024-01-12", 8), ("2024-01-19", 6), ("2024-01-26", 7),
                     ("2024-02-02", 12), ("2024-02-09", 13)])
    c = cycles_of(t, a)
    last = c[c["post_induction"]].iloc[0]
    assert last["started_on"] == pd.Timestamp("2024-01-12")
    assert (last["left_days"], last["right_days"], last["event"], last["censor_reason"]) == (14.0, 21.0, True, "loss")


def test_next_infusion_before_loss_right_censors_the_cycle():
    t = infusions("a", INDUCTION + ["2024-02-02"])
    a = scores("a", [("2023-12-30", 20), ("2024-01-12", 8), ("2024-01-19", 6), ("2024-01-26", 7), ("2024-02-02", 8)])
    c = cycles_of(t, a).set_index("started_on")
    cyc = c.loc[pd.Timestamp("2024-01-12")]
    # the 02-02 score is pre-dose: it still belongs to the cycle that infusion ends
    assert (cyc["left_days"], cyc["right_days"], cyc["event"], cyc["censor_reason"]) == (21.0, math.inf, False, "next_infusion")
    # the 02-02 infusion was given in response, but nothing is known after it yet: no cycle
    assert pd.Timestamp("2024-02-02") not in c.index
    a2 = pd.concat([a, scores("a", [("2024-02-09", 6)])])
    nxt = cycles_of(t, a2).set_index("started_on").loc[pd.Timestamp("2024-02-02")]
    assert (nxt["left_days"], nxt["right_days"], nxt["censor_reason"], nxt["start_kind"]) == (7.0, math.inf, "end_of_follow_up", "in_response")


def test_end_of_follow_up_censors_and_a_lone_last_out_score_is_not_a_loss():
    t = infusions("a", INDUCTION)
    a = scores("a", [("2023-12-30", 20), ("2024-01-12", 8), ("2024-01-19", 6), ("2024-01-26", 14)])
    cyc = cycles_of(t, a).query("post_induction").iloc[0]
    assert (cyc["left_days"], cyc["right_days"], cyc["event"], cyc["censor_reason"]) == (7.0, math.inf, False, "end_of_follow_up")


def test_one_out_of_response_score_followed_by_an_infusion_is_a_loss():
    t = infusions("a", INDUCTION + ["2024-02-05"])
    a = scores("a", [("2023-12-30", 20), ("2024-01-12", 8), ("2024-01-19", 6), ("2024-01-29", 15)])
    c = cycles_of(t, a)
    cyc = c.query("post_induction").iloc[0]
    assert (cyc["left_days"], cyc["right_days"], cyc["event"]) == (7.0, 17.0, True)
    # the infusion given out of response is a rescue and starts no cycle (nothing after it)
    assert len(c[c["started_on"] == pd.Timestamp("2024-02-05")]) == 0


def test_loss_on_infusion_can_be_switched_off():
    t = infusions("a", INDUCTION + ["2024-02-05"])
    a = scores("a", [("2023-12-30", 20), ("2024-01-12", 8), ("2024-01-19", 6), ("2024-01-29", 15)])
    cyc = cycles_of(t, a, rules=OutcomeRules(loss_on_infusion=False)).query("post_induction").iloc[0]
    assert (cyc["event"], cyc["censor_reason"], cyc["left_days"]) == (False, "next_infusion", 7.0)


def test_a_blip_out_of_response_then_back_is_not_a_loss():
    t = infusions("a", INDUCTION)
    a = scores("a", [("2023-12-30", 20), ("2024-01-12", 8), ("2024-01-19", 12), ("2024-01-26", 7),
                     ("2024-02-02", 12), ("2024-02-09", 13)])
    cyc = cycles_of(t, a).query("post_induction").iloc[0]
    assert (cyc["left_days"], cyc["right_days"], cyc["event"]) == (14.0, 21.0, True)


def test_infusions_without_an_assessment_between_them_make_no_zero_day_cycles():
    t = infusions("a", INDUCTION + ["2024-01-26", "2024-02-16", "2024-02-20"])
    a = scores("a", [("2023-12-30", 20), ("2024-01-12", 8), ("2024-01-19", 6), ("2024-01-26", 7), ("2024-03-01", 5)])
    c = cycles_of(t, a)
    # 01-26 and 02-16: given in response with no score before the next infusion (nothing known
    # about how long response lasted): merged into the cycle of the last of them, 02-20
    # (01-10 is a recapture: the pre-dose score of 01-12 is its first, and in response)
    assert list(c["started_on"].dt.strftime("%m-%d")) == ["01-10", "01-12", "02-20"]
    last = c.set_index("started_on").loc[pd.Timestamp("2024-02-20")]
    # its pre-dose state is carried from the last score (in response)
    assert (last["left_days"], last["censor_reason"], last["cycle_no"]) == (10.0, "end_of_follow_up", 3)
    # induction infusions 2-3 days apart with weekly scores: no cycle of 0 days anywhere
    assert ((c["left_days"] > 0) | c["event"]).all()


def test_first_score_out_of_response_after_an_in_response_infusion_gives_left_zero():
    t = infusions("a", INDUCTION)
    a = scores("a", [("2023-12-30", 20), ("2024-01-12", 8), ("2024-01-20", 14), ("2024-01-27", 15)])
    cyc = cycles_of(t, a).query("post_induction").iloc[0]
    assert (cyc["left_days"], cyc["right_days"], cyc["event"]) == (0.0, 8.0, True)


def test_same_day_scores_are_pre_dose_unless_timed_after_a_timed_infusion():
    t = infusions("a", INDUCTION + ["2024-01-26"], times=[None] * 6 + ["10:00"])
    a = scores("a", [("2023-12-30", 20), ("2024-01-12", 8), ("2024-01-19", 6),
                     ("2024-01-26", 7),            # date-only: 00:00, before the 10:00 infusion
                     ("2024-01-26 15:00", 4),       # timed, after it: first post-dose score
                     ("2024-02-02", 12), ("2024-02-09", 12)])
    c = cycles_of(t, a).set_index("started_on")
    first = c.loc[pd.Timestamp("2024-01-12")]
    assert (first["left_days"], first["censor_reason"]) == (14.0, "next_infusion")
    second = c.loc[pd.Timestamp("2024-01-26")]
    assert second["event"]
    assert second["left_days"] == pytest.approx(5 / 24)  # 10:00 -> 15:00
    assert second["right_days"] == pytest.approx(7 - 10 / 24)


def test_same_date_timed_score_before_a_date_only_infusion_is_pre_dose():
    t = infusions("a", INDUCTION + ["2024-01-26"])
    a = scores("a", [("2023-12-30", 20), ("2024-01-12", 8), ("2024-01-26 18:00", 15)])
    c = cycles_of(t, a).set_index("started_on")
    cyc = c.loc[pd.Timestamp("2024-01-12")]
    assert (cyc["event"], cyc["right_days"]) == (True, pytest.approx(14.75))


def test_baseline_older_than_thirty_days_gives_no_outcomes():
    t = infusions("a", INDUCTION)
    a = scores("a", [("2023-11-30", 20), ("2024-01-12", 8), ("2024-01-19", 6)])
    assert cycles_of(t, a).empty
    a_ok = scores("a", [("2023-12-02", 20), ("2024-01-12", 8), ("2024-01-19", 6)])
    assert len(cycles_of(t, a_ok)) > 0


def test_baseline_is_the_last_score_on_or_before_the_first_infusion_day():
    t = infusions("a", INDUCTION)
    # 01-01 score (date-only) is pre-dose on the first infusion day, so it is the baseline (16, not 20)
    a = scores("a", [("2023-12-20", 20), ("2024-01-01", 16), ("2024-01-12", 9), ("2024-01-19", 8)])
    c = cycles_of(t, a)
    assert (c["baseline_score"] == 16).all()
    # response is now <= 8: the pre-dose 9 on 01-12 is out, the 8 on 01-19 recaptures it
    assert c.query("post_induction").iloc[0]["left_days"] == 7.0


def test_derived_phases_induction_maintenance_and_rescue():
    days = INDUCTION + ["2024-01-15", "2024-02-05", "2024-02-26", "2024-03-05"]
    t = infusions("a", days)
    a = scores("a", [("2023-12-30", 20), ("2024-01-12", 8), ("2024-02-05", 8), ("2024-02-20", 14), ("2024-02-26", 15),
                     ("2024-03-04", 6)])
    inf = course.build_course(t, a).infusions.set_index("infusion_no")
    # seven within 14-day gaps (the 8th would be too, but 2024-02-05 comes 21 days later)
    assert list(inf["phase"]) == ["induction"] * 7 + ["maintenance", "rescue", "maintenance"]
    assert inf.loc[7, "last_induction"]
    assert (inf["phase_source"] == "derived").all()


def test_induction_stops_at_the_eighth_infusion_and_recorded_phase_wins():
    days = [f"2024-01-{d:02d}" for d in range(1, 21, 2)]  # ten infusions two days apart
    t = infusions("a", days)
    a = scores("a", [("2023-12-30", 20)])
    inf = course.build_course(t, a).infusions
    assert list(inf["phase"]) == ["induction"] * 8 + ["maintenance"] * 2
    t2 = infusions("a", days, phase=["induction"] * 6 + ["maintenance"] * 4)
    inf2 = course.build_course(t2, a).infusions
    assert list(inf2["phase"]) == ["induction"] * 6 + ["maintenance"] * 4
    assert inf2["last_induction"].tolist() == [False] * 5 + [True] + [False] * 4


def test_last_induction_infusion_of_a_responder_starts_a_cycle_even_if_pre_dose_was_out():
    t = infusions("a", INDUCTION)
    a = scores("a", [("2023-12-30", 20), ("2024-01-08", 14), ("2024-01-19", 7), ("2024-01-26", 12), ("2024-02-02", 12)])
    c = cycles_of(t, a, rules=OutcomeRules(cycles_after_recapture=False))
    assert len(c) == 1
    cyc = c.iloc[0]
    assert cyc["post_induction"] and cyc["start_kind"] == "recaptured"
    assert (cyc["left_days"], cyc["right_days"]) == (7.0, 14.0)


def test_first_response_and_early_response():
    t = infusions("a", INDUCTION)
    a = scores("a", [("2023-12-30", 20), ("2024-01-03", 15), ("2024-01-05", 12), ("2024-01-10", 9)])
    crs = course.build_course(t, a)
    fr = crs.patients_first_response.iloc[0]
    assert fr["first_response_at"] == pd.Timestamp("2024-01-10") and fr["infusions_to_response"] == 4
    c = course.cycles_from_course(crs)
    # last score before the third infusion: 12 on 01-05 (pre-dose) -> 40% fall
    assert c["early_response"].iloc[0] == pytest.approx(40.0)


def test_madrs_relapse_rule():
    t = infusions("m", INDUCTION)
    a = scores("m", [("2023-12-30", 34), ("2024-01-12", 12), ("2024-01-19", 18), ("2024-01-26", 21),
                     ("2024-02-02", 23), ("2024-02-09", 25)], instrument="MADRS")
    default = cycles_of(t, a, instrument="MADRS").query("post_induction").iloc[0]
    # response (<= 17) is lost at 01-26 (18, 21 two consecutive)
    assert (default["left_days"], default["right_days"]) == (0.0, 7.0)
    relapse = cycles_of(t, a, instrument="MADRS", rules=OutcomeRules(loss_rule="madrs_relapse_22")).query("post_induction").iloc[0]
    assert (relapse["left_days"], relapse["right_days"], relapse["event"]) == (14.0, 21.0, True)
    with pytest.raises(ValueError, match="MADRS"):
        cycles_of(t, scores("m", [("2023-12-30", 20)]), rules=OutcomeRules(loss_rule="madrs_relapse_22"))


def test_covariates_patient_fields_comorbidities_and_attributes():
    t = pd.concat([infusions("a", INDUCTION), infusions("b", INDUCTION, route="im")])
    a = pd.concat([scores("a", [("2023-12-30", 20), ("2024-01-12", 8), ("2024-01-19", 9)]),
                   scores("b", [("2023-12-30", 16), ("2024-01-12", 4), ("2024-01-19", 5)])])
    patients = pd.DataFrame({"patient_id": ["a", "b"], "site": ["north", "south"], "clinician": ["x", "y"],
                             "prior_failed_trials": [3, 1], "comorbidities": ["anxiety,ptsd", ""]})
    attributes = pd.DataFrame({"patient_id": ["a", "b", "a"], "name": ["bmi", "bmi", "support"],
                               "value": ["31.5", "24", "strong"]})
    c = course.build_cycles(patients, t, a, attributes).query("post_induction").set_index("patient_id")
    assert c.loc["a", "has_anxiety"] and c.loc["a", "has_ptsd"] and not c.loc["b", "has_anxiety"]
    assert (c.loc["a", "site"], c.loc["b", "route"], c.loc["a", "prior_failed_trials"]) == ("north", "im", 3)
    assert c.loc["a", "bmi"] == 31.5 and c.loc["a", "support"] == "strong" and pd.isna(c.loc["b", "support"])
    assert (c.loc["a", "baseline_band"], c.loc["b", "baseline_band"]) == ("severe", "moderately severe")


def test_patients_are_independent_in_one_cohort_pass():
    ta = infusions("a", INDUCTION)
    aa = scores("a", [("2023-12-30", 20), ("2024-01-12", 8), ("2024-01-19", 6), ("2024-01-26", 12), ("2024-02-02", 13)])
    tb = infusions("b", ["2024-01-02", "2024-01-04"])
    ab = scores("b", [("2024-01-01", 18), ("2024-01-04", 5), ("2024-01-11", 4)])
    together = cycles_of(pd.concat([tb, ta]), pd.concat([ab, aa]))
    alone = pd.concat([cycles_of(ta, aa), cycles_of(tb, ab)])
    cols = course.CYCLE_COLUMNS
    pd.testing.assert_frame_equal(together[cols].reset_index(drop=True),
                                  alone[cols].sort_values(["patient_id", "cycle_no"]).reset_index(drop=True))


def test_a_clinic_without_scores_yet_gets_an_empty_cycle_table_with_the_contract_columns():
    t = infusions("a", INDUCTION)
    empty = scores("a", [("2023-12-30", 20)]).iloc[0:0]
    c = cycles_of(t, empty)
    assert c.empty and set(course.CYCLE_COLUMNS) <= set(c.columns)
    assert cycles_of(t.iloc[0:0], empty).empty
