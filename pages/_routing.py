"""Which pages exist, which of them a user's menu holds, and getting every request through that menu.

`menu_for(scope)` asks analytics.permissions for each page (action `open_page:<name>`), so the
navigation registers exactly the pages a role may open; dashboard.py builds it.
"""
from __future__ import annotations

import streamlit as st

from analytics.permissions import may, page_action

# name: (file, title, icon)
PAGES = {
    "patient": ("pages/patient.py", "Patient trajectory", ":material/person:"),
    "due": ("pages/due.py", "Due list", ":material/event_upcoming:"),
    "cohort": ("pages/cohort.py", "Cohort outcomes", ":material/groups:"),
    "durability": ("pages/durability.py", "Durability and maintenance", ":material/timeline:"),
    "data": ("pages/data.py", "Data", ":material/upload_file:"),
    "method": ("pages/method.py", "Method", ":material/menu_book:"),
    "users": ("pages/admin_users.py", "Users", ":material/manage_accounts:"),
    "audit": ("pages/audit_log.py", "Audit trail", ":material/policy:"),
    "health": ("pages/health.py", "Health", ":material/monitor_heart:"),
}

# The menu's sections in order; the first page a user may open is their landing page.
MENU = {
    "Clinic": ["cohort", "durability", "due", "patient"],
    "Administration": ["data", "users", "audit", "health"],
    "About": ["method"],
}


def menu_for(scope) -> dict[str, list[str]]:
    """Section -> the names of its pages `scope` may open (sections without one are left out)."""
    sections = {title: [name for name in names if may(scope, page_action(name))] for title, names in MENU.items()}
    return {title: names for title, names in sections.items() if names}


_routed = False


def route_through_navigation() -> None:
    """Make sure dashboard.py's st.navigation (and so the menu) handles every request.

    Streamlit treats a `pages/` folder as the old automatic multipage mode until
    st.navigation has run once in the server process, so the very first request
    for e.g. /patient would run that page directly, bypassing the menu.
    Switching the old mode off and rerunning sends the request through dashboard.py.
    Once per process, at the first page run: a rerun later would drop a submitted form.
    """
    global _routed
    if _routed:
        return
    _routed = True
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()


def current_page_name() -> str | None:
    """The page's address (its url_path), for audit entries; None where the runtime has no URL."""
    try:
        return st.context.url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or None
    except Exception:  # AppTest and older runtimes have no URL
        return None
