"""The benchmark's contract at a tiny size: its documented JSON keys and sane numbers (never timings)."""
import json

import pytest

from analytics import audit, bench, cli, store

DOCUMENTED_KEYS = ("import_s", "import_rows_per_s", "import_floor_s", "import_floor_ratio", "cohort_s", "scan_floor_s",
              "cohort_floor_ratio", "patient_s", "durability_s", "intervals_s", "peak_rss_mb",
              "patients", "assessments", "treatments")


def test_json_has_every_issue_key_and_positive_numbers(tmp_path, capsys):
    work = tmp_path
    code = cli.main(["bench", "--patients", "40", "--seed", "3", "--repeats", "1", "--json", "--work", str(work)])
    captured = capsys.readouterr()
    result = json.loads(captured.out)  # exactly one JSON object on stdout
    assert captured.err == ""  # --json: no progress, nothing else
    for key in DOCUMENTED_KEYS:
        assert key in result, key
    assert result["patients"] == 40
    assert result["assessments"] > 40 and result["treatments"] > 0
    for key in DOCUMENTED_KEYS:
        value = result[key]
        if value is None:
            # only a collaborator's missing or failing piece may be null, and it says why
            assert key in result["missing"] and result["missing"][key]
        else:
            assert value > 0, key
    # the import and its floor come from this harness alone: always measured
    assert result["import_s"] and result["import_floor_s"] and result["peak_rss_mb"]
    assert result["import_floor_ratio"] == pytest.approx(result["import_s"] / result["import_floor_s"], rel=1e-2)
    assert code == (0 if not result["missing"] else 1)
    # the generated CSVs are kept for the next run of the same size and seed
    assert (work / "n40-s3" / "csv" / "manifest.json").exists()
    # each patient view is audited as the dashboard audits it (journaled, then applied): none is lost
    db = work / "n40-s3" / "bench.duckdb"
    assert store.journal_pending(db) == []
    views = audit.entries(db, action="view_patient")
    assert len(views) >= result["patient_samples"] + 1  # the timed views and the warm-up
    assert audit.verify(db).ok
    assert result["patient_audit_apply_s"] > 0


def test_kept_csvs_are_found_beside_their_manifest_after_the_work_directory_moved(tmp_path):
    first = bench.cohort_csv(12, 5, tmp_path / "old")
    (tmp_path / "old").rename(tmp_path / "new")
    again = bench.cohort_csv(12, 5, tmp_path / "new")
    assert again["rows"] == first["rows"]
    for kind, path in again["paths"].items():
        assert path == str(tmp_path / "new" / "n12-s5" / "csv" / f"{kind}.csv")
        assert (tmp_path / "new" / "n12-s5" / "csv" / f"{kind}.csv").exists()


def test_a_figure_whose_piece_is_missing_is_null_with_a_note(tmp_path, monkeypatch):
    from analytics.screens import workspace

    def unavailable(*args, **kwargs):
        raise ModuleNotFoundError("no interval model")  # as when a piece of the product cannot be imported
    monkeypatch.setattr(workspace, "interval_suggestions", unavailable)
    result = bench.run_benchmark(25, seed=4, repeats=1, patient_samples=2, work=tmp_path)
    assert result["intervals_s"] is None
    assert result["missing"]["intervals_s"].startswith("missing:")


def test_growth_and_table_read_the_results_file():
    runs = [{"patients": n, "repeats": 3, "missing": {}, **{k: None for k in bench.KEYS if k != "patients"}}
            for n in (1_000, 10_000, 100_000)]
    runs[1].update(cohort_s=0.1, peak_rss_mb=200.0)
    runs[2].update(cohort_s=1.5, peak_rss_mb=1000.0)
    results = {"runs": runs, "machine": {}}
    assert bench.growth(results) == {"cohort_s": 15.0, "peak_rss_mb": 5.0}
    table = bench.markdown_table(results)
    assert "| cohort_s | n/a | 0.1 | 1.5 | ≤ 1 |" in table
    assert "cohort_s 15.0x" in table


