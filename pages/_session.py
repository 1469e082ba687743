"""Who is signed in, and cached reads keyed so one user's data never serves another.

`current_scope()` is the one place the dashboard learns the user's Scope: it
comes from the signed-in session (`signed_in_scope()`, re-validated against the
account and the inactivity limit on every run; docs/security.md). Every cached function takes the scope's
`cache_key` and the database file's modification time as arguments, so a
cache entry is only ever reused for the same user view of the same data.
"""
from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import pandas as pd
import streamlit as st

from analytics import access, auth, views
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


AUTH_KEY = "auth_session"  # the signed-in analytics.auth.Session, server-side per browser session
NOTICE_KEY = "auth_notice"  # why the last session ended, shown on the sign-in page
VIA_OIDC_KEY = "auth_via_oidc"  # the session came from the identity provider (st.login)


def signed_in_scope() -> Scope | None:
    """The signed-in user's scope, or None. Ends the session (with the reason kept for the sign-in
    page) when it was idle too long or the account was disabled or changed since sign-in."""
    current = st.session_state.get(AUTH_KEY) or _identity_provider_session()
    if current is None:
        return None
    try:
        fresh = auth.validate_session(db_file(), current, page=_page_name())
    except auth.SessionEnded as exc:
        st.session_state.pop(AUTH_KEY, None)
        st.session_state[NOTICE_KEY] = str(exc)
        if st.session_state.pop(VIA_OIDC_KEY, False):
            st.logout()  # drop the provider's cookie too, or it would sign the user straight back in
        return None
    st.session_state[AUTH_KEY] = fresh
    return access.scope_for(fresh, db_file())


def identity_provider_configured() -> bool:
    """True when secrets.toml has an [auth] section for st.login (OpenID Connect)."""
    try:
        return "auth" in st.secrets
    except Exception:  # no secrets file at all
        return False


def _identity_provider_session() -> "auth.Session | None":
    """A session for the user the OIDC provider signed in, mapped by analytics.auth.session_from_identity."""
    if not identity_provider_configured():
        return None
    try:
        if not st.user.is_logged_in:
            return None
    except Exception:
        return None
    try:
        session = auth.session_from_identity(db_file(), st.user.to_dict(), page=_page_name())
    except auth.SignInFailed as exc:
        st.session_state[NOTICE_KEY] = str(exc)
        st.logout()
        return None
    st.session_state[AUTH_KEY] = session
    st.session_state[VIA_OIDC_KEY] = True
    return session


def current_scope() -> Scope:
    """The signed-in user's scope; a page run without one stops here with a message."""
    scope = signed_in_scope()
    if scope is None:
        st.warning(st.session_state.get(NOTICE_KEY) or "Please sign in.", icon=":material/lock:")
        st.stop()
    return scope


def admin_scope(refusal: str) -> Scope:
    """The signed-in scope for an admin page; anyone else sees `refusal` and the page stops.
    (Navigation already hides these pages from other roles: this holds if a page is reached anyway.)"""
    scope = current_scope()
    if scope.role not in ("admin", "system"):
        st.error(refusal)
        st.stop()
    return scope


def start_session(session: "auth.Session") -> None:
    """After a successful sign-in: keep the session and rerun into the role's pages."""
    st.session_state.clear()  # nothing of a previous user's state survives
    st.session_state[AUTH_KEY] = session
    st.rerun()


def sign_out() -> None:
    auth.sign_out(db_file(), st.session_state.get(AUTH_KEY), page=_page_name())
    via_provider = st.session_state.get(VIA_OIDC_KEY, False)
    st.session_state.clear()
    st.session_state[NOTICE_KEY] = "You are signed out."
    if via_provider:
        st.logout()
    st.rerun()


def take_sign_in_notice() -> str | None:
    return st.session_state.pop(NOTICE_KEY, None)


def _page_name() -> str | None:
    try:
        return st.context.url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or None
    except Exception:  # AppTest and older runtimes have no URL
        return None


