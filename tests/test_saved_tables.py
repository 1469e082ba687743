"""A view's tables saved beside the database (analytics/screens/saved.py): a restarted server loads them
instead of building, and never takes another data version's, another code's or a tampered file for current."""
from __future__ import annotations

import fcntl
import gc
import os
import shutil
import stat
import threading
import time
import weakref
from datetime import date
from pathlib import Path

import pytest

from analytics import ingest, intervals
from analytics.access import SYSTEM, DataAccess, Scope
from analytics.screens import cohort, saved, workspace
from analytics.screens.workspace import WorkspaceCache
from analytics.store_postgres import Target

DIRECTOR = Scope(user="director", role="director", patient_level=False, min_cell=11)
TODAY = date(2026, 11, 21)


def cohort_visit(cache: WorkspaceCache, db):
    """What the Cohort outcomes page asks for by default; the workspace and the screen."""
    ws = cache.workspace(db, DIRECTOR)
    choices = cohort.cohort_choices(ws, "PHQ-9")
    labels = list(choices.periods["label"])
    filters = cohort.chosen_filters("PHQ-9", cohort.EVERY_PATIENT, choices.periods, labels[0], labels[-1])
    return ws, cohort.cohort_page(ws, filters, TODAY)


def copy_db(source: Path, target: Path) -> Path:
    shutil.copy(source, target)
    for suffix in (".wal",):
        if Path(f"{source}{suffix}").exists():
            shutil.copy(f"{source}{suffix}", f"{target}{suffix}")
    if Path(f"{source}.tables").exists():
        shutil.copytree(f"{source}.tables", f"{target}.tables")
    return target


@pytest.fixture(scope="module")
def saved_once(demo_db, tmp_path_factory):
    """The demo clinic after one server built and saved the director's cohort tables; and what it showed."""
    mp = pytest.MonkeyPatch()
    mp.setenv(saved.SAVE_ENV, "1")
    db = copy_db(demo_db, tmp_path_factory.mktemp("saved") / "clinic.duckdb")
    cache = WorkspaceCache()
    _, screen = cohort_visit(cache, db)
    cache.save_due(quiet_s=0)  # (or the server's saver thread does it: wait for its files)
    deadline = time.monotonic() + 60
    while not (saved.load(db, DIRECTOR.view_key) and saved.load_clinic(db, "PHQ-9", DataAccess(db).data_version())):
        assert time.monotonic() < deadline, "the view's tables and the clinic's model were not saved"
        time.sleep(0.1)
    yield db, screen
    mp.undo()


@pytest.fixture()
def db(saved_once, tmp_path, monkeypatch):
    monkeypatch.setenv(saved.SAVE_ENV, "1")
    return copy_db(saved_once[0], tmp_path / "clinic.duckdb")


def one_more_score(db, tmp_path) -> None:
    patient = DataAccess(db).patients()["patient_id"].iloc[0]
    csv = tmp_path / "one.csv"
    csv.write_text("patient_id,instrument,administered_on,rater,item_1,item_2,item_3,item_4,item_5,item_6,item_7,"
                   f"item_8,item_9\n{patient},PHQ-9,2026-11-20,self,0,0,0,0,0,0,0,0,0\n")
    assert ingest.import_files([csv], db=db).error is None


def new_process() -> None:
    """What a process that has fitted and loaded no clinic model holds: nothing."""
    intervals.forget_fits()
    workspace._CLINIC_MODELS.clear()


def updated_view(cache: WorkspaceCache, db) -> workspace.Workspace:
    """The director's workspace once the background refresh has built the current version's tables."""
    deadline = time.monotonic() + 120
    while (current := cache.workspace(db, DIRECTOR)).updating:
        assert time.monotonic() < deadline, "the new version's tables were not built"
        time.sleep(0.05)
    return current


def test_a_restarted_server_loads_the_saved_tables_and_shows_the_same_figures(db, saved_once):
    built = saved_once[1]
    path = saved.view_file(db, DIRECTOR.view_key)
    assert path.parent == Path(f"{db}.tables")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700

    ws, loaded = cohort_visit(WorkspaceCache(), db)  # a new process: nothing in memory
    assert not ws.updating and ws.tables.version == DataAccess(db).data_version()
    assert ("frames",) not in ws.tables.keys()  # nothing was read or built: the rows are never in the file
    assert loaded.headline["treated"] == built.headline["treated"] > 0
    assert loaded.headline["response"].text() == built.headline["response"].text()
    assert loaded.waterfall_bars.equals(built.waterfall_bars) and loaded.completeness.equals(built.completeness)


