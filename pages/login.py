"""Sign in: the only page registered for a visitor who is not signed in."""
import streamlit as st

from analytics import auth
from pages import _context, _routing, _signin
from pages._text import plain

_routing.route_through_navigation()
st.title("Sign in")
notice = _signin.take_sign_in_notice()
if notice:
    st.info(plain(notice), icon=":material/lock_clock:")

if not _context.has_data():
    _context.no_database_message()
    st.stop()

already = _signin.signed_in_scope()
if already is not None:
    st.success(f"You are signed in as {plain(already.user)} ({already.role}). Choose a page from the menu.")
    st.stop()

if _signin.identity_provider_configured():
    if st.button("Sign in with your organisation's account", type="primary", icon=":material/badge:"):
        st.login()
    st.caption("Or with a local account:")

with st.form("sign_in"):
    username = st.text_input("User name", max_chars=64, autocomplete="username")
    password = st.text_input("Password", type="password", max_chars=auth.MAX_PASSWORD, autocomplete="current-password")
    submitted = st.form_submit_button("Sign in", type="primary")

if submitted:
    try:
        signed_in = auth.authenticate(_context.db_file(), username, password, page="login",
                                      client=_signin.client_address())
    except auth.SignInFailed as exc:
        st.error(plain(str(exc)), icon=":material/block:")
    else:
        _signin.start_session(signed_in)  # reruns into the role's own pages

st.caption("No account, or forgotten your password? Ask your administrator to create or reset it. "
           f"You are signed out after {auth.idle_timeout().total_seconds() / 60:g} minutes without activity.")
