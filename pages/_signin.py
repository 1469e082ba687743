"""Who is signed in: the session, the identity provider (OpenID Connect), signing in and out.

`signed_in_scope()` is the one place the dashboard learns the user's Scope: it comes from the
signed-in session, re-validated against the account and the inactivity limit on every run
(docs/security.md). A session lives in the browser session's server-side state.
"""
from __future__ import annotations

import streamlit as st

from analytics import access, auth
from analytics.access import Scope
from pages import _context, _routing

AUTH_KEY = "auth_session"  # the signed-in analytics.auth.Session, server-side per browser session
NOTICE_KEY = "auth_notice"  # why the last session ended, shown on the sign-in page
VIA_OIDC_KEY = "auth_via_oidc"  # the session came from the identity provider (st.login)


def signed_in_scope() -> Scope | None:
    """The signed-in user's scope, or None. Ends the session (with the reason kept for the sign-in
    page) when it was idle too long or the account was disabled or changed since sign-in."""
    current = st.session_state.get(AUTH_KEY) or _identity_provider_session()
    if current is None:
        return None
    try:
        fresh = auth.validate_session(_context.db_file(), current, page=_routing.current_page_name())
    except auth.SessionEnded as exc:
        st.session_state.pop(AUTH_KEY, None)
        st.session_state[NOTICE_KEY] = str(exc)
        if st.session_state.pop(VIA_OIDC_KEY, False):
            st.logout()  # drop the provider's cookie too, or it would sign the user straight back in
        return None
    st.session_state[AUTH_KEY] = fresh
    return access.scope_for(fresh, _context.db_file())


def identity_provider_configured() -> bool:
    """True when secrets.toml has an [auth] section for st.login (OpenID Connect)."""
    try:
        return "auth" in st.secrets
    except Exception:  # no secrets file at all
        return False


def _identity_provider_session() -> "auth.Session | None":
    """A session for the user the OIDC provider signed in, mapped by analytics.auth.session_from_identity."""
    if not identity_provider_configured():
        return None
    try:
        if not st.user.is_logged_in:
            return None
    except Exception:
        return None
    try:
        session = auth.session_from_identity(_context.db_file(), st.user.to_dict(), page=_routing.current_page_name())
    except auth.SignInFailed as exc:
        st.session_state[NOTICE_KEY] = str(exc)
        st.logout()
        return None
    st.session_state[AUTH_KEY] = session
    st.session_state[VIA_OIDC_KEY] = True
    return session


def current_scope() -> Scope:
    """The signed-in user's scope; a page run without one stops here with a message."""
    scope = signed_in_scope()
    if scope is None:
        st.warning(st.session_state.get(NOTICE_KEY) or "Please sign in.", icon=":material/lock:")
        st.stop()
    return scope


def start_session(session: "auth.Session") -> None:
    """After a successful sign-in: keep the session and rerun into the role's pages."""
    st.session_state.clear()  # nothing of a previous user's state survives
    st.session_state[AUTH_KEY] = session
    st.rerun()


def sign_out() -> None:
    auth.sign_out(_context.db_file(), st.session_state.get(AUTH_KEY), page=_routing.current_page_name())
    via_provider = st.session_state.get(VIA_OIDC_KEY, False)
    st.session_state.clear()
    st.session_state[NOTICE_KEY] = "You are signed out."
    if via_provider:
        st.logout()
    st.rerun()


def take_sign_in_notice() -> str | None:
    return st.session_state.pop(NOTICE_KEY, None)