def test_a_restarted_server_loads_the_clinic_model_instead_of_fitting_it(db, monkeypatch):
    intervals.forget_fits()  # a new process: no model in memory
    workspace._CLINIC_MODELS.clear()

    def no_fit(*args, **kwargs):
        raise AssertionError("the model was fitted again")
    monkeypatch.setattr(intervals, "fit_clinic_model", no_fit)
    ws = WorkspaceCache().workspace(db, DIRECTOR)
    site = cohort.cohort_choices(ws, "PHQ-9").subsets[1]  # a filtered view: its median reads the model
    screen = cohort.cohort_page(ws, cohort.chosen_filters("PHQ-9", site), TODAY)
    assert screen.headline["patients"] and [entry[2] for entry in workspace._CLINIC_MODELS.values()] == [True]  # loaded
    assert saved.load_clinic(db, "PHQ-9", (0, 0, "another version")) is None


def hold_fit_lock(db, code: str = "PHQ-9") -> int:
    """What another process fitting the clinic model to save it (the import command) holds; closed to let go."""
    lock = saved._fit_lock(db, code)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def test_a_dashboard_process_waits_for_the_model_another_process_is_fitting_and_loads_it(db, monkeypatch):
    new_process()
    model_file = saved.clinic_file(db, "PHQ-9")
    aside = model_file.with_name("elsewhere")
    os.replace(model_file, aside)  # the import has committed and is fitting the model: not saved yet
    fd = hold_fit_lock(db)

    def import_saves_and_ends():
        time.sleep(0.5)
        os.replace(aside, model_file)
        os.close(fd)
    threading.Thread(target=import_saves_and_ends).start()

    def no_fit(*args, **kwargs):
        raise AssertionError("the model was fitted beside the process fitting it")
    monkeypatch.setattr(intervals, "fit_clinic_model", no_fit)
    model = workspace.clinic_model(DataAccess(db, SYSTEM), "PHQ-9", wait_for_others=True)  # (the background refresh)
    assert tuple(model.version) == tuple(DataAccess(db).data_version())
    assert [entry[2] for entry in workspace._CLINIC_MODELS.values()] == [True]  # loaded from the file


def test_a_dashboard_process_fits_the_model_itself_when_the_other_fit_takes_too_long(db, monkeypatch):
    new_process()
    saved.clinic_file(db, "PHQ-9").unlink()
    fd = hold_fit_lock(db)  # a fit that never ends (a process stopped, not killed)
    monkeypatch.setenv(saved.FIT_WAIT_ENV, "0.3")
    fitted = []

    class Fitted:
        version = ()

    def fit(*args, **kwargs):
        fitted.append(args[2] if len(args) > 2 else kwargs.get("version"))
        return Fitted()
    monkeypatch.setattr(intervals, "fit_clinic_model", fit)
    try:
        assert isinstance(workspace.clinic_model(DataAccess(db, SYSTEM), "PHQ-9", wait_for_others=True), Fitted)
    finally:
        os.close(fd)
    assert fitted == [tuple(DataAccess(db).data_version())]


