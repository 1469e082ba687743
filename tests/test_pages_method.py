"""Method page and the role-based navigation."""
from analytics import outcomes, scales


def test_method_page_documents_every_scale_and_rule_from_the_code(open_page, text_of):
    at = open_page("method")
    assert not at.exception
    scale_table = at.table[0].value
    assert list(scale_table.columns) == list(scales.codes())
    for s in scales.SCALES.values():
        row = scale_table[s.code]
        assert row["total range"] == f"0-{s.total_max}"
        assert all(b.label in row["severity bands"] for b in s.bands)
    rules = outcomes.DEFAULT_RULES
    rule_table = at.dataframe[0].value.set_index("setting")
    assert rule_table.loc["Response: a fall from baseline of at least", "value"] == f"{100 * rules.response_fall:.0f}%"
    # settings in words: no field names, no coded values such as below_10 or two_consecutive
    assert not any("_" in str(v) for v in [*rule_table.index, *rule_table["value"]])
    text = text_of(at)
    assert f"at least {100 * rules.response_fall:.0f}% below baseline" in text
    assert f"at most {rules.baseline_window_days} days before" in text


def test_each_role_lands_on_its_own_page(open_page, monkeypatch, demo_db):
    from analytics.access import DataAccess

    monkeypatch.setenv("OUTCOMES_ROLE", "admin")
    assert open_page("dashboard").title[0].value == "Data"
    monkeypatch.setenv("OUTCOMES_ROLE", "director")
    assert open_page("dashboard").title[0].value == "Cohort outcomes"
    monkeypatch.setenv("OUTCOMES_ROLE", "clinician")
    monkeypatch.setenv("OUTCOMES_CLINICIAN", DataAccess(demo_db).patients()["clinician"].iloc[0])
    assert open_page("dashboard").title[0].value == "Due list"


def test_menu_never_offers_the_data_page_to_clinicians_nor_patient_pages_to_admins():
    import ast
    from pathlib import Path

    from analytics.access import Scope
    from pages._routing import menu_for

    clinician = Scope("c", "clinician", clinician="dr_a")
    admin = Scope("a", "admin", patient_level=False, identifiable=False)
    assert not any("data" in names for names in menu_for(clinician).values())
    assert not any("patient" in names for names in menu_for(admin).values())
    assert menu_for(Scope("x", "nobody")) == {}  # an unknown role opens nothing
    # and the dashboard registers its navigation from that menu, not from a table of its own
    tree = ast.parse((Path(__file__).resolve().parent.parent / "dashboard.py").read_text())
    assert any(isinstance(n, ast.Call) and getattr(n.func, "id", "") == "menu_for" for n in ast.walk(tree))
