"""The opening of every dashboard page: one call draws its title and decides whether it may go on.

`open_page(name, title)` sends a request that bypassed the navigation back through it, draws the
title, finds the signed-in scope (stopping with "Please sign in" without one), checks that the
scope may open the page (analytics.permissions, `open_page:<name>`), and, unless the page works
without one, that there is a database. It returns what the page draws with.

The scope is worked out once per page run: dashboard.py finds it to build the menu and hands it
to the page it runs (`this_run`); a page run on its own (tests) finds it itself.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from datetime import date, datetime
from functools import cached_property

import streamlit as st

from analytics import access
from analytics.access import Scope
from analytics.permissions import may, page_action
from analytics.screens.workspace import Workspace
from pages import _cache, _context, _routing, _signin

_run = threading.local()  # a page run is one thread's script run


@contextlib.contextmanager
def this_run(scope: Scope | None):
    """The signed-in scope of the page run dashboard.py is about to run (None: nobody signed in)."""
    _run.scope, _run.known = scope, True
    try:
        yield
    finally:
        _run.scope, _run.known = None, False


def _scope() -> Scope:
    if getattr(_run, "known", False) and _run.scope is not None:
        return _run.scope
    return _signin.current_scope()


@dataclass(frozen=True)
class Page:
    name: str
    scope: Scope
    today: date

    @cached_property
    def workspace(self) -> Workspace:
        """The scope's workspace for the current data version (pages/_cache.py), with a line saying so when
        the figures are not the newest: an import is running, or newer data are being prepared."""
        ws = _cache.workspace(self.scope)
        as_of = _when(ws.as_of)
        if access.write_in_progress(_context.db_file()):
            st.info(f"An import is running: these figures are from the last complete data{as_of}. "
                    "They will include the new data once it has finished.", icon=":material/sync:")
        elif ws.updating:
            st.info(f"New data have arrived: these figures are from the data{as_of} and are being updated; "
                    "reload the page in a minute for the new figures.", icon=":material/sync:")
        return ws


    def figure(self, key: tuple, build):
        """A chart built once per workspace tables and `key` (every input it is drawn from), then shared:
        the same data give the same figure, so a rerun does not rebuild it (nor copy it: `drawn_once`)."""
        return self.workspace.memo(("figure", self.name, *key), lambda: drawn_once(build()))


def drawn_once(figure):
    """`figure`, whose `to_dict()` hands out (a shallow copy of) the dict it made first. st.plotly_chart calls
    `to_dict()` on every page run: a deep copy of the figure with every array re-encoded, the same each time
    for a shared figure that nobody changes. Streamlit only reads the dict; the copy keeps what plotly's own
    pickling adds to it out of the kept one."""
    made = figure.to_dict()
    object.__setattr__(figure, "to_dict", lambda: dict(made))  # past plotly's property checks: a plain attribute
    return figure


def _when(imported_at: str | None) -> str:
    if not imported_at:
        return ""
    try:
        return f" as of {datetime.fromisoformat(imported_at):%d %b %Y %H:%M} UTC"
    except ValueError:
        return ""


def open_page(name: str, title: str, *, refusal: str | None = None, needs_database: bool = True) -> Page:
    _routing.route_through_navigation()
    st.title(title)
    scope = _scope()
    if not may(scope, page_action(name)):  # the navigation does not offer it: this holds if it is reached anyway
        st.error(refusal or "Your role does not open this page.")
        st.stop()
    if needs_database and not _context.has_data():
        _context.no_database_message()
        st.stop()
    return Page(name, scope, _context.today())
