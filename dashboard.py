"""Streamlit entry point: `streamlit run dashboard.py` (or `make run`).

Navigation holds the pages the signed-in user may open (pages/_routing.py `menu_for`, which asks
analytics.permissions): a page a role may not use is simply not registered for it.
A visitor who is not signed in gets the sign-in page and nothing else.
"""
import streamlit as st

from analytics import memory
from analytics.access import page_run
from pages import _notice, _page, _routing, _signin
from pages._text import plain
from pages._routing import PAGES, menu_for

memory.tune_allocator()  # cohort-sized frames: see analytics/memory.py

# An emoji favicon (drawn in the page): a Material icon one is fetched from fonts.gstatic.com, which the
# Content-Security-Policy (serve.py) refuses, since the page asks nothing of any other server.
st.set_page_config(page_title="Ketamine outcomes", page_icon="📈", layout="wide")
_routing.route_through_navigation()

# A patient's self-report link (/?token=...) needs no account: run that page alone, before any
# sign-in, so nothing else of the dashboard is reachable from it (docs/self-report.md).
if st.query_params.get("token"):
    _notice.guarded(st.navigation([st.Page("pages/self_report.py", title="Questionnaire", url_path="self-report",
                                           default=True)], position="hidden").run)
    st.stop()


def navigation_for(scope) -> dict[str, list[st.Page]]:
    sections = menu_for(scope)
    landing = next(iter(sections.values()))[0]
    pages = {
        section: [st.Page(PAGES[n][0], title=PAGES[n][1], icon=PAGES[n][2], url_path="home" if n == landing else n,
                          default=(n == landing))
                  for n in names]
        for section, names in sections.items()
    }
    # Streamlit serves the default (landing) page only at "/": its own address (a bookmarked /due or
    # /data, a reload there) would say "Page not found". The same page answers there, out of the menu.
    first = next(iter(pages))
    pages[first].append(st.Page(PAGES[landing][0], title=PAGES[landing][1], icon=PAGES[landing][2], url_path=landing,
                                visibility="hidden"))
    return pages


@st.fragment(run_every=_signin.idle_watch_seconds())
def _watch_idle() -> None:
    """Clears the screen when the session ends (idle limit, time limit, signed out elsewhere) without a click."""
    _signin.watch_idle()


# A page's audit entries are journaled rather than wait for the write lock (analytics/store.py).
# The sign-in and every page run through `_notice.guarded`: a busy, damaged or newer database, or
# any other failure, is a notice saying what to do (analytics/screens/health.py), never a traceback.
with page_run():
    scope = _notice.guarded(_signin.signed_in_scope)
    _signin.browser_cookie()  # the browser fetches its session cookie after a sign-in, drops it after one ends
    if scope is None:
        # Every page address shows the sign-in form (and nothing else), so a link such as
        # /patient?patient=ID opened before signing in is still there afterwards.
        sign_in = [st.Page("pages/login.py", title="Sign in", icon=":material/login:", url_path=name, default=(name == "login"))
                   for name in ["login", *PAGES]]
        _notice.guarded(st.navigation(sign_in, position="hidden").run)
    elif not menu_for(scope):
        st.error("Your role opens no page of this dashboard. Ask an administrator.")
    else:
        with st.sidebar:
            st.caption(f"Signed in as **{plain(scope.user)}** ({scope.role})")
            if st.button("Sign out", icon=":material/logout:", key="sign_out"):
                _signin.sign_out()
            _watch_idle()
        with _page.this_run(scope):  # the page does not work out the scope again
            _notice.guarded(st.navigation(navigation_for(scope)).run, scope=scope)