def data_access(scope: Scope) -> DataAccess:
    """Uncached reads and audit entries for this scope."""
    return DataAccess(db_file(), scope)


def db_file() -> Path:
    return access.db_path()


def db_version(path: Path | None = None) -> tuple:
    """The data's version (analytics.access.DataAccess.data_version): part of every cache key.
    Not the file's modification time: audit entries written on every record view would
    otherwise empty every cache at each click."""
    path = path or db_file()
    if not path.exists():
        return (0, 0, "")
    return DataAccess(path).data_version()


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


# Search and record reads are not cached: each is a small query, and every record view
# (and every refused search for someone else's patient) must reach the audit trail.
def search(scope: Scope, text: str) -> list[str]:
    return data_access(scope).search_patient_ids(text, limit=20, page="patient")


def patient_record(scope: Scope, patient_id: str) -> dict[str, pd.DataFrame]:
    return data_access(scope).patient_record(patient_id, page="patient")


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


# The cohort page's summaries (analytics.views.cohort_base / cohort_summary): st.cache_resource, not
# st.cache_data, because a cache_data hit unpickles a copy on every rerun (seconds at 100,000 patients)
# and the page only reads them. Keyed like every cache here: path, data version, scope.
@st.cache_resource(ttl=CACHE_TTL_SECONDS, max_entries=32, show_spinner=False)
def _cohort_base(db: str, version: tuple, scope_key: tuple, _scope: Scope) -> views.CohortBase:
    f = _frames(db, version, scope_key, _scope)
    return views.cohort_base(f["patients"], f["treatments"], f["assessments"], _cycles(db, version, scope_key, _scope, "PHQ-9"))


@st.cache_resource(ttl=CACHE_TTL_SECONDS, max_entries=32, show_spinner=False)
def _cohort_summary(db: str, version: tuple, scope_key: tuple, _scope: Scope, instrument: str) -> views.CohortSummary:
    f = _frames(db, version, scope_key, _scope)
    base = _cohort_base(db, version, scope_key, _scope)
    induction = _induction(db, version, scope_key, _scope, instrument) if base.has_infusions else None
    return views.cohort_summary(base, f["assessments"], induction, instrument)


def cohort_summary(scope: Scope, instrument: str) -> views.CohortSummary:
    """What the cohort page aggregates on each rerun (read-only: shared by every session of this scope)."""
    db = db_file()
    return _cohort_summary(str(db), db_version(db), scope.cache_key, scope, instrument)


@st.cache_data(ttl=CACHE_TTL_SECONDS, max_entries=32, show_spinner=False)
def _suggestions(db: str, version: tuple, scope_key: tuple, _scope: Scope, instrument: str,
                 on: date) -> pd.DataFrame | None:
    # One model for the whole clinic per data version (fitted with the system scope in
    # analytics.intervals): this viewer gets only their own patients' rows of it.
    f = _frames(db, version, scope_key, _scope)
    return views.interval_suggestions(db, version, f["patients"]["patient_id"], instrument, today=on)


def suggestions(scope: Scope, instrument: str = "PHQ-9") -> pd.DataFrame | None:
    db = db_file()
    return _suggestions(str(db), db_version(db), scope.cache_key, scope, instrument, today())


def no_database_message() -> None:
    st.info(f"No database yet at `{db_file()}`. Import data on the **Data** page, or build a demo clinic with "
            "`python -m analytics demo` (or `make demo`).", icon=":material/database:")


@st.cache_data(ttl=CACHE_TTL_SECONDS, max_entries=32, show_spinner=False)
def _durability(db: str, version: tuple, scope_key: tuple, _scope: Scope, instrument: str, by: str | None,
                n_boot: int) -> dict:
    from analytics import intervals
    from analytics.durability import cohort_durability

    model = intervals.clinic_model(db, version, instrument).model  # the whole clinic's, one per data version
    return cohort_durability(_cycles(db, version, scope_key, _scope, instrument), instrument=instrument, by=by,
                             n_boot=n_boot, model=model)


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
