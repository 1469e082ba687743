"""Where and when the dashboard runs: which database, its data version, and today."""
from __future__ import annotations

from datetime import date
from pathlib import Path

import streamlit as st

from analytics import clinic_time
from analytics.access import DataAccess, db_path


def db_file() -> Path:
    """--db is the command line's; the dashboard reads OUTCOMES_DB or data/outcomes.duckdb."""
    return db_path()


def has_data() -> bool:
    return db_file().exists()


def db_version(path: Path | None = None) -> tuple:
    """The data's version (DataAccess.data_version): part of every cache key. Not the file's
    modification time: audit entries written on every record view would otherwise empty every
    cache at each click."""
    path = path or db_file()
    if not path.exists():
        return (0, 0, "")
    return DataAccess(path).data_version()


def today() -> date:
    """The clinic's calendar date (OUTCOMES_TIMEZONE), or OUTCOMES_TODAY (YYYY-MM-DD) so a demo or
    test clinic has a fixed 'now' (analytics.clinic_time.today)."""
    return clinic_time.today()


def no_database_message() -> None:
    where = getattr(db_file(), "label", db_file())  # a PostgreSQL URL without its password
    st.info(f"No database yet at `{where}`. Import data on the **Data** page, or build a demo clinic with "
            "`python -m analytics demo` (or `make demo`).", icon=":material/database:")
