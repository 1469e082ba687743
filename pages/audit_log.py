"""Audit trail (admin): view, filter, verify and export; viewing and exporting are themselves audited."""
from datetime import date, timedelta

import streamlit as st

from analytics import audit
from pages import _context
from pages._page import open_page
from pages._text import plain

PAGE = "audit"

scope = open_page(PAGE, "Audit trail", refusal="Only administrators may view the audit trail.", needs_database=False).scope
db = _context.db_file()

since_col, until_col, actor_col, action_col = st.columns(4)
since = since_col.date_input("From", value=date.today() - timedelta(days=7))
until = until_col.date_input("To (inclusive)", value=date.today())
actor = actor_col.text_input("User", max_chars=64).strip() or None
action = action_col.selectbox("Action", ["(any)", *audit.ACTIONS])
action = None if action == "(any)" else action

try:
    entries = audit.entries(db, since=since, until=until, actor=actor, action=action)
except ValueError as exc:
    st.error(str(exc))
    st.stop()

# one audit entry per distinct view, not per rerun
view_key = (str(since), str(until), actor, action)
if st.session_state.get("audit_viewed") != view_key:
    audit.append(db, scope.user, "view_audit", role=scope.role, page=PAGE,
                 detail={"since": str(since), "until": str(until), "actor": actor, "action": action, "entries": len(entries)})
    st.session_state["audit_viewed"] = view_key

st.caption(f"{len(entries)} entries. Entries cannot be changed or removed from the product; "
           "each carries a hash of the one before, so an edit made outside it is detected below.")
shown = entries.sort_values("seq", ascending=False)  # newest first: what an administrator looks for
shown["patients"] = shown["patients"].map(", ".join)
shown["detail"] = shown["detail"].map(lambda d: ", ".join(f"{k}={v}" for k, v in sorted(d.items())))
st.dataframe(shown.drop(columns=["hash"]), hide_index=True, width="stretch")


def _audited_csv() -> bytes:
    """Built when clicked (a deferred download); its audit entry names every patient the entries name."""
    patients = sorted({p for listed in entries["patients"] for p in listed})
    audit.append(db, scope.user, "export", role=scope.role, page=PAGE, patients=patients,
                 detail={"what": "audit trail CSV", "since": str(since), "until": str(until), "entries": len(entries)})
    return audit.to_csv(entries).encode("utf-8")


st.download_button("Download these entries (CSV)", _audited_csv, file_name=f"audit-{since}-{until}.csv",
                   mime="text/csv", icon=":material/download:", on_click="ignore")

if st.button("Verify the whole trail", icon=":material/verified:"):
    result = audit.verify(db)
    if result.ok:
        st.success(f"All {result.checked} entries verified: the chain is intact and matches its anchor outside the "
                   "database." + (f" Note: {plain(result.note)}." if result.note else ""))
    else:
        st.error(f"The audit trail was altered outside the product: {plain(result.reason)}.")
