"""The dashboard's one cache: a workspace per (database, data version, scope).

A `Workspace` (analytics/screens/workspace.py) builds each cohort-wide table once; keeping one
per key in `st.cache_resource` shares it, without copies, between the reruns and sessions of
the same user view of the same data. The key holds the scope's `cache_key` (user, role,
caseload, grants, thresholds), so one user's tables never serve another, and the data version,
so an import starts afresh. Record views and searches are never cached: each is audited.
"""
from __future__ import annotations

import streamlit as st

from analytics.access import DataAccess, Scope
from analytics.screens.workspace import Workspace
from pages import _context

CACHE_TTL_SECONDS = 15 * 60


@st.cache_resource(ttl=CACHE_TTL_SECONDS, max_entries=32, show_spinner=False)
def _workspace(db: str, version: tuple, scope_key: tuple, _scope: Scope) -> Workspace:
    return Workspace(DataAccess(db, _scope))


def workspace(scope: Scope) -> Workspace:
    db = _context.db_file()
    return _workspace(str(db), _context.db_version(db), scope.cache_key, scope)
