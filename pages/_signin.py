"""Who is signed in: the session, the identity provider (OpenID Connect), signing in and out.

`signed_in_scope()` is the one place the dashboard learns the user's Scope. A sign-in is a
server-side session (analytics/auth.py, analytics/sessions.py): the tab keeps it in its state,
and the browser keeps a random token in an HttpOnly cookie set by the server (serve.py), so a
reload or a new tab resumes it. Every run re-checks it on the server (a few seconds' cache):
idle too long, past its time limit, signed out elsewhere, or its account disabled or changed,
and it is gone. `watch_idle()`, run every few seconds by a fragment, clears the screen when the
idle limit passes without waiting for a click (docs/security.md).
"""
from __future__ import annotations

import html

import streamlit as st

from analytics import access, auth
from analytics.access import Scope
from pages import _context, _routing
from pages._text import plain

AUTH_KEY = "auth_session"  # the signed-in analytics.auth.Session (with its server-side session id)
NOTICE_KEY = "auth_notice"  # why the last session ended, shown on the sign-in page
VIA_OIDC_KEY = "auth_via_oidc"  # the session came from the identity provider (st.login)
CLAIM_KEY = "auth_claim"  # a one-time code the browser trades for its cookie (serve.py /session/claim)
CLEAR_COOKIE_KEY = "auth_clear_cookie"  # the browser should drop its cookie (serve.py /session/end)
DEAD_TOKEN_KEY = "auth_dead_token"  # a cookie token already found ended: not asked about again
CLIENT_SCRIPT = "/session/client.js"


def client_address() -> str:
    """The address the sign-in throttle counts failures by (analytics/auth.py); "local" on this machine."""
    try:
        return st.context.ip_address or auth.LOCAL_CLIENT
    except Exception:  # AppTest has no connection
        return auth.LOCAL_CLIENT


def _cookie_token() -> str | None:
    try:
        cookies = st.context.cookies
    except Exception:
        return None
    for name in auth.COOKIE_NAMES:
        if cookies.get(name):
            return cookies.get(name)
    return None


def _ended(exc: auth.SessionEnded, token: str | None) -> None:
    """Forget the session in this tab, keep why for the sign-in page, and have the browser drop its cookie."""
    via_provider = st.session_state.pop(VIA_OIDC_KEY, False)
    st.session_state.pop(AUTH_KEY, None)
    if token:
        st.session_state[DEAD_TOKEN_KEY] = token
    if str(exc) != "Please sign in.":
        st.session_state[NOTICE_KEY] = str(exc)
    st.session_state[CLEAR_COOKIE_KEY] = True
    if via_provider:
        st.logout()  # drop the provider's cookie too, or it would sign the user straight back in


def signed_in_scope() -> Scope | None:
    """The signed-in user's scope, or None. The tab's own session, else the cookie's (a reload, a new
    tab), else the identity provider's; each checked on the server."""
    db = _context.db_file()
    page = _routing.current_page_name()
    current = st.session_state.get(AUTH_KEY)
    token = None
    try:
        if current is not None:
            fresh = auth.validate_session(db, current, page=page)
        else:
            token = _cookie_token()
            if token and token != st.session_state.get(DEAD_TOKEN_KEY) and _context.has_data():
                fresh = auth.resume(db, token=token, page=page)
            else:
                fresh = _identity_provider_session()
                if fresh is None:
                    return None
    except auth.SessionEnded as exc:
        _ended(exc, token or _cookie_token())
        return None
    st.session_state[AUTH_KEY] = fresh
    return access.scope_for(fresh, db)


def identity_provider_configured() -> bool:
    """True when secrets.toml has an [auth] section for st.login (OpenID Connect)."""
    try:
        return "auth" in st.secrets
    except Exception:  # no secrets file at all
        return False


def _identity_provider_session() -> "auth.Session | None":
    """A server-side session for the user the OIDC provider signed in (analytics.auth.session_from_identity)."""
    if not identity_provider_configured():
        return None
    try:
        if not st.user.is_logged_in:
            return None
    except Exception:
        return None
    db = _context.db_file()
    try:
        session = auth.session_from_identity(db, st.user.to_dict(), page=_routing.current_page_name())
    except auth.SignInFailed as exc:
        st.session_state[NOTICE_KEY] = str(exc)
        st.logout()
        return None
    session, code = auth.start_session(db, session, via="oidc")
    st.session_state[CLAIM_KEY] = code
    st.session_state[VIA_OIDC_KEY] = True
    return session


def current_scope() -> Scope:
    """The signed-in user's scope; a page run without one stops here with a message."""
    scope = signed_in_scope()
    if scope is None:
        st.warning(plain(st.session_state.get(NOTICE_KEY) or "Please sign in."), icon=":material/lock:")
        st.stop()
    return scope


def start_session(session: "auth.Session") -> None:
    """After a successful sign-in: a server-side session, the code for the browser's cookie, and a rerun
    into the role's own pages."""
    started, code = auth.start_session(_context.db_file(), session)
    st.session_state.clear()  # nothing of a previous user's state survives
    st.session_state[AUTH_KEY] = started
    st.session_state[CLAIM_KEY] = code
    st.rerun()


def sign_out() -> None:
    auth.sign_out(_context.db_file(), st.session_state.get(AUTH_KEY), page=_routing.current_page_name())
    via_provider = st.session_state.get(VIA_OIDC_KEY, False)
    token = _cookie_token()
    st.session_state.clear()
    st.session_state[NOTICE_KEY] = auth.SIGNED_OUT_MESSAGE
    st.session_state[CLEAR_COOKIE_KEY] = True
    if token:
        st.session_state[DEAD_TOKEN_KEY] = token
    if via_provider:
        st.logout()
    st.rerun()


def browser_cookie() -> None:
    """Have the browser fetch its session cookie after a sign-in, or drop it after a sign-out or an
    expiry: a script from this server (serve.py) posts to /session/claim or /session/end. Under plain
    `streamlit run dashboard.py` those routes do not exist and sessions last only as long as the tab."""
    code = st.session_state.pop(CLAIM_KEY, None)
    if code is not None:
        st.html(f'<script src="{CLIENT_SCRIPT}" data-claim="{html.escape(code)}"></script>', unsafe_allow_javascript=True)
    elif st.session_state.pop(CLEAR_COOKIE_KEY, False):
        st.html(f'<script src="{CLIENT_SCRIPT}" data-clear="1"></script>', unsafe_allow_javascript=True)


def idle_watch_seconds() -> float:
    """How often the page checks for idleness: a tenth of the limit, between 1 and 30 seconds."""
    return max(1.0, min(30.0, auth.idle_timeout().total_seconds() / 10))


def watch_idle() -> None:
    """Run by a fragment every `idle_watch_seconds()` (not activity): when the session has ended
    (idle, time limit, signed out elsewhere, account changed), rerun the whole app, which then shows
    the sign-in page instead of what was on screen."""
    current = st.session_state.get(AUTH_KEY)
    if current is None or current.session_id is None:
        return
    try:
        auth.resume(_context.db_file(), session_id=current.session_id, page=_routing.current_page_name(), touch=False)
    except auth.SessionEnded as exc:
        _ended(exc, _cookie_token())
        st.rerun(scope="app")


def take_sign_in_notice() -> str | None:
    return st.session_state.pop(NOTICE_KEY, None)
