"""Text from data or from the address bar, made safe to show through Streamlit's markdown.

Streamlit renders titles, captions, alerts, metric labels and `st.markdown` as markdown (with
its own extensions: colours, icons, emoji shortcodes, LaTeX, autolinked URLs). An imported
diagnosis, site, patient id or file name, a reason, or a query parameter such as
`/patient?patient=...` shown that way could draw a link ("Session expired: sign in again"
pointing elsewhere) or fetch an image from another server on every view. `plain(value)` escapes
every ASCII punctuation character (CommonMark lets each be escaped with a backslash), breaks the
`scheme://`, `www.` and `name@host` patterns of autolinks (with a zero-width space), and flattens line breaks, so the value shows as
the same characters and nothing else. Every value a page interpolates into markdown goes
through it (tests/test_security_browser.py injects such values and checks the page); tables (st.dataframe) show plain text already.
"""
from __future__ import annotations

import re

_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")
_ZERO_WIDTH = "\u200b"


def plain(value, limit: int | None = 500) -> str:
    """`value` as literal text inside markdown (None as ""); cut to `limit` characters."""
    text = "" if value is None else str(value)
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "\u2026"
    text = " ".join(text.split())  # no line breaks: a value cannot start a heading, list or table
    text = re.sub(r"(?i)(www)\.", r"\1" + _ZERO_WIDTH + ".", text)  # autolink literals need "www." and "://"
    text = text.replace("://", ":" + _ZERO_WIDTH + "//").replace("@", _ZERO_WIDTH + "@")  # and e-mail addresses
    return _PUNCTUATION.sub(r"\\\1", text)
