"""Outcome definitions: baseline, response, remission, reliable change, alerts."""
import math

import numpy as np
import pandas as pd
import pytest

from analytics import outcomes, scales
from analytics.outcomes import OutcomeRules


def frame(rows, instrument="PHQ-9"):
    return pd.DataFrame({"patient_id": [r[0] for r in rows], "instrument": instrument,
                         "administered_at": pd.to_datetime([r[1] for r in rows], format="mixed"),
                         "has_time": [len(r[1]) > 10 for r in rows], "total": [float(r[2]) for r in rows],
                         "item_9": [r[3] if len(r) > 3 else 0 for r in rows]})


def infusions(rows):
    return pd.DataFrame({"patient_id": [r[0] for r in rows], "administered_at": pd.to_datetime([r[1] for r in rows]),
                         "has_time": False, "route": "iv", "phase": None})


@pytest.mark.parametrize("code", ["PHQ-9", "MADRS", "GAD-7"])
def test_reliable_change_index_follows_jacobson_truax_from_the_registry(code):
    s = scales.get(code)
    assert s.reliability and s.reference_sd and s.reliability_source and s.reference_sd_source
    expected = 1.96 * s.reference_sd * math.sqrt(2 * (1 - s.reliability))
    assert outcomes.reliable_change_index(code) == pytest.approx(expected)


def test_published_reliable_change_criteria_are_reproduced():
    # IAPT reliable-change criteria: 6 PHQ-9 points, 4 GAD-7 points (Gyani et al. 2013)
    assert round(outcomes.reliable_change_index("PHQ-9")) == 6
    assert round(outcomes.reliable_change_index("GAD-7")) == 4


def test_response_is_at_least_half_below_baseline():
    assert outcomes.is_response([10, 11, 0], [20, 20, 20]).tolist() == [True, False, True]
    assert outcomes.is_response([5], [20], OutcomeRules(response_fall=0.75)).tolist() == [True]
    assert outcomes.is_response([6], [20], OutcomeRules(response_fall=0.75)).tolist() == [False]
    # no usable baseline, no response
    assert outcomes.is_response([0, 0], [np.nan, 0]).tolist() == [False, False]


def test_remission_thresholds_and_the_esketamine_madrs_option():
    assert outcomes.is_remission([4, 5], "PHQ-9").tolist() == [True, False]
    assert outcomes.is_remission([4, 5], "GAD-7").tolist() == [True, False]
    assert outcomes.is_remission([9, 10, 12], "MADRS").tolist() == [True, False, False]
    rule = OutcomeRules(madrs_remission="12_or_below")
    assert outcomes.is_remission([12, 13], "MADRS", rule).tolist() == [True, False]


def test_bad_rules_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="madrs_remission"):
        OutcomeRules(madrs_remission="below_8")
    with pytest.raises(ValueError, match="loss_rule"):
        OutcomeRules(loss_rule="one_bad_week")
    with pytest.raises(ValueError, match="MADRS rule"):
        OutcomeRules(loss_rule="madrs_relapse_22").check_instrument("PHQ-9")


def test_madrs_relapse_rule_counts_22_or_more():
    rule = OutcomeRules(loss_rule="madrs_relapse_22")
    assert outcomes.is_out([21, 22, 30], [34, 34, 34], "MADRS", rule).tolist() == [False, True, True]


def test_baseline_is_last_score_on_or_before_first_infusion_within_30_days():
    t = infusions([("a", "2024-02-01"), ("a", "2024-02-03"), ("b", "2024-02-01"), ("c", "2024-02-01")])
    a = frame([("a", "2024-01-10", 18), ("a", "2024-02-01", 16), ("a", "2024-02-02", 4),
               ("b", "2023-12-31", 20),             # 32 days before: too old
               ("c", "2024-01-02", 19)])            # exactly 30 days before: allowed
    b = outcomes.baselines(t, a, "PHQ-9").set_index("patient_id")
    assert b.loc["a", "baseline_score"] == 16
    assert math.isnan(b.loc["b", "baseline_score"])
    assert b.loc["c", "baseline_score"] == 19


def test_timed_score_after_a_timed_first_infusion_is_not_the_baseline():
    t = pd.DataFrame({"patient_id": ["a"], "administered_at": pd.to_datetime(["2024-02-01 09:00"]), "has_time": [True]})
    a = frame([("a", "2024-01-30", 18), ("a", "2024-02-01 15:00", 6)])
    assert outcomes.baselines(t, a, "PHQ-9")["baseline_score"].iloc[0] == 18


def test_patient_status_alerts():
    t = infusions([("a", "2024-01-01"), ("b", "2024-01-01"), ("c", "2024-01-01")])
    a = frame([
        ("a", "2023-12-30", 20), ("a", "2024-01-08", 4), ("a", "2024-01-15", 8), ("a", "2024-01-22", 10),   # +6 from best
        ("b", "2023-12-30", 20), ("b", "2024-01-08", 9), ("b", "2024-01-15", 12),                            # crossed out
        ("c", "2023-12-30", 20), ("c", "2024-01-08", 6), ("c", "2024-01-15", 5, 1),                          # item 9
    ])
    st = outcomes.patient_status(t, a, "PHQ-9").set_index("patient_id")
    assert st.loc["a", "worse_than_best"] and not st.loc["a", "worse_than_last"] and st.loc["a", "responding"]
    assert st.loc["b", "lost_response"] and not st.loc["b", "worse_than_best"]
    assert st.loc["c", "item9_positive"] and not st.loc["c", "remission"]  # 5 is not below 5
    assert st["alert"].tolist() == [True, True, True]
    assert "item 9" in st.loc["c", "alert_reasons"] and "worsening" in st.loc["a", "alert_reasons"]
    calm = outcomes.patient_status(t[t.patient_id == "c"], a[(a.patient_id == "c") & (a.item_9 == 0)], "PHQ-9")
    assert not calm["alert"].iloc[0]


def test_item9_flag_uses_only_the_latest_phq9():
    t = infusions([("a", "2024-01-01")])
    a = frame([("a", "2023-12-30", 20, 2), ("a", "2024-01-08", 6, 0)])
    assert not outcomes.patient_status(t, a, "PHQ-9")["item9_positive"].iloc[0]
