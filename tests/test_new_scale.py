"""Adding an instrument is one registry entry: a 21-item, 0-63 scale (BDI-II) registered at start-up
is stored, imported, read back and exported like the built-in ones, with nothing else changed.

The registration runs in a fresh interpreter before anything else of the product loads, as an
entry in analytics/scales.py would."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

BDI = """
from analytics import scales
from analytics.scales import Band, Scale
scales.register(Scale(
    code="BDI-II", name="Beck Depression Inventory-II", rater="self", scored_items=21, item_max=3,
    bands=(Band(0, 13, "minimal"), Band(14, 19, "mild"), Band(20, 28, "moderate"), Band(29, 63, "severe")),
    remission_below=14, aliases=("BDI2", "BDI-2"), reliability=0.93, reference_sd=9.0, colour="#e377c2",
    item_labels=tuple(f"BDI-II item {n}" for n in range(1, 22)),
))
"""

# The same three files in both runs: 21 item columns, one row with an answer out of range.
CHILD = """
import json, sys
from pathlib import Path
if sys.argv[2] == "registered":
    exec(sys.argv[3])
from analytics import access, export, ingest, outcomes, scales, store

work = Path(sys.argv[1])
items = [f"item_{n}" for n in range(1, 22)]
def row(day, answers, total=""):
    return ",".join(["P1", "BDI-II", day, "self", *map(str, answers), str(total)])
(work / "patients.csv").write_text("patient_id,site,clinician,enrolled_on\\nP1,North,dr_a,2024-01-01\\n")
(work / "treatments.csv").write_text("patient_id,administered_on,route\\nP1,2024-01-08,iv\\n")
(work / "scores.csv").write_text("\\n".join([",".join(["patient_id", "instrument", "administered_on", "rater", *items, "total"]),
                                            row("2024-01-08", [3] * 21, 63), row("2024-01-15", [1] * 21),
                                            row("2024-01-22", [4] + [1] * 20)]) + "\\n")
db = work / "s.duckdb"
report = ingest.import_files([work / "patients.csv", work / "treatments.csv", work / "scores.csv"], db=db)
out = {"exit": report.exit_code, "rejects": [r.reason for r in report.rejects]}
data = access.DataAccess(db)
a = data.assessments()
out["rows"] = [[float(v) for v in r] for r in a[[c for c in ("item_1", "item_21", "total") if c in a]].itertuples(index=False)]
with store.connect(db) as con:
    out["instrument_row"] = [list(r) for r in con.execute(
        "SELECT code, scored_items, item_max, total_max FROM instruments WHERE code = 'BDI-II'").fetchall()]
out["export_header"] = export.export_csv(work / "export", db)["assessments"].read_text().splitlines()[0].split(",")
if "BDI-II" in scales.SCALES:
    out["baseline"] = float(outcomes.baselines(data.treatments(), a, "BDI-II")["baseline_score"].iloc[0])
    out["band"] = scales.get("BDI-II").band(63)
print(json.dumps(out))
"""


def _run(tmp_path, mode: str) -> dict:
    work = tmp_path / mode
    work.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("OUTCOMES_DB", None)
    done = subprocess.run([sys.executable, "-c", CHILD, str(work), mode, BDI], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_registered_21_item_scale_is_imported_stored_read_and_exported(tmp_path):
    got = _run(tmp_path, "registered")
    assert got["exit"] == 1  # the row with an answer of 4 rejected, the rest stored
    assert len(got["rejects"]) == 1 and "BDI-II item 1 must be a whole number 0-3, got 4" in got["rejects"][0]
    assert got["rows"] == [[3.0, 3.0, 63.0], [1.0, 1.0, 21.0]]  # item 21 and a total over 60 are kept
    assert got["instrument_row"] == [["BDI-II", 21, 3, 63]]
    header = got["export_header"]
    assert header[header.index("item_1"):] == [f"item_{n}" for n in range(1, 22)] + ["total"]
    assert got["baseline"] == 63.0 and got["band"] == "severe"


def test_without_the_registry_entry_the_same_file_is_not_stored(tmp_path):
    got = _run(tmp_path, "absent")
    assert got["rows"] == []
    assert len(got["rejects"]) == 3 and all("unknown instrument 'BDI-II'" in r for r in got["rejects"])
    assert got["instrument_row"] == [] and "item_11" not in got["export_header"]
