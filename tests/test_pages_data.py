"""Data page: uploads go through the importer, with reasons for every rejected row."""
from analytics.access import DataAccess
from tests.conftest import shown

HEADER = "patient_id,instrument,administered_on,rater,item_1,item_2,item_3,item_4,item_5,item_6,item_7,item_8,item_9,item_10,total\n"
GOOD = "P00001,PHQ-9,2026-11-19T08:15:00,self,1,1,1,1,1,1,1,1,0,1,8\n"
BAD = "P00002,PHQ-9,2026-11-19T08:20:00,self,7,1,1,1,1,1,1,1,0,1,14\n"


def test_upload_with_a_bad_row_shows_the_reason_before_and_after(open_page, writable_db, monkeypatch):
    monkeypatch.setenv("OUTCOMES_DB", str(writable_db))
    before = len(DataAccess(writable_db).assessments(["P00001"]))

    at = open_page("data")
    at.file_uploader[0].upload("scores.csv", (HEADER + GOOD + BAD).encode(), "text/csv").run()

    assert not at.exception
    preview = [shown(w.value) for w in at.warning]
    assert any("scores.csv: 1 row(s) will be rejected" in w for w in preview)
    reasons = at.dataframe[1].value
    assert list(reasons["line"]) == [3]
    assert reasons["column"].iloc[0] == "item_1"
    assert "0-3" in reasons["reason"].iloc[0]
    assert len(DataAccess(writable_db).assessments(["P00001"])) == before  # nothing written by the preview

    at.button(key="do_import").click().run()

    assert not at.exception
    assert any("1 row(s) were rejected" in w.value for w in at.warning)
    after = DataAccess(writable_db)
    assert len(after.assessments(["P00001"])) == before + 1  # the good row was stored
    rejected = after.rejected_rows()
    assert rejected["reason"].str.contains("0-3").any()
    history = after.import_history()
    assert history.iloc[0]["file_name"].endswith("scores.csv")
    files = at.dataframe[-3].value if "new" in at.dataframe[-3].value.columns else next(
        d.value for d in at.dataframe if "new" in d.value.columns)
    assert list(files["file"]) == ["scores.csv"]  # the name as uploaded, not the temporary folder it waited in
    assert list(files["refused"]) == [""]
    every_cell = " ".join(str(v) for d in at.dataframe for v in d.value.astype(str).to_numpy().ravel())
    assert "upload-" not in every_cell and "None" not in every_cell


def test_a_refused_file_changes_nothing(open_page, writable_db, monkeypatch):
    monkeypatch.setenv("OUTCOMES_DB", str(writable_db))
    before = len(DataAccess(writable_db).assessments())
    at = open_page("data")
    at.file_uploader[0].upload("junk.csv", b"what,is,this\n1,2,3\n", "text/csv").run()
    at.button(key="do_import").click().run()
    assert not at.exception
    assert any("Nothing was imported" in e.value for e in at.error)
    assert not any("upload-" in e.value for e in at.error)  # the file as uploaded, not its temporary path
    assert len(DataAccess(writable_db).assessments()) == before


def test_data_page_lists_import_history_and_quality(open_page):
    at = open_page("data")
    assert not at.exception
    history = at.dataframe[0].value
    assert (history["source"] == "demo").any()
    quality = at.dataframe[-1].value if "check" in at.dataframe[-1].value.columns else at.dataframe[1].value
    assert "check" in quality.columns


def test_pages_without_a_database_say_what_to_do(open_page, monkeypatch, tmp_path):
    monkeypatch.setenv("OUTCOMES_DB", str(tmp_path / "missing.duckdb"))
    for name in ("patient", "due", "cohort", "durability", "data"):
        at = open_page(name, patient="P00001")
        assert not at.exception, name
        assert any("No database yet" in i.value for i in at.info), name


def test_pages_on_an_empty_database_say_what_to_do(open_page, monkeypatch, tmp_path):
    from analytics import store

    empty = store.initialise(tmp_path / "empty.duckdb")
    monkeypatch.setenv("OUTCOMES_DB", str(empty))
    expected = {"patient": "No patient in your caseload", "due": "No patients in your caseload yet",
                "cohort": "No infusions yet", "durability": "No infusions yet", "data": "No imports yet"}
    for name, message in expected.items():
        at = open_page(name, patient="P00001")
        assert not at.exception, name
        shown = [a.value for a in [*at.info, *at.warning]]
        assert any(message in s for s in shown), (name, shown)


def test_a_fhir_bundle_upload_is_previewed_and_imported(open_page, writable_db, monkeypatch):
    from pathlib import Path

    monkeypatch.setenv("OUTCOMES_DB", str(writable_db))
    bundle = (Path(__file__).parent / "fixtures" / "fhir" / "transaction.json").read_bytes()
    at = open_page("data")
    at.file_uploader[0].upload("bundle.json", bundle, "application/fhir+json").run()
    assert not at.exception and not at.error
    preview = at.dataframe[0].value
    assert set(preview["file"]) == {"bundle.json"} and "patients" in set(preview["kind"])
    at.button(key="do_import").click().run()
    assert not at.exception
    assert "T-100" in set(DataAccess(writable_db).patients()["patient_id"])
