"""One scope's view of one version of the data, and the cohort-wide tables every screen starts from.

A `Workspace` is what a screen function gets: `data` (the signed-in user's `DataAccess`: record
views, searches and downloads are audited as that user) and the tables built for what that user
can see (`Tables`): the four frames, each instrument's durability cycles (`cohort_cycles`) and
interval suggestions (`interval_suggestions`), and whatever a screen memoises through `once`.
Tables are built at most once, on first use, and shared read-only. The durability model and the
interval suggestions are not the view's own: they come from the whole clinic's one fit per data
version (intervals.clinic_model, read with the system scope), of which a workspace shows only its
own patients' rows, so every viewer gets the same answer for a patient.

`WorkspaceCache` (one per process, `WORKSPACES`) keeps the tables per database and *view*
(`Scope.view_key`: role, caseload, grants, thresholds; not the user's name, so two directors share
one copy) and per data version:

- a page run asks for the current version's tables (`workspace(db, scope)`): a stat or two
  (`DataAccess.data_version`), no database read while nothing was written;
- when the version has moved on (an import, a recorded visit) and the previous version's tables
  exist, they are served at once, marked `updating` with their `as_of`, while a background thread
  builds the same tables for the new version (the screens register how: `register_warmer`), then
  replaces them: nobody's page run pays for the recomputation, and the page says the figures are
  those of the previous import;
- a view's tables are saved beside the database a few seconds after the last one was built
  (analytics/screens/saved.py: per view, signed, keyed by the data version and the code), and the
  first visit after a start loads them instead of building: a restarted server answers at once. A
  file of an older version (an import ran while no server did) is served like the previous
  version's tables above, marked as being updated, while the current ones are built;
- with nothing to serve (no file: the first visit ever to this version), the page builds what it
  needs itself;
- a view unused for `idle_seconds` (OUTCOMES_CACHE_IDLE_MINUTES, default 2) is forgotten; its next
  visit loads it from its file again (well under a second at 10,000 patients);
- once no page has asked for a workspace for `RELEASE_AFTER_S`, the process collects its garbage and
  hands freed memory back to the system (analytics.memory), and after `idle_seconds` it also forgets
  the clinic models (loaded again from their files when needed): a server idle after a busy hour
  does not keep that hour's peak.

The benchmark and the tests make their own workspaces (`Workspace(DataAccess(...))`).
"""
from __future__ import annotations

import gc
import os
import sys
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from datetime import date
from typing import Callable, TypeVar

import numpy as np
import pandas as pd

from .. import course, intervals, memory, scales, store
from ..permissions import may
from ..access import ASSESSMENT_ORDER, SYSTEM, DataAccess, Scope
from ..access import assessment_columns as access_columns
from ..outcomes import DEFAULT_RULES, OutcomeRules
from . import saved

T = TypeVar("T")
MAX_TABLES = 64  # a workspace forgets its least recently used table beyond this (durability by many subgroups...)
MAX_MEMOS = 256  # and its least recently used small result (charts, patient screens) beyond this
SAVE_AFTER_QUIET_S = 2.0  # a view's tables are saved once nothing was added to them for this long
RELEASE_AFTER_S = 60.0  # with no page run for this long, garbage is collected and freed memory handed back


