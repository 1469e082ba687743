"""No traceback reaches a user: what the dashboard shows when a page cannot be drawn.

dashboard.py runs the sign-in check and the chosen page through `guarded`. An exception becomes
a notice at the top of the page (analytics/screens/health.py `notice_for`: a busy store, a
database written by a newer version, a damaged file with the restore command, an unexpected
failure with the name of its log file), one line goes to the server's log, and the page stops.
Streamlit's own st.stop and st.rerun are not exceptions of this kind and pass through.
"""
from __future__ import annotations

import sys

import streamlit as st

from analytics.permissions import may
from analytics.screens.health import Notice, notice_for
from pages import _context

_DRAW = {"error": st.error, "warning": st.warning, "info": st.info}
_ICON = {"busy": ":material/hourglass_top:", "schema_newer": ":material/upgrade:", "damaged": ":material/report:",
         "missing": ":material/database:"}


def draw(notice: Notice) -> None:
    _DRAW[notice.level](f"**{notice.title}**\n\n{notice.text}", icon=_ICON.get(notice.kind, ":material/error:"))
    if notice.command:
        st.code(notice.command, language="bash")
    if notice.retry and st.button("Try again", key="notice_retry", icon=":material/refresh:"):
        st.rerun()


def guarded(run, *args, scope=None, **kwargs):
    """`run(*args, **kwargs)`, or its failure drawn as a notice above whatever it drew, and the page stopped.

    Server paths and the restore commands are shown only to a `scope` that may open the Health page."""
    slot = st.container()
    try:
        return run(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the dashboard's one place a failure becomes a notice
        notice = notice_for(exc, _context.db_file(), for_admin=scope is not None and may(scope, "open_page:health"))
        print(f"dashboard: {notice.kind}: {notice.title} ({type(exc).__name__})", file=sys.stderr)
        with slot:
            draw(notice)
        st.stop()
