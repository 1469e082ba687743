"""Health (admin): `python -m analytics health` on the page: schema, integrity, audit chain, imports, disk, backups."""
import streamlit as st

from analytics.screens import health
from pages import _context
from pages._page import open_page

open_page("health", "Health", needs_database=False)  # a missing or damaged database is what it reports

st.caption("The same checks as `python -m analytics health`, which a scheduler runs (exit 0 ok, 1 look today, "
           "2 a person is needed now). What each check means and what to do: docs/operations.md.")
full = st.toggle("Read every table (integrity check; takes a few seconds on a large store)", key="health_full")
screen = health.health_screen(_context.db_file(), full=full)
{"ok": st.success, "warning": st.warning, "critical": st.error}[screen.status](screen.headline)
st.dataframe(screen.checks, hide_index=True, width="stretch")
st.subheader("Backup and restore")
st.caption("Nightly, from cron (docs/operations.md), a backup of the whole store while the dashboard runs; a restore "
           "goes into a path that holds no database and is verified.")
for name, command in screen.commands.items():
    st.markdown(f"**{name}**")
    st.code(command, language="bash")
