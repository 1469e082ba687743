"""The opening of every dashboard page: one call draws its title and decides whether it may go on.

`open_page(name, title)` sends a request that bypassed the navigation back through it, draws the
title, finds the signed-in scope (stopping with "Please sign in" without one), checks that the
scope may open the page (analytics.permissions, `open_page:<name>`), and, unless the page works
without one, that there is a database. It returns what the page draws with.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import streamlit as st

from analytics.access import Scope
from analytics.permissions import may, page_action
from analytics.screens.workspace import Workspace
from pages import _cache, _context, _routing, _signin


@dataclass(frozen=True)
class Page:
    name: str
    scope: Scope
    today: date

    @property
    def workspace(self) -> Workspace:
        """The scope's workspace for the current data version (cached: pages/_cache.py)."""
        return _cache.workspace(self.scope)


def open_page(name: str, title: str, *, refusal: str | None = None, needs_database: bool = True) -> Page:
    _routing.route_through_navigation()
    st.title(title)
    scope = _signin.current_scope()
    if not may(scope, page_action(name)):  # the navigation does not offer it: this holds if it is reached anyway
        st.error(refusal or "Your role does not open this page.")
        st.stop()
    if needs_database and not _context.has_data():
        _context.no_database_message()
        st.stop()
    return Page(name, scope, _context.today())
