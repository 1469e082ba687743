"""Users (admin): accounts, roles, password resets and patient grants; every change is audited."""
import streamlit as st

from analytics import auth
from analytics.permissions import ROLES
from pages import _context
from pages._page import open_page
from pages._text import plain

PAGE = "users"

scope = open_page(PAGE, "Users", refusal="Only administrators manage accounts.", needs_database=False).scope
db = _context.db_file()


def _done(message: str) -> None:
    st.session_state["users_message"] = message
    st.rerun()


if message := st.session_state.pop("users_message", None):
    st.success(message, icon=":material/check:")

users = auth.list_users(db)
st.dataframe(users, hide_index=True, width="stretch")
names = users["username"].tolist()

add_tab, change_tab, grant_tab = st.tabs(["Add an account", "Change an account", "Patient grants"])

with add_tab, st.form("add_user", clear_on_submit=True):
    name = st.text_input("User name", max_chars=64)
    role = st.selectbox("Role", ROLES)
    handle = st.text_input("Clinician handle (clinicians: the `clinician` value their patients are filed under; "
                           "default the user name)", max_chars=64)
    first = st.text_input("Password", type="password", max_chars=auth.MAX_PASSWORD)
    again = st.text_input("Password again", type="password", max_chars=auth.MAX_PASSWORD)
    if st.form_submit_button("Add account", type="primary"):
        try:
            if first != again:
                raise auth.UserError("the two passwords differ")
            added = auth.create_user(db, name, role, first, clinician=handle or None, actor=scope.user, page=PAGE)
        except auth.UserError as exc:
            st.error(plain(str(exc)))
        else:
            _done(f"Added {plain(added)} ({role}).")

with change_tab:
    if not names:
        st.info("No accounts yet.")
    else:
        who = st.selectbox("Account", names, key="change_who")
        action = st.radio("Change", ["Disable", "Enable", "Reset password", "Change role"], horizontal=True)
        with st.form("change_user", clear_on_submit=True):
            new_password = new_role = new_handle = None
            if action == "Reset password":
                new_password = st.text_input("New password", type="password", max_chars=auth.MAX_PASSWORD)
            elif action == "Change role":
                new_role = st.selectbox("New role", ROLES)
                new_handle = st.text_input("Clinician handle (clinicians only)", max_chars=64)
            if st.form_submit_button(action, type="primary"):
                try:
                    if action == "Disable":
                        if who == scope.user:
                            raise auth.UserError("you cannot disable your own account")
                        auth.disable_user(db, who, actor=scope.user, page=PAGE)
                    elif action == "Enable":
                        auth.enable_user(db, who, actor=scope.user, page=PAGE)
                    elif action == "Reset password":
                        auth.reset_password(db, who, new_password or "", actor=scope.user, page=PAGE)
                    else:
                        auth.set_role(db, who, new_role, clinician=new_handle or None, actor=scope.user, page=PAGE)
                except auth.UserError as exc:
                    st.error(plain(str(exc)))
                else:
                    _done(f"{action}: done for {plain(who)}. Their open sessions have ended.")

with grant_tab:
    st.caption("A grant lets one account open one patient's record (a director's case review, cover for a colleague). "
               "Admins and directors see no patient record without one.")
    with st.form("grant", clear_on_submit=True):
        who = st.selectbox("Account", names or [""], key="grant_who")
        patient = st.text_input("Patient id", max_chars=64)
        reason = st.text_input("Reason (kept in the audit trail)", max_chars=200)
        grant_col, revoke_col = st.columns(2)
        grant = grant_col.form_submit_button("Grant", type="primary")
        revoke = revoke_col.form_submit_button("Withdraw")
        if grant or revoke:
            try:
                if grant:
                    auth.grant_patient(db, who, patient, actor=scope.user, reason=reason, page=PAGE)
                else:
                    auth.revoke_patient(db, who, patient, actor=scope.user, page=PAGE)
            except auth.UserError as exc:
                st.error(plain(str(exc)))
            else:
                _done(f"{'Granted' if grant else 'Withdrew'} patient {plain(patient.strip())} for {plain(who)}.")