def test_the_import_holds_the_fit_lock_while_it_fits_and_saves_the_model(db, tmp_path, monkeypatch):
    new_process()
    one_more_score(db, tmp_path)  # a new data version: its model is fitted
    real_fit, held = intervals.fit_clinic_model, []

    def fit(*args, **kwargs):
        fd = os.open(saved._fit_lock(db, "PHQ-9"), os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            held.append(False)
        except BlockingIOError:
            held.append(True)
        finally:
            os.close(fd)
        return real_fit(*args, **kwargs)
    monkeypatch.setattr(intervals, "fit_clinic_model", fit)
    assert workspace.fit_and_save_clinic_model(db)
    assert held == [True]
    assert saved.load_clinic(db, "PHQ-9", DataAccess(db).data_version()) is not None
    assert not saved.wait_for_clinic_fit(db, "PHQ-9", timeout=5)  # let go: nobody waits for it


def test_a_page_shown_while_its_tables_are_updated_reads_their_own_versions_model_and_fits_nothing(db, tmp_path,
                                                                                                  monkeypatch):
    new_process()
    cache = WorkspaceCache()
    first, _ = cohort_visit(cache, db)
    old = tuple(first.tables.version)
    assert tuple(first.clinic("PHQ-9").version) == old
    one_more_score(db, tmp_path)  # an import: the background refresh fits the new version's model
    real_fit, gate, fits = intervals.fit_clinic_model, threading.Event(), []

    def fit(*args, **kwargs):
        fits.append(threading.current_thread().name)
        gate.wait(10)  # a long fit: the pages run meanwhile
        return real_fit(*args, **kwargs)
    monkeypatch.setattr(intervals, "fit_clinic_model", fit)
    try:
        ws, screen = cohort_visit(cache, db)  # (a filtered selection's median and the disclosure read the model)
        site = cohort.cohort_choices(ws, "PHQ-9").subsets[1]
        filtered = cohort.cohort_page(ws, cohort.chosen_filters("PHQ-9", site), TODAY)
        assert ws.updating and tuple(ws.tables.version) == old and screen.headline["patients"]
        assert filtered.headline["patients"] and tuple(ws.clinic("PHQ-9").version) == old
        assert set(fits) <= {"workspace-refresh"}  # the page fitted nothing and waited for no fit
    finally:
        gate.set()
    current = updated_view(cache, db)
    assert fits == ["workspace-refresh"]
    assert tuple(current.clinic("PHQ-9").version) == tuple(DataAccess(db).data_version()) != old


def test_an_older_versions_file_is_served_as_being_updated_and_replaced_by_the_current_one(db, tmp_path):
    old_version = DataAccess(db).data_version()
    kept = saved.load(db, DIRECTOR.view_key)  # saved again from this file (the fixture's is a copy of another)
    saved.save(db, DIRECTOR.view_key, kept.version, kept.as_of, kept.tables, kept.memos)
    one_more_score(db, tmp_path)  # an import while no server ran
    cache = WorkspaceCache()
    ws, _ = cohort_visit(cache, db)
    assert ws.updating and ws.tables.version == old_version and ws.as_of == old_version[2]
    before = saved.view_file(db, DIRECTOR.view_key).stat().st_mtime_ns
    cache.save_due(quiet_s=0)  # an older version's tables are never saved again
    after = saved.load(db, DIRECTOR.view_key)
    # the file is the old one untouched, or the current version's when the background refresh has already
    # built and saved it (a fast refresh can finish first): never the old version written anew
    assert after.version == DataAccess(db).data_version() or (
        after.version == old_version and saved.view_file(db, DIRECTOR.view_key).stat().st_mtime_ns == before)
    deadline = time.monotonic() + 120
    while (current := cache.workspace(db, DIRECTOR)).updating and time.monotonic() < deadline:
        time.sleep(0.05)  # the background refresh builds the current version's tables
    assert not current.updating and current.tables.version == DataAccess(db).data_version() != old_version
    cache.save_due(quiet_s=0)  # (or the saver thread does: wait for the file)
    deadline = time.monotonic() + 60
    while saved.load(db, DIRECTOR.view_key).version != DataAccess(db).data_version():
        assert time.monotonic() < deadline, "the current version's tables were not saved"
        time.sleep(0.1)
    again = WorkspaceCache().workspace(db, DIRECTOR)
    assert not again.updating and again.tables.version == DataAccess(db).data_version()
    assert ("cohort_summary", "PHQ-9") in again.tables.keys()


def test_an_older_file_of_a_database_made_again_at_the_same_path_is_not_served(db, tmp_path):
    one_more_score(db, tmp_path)  # the version moves on, as in the older-version case above ...
    replacement = tmp_path / "again.duckdb"
    shutil.copy(db, replacement)
    os.replace(replacement, db)  # ... but the file is another one (deleted and made again, or restored)
    ws = WorkspaceCache().workspace(db, DIRECTOR)
    assert not ws.updating and ws.tables.version == DataAccess(db).data_version() and not len(ws.tables)


def test_a_file_of_a_newer_version_than_the_database_is_not_used(db):
    kept = saved.load(db, DIRECTOR.view_key)
    version = DataAccess(db).data_version()
    newer = (version[0] + 1, version[1] + 1, "2030-01-01 00:00:00")  # as after a restore from an older backup
    saved.save(db, DIRECTOR.view_key, newer, newer[2], kept.tables, kept.memos)
    assert saved.load(db, DIRECTOR.view_key).version == newer
    ws, _ = cohort_visit(WorkspaceCache(), db)
    assert not ws.updating and ws.tables.version == version and ("frames",) in ws.tables.keys()  # built anew


@pytest.mark.parametrize("damage", ["payload", "signature", "other code", "readable by others", "another view"])
def test_a_damaged_foreign_or_loose_file_is_never_loaded(db, damage, monkeypatch):
    path = saved.view_file(db, DIRECTOR.view_key)
    assert saved.load(db, DIRECTOR.view_key) is not None
    blob = bytearray(path.read_bytes())
    if damage == "payload":
        blob[-10] ^= 0x01
        path.write_bytes(bytes(blob))
    elif damage == "signature":
        start = len(saved.FORMAT)
        blob[start] = ord("0") if blob[start] != ord("0") else ord("1")
        path.write_bytes(bytes(blob))
    elif damage == "other code":
        monkeypatch.setattr(saved, "_FINGERPRINT", "f" * 64)
    elif damage == "readable by others":
        os.chmod(path, 0o644)
    else:  # the director's file put where a clinician's goes: the clinician never gets the director's tables
        clinician = Scope(user="dr_x", role="clinician", clinician="dr_x")
        os.replace(path, saved.view_file(db, clinician.view_key))
        assert saved.load(db, clinician.view_key) is None
    assert saved.load(db, DIRECTOR.view_key) is None
    if damage == "payload":
        ws, _ = cohort_visit(WorkspaceCache(), db)
        assert ("frames",) in ws.tables.keys()  # built again from the database


def test_saving_can_be_turned_off_and_postgres_tables_stay_on_local_disk(db, monkeypatch, tmp_path):
    monkeypatch.setenv(saved.SAVE_ENV, "0")
    assert saved.load(db, DIRECTOR.view_key) is None
    assert saved.save(tmp_path / "other.duckdb", DIRECTOR.view_key, (1, 1, "x"), None, {("t",): 1}, {}) is None
    assert not (tmp_path / "other.duckdb.tables").exists()
    monkeypatch.setenv(saved.DIR_ENV, str(tmp_path / "local"))
    where = saved.folder(Target("postgresql://clinic:s3cret@db.example/outcomes"))
    assert where.parent == tmp_path / "local" and "s3cret" not in str(where)


def test_an_idle_server_hands_memory_back_then_forgets_the_clinic_models(monkeypatch):
    calls = []
    monkeypatch.setattr(workspace.memory, "release_freed", lambda: calls.append("trim"))
    monkeypatch.setattr(workspace.intervals, "forget_fits", lambda: calls.append("models"))
    cache = WorkspaceCache(idle_seconds=600)
    # a whole second past each threshold: (start + 600) - start can come out a hair under 600 in floating point
    # (it did with the monotonic clock at 3584.77 s: the machine an hour up)
    start = cache._active
    assert cache.release_when_idle(start + 10) == 0 and calls == []  # busy: nothing
    assert cache.release_when_idle(start + workspace.RELEASE_AFTER_S + 1) == 1 and calls == ["trim"]
    assert cache.release_when_idle(start + 300) == 1 and calls == ["trim"]  # once per idle spell
    assert cache.release_when_idle(start + 601) == 2 and calls == ["trim", "models", "trim"]


def test_a_forgotten_view_lets_go_of_its_tables_even_if_a_finished_page_still_holds_them(db):
    cache = WorkspaceCache(idle_seconds=3600)
    held, _ = cohort_visit(cache, db)  # as a finished page run's globals hold its workspace
    for view in cache._views.values():
        view.last_used -= 7200  # unused for two hours
    assert len(held.tables) and cache.forget_idle() == 1
    assert len(held.tables) == 0 and not held.tables._memos
    again, _ = cohort_visit(cache, db)  # the next visit loads the view from its file
    assert again.tables is not held.tables and len(again.tables)



def test_a_clinic_model_of_a_database_gone_since_does_not_stop_the_others_being_saved(db, monkeypatch, tmp_path):
    """A server process keeps the clinic models of every database it served; one that can no longer be read
    (deleted, a PostgreSQL database dropped) is skipped, and the next database's model is still saved."""
    class Fitted:
        _fitted = True
    gone = copy_db(db, tmp_path / "gone.duckdb")
    version = DataAccess(db).data_version()
    for suffix in ("", ".wal"):
        Path(f"{gone}{suffix}").unlink(missing_ok=True)
    saves = []
    monkeypatch.setattr(saved, "save_clinic", lambda where, code, v, model: saves.append(where) or True)
    monkeypatch.setattr(workspace, "_CLINIC_MODELS", {(str(gone), version, "PHQ-9"): [gone, Fitted(), False],
                                                      (str(db), version, "PHQ-9"): [db, Fitted(), False]})
    assert workspace.save_clinic_models() == 1 and saves == [db]


def test_a_model_waiting_to_be_saved_is_let_go_once_the_cache_of_fits_forgets_it(db, monkeypatch):
    """The list of models to save refers to them weakly: after intervals.forget_fits (the benchmark; a server's
    idle release) nothing keeps a forgotten fit's course and cycles in memory, and nothing is saved for it."""
    class Model:
        _fitted = None
    cache_of_fits = []
    monkeypatch.setattr(intervals, "clinic_model",
                        lambda data, code, rules, kept=None: cache_of_fits.append(Model()) or cache_of_fits[-1])
    monkeypatch.setattr(workspace, "_CLINIC_MODELS", {})
    model = workspace.clinic_model(DataAccess(db), "PHQ-9")
    model._fitted = ("fitted", "")
    held = weakref.ref(model)
    del model
    assert held() is not None  # still in the cache of fits
    cache_of_fits.clear()
    gc.collect()
    assert held() is None and workspace.save_clinic_models() == 0


def test_a_model_that_cannot_be_built_in_the_background_does_not_hold_the_new_tables_back(db, tmp_path, monkeypatch,
                                                                                         capsys):
    new_process()
    cache = WorkspaceCache()
    first, _ = cohort_visit(cache, db)
    old = tuple(first.tables.version)
    first.clinic("PHQ-9")  # held: the background refresh builds the new version's model too
    one_more_score(db, tmp_path)

    def broken(*args, **kwargs):
        raise RuntimeError("a fit that fails")
    monkeypatch.setattr(intervals, "fit_clinic_model", broken)
    cohort_visit(cache, db)
    current = updated_view(cache, db)
    assert tuple(current.tables.version) == tuple(DataAccess(db).data_version()) != old
    assert "background fit of the clinic model failed (RuntimeError)" in capsys.readouterr().err


def test_the_new_versions_model_is_built_before_the_swap_even_if_no_page_asked_this_process_for_the_old_one(
        db, tmp_path, monkeypatch):
    new_process()
    cache = WorkspaceCache()
    cohort_visit(cache, db)
    intervals.forget_fits()  # as after a restart whose pages were served from their file: no model held here
    one_more_score(db, tmp_path)
    real_fit, fits = intervals.fit_clinic_model, []

    def fit(*args, **kwargs):
        fits.append(threading.current_thread().name)
        return real_fit(*args, **kwargs)
    monkeypatch.setattr(intervals, "fit_clinic_model", fit)
    assert cache.workspace(db, DIRECTOR).updating  # a page run starts the refresh (and asks for no model)
    current = updated_view(cache, db)
    assert fits == ["workspace-refresh"]
    screen = cohort.cohort_page(current, cohort.chosen_filters("PHQ-9", cohort.cohort_choices(current, "PHQ-9").subsets[1]),
                                TODAY)  # the first page run on the new tables: the model is there
    assert screen.headline["patients"] and fits == ["workspace-refresh"]


def test_a_clinic_file_of_another_version_is_turned_away_from_its_header_without_reading_it_all(db, monkeypatch):
    version = tuple(DataAccess(db).data_version())
    assert saved.load_clinic(db, "PHQ-9", version) is not None  # this version's file: read and verified whole

    def whole_read(*args, **kwargs):
        raise AssertionError("the whole file was read for another version")
    monkeypatch.setattr(saved, "_read", whole_read)
    assert saved.load_clinic(db, "PHQ-9", (0, 0, "another version")) is None


def no_building(monkeypatch) -> list[str]:
    """The cohort-wide tables' builders, made to record any call; the list of what was built."""
    built: list[str] = []
    for module, name in [(workspace, "cohort_cycles"), (cohort, "cohort_base"), (cohort, "induction_outcomes")]:
        real = getattr(module, name)

        def recording(*args, _real=real, _name=name, **kwargs):
            built.append(_name)
            return _real(*args, **kwargs)
        monkeypatch.setattr(module, name, recording)
    return built


def test_a_process_updating_a_view_another_process_updated_loads_its_tables_and_builds_nothing(db, tmp_path,
                                                                                                 monkeypatch):
    new_process()
    first, second = WorkspaceCache(), WorkspaceCache()  # two dashboard processes, a director signed in on each
    cohort_visit(first, db)
    cohort_visit(second, db)
    one_more_score(db, tmp_path)  # an import: both find the director's view out of date
    built = no_building(monkeypatch)
    cohort_visit(second, db)
    by_second = updated_view(second, db)
    assert built and tuple(by_second.tables.version) == tuple(DataAccess(db).data_version())
    assert saved.saved_for(db, DIRECTOR.view_key, by_second.tables.version)  # saved at once, not after a quiet spell
    built.clear()
    cohort_visit(first, db)
    by_first = updated_view(first, db)
    assert built == [] and tuple(by_first.tables.version) == tuple(by_second.tables.version)
    _, shown_first = cohort_visit(first, db)
    _, shown_second = cohort_visit(second, db)
    assert shown_first.headline["response"].text() == shown_second.headline["response"].text()
    assert shown_first.waterfall_bars.equals(shown_second.waterfall_bars) and built == []


def test_a_process_waits_for_the_view_another_process_is_building_and_puts_it_after_its_other_views(db, tmp_path,
                                                                                                     monkeypatch):
    new_process()
    other, cache = WorkspaceCache(), WorkspaceCache()  # two dashboard processes
    cohort_visit(other, db)
    cohort_visit(cache, db)
    clinician = Scope(user="dr_x", role="clinician", clinician=DataAccess(db).patients()["clinician"].iloc[0])
    cache.workspace(db, clinician).frames()
    one_more_score(db, tmp_path)
    cohort_visit(other, db)
    other_view = updated_view(other, db)  # built and saved by the other process...
    view_file = saved.view_file(db, DIRECTOR.view_key)
    aside = view_file.with_name("not yet")
    os.replace(view_file, aside)
    lock = os.open(saved._view_lock(db, DIRECTOR.view_key), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)  # ...which, for this process, is still building it
    order: list[str] = []
    real_refresh = WorkspaceCache._refresh

    def refresh(self, key, scope, *args, **kwargs):
        done = real_refresh(self, key, scope, *args, **kwargs)
        order.append(f"{scope.role}:{'done' if done else 'put off'}")
        return done
    monkeypatch.setattr(WorkspaceCache, "_refresh", refresh)
    start = cache._start_refresher
    monkeypatch.setattr(cache, "_start_refresher", lambda: None)
    assert cache.workspace(db, clinician).updating
    assert cache.workspace(db, DIRECTOR).updating  # the most recently used: due first
    with cache._guard:
        start()
    deadline = time.monotonic() + 60
    while len(order) < 2:
        assert time.monotonic() < deadline, order
        time.sleep(0.05)
    assert order == ["director:put off", "clinician:done"]  # waiting for it held no other view back
    built = no_building(monkeypatch)
    time.sleep(0.5)
    assert cache.workspace(db, DIRECTOR).updating  # still waiting for the other process
    os.replace(aside, view_file)
    os.close(lock)  # the other process has saved its file and lets go
    current = updated_view(cache, db)
    deadline = time.monotonic() + 60
    while len(order) < 3:  # (the view is swapped in inside the refresh, before it returns)
        assert time.monotonic() < deadline, order
        time.sleep(0.05)
    assert built == [] and order == ["director:put off", "clinician:done", "director:done"]
    assert tuple(current.tables.version) == tuple(other_view.tables.version) == tuple(DataAccess(db).data_version())


def test_the_cohort_screen_a_director_saw_is_built_again_in_the_background_before_the_swap(db, tmp_path, monkeypatch):
    new_process()
    cache = WorkspaceCache()
    ws, _ = cohort_visit(cache, db)
    filters = [key[1] for key in ws.tables.memo_keys() if key[0] == "cohort_screen"]
    assert filters
    ws.memo(("funnel", filters[0], TODAY, "site", "responded"),
            lambda: cohort.cohort_page(ws, filters[0], TODAY).funnel("site", "responded"))
    one_more_score(db, tmp_path)
    built: list[str] = []
    real_screen = cohort.cohort_screen

    def screen(*args, **kwargs):
        built.append(threading.current_thread().name)
        return real_screen(*args, **kwargs)
    monkeypatch.setattr(cohort, "cohort_screen", screen)
    cache.workspace(db, DIRECTOR)  # a page run finds the view out of date: the refresh starts
    current = updated_view(cache, db)
    assert built == ["workspace-refresh"]  # built before the swap, in the background
    assert ("funnel", filters[0], TODAY, "site", "responded") in current.tables.memo_keys()
    _, shown = cohort_visit(cache, db)  # the first page run on the new tables builds nothing
    assert built == ["workspace-refresh"] and shown.headline["patients"]
