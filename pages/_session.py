"""Who is signed in, and cached reads keyed so one user's data never serves another.

`current_scope()` is the one place the dashboard learns the user's Scope;
sign-in (issue 5) replaces its body. Every cached function takes the scope's
`cache_key` and the database file's modification time as arguments, so a
cache entry is only ever reused for the same user view of the same data.
"""
from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import pandas as pd
import streamlit as st

from analytics import access, store, views
from analytics.access import DataAccess, Scope

CACHE_TTL_SECONDS = 15 * 60


def _route_through_navigation() -> None:
    """Make sure dashboard.py's st.navigation (and its role table) handles every request.

    Streamlit treats a `pages/` folder as the old automatic multipage mode until
    st.navigation has run once in the server process, so the very first request
    for e.g. /patient would run that page directly, bypassing the role table.
    Switching the old mode off and rerunning sends the request through dashboard.py.
    """
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()


_route_through_navigation()


def current_scope() -> Scope:
    """The signed-in user's scope. Until sign-in lands: the operator's own (SYSTEM) view,
    or a role chosen with OUTCOMES_ROLE / OUTCOMES_CLINICIAN for trying a role out."""
    role = os.environ.get("OUTCOMES_ROLE")
    if role == "clinician":
        clinician = os.environ.get("OUTCOMES_CLINICIAN", "")
        return Scope(user=clinician or "clinician", role="clinician", clinician=clinician)
    if role in ("director", "admin"):
        return Scope(user=role, role=role)
    return access.SYSTEM


def db_file() -> Path:
    return store.db_path()


def db_version(path: Path | None = None) -> tuple[int, int]:
    """Modification times (ns) of the database and its write-ahead log: part of every cache key."""
    path = path or db_file()
    wal = Path(str(path) + ".wal")
    return (path.stat().st_mtime_ns if path.exists() else 0, wal.stat().st_mtime_ns if wal.exists() else 0)


def today() -> date:
    """Today, or OUTCOMES_TODAY (YYYY-MM-DD) so a demo or test clinic has a fixed 'now'."""
    fixed = os.environ.get("OUTCOMES_TODAY")
    return date.fromisoformat(fixed) if fixed else date.today()


def has_data() -> bool:
    return db_file().exists()


# --- cached reads: (db path, version, scope key) are the key; `_scope` is not hashed ------

@st.cache_data(ttl=CACHE_TTL_SECONDS, max_entries=32, show_spinner=False)
def _frames(db: str, version: tuple, scope_key: tuple, _scope: Scope) -> dict[str, pd.DataFrame]:
    data = DataAccess(db, _scope)
    return {"patients": data.patients(), "treatments": data.treatments(), "assessments": data.assessments(),
            "attributes": data.attributes()}


def frames(scope: Scope) -> dict[str, pd.DataFrame]:
    db = db_file()
    return _frames(str(db), db_version(db), scope.cache_key, scope)


@st.cache_data(ttl=CACHE_TTL_SECONDS, max_entries=256, show_spinner=False)
def _search(db: str, version: tuple, scope_key: tuple, _scope: Scope, text: str) -> list[str]:
    return DataAccess(db, _scope).search_patient_ids(text, limit=20)


def search(scope: Scope, text: str) -> list[str]:
    db = db_file()
    return _search(str(db), db_version(db), scope.cache_key, scope, text)


@st.cache_data(ttl=CACHE_TTL_SECONDS, max_entries=64, show_spinner=False)
def _record(db: str, version: tuple, scope_key: tuple, _scope: Scope, patient_id: str) -> dict[str, pd.DataFrame]:
    return DataAccess(db, _scope).patient_record(patient_id)


def patient_record(scope: Scope, patient_id: str) -> dict[str, pd.DataFrame]:
    db = db_file()
    return _record(str(db), db_version(db), scope.cache_key, scope, patient_id)


@st.cache_data(ttl=CACHE_TTL_SECONDS, max_entries=32, show_spinner=False)
def _cycles(db: str, version: tuple, scope_key: tuple, _scope: Scope, instrument: str) -> pd.DataFrame:
    f = _frames(db, version, scope_key, _scope)
    return views.cohort_cycles(f["patients"], f["treatments"], f["assessments"], instrument, attributes=f["attributes"])


def cycles(scope: Scope, instrument: str = "PHQ-9") -> pd.DataFrame:
    db = db_file()
    return _cycles(str(db), db_version(db), scope.cache_key, scope, instrument)


@st.cache_data(ttl=CACHE_TTL_SECONDS, max_entries=32, show_spinner=False)
def _induction(db: str, version: tuple, scope_key: tuple, _scope: Scope, instrument: str) -> pd.DataFrame:
    f = _frames(db, version, scope_key, _scope)
    return views.induction_outcomes(f["treatments"], f["assessments"], instrument)


def induction(scope: Scope, instrument: str) -> pd.DataFrame:
    db = db_file()
    return _induction(str(db), db_version(db), scope.cache_key, scope, instrument)


@st.cache_data(ttl=CACHE_TTL_SECONDS, max_entries=32, show_spinner=False)
def _suggestions(db: str, version: tuple, scope_key: tuple, _scope: Scope, instrument: str) -> pd.DataFrame | None:
    f = _frames(db, version, scope_key, _scope)
    return views.interval_suggestions(_cycles(db, version, scope_key, _scope, instrument), f["treatments"], instrument)


def suggestions(scope: Scope, instrument: str = "PHQ-9") -> pd.DataFrame | None:
    db = db_file()
    return _suggestions(str(db), db_version(db), scope.cache_key, scope, instrument)


def no_database_message() -> None:
    st.info(f"No database yet at `{db_file()}`. Import data on the **Data** page, or build a demo clinic with "
            "`python -m analytics demo` (or `make demo`).", icon=":material/database:")


@st.cache_data(ttl=CACHE_TTL_SECONDS, max_entries=32, show_spinner=False)
def _durability(db: str, version: tuple, scope_key: tuple, _scope: Scope, instrument: str, by: str | None,
                n_boot: int) -> dict:
    from analytics.durability import cohort_durability

    return cohort_durability(_cycles(db, version, scope_key, _scope, instrument), instrument=instrument, by=by, n_boot=n_boot)


def durability(scope: Scope, instrument: str, by: str | None, n_boot: int = 200) -> dict:
    db = db_file()
    return _durability(str(db), db_version(db), scope.cache_key, scope, instrument, by, n_boot)


@st.cache_data(ttl=CACHE_TTL_SECONDS, max_entries=32, show_spinner=False)
def _durability_model(db: str, version: tuple, scope_key: tuple, _scope: Scope, instrument: str,
                      covariates: tuple[str, ...]) -> dict:
    from analytics.durability import durability_model

    return durability_model(_cycles(db, version, scope_key, _scope, instrument), list(covariates))


def durability_model(scope: Scope, instrument: str, covariates: tuple[str, ...]) -> dict:
    db = db_file()
    return _durability_model(str(db), db_version(db), scope.cache_key, scope, instrument, covariates)
