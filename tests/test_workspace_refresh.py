"""After a write, every view's tables are built again for the new data version in the background while the
previous version's are served (analytics/screens/workspace.py). The builds share the process with the page
runs: one thread builds them one view at a time, the most recently used view first, so an import does not
set one build per signed-in view against the pages at once."""
from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest

from analytics import ingest
from analytics.access import DataAccess, Scope
from analytics.screens import workspace
from analytics.screens.workspace import WorkspaceCache

PROBE = "refresh-probe"  # a table of this test's own, built by its registered warmer


class Probe:
    """Records every build of the probe table: the view, the thread, and how many builds overlapped."""

    def __init__(self, seconds: float):
        self.seconds, self.guard = seconds, threading.Lock()
        self.gate = threading.Event()  # a build waits for it (set: no wait)
        self.gate.set()
        self.started = threading.Event()  # set once a build has begun
        self.running = self.most_at_once = 0
        self.built: list[tuple] = []  # (view key, data version, thread name), in order of start

    def build(self, ws) -> str:
        with self.guard:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
            self.built.append((ws.data.scope.view_key, tuple(ws.tables.version), threading.current_thread().name))
        self.started.set()
        try:
            self.gate.wait(30)
            time.sleep(self.seconds)  # a build long enough for builds started together to overlap
            return "built"
        finally:
            with self.guard:
                self.running -= 1


@pytest.fixture()
def probe(monkeypatch):
    found = Probe(0.2)
    monkeypatch.setitem(workspace._WARMERS, PROBE, lambda ws, key: ws.once(key, lambda: found.build(ws)))
    return found


def clinicians(n: int) -> list[Scope]:
    return [Scope(user=f"clinician-{i}", role="clinician", clinician=f"dr-{i}") for i in range(n)]


def settle(cache: WorkspaceCache) -> None:
    """Wait until the background builds are done (without a page run, which would change the order of use)."""
    deadline = time.monotonic() + 60
    while cache._refresher is not None:
        assert time.monotonic() < deadline, "the views were not built again"
        time.sleep(0.02)


def one_more_score(db: Path, tmp_path: Path) -> None:
    patient = DataAccess(db).patients()["patient_id"].iloc[0]
    csv = tmp_path / "one.csv"
    csv.write_text("patient_id,instrument,administered_on,rater,item_1,item_2,item_3,item_4,item_5,item_6,item_7,"
                   f"item_8,item_9\n{patient},PHQ-9,2026-11-20,self,0,0,0,0,0,0,0,0,0\n")
    assert ingest.import_files([csv], db=db).error is None


def test_after_an_import_the_views_are_built_again_one_at_a_time_most_recently_used_first(demo_db, tmp_path, probe):
    db = shutil.copy(demo_db, tmp_path / "clinic.duckdb")
    cache, scopes = WorkspaceCache(), clinicians(5)
    for scope in scopes:
        cache.workspace(db, scope).once((PROBE,), lambda: "first version")  # every view has its tables
    old = tuple(DataAccess(db).data_version())
    one_more_score(db, tmp_path)
    new = tuple(DataAccess(db).data_version())
    assert new != old

    # the page runs after the import, the last scope's first: each is served the previous tables at once
    probe.gate.clear()  # the first view's build waits until every view is due
    for scope in reversed(scopes):
        ws = cache.workspace(db, scope)
        assert ws.updating and ws.tables.version == old and ws.once((PROBE,), lambda: "not built") == "first version"
        assert probe.started.wait(30)  # (the first view's build has begun: the others wait for it)
    probe.gate.set()
    settle(cache)  # and the thread ends with the last due view

    assert probe.most_at_once == 1  # one build at a time, however many views were out of date
    assert len({name for _, _, name in probe.built}) == 1
    # the first page run's view at once, then the others, the most recently used first
    order = [scopes[-1]] + scopes[:-1]
    assert [(key, version) for key, version, _ in probe.built] == [(s.view_key, new) for s in order]
    for scope in scopes:
        ws = cache.workspace(db, scope)
        assert not ws.updating and ws.tables.version == new and ws.once((PROBE,), lambda: "not built") == "built"


def test_a_view_out_of_date_twice_is_built_once_for_the_newest_version(demo_db, tmp_path, probe):
    db = shutil.copy(demo_db, tmp_path / "clinic.duckdb")
    cache, scopes = WorkspaceCache(), clinicians(3)
    for scope in scopes:
        cache.workspace(db, scope).once((PROBE,), lambda: "first version")
    probe.gate.clear()
    one_more_score(db, tmp_path)
    for scope in scopes:
        cache.workspace(db, scope)  # all three due; the first starts building at once (and waits at the gate)
        assert probe.started.wait(30)
    one_more_score(db, tmp_path)  # a second import while the first view's build runs
    newest = tuple(DataAccess(db).data_version())
    for scope in scopes:
        cache.workspace(db, scope)
    probe.gate.set()
    settle(cache)
    assert all(cache.workspace(db, s).tables.version == newest for s in scopes)
    assert probe.most_at_once == 1
    per_view = {}
    for key, version, _ in probe.built:
        per_view.setdefault(key, []).append(version)
    # the view being built when the second import came is built again; the others once, for the newest version
    first, *others = scopes
    assert len(per_view[first.view_key]) == 2 and per_view[first.view_key][-1] == newest
    assert all(per_view[s.view_key] == [newest] for s in others)