def test_make_bench_puts_the_postgres_run_beside_the_files_at_10000_patients(tmp_path, capsys):
    runs = [{"patients": n, "missing": {}, **{k: None for k in bench.KEYS if k != "patients"}} for n in (1_000, 10_000)]
    runs[1].update(cohort_s=0.0336, load_average_start=0.23, load_average_end=0.55)
    postgres = {"patients": 10_000, "backend": "postgres", "cohort_s": 0.25, "import_s": None,
                "missing": {"import_s": "failed: the server went away"}, "load_average_start": 3.1, "load_average_end": 4.2}
    (tmp_path / "file.json").write_text(json.dumps({"runs": runs}))
    (tmp_path / "pg.json").write_text(json.dumps(postgres))
    assert cli.main(["bench", "--table", str(tmp_path / "file.json"), "--beside", str(tmp_path / "pg.json")]) == 0
    table = capsys.readouterr().out
    assert "| figure at 10,000 patients | DuckDB file (load 0.23-0.55) | PostgreSQL (load 3.1-4.2) |" in table
    assert "| cohort_s | 0.0336 | 0.25 |" in table
    assert "| import_s | n/a | n/a (failed: the server went away) |" in table  # a reason, never a blank
    postgres["patients"] = 1_000
    (tmp_path / "pg.json").write_text(json.dumps(postgres))
    assert cli.main(["bench", "--table", str(tmp_path / "file.json"), "--beside", str(tmp_path / "pg.json")]) == 2


def test_sizes_run_users_where_asked_and_make_bench_writes_the_readme_table(tmp_path, monkeypatch, capsys):
    calls = []

    class Done:
        returncode = 0

        def __init__(self, args):
            n = int(args[args.index("--patients") + 1])
            run = {"patients": n, "missing": {}, "repeats": 1, **{k: None for k in bench.KEYS if k != "patients"},
                   "cohort_s": 0.01 * n}
            if "--users" in args:
                run.update(users=int(args[args.index("--users") + 1]), users_p50_s=0.4, users_p95_s=1.5,
                           users_errors=0, users_during_import_p95_s=2.5, cold_cohort_s=3.0, after_write_cohort_s=1.0)
            self.stdout = json.dumps(run)
            self.stderr = ""

    real_run = bench.subprocess.run

    def fake_run(args, **kwargs):
        if "--patients" not in args:  # what the machine description asks the system
            return real_run(args, **kwargs)
        calls.append(args)
        return Done(args)
    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    monkeypatch.setattr(bench, "render_plot", lambda results, out: out)
    out = tmp_path / "results.json"
    code = cli.main(["bench", "--sizes", "10,100", "--users", "3", "--users-sizes", "100", "--users-duration", "5",
                     "--out", str(out), "--work", str(tmp_path)])
    assert code == 0
    assert "--users" not in calls[0]  # the size not listed in --users-sizes runs no users
    assert calls[1][calls[1].index("--users"):calls[1].index("--users") + 4] == ["--users", "3", "--users-duration", "5.0"]
    results = json.loads(out.read_text())
    assert "--users 3" in results["command"] and "--users-sizes 100" in results["command"]
    capsys.readouterr()

    readme = tmp_path / "README.md"
    readme.write_text(f"# Clinic\n\nbefore\n{bench.README_TABLE_START}\nold table\n{bench.README_TABLE_END}\nafter\n")
    assert cli.main(["bench", "--table", str(out), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# Clinic\n\nbefore\n") and text.endswith("\nafter\n")
    assert "| users_p95_s |  | 1.5 | ≤ 2 (10,000 patients, 20 users) |" in text
    assert "| cohort_s | 0.1 | 1 | ≤ 1 |" in text
    readme.write_text("no markers here\n")
    assert cli.main(["bench", "--table", str(out), "--readme", str(readme)]) == 2  # says so, writes nothing
    assert readme.read_text() == "no markers here\n"


def test_the_plot_has_a_users_panel_when_a_size_ran_users(tmp_path, monkeypatch):
    import plotly.graph_objects as go

    drawn = {}
    monkeypatch.setattr(go.Figure, "write_image", lambda fig, path: drawn.setdefault("fig", fig))
    runs = [{"patients": n, "repeats": 1, "cohort_s": 0.1 * i + 0.1} for i, n in enumerate((1_000, 10_000))]
    runs[1].update(users=20, users_p50_s=0.5, users_p95_s=1.9)
    bench.render_plot({"runs": runs, "machine": {}}, tmp_path / "plot.png")
    names = {(trace.name, trace.yaxis) for trace in drawn["fig"].data}
    assert ("cohort_s", "y") in names and ("users_p95_s", "y2") in names and ("users_p50_s", "y2") in names