class Tables:
    """The tables built for one view of one data version; each built once, then shared read-only.

    Two kinds: cohort-wide tables (`once`: frames, cycles, summaries; kept while the view is, at most
    MAX_TABLES) and small per-request results (`memo`: a chart, one patient's screen, the due list for
    one set of open flags; the least recently used beyond MAX_MEMOS are forgotten first), so a
    clinician browsing many patients never pushes the cohort's tables out.
    """

    def __init__(self, version: tuple = (), as_of: str | None = None):
        self.version = version
        self.as_of = as_of  # when the data of `version` were last imported (DataAccess.data_version's third part)
        self._tables: OrderedDict = OrderedDict()
        self._memos: OrderedDict = OrderedDict()
        self._building: dict = {}
        self._guard = threading.Lock()
        self.changed = 0.0  # when a table worth saving was last added (time.monotonic)
        self.saved_mark = 0.0  # `changed` as of the last save (or load): equal means nothing new to save
        self.restored_older = False  # loaded from a file of an older data version: served while updating, never saved

    @classmethod
    def restored(cls, kept: saved.Saved, older: bool = False) -> "Tables":
        tables = cls(kept.version, kept.as_of)
        tables._tables.update(kept.tables)
        tables._memos.update(kept.memos)
        tables.restored_older = older
        return tables

    def to_save(self) -> tuple[dict, dict]:
        """The tables and memos a file keeps (saved.py: not the frames; only the aggregate memos)."""
        with self._guard:
            return ({k: v for k, v in self._tables.items() if k[0] not in saved.NOT_SAVED},
                    {k: v for k, v in self._memos.items() if saved.saved_memo(k)})

    def once(self, key: tuple, build: Callable[[], T]) -> T:
        """The table called `key`, built by `build()` the first time it is asked for (once, whoever asks)."""
        return self._get(self._tables, MAX_TABLES, key, build)

    def memo(self, key: tuple, build: Callable[[], T]) -> T:
        """Like `once`, for a small result that may be forgotten (and built again) when many others follow."""
        return self._get(self._memos, MAX_MEMOS, ("memo", *key), build)

    def _get(self, store: OrderedDict, limit: int, key: tuple, build: Callable[[], T]) -> T:
        with self._guard:
            if key in store:
                store.move_to_end(key)
                return store[key]
            lock = self._building.setdefault(key, threading.Lock())
        with lock:
            with self._guard:
                if key in store:
                    return store[key]
            value = build()
            with self._guard:
                store[key] = value
                self._building.pop(key, None)
                while len(store) > limit:
                    store.popitem(last=False)
                if (key[0] not in saved.NOT_SAVED) if store is self._tables else saved.saved_memo(key):
                    self.changed = time.monotonic()
            return value

    def peek(self, key: tuple):
        """The table called `key` if it is built, else None (nothing is built)."""
        with self._guard:
            return self._tables.get(key)

    def drop(self) -> None:
        """Let go of every table and memo: whoever still holds these tables (a finished page run's globals,
        which Streamlit keeps until that session's next run) no longer keeps their memory."""
        with self._guard:
            self._tables.clear()
            self._memos.clear()

    def keys(self) -> list[tuple]:
        """The cohort-wide tables' keys, oldest first (what a refresh for a new version builds again)."""
        with self._guard:
            return list(self._tables)

    def memo_keys(self) -> list[tuple]:
        """The memos' keys as `memo` was asked for them (without its "memo" mark), least recently used first."""
        with self._guard:
            return [key[1:] for key in self._memos]

    def __len__(self) -> int:
        return len(self._tables)


# The workspace's assessments frame: what the cohort-wide screens read of it (the course and cycles, the cohort
# summaries, the due list and self-reports, the data checks), without the row ids and the items other than
# each scale's safety item (100,000 patients: 4.7 M rows; the ids and the other items were ~150 MB).
def frame_assessment_columns() -> list[str]:
    safety = {s.safety_column for s in scales.SCALES.values() if s.safety_column}
    return [c for c in access_columns() if c in
            ("patient_id", "instrument", "administered_at", "has_time", "rater", "total", "total_method") or c in safety]


# Labels repeated on every assessment row, kept as categoricals (an int8 code a row instead of a string:
# ~180 MB less at 100,000 patients). Every reader compares them with a value, `isin`s or lower-cases them.
LABEL_COLUMNS = ("instrument", "rater", "total_method")


labels_as_categories = course.labels_as_categories  # `columns` of a frame as categoricals of their sorted values


# The cycle table's text, repeated on every cycle (how it ended, its phase, route and start, the instrument, each
# patient's covariates: site, clinician, diagnosis, sex, baseline band, text attributes), as categoricals of their
# sorted values: at 100,000 patients ~1.1 M cycles, ~190 MB of Arrow text in ~15 MB of codes, in the workspace's
# table and in every fresh one beside it. The patient id stays text (joined, searched and listed by id). Readers
# compare, `isin`, `map`, `astype(str)`, group (observed groups: pandas 3's default) or factorize them; the
# patient screen shows its few rows as text again (`categories_as_text`).
def cycle_labels_as_categories(cycles: pd.DataFrame) -> None:
    """The cycle table's text columns but the patient id (see above) as categoricals, in place; an empty
    table keeps the column types it had."""
    if len(cycles):
        labels_as_categories(cycles, [name for name in cycles.columns if name != "patient_id"
                                      and isinstance(cycles[name].dtype, pd.StringDtype)])


