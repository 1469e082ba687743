"""The dashboard's one cache: a workspace per signed-in page run, on tables shared per (database, view,
data version) in this process (analytics/screens/workspace.py `WORKSPACES`).

Tables are keyed by what the scope can see (`Scope.view_key`), not by who is signed in, so two
directors share one copy; the workspace's `data` is the user's own, so record views and downloads
are audited as that user. After an import the previous version's tables are served, marked as
updating, while the new version's are built in the background. Record views and searches are never
cached: each is audited.
"""
from __future__ import annotations

from analytics.access import Scope
from analytics.screens.workspace import WORKSPACES, Workspace
from pages import _context


def workspace(scope: Scope) -> Workspace:
    return WORKSPACES.workspace(_context.db_file(), scope)