def categories_as_text(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with its categorical columns of text as text of the categories' own type (what they were
    before `labels_as_categories`): a few rows shown or downloaded as they always were."""
    names = [name for name, dtype in frame.dtypes.items()
             if isinstance(dtype, pd.CategoricalDtype) and isinstance(dtype.categories.dtype, pd.StringDtype)]
    if not names:
        return frame
    frame = frame.copy()
    for name in names:
        frame[name] = frame[name].astype(frame[name].dtype.categories.dtype)
    return frame


class Workspace:
    def __init__(self, data: DataAccess, tables: Tables | None = None, *, updating: bool = False,
                 background: bool = False):
        self.data = data
        self.tables = tables if tables is not None else Tables()
        self.updating = updating  # a newer data version exists; these tables are the previous one's
        self.background = background  # built by the background refresh, not for a page run

    @property
    def as_of(self) -> str | None:
        """When the data these tables were built from were last imported (None: unknown)."""
        return self.tables.as_of

    def once(self, key: tuple, build: Callable[[], T]) -> T:
        """The table called `key`, built by `build()` the first time it is asked for."""
        return self.tables.once(key, build)

    def memo(self, key: tuple, build: Callable[[], T]) -> T:
        """A small result (a chart, one patient's screen) built once for these tables and `key`; may be forgotten."""
        return self.tables.memo(key, build)

    def frames(self) -> dict[str, pd.DataFrame]:
        """patients, treatments, assessments and attributes of every patient the scope may compute with.
        The assessments have the columns the cohort-wide screens read (`frame_assessment_columns`), their
        repeated labels as categoricals (`LABEL_COLUMNS`); one patient's whole record is read apart
        (DataAccess.patient_record)."""
        def read() -> dict[str, pd.DataFrame]:
            whole = sees_whole_clinic(self.data.scope)
            version = (self.tables.version or tuple(self.data.data_version())) if whole else None
            assessments = self.data.assessments(columns=frame_assessment_columns())
            labels_as_categories(assessments, LABEL_COLUMNS)
            memory.release_freed()  # each label column's text, let go
            frames = {"patients": self.data.patients(), "treatments": self.data.treatments(),
                      "assessments": assessments, "attributes": self.data.attributes()}
            if whole:
                _hold_whole_clinic(self.data.db, version, self.tables)
            return frames
        return self.once(("frames",), read)

    def cycles(self, instrument: str = scales.PRIMARY) -> pd.DataFrame:
        code = scales.get(instrument).code

        def build():
            f = self.frames()
            # only the columns the cycles and the induction ends read: the whole course is twice that
            built = course.build_course(f["treatments"], f["assessments"], code, DEFAULT_RULES,
                                        columns=course.CYCLE_COLUMNS_READ)
            # The cohort page's induction outcomes start from the same course: keep what they need of it.
            self.once(("induction_ends", code), lambda: induction_ends(built))
            cycles = cohort_cycles(f["patients"], f["treatments"], f["assessments"], code, attributes=f["attributes"],
                                   built=built)
            del built
            memory.release_freed()  # the course, kept by nobody now: heap pieces glibc would keep resident
            return cycles
        return self.once(("cycles", code), build)

    def induction_ends(self, instrument: str = scales.PRIMARY) -> pd.DataFrame:
        """`induction_ends` of the instrument's course (kept when its cycles were built, else built here)."""
        code = scales.get(instrument).code

        def build():
            f = self.frames()
            return induction_ends(course.build_course(f["treatments"], f["assessments"], code, DEFAULT_RULES))
        return self.once(("induction_ends", code), build)

    def clinic(self, instrument: str = scales.PRIMARY) -> intervals.ClinicModel:
        """The whole clinic's cycles and durability model of this data version (one fit per process
        and data version, shared by every view; its aggregate parameters identify no one). Loaded
        from the saved tables when a server fitted it before; saved once fitted (saved.py).

        Tables of the previous version (`updating`) are read with the model they were built with while this
        process holds it (or its file is still that version's): a page is not held up fitting, or waiting for,
        the new version's model that the background refresh is about to build, and its figures stay those of
        one version. The background refresh waits for another process's fit of the same model (an import's)
        instead of fitting it beside; a page run never waits for another process."""
        code = scales.get(instrument).code
        if self.updating:
            db, version = self.data.db, tuple(self.tables.version)
            held = intervals.held_clinic_model(db, version, code, DEFAULT_RULES,
                                               kept=lambda: saved.load_clinic(db, code, version))
            if held is not None:
                return held
        return clinic_model(self.clinic_data(), code, wait_for_others=self.background)

    def clinic_data(self) -> DataAccess:
        """The whole clinic's rows, for the one model only: nothing of it is shown beyond this view's rows."""
        return DataAccess(self.data.db, SYSTEM)

    def suggestions(self, instrument: str = scales.PRIMARY, today: date | None = None) -> pd.DataFrame:
        """This view's patients' rows of the clinic's suggestions as of `today` (default: today)."""
        today = today or date.today()

        def build() -> pd.DataFrame:
            self.clinic(instrument)  # a saved fit of this version, loaded before the suggestions ask for one
            return interval_suggestions(self.clinic_data(), self.frames()["patients"]["patient_id"], instrument,
                                        today=today)
        return self.once(("suggestions", scales.get(instrument).code, today), build)


def sees_whole_clinic(scope: Scope) -> bool:
    """Does a view of this scope read exactly the system scope's rows (every patient, every attribute)?"""
    return may(scope, "compute_over_all_patients") and scope.identifiable


# Tables whose frames are the whole clinic's rows (a view that sees the whole clinic), per (database, data
# version). The clinic's model (intervals.clinic_model) takes its rows from them, and the cycle table when it
# is built, instead of reading and building the same again beside them (100,000 patients: the model's reads,
# ~0.3 GB, and its own cycle table, ~0.3 GB). Weak references: nothing here keeps a view's tables alive.
_WHOLE_CLINIC: dict[tuple, weakref.ref] = {}


def _hold_whole_clinic(db, version: tuple, tables: "Tables") -> None:
    with _CLINIC_GUARD:
        for key in [k for k, ref in _WHOLE_CLINIC.items() if ref() is None]:
            del _WHOLE_CLINIC[key]
        _WHOLE_CLINIC[(str(db), tuple(version))] = weakref.ref(tables)


class HeldClinicData:
    """The system scope's reads of the whole clinic (what intervals.clinic_model asks a DataAccess for),
    served from a view's frames of the same data version that hold exactly those rows; anything they do not
    hold (one patient's rows, an item column) is read. `held_cycles`: that view's cycle table of an
    instrument, if built with the default rules (the one the model would build: course.cycles_from_course of
    the same rows, plus `length_days`)."""

    def __init__(self, data: DataAccess, tables: Tables, frames: dict[str, pd.DataFrame]):
        self.db, self.scope = data.db, data.scope
        self._data, self._tables, self._frames = data, tables, frames

    def data_version(self) -> tuple:
        return self._data.data_version()

    def patients(self) -> pd.DataFrame:
        return self._frames["patients"]

    def treatments(self, patient_ids=None) -> pd.DataFrame:
        return self._frames["treatments"] if patient_ids is None else self._data.treatments(patient_ids)

    def attributes(self) -> pd.DataFrame:
        return self._frames["attributes"]

    def assessments(self, patient_ids=None, instrument: str | None = None, columns=None) -> pd.DataFrame:
        held = self._frames["assessments"]
        names = [c for c in access_columns() if columns is None or c in columns or c in ASSESSMENT_ORDER]
        if patient_ids is not None or not set(names) <= set(held.columns):
            return self._data.assessments(patient_ids, instrument, columns)
        if instrument is None:
            return held[names]
        rows = (held["instrument"] == scales.get(instrument).code).to_numpy(dtype=bool)
        return held.loc[rows, names].reset_index(drop=True)

    def last_assessed(self) -> pd.Series:
        a = self._frames["assessments"]
        return a.groupby("patient_id", sort=True)["administered_at"].max()

    def held_cycles(self, instrument: str, rules: OutcomeRules) -> pd.DataFrame | None:
        if rules != DEFAULT_RULES:
            return None
        return self._tables.peek(("cycles", scales.get(instrument).code))


def whole_clinic_data(clinic_data):
    """`clinic_data` (a system-scope DataAccess), or a HeldClinicData over a view's frames of its database and
    current data version when a view that sees the whole clinic holds them."""
    if not isinstance(clinic_data, DataAccess) or not sees_whole_clinic(clinic_data.scope):
        return clinic_data
    with _CLINIC_GUARD:
        ref = _WHOLE_CLINIC.get((str(clinic_data.db), tuple(clinic_data.data_version())))
    tables = ref() if ref is not None else None
    frames = tables.peek(("frames",)) if tables is not None else None
    return clinic_data if frames is None else HeldClinicData(clinic_data, tables, frames)


# The clinic models this process fitted or loaded, until saved: (database, version, instrument) -> [db, model, saved].
# The model is held weakly (a weakref.ref): intervals' cache of fits is what keeps a model; once that lets it
# go (forget_fits, or four newer fits) this list must not keep it, nor its course and cycles (~0.7 GB at
# 100,000 patients), alive in a process that never saves (the benchmark, saving turned off).
_CLINIC_MODELS: dict[tuple, list] = {}
_CLINIC_GUARD = threading.Lock()


def clinic_model(clinic_data: DataAccess, code: str, wait_for_others: bool = False) -> intervals.ClinicModel:
    """intervals.clinic_model, from this version's saved fit when there is one; remembered to be saved once fitted.
    `wait_for_others`: when another process is fitting it to save it (an import), wait for its file
    (saved.wait_for_clinic_fit) before fitting it here; only the background refresh waits, never a page run."""
    version = tuple(clinic_data.data_version())
    loaded = []

    def kept():
        found = saved.load_clinic(clinic_data.db, code, version)
        if found is None and wait_for_others:  # another process (an import) may be fitting it: its file once done
            saved.wait_for_clinic_fit(clinic_data.db, code)
            found = saved.load_clinic(clinic_data.db, code, version)
        loaded.append(found)
        return found
    model = intervals.clinic_model(whole_clinic_data(clinic_data), code, DEFAULT_RULES, kept=kept)
    with _CLINIC_GUARD:
        key = (str(clinic_data.db), version, code)
        if key not in _CLINIC_MODELS:
            # a model loaded from its file is saved already; one fitted here is saved once its fit is done
            done = any(m is model for m in loaded)
            _CLINIC_MODELS[key] = [clinic_data.db, None if done else weakref.ref(model), done]
            while len(_CLINIC_MODELS) > 8:
                del _CLINIC_MODELS[next(iter(_CLINIC_MODELS))]
    return model


def save_clinic_models() -> int:
    """Save every clinic model fitted since the last call, if its data version is still the current one."""
    with _CLINIC_GUARD:
        due = [(key, entry, model) for key, entry in _CLINIC_MODELS.items()
               if not entry[2] and (model := _held(entry[1])) is not None and getattr(model, "_fitted", None) is not None]
    done = 0
    for (_, version, code), entry, model in due:
        entry[1], entry[2] = None, True  # kept only until saved: the cache of intervals holds it
        try:
            current = DataAccess(entry[0], SYSTEM).data_version() == version
        except Exception:  # noqa: BLE001 - a database gone or unreachable now: its model is fitted again when needed
            continue
        if current and saved.save_clinic(entry[0], code, version, model):
            done += 1
    return done


def _held(model):
    """The model an entry of _CLINIC_MODELS refers to (a weak reference, or the model itself), or None if gone."""
    return model() if isinstance(model, weakref.ref) else model


def fit_and_save_clinic_model(db, instrument: str = scales.PRIMARY) -> bool:
    """Fit the whole clinic's model of the database's current data version and save it beside the
    database, as a server does once it has fitted one (saved.py): `python -m analytics import` calls
    this after its commit, so the first visit after an import loads the model instead of fitting it.
    True when a file was written."""
    if not saved.enabled():
        return False
    code = scales.get(instrument).code
    with saved.fitting_clinic(db, code):  # the dashboard's processes wait for this file instead of fitting beside
        clinic_model(DataAccess(db, SYSTEM), code).model  # noqa: B018 - the fit
        return save_clinic_models() > 0


# How to build a table again for a new data version: the first element of its key -> warmer(ws, key).
_WARMERS: dict[str, Callable[[Workspace, tuple], object]] = {
    "frames": lambda ws, key: ws.frames(),
    "cycles": lambda ws, key: ws.cycles(key[1]),
    "suggestions": lambda ws, key: ws.suggestions(key[1], key[2]),
}


def register_warmer(name: str, warm: Callable[[Workspace, tuple], object]) -> None:
    """Let the background refresh rebuild tables whose key starts with `name` (a screen's own tables)."""
    _WARMERS[name] = warm


# Memos the background refresh builds again for the new tables (the most recently used MEMOS_WARMED of each kind
# the old tables had): what every director's first page run after an import would otherwise build, while the
# others' runs of the same page waited for it (docs/performance.md, wave 9). kind -> warmer(ws, memo key).
_MEMO_WARMERS: dict[str, Callable[[Workspace, tuple], object]] = {}
MEMOS_WARMED = 2


def register_memo_warmer(kind: str, warm: Callable[[Workspace, tuple], object]) -> None:
    """Let the background refresh build again memos whose key starts with `kind` (`warm(ws, key)` asks for it)."""
    _MEMO_WARMERS[kind] = warm


@dataclass
class _View:
    db: object = None  # the database (a path, or store_postgres.Target: its saved tables' folder)
    tables: Tables | None = None
    refreshing: tuple | None = None  # the version being built in the background
    last_used: float = 0.0
    loading: threading.Event | None = None  # set once its saved file was looked for


class WorkspaceCache:
    """Tables per (database, view, data version), refreshed in the background (see the module docstring)."""

    def __init__(self, idle_seconds: float | None = None, max_views: int = 32):
        self.idle_seconds = idle_seconds if idle_seconds is not None else \
            float(os.environ.get("OUTCOMES_CACHE_IDLE_MINUTES", "2")) * 60
        self.max_views = max_views
        self._views: dict[tuple, _View] = {}
        self._guard = threading.Lock()
        self._janitor: threading.Thread | None = None
        self._saver: threading.Thread | None = None
        self._active = time.monotonic()  # the last page run's ask for a workspace
        self._released = 0  # how far memory was handed back since then: 0 nothing, 1 trimmed, 2 models forgotten too
        # Views whose tables wait to be built for a newer version: view key -> (scope, old tables, version). One
        # thread builds them one view at a time, the most recently used first: after an import every view of
        # every signed-in user is out of date at once, and a thread per view made them all compete with the
        # page runs of the same process for the one interpreter lock (docs/performance.md, wave 8).
        self._due: dict[tuple, tuple] = {}
        self._refresher: threading.Thread | None = None

    def workspace(self, db, scope: Scope) -> Workspace:
        data = DataAccess(db, scope)
        store.keep_journal_flushed(data.db)  # what pages journaled while another process wrote, applied when it is free
        version = data.data_version()
        key = (str(data.db), scope.view_key)
        now = time.monotonic()
        with self._guard:
            self._start_janitor()
            self._active, self._released = now, 0
            view = self._views.setdefault(key, _View(db=data.db))
            view.last_used = now
            look = view.tables is None and view.loading is None
            if look:
                view.loading = threading.Event()
            loading = view.loading
        if look:  # the first visit to this view since the start (or since it was forgotten): its file, if any
            found = None
            try:
                found = _restore(data.db, scope.view_key, version)
            finally:
                with self._guard:
                    if found is not None and view.tables is None:
                        view.tables = found
                loading.set()
        else:
            loading.wait()
        with self._guard:
            tables = view.tables
            if tables is not None and tables.version == version:
                return Workspace(data, tables)
            if tables is not None and len(tables):
                if view.refreshing != version:
                    view.refreshing = version
                    self._due[key] = (scope, tables, version)
                    self._start_refresher()
                return Workspace(data, tables, updating=True)
            view.tables = Tables(version, _imported_at(version))
            self._forget_beyond_limit()
            return Workspace(data, view.tables)

    def prepare(self, db, scope: Scope, warm: Callable[[Workspace], object]) -> None:
        """Build `warm(workspace)`'s tables for the current version in the background (e.g. at start)."""
        ws = self.workspace(db, scope)
        if not ws.updating:
            threading.Thread(target=_quietly, args=(warm, ws), daemon=True, name="workspace-prepare").start()

    def _start_refresher(self) -> None:
        """(Under the guard.) Start the thread that builds the due views' tables, unless it runs."""
        if self._refresher is None:
            self._refresher = threading.Thread(target=self._refresh_due, daemon=True, name="workspace-refresh")
            self._refresher.start()

    def _refresh_due(self) -> None:
        put_off: set[tuple] = set()  # views another process was building: the others first, then these
        try:
            while True:
                with self._guard:
                    if not self._due:
                        return
                    ready = [k for k in self._due if k not in put_off]
                    key = max(ready or self._due, key=lambda k: self._views[k].last_used if k in self._views else 0.0)
                    scope, old, version = self._due.pop(key)
                    others = len(ready) > 1
                if not self._refresh(key, scope, old, version, may_put_off=others):
                    put_off.add(key)
                    with self._guard:
                        self._due.setdefault(key, (scope, old, version))  # (unless a newer version came meanwhile)
        finally:
            with self._guard:
                if self._refresher is threading.current_thread():
                    self._refresher = None

    def _refresh(self, key: tuple, scope: Scope, old: Tables, version: tuple, may_put_off: bool = False) -> bool:
        """Build the view's tables for `version` and swap them in; False (nothing done) when `may_put_off` and
        another process is building the same view's tables now: this process loads them later instead.

        After an import every dashboard process finds the same views out of date (two directors' sessions
        served by two processes see the same rows): one process builds a view and saves it at once, the
        others wait for its file and load it (`saved.building_view`), and build only what their own pages
        had beyond it."""
        with self._guard:
            view = self._views.get(key)
            db = view.db if view is not None else key[0]
        fresh = None
        try:
            with saved.building_view(db, scope.view_key) as building_here:
                if not building_here:
                    if may_put_off and saved.view_built_elsewhere(db, scope.view_key):
                        return False
                    saved.wait_for_view(db, scope.view_key)
                loaded = _restore_current(db, scope.view_key, version)  # whoever built them, before or meanwhile
                fresh = self._build(key, scope, old, version, loaded)
                if building_here and loaded is None:
                    _save_view(db, scope.view_key, fresh)
        except Exception as exc:  # noqa: BLE001 - a page asking for this version builds it itself and shows any error
            print(f"workspace: the background update failed ({type(exc).__name__}); pages will build it",
                  file=sys.stderr, flush=True)
            fresh = None
        with self._guard:
            view = self._views.get(key)
            if view is None:
                return True
            # the view's tables as they were when it was found out of date, or (a newer version came meanwhile
            # and this build is of it) whatever an earlier build put there since
            if fresh is not None and (view.tables is old or view.refreshing == version):
                view.tables = fresh
            if view.refreshing == version:
                view.refreshing = None
        del old
        memory.release_freed()  # the previous version's tables, once no page holds them
        return True

    @staticmethod
    def _build(key: tuple, scope: Scope, old: Tables, version: tuple, loaded: Tables | None) -> Tables:
        """The tables `old` had, for `version`: built here, or what another process saved (`loaded`) and
        the rest built here. The rows themselves (frames, never in a file) are read here either way: the
        pages that read them (the due list, the data page) would otherwise read them in a page run."""
        fresh = loaded if loaded is not None else Tables(version, _imported_at(version))
        ws = Workspace(DataAccess(key[0], scope), fresh, background=True)
        for table in old.keys():
            warm = _WARMERS.get(table[0])
            if warm is not None:
                warm(ws, table)
        recent: dict[str, list[tuple]] = {}
        for memo in reversed(old.memo_keys()):
            if memo[0] in _MEMO_WARMERS and len(recent.setdefault(memo[0], [])) < MEMOS_WARMED:
                recent[memo[0]].append(memo)
        for memos in recent.values():
            for memo in memos:
                try:
                    _MEMO_WARMERS[memo[0]](ws, memo)
                except Exception:  # noqa: BLE001 - a page that asks for it builds it and shows any error
                    pass
        # the clinic models the previous tables were read with (the cohort page's disclosure, the durability
        # page), and the primary instrument's whatever they were (tables restored from their file with their
        # pages' memos never asked for it; every view's suggestions need it): the new tables are shown with
        # theirs, so the first page run after the swap fits nothing
        codes = dict.fromkeys([scales.get(scales.PRIMARY).code, *intervals.held_instruments(key[0], old.version)])
        for code in codes:
            try:
                ws.clinic(code).model  # noqa: B018 - the fit, or the file of another process's fit
            except Exception as exc:  # noqa: BLE001 - the new tables are swapped in all the same: a page
                # that asks for the model fits it itself and shows any error
                print(f"workspace: the background fit of the clinic model failed ({type(exc).__name__}); "
                      "pages will fit it", file=sys.stderr, flush=True)
        return fresh

    def _forget_beyond_limit(self) -> None:
        while len(self._views) > self.max_views:
            oldest = min(self._views, key=lambda k: self._views[k].last_used)
            del self._views[oldest]

    def forget_idle(self) -> int:
        """Forget views unused for `idle_seconds` and hand their memory back; how many were forgotten."""
        cutoff = time.monotonic() - self.idle_seconds
        with self._guard:
            idle = [k for k, v in self._views.items() if v.last_used < cutoff and v.refreshing is None]
            forgotten = [self._views.pop(k) for k in idle]
        for view in forgotten:
            if view.tables is not None:
                view.tables.drop()
        if idle:
            gc.collect()
            memory.release_freed()
        return len(idle)

    def release_when_idle(self, now: float | None = None) -> int:
        """Hand memory back once the process is idle (see the module docstring); the level reached (0-2)."""
        idle = (time.monotonic() if now is None else now) - self._active
        level = 2 if idle >= self.idle_seconds else 1 if idle >= RELEASE_AFTER_S else 0
        if level <= self._released:
            return self._released
        if level == 2:
            intervals.forget_fits()  # saved: a page that needs one loads it from its file
        gc.collect()  # the page runs' cycles (Streamlit's runner.postScriptGC is off: it held every session)
        memory.release_freed()
        self._released = level
        return level

    def clear(self) -> None:
        with self._guard:
            self._views.clear()
            self._due.clear()

    def save_due(self, quiet_s: float = SAVE_AFTER_QUIET_S) -> int:
        """Save every view whose tables gained something `quiet_s` ago or more and nothing since, if they
        are still the current data version's; how many were saved."""
        now = time.monotonic()
        with self._guard:
            views = [(key[1], v.db, v.tables) for key, v in self._views.items() if v.tables is not None]
        done = 0
        for view_key, db, tables in views:
            mark = tables.changed
            if tables.restored_older or mark == tables.saved_mark or now - mark < quiet_s:
                continue
            if _save_view(db, view_key, tables):
                done += 1
        return done + save_clinic_models()

    def _start_janitor(self) -> None:
        if saved.enabled() and (self._saver is None or not self._saver.is_alive()):
            def keep_saving() -> None:
                while True:
                    time.sleep(SAVE_AFTER_QUIET_S / 2)
                    _quietly(lambda _: self.save_due(), None)

            self._saver = threading.Thread(target=keep_saving, daemon=True, name="workspace-saver")
            self._saver.start()
        if self._janitor is not None and self._janitor.is_alive():
            return

        def sweep() -> None:
            while True:
                time.sleep(max(5.0, min(30.0, self.idle_seconds / 4)))
                _quietly(lambda _: self.forget_idle(), None)
                _quietly(lambda _: self.release_when_idle(), None)

        self._janitor = threading.Thread(target=sweep, daemon=True, name="workspace-janitor")
        self._janitor.start()


def _restore(db, view_key: tuple, version: tuple) -> Tables | None:
    """The view's saved tables: as current when saved for `version`, as the previous version's (served while
    the current ones are built) when saved for an older one; None otherwise."""
    kept = saved.load(db, view_key)
    if kept is None:
        return None
    if kept.version == version:
        return Tables.restored(kept)
    if kept.same_file and saved.older(kept.version, version):
        return Tables.restored(kept, older=True)
    return None


def _restore_current(db, view_key: tuple, version: tuple) -> Tables | None:
    """The view's tables saved for exactly `version` (by another process), or None."""
    if not saved.saved_for(db, view_key, version):
        return None
    found = _restore(db, view_key, version)
    return found if found is not None and not found.restored_older and found.version == version else None


def _save_view(db, view_key: tuple, tables: Tables) -> bool:
    """Save the view's tables if they are still the current data version's; whether a file was written."""
    tables.saved_mark = tables.changed  # once per change, even when it fails (said on stderr)
    if DataAccess(db, SYSTEM).data_version() != tables.version:
        return False  # superseded: the current version's tables will be saved instead
    contents, memos = tables.to_save()
    return bool(contents) and saved.save(db, view_key, tables.version, tables.as_of, contents, memos) is not None


def _imported_at(version: tuple) -> str | None:
    return version[2] if len(version) > 2 and version[2] not in ("", "None") else None


def _quietly(fn, arg) -> None:
    try:
        fn(arg)
    except Exception:  # noqa: BLE001 - background work: a page that needs it builds it and reports errors
        pass


WORKSPACES = WorkspaceCache()


def cohort_cycles(patients: pd.DataFrame, treatments: pd.DataFrame, assessments: pd.DataFrame,
                  instrument: str = scales.PRIMARY, rules: OutcomeRules = DEFAULT_RULES,
                  attributes: pd.DataFrame | None = None, built: course.Course | None = None) -> pd.DataFrame:
    """Durability cycles (course.py), with `length_days`: to the loss if it happened, else to the last score in
    response, and the text columns but the patient id as categoricals (`cycle_labels_as_categories`). `built`:
    the course of these frames when already at hand."""
    if built is None:
        built = course.build_course(treatments, assessments, instrument, rules, columns=course.CYCLE_COLUMNS_READ)
    # its labels made categoricals as the table is made (the same table as cycle_labels_as_categories of the text one)
    cycles = course.cycles_from_course(built, patients, attributes, rules, labels_as_categoricals=True)
    cycles["length_days"] = np.where(cycles["event"], cycles["right_days"], cycles["left_days"])
    cycle_labels_as_categories(cycles)
    memory.release_freed()  # the rows taken for the table and its text before codes: heap and Arrow's pool
    return cycles


def induction_ends(built: course.Course) -> pd.DataFrame:
    """patient_id, induction_end_at, induction_infusions: each patient's opening run of induction infusions
    in a built course (phases as course.py has them: recorded, or derived by OutcomeRules), so the cohort
    page and the durability cycles agree on induction."""
    inf = built.infusions
    if inf.empty:
        return pd.DataFrame(columns=["patient_id", "induction_end_at", "induction_infusions"])
    inf = inf.sort_values(["patient_id", "at"])
    not_induction = (inf["phase"] != "induction").astype(int)
    opening = inf[not_induction.groupby(inf["patient_id"]).cumsum() == 0]
    g = opening.groupby("patient_id")
    return pd.DataFrame({"induction_end_at": g["at"].max(), "induction_infusions": g.size()}).reset_index()


def interval_suggestions(clinic_data, patient_ids=None, instrument: str = scales.PRIMARY, target: float = 0.8,
                         today: date | None = None) -> pd.DataFrame:
    """Next-infusion suggestions from the whole clinic's model of this data version
    (intervals.clinic_suggestions: one fit, the same answer for every viewer), the rows of
    `patient_ids` only (the viewer's own patients; None: everyone). One row per treated patient:
    `status` says whether they get a suggestion and, if not, why. `clinic_data`: a DataAccess
    with the system scope."""
    result = intervals.clinic_suggestions(whole_clinic_data(clinic_data), scales.get(instrument).code, target, today,
                                          DEFAULT_RULES)
    return result.table if patient_ids is None else result.for_patients(patient_ids)
