"""Streamlit entry point: `streamlit run dashboard.py` (or `make run`).

Navigation is built from ROLE_PAGES, the one table of which role may open
which page: a page a role may not use is simply not registered for it.
A visitor who is not signed in gets the sign-in page and nothing else.
"""
import streamlit as st

from pages import _session as session

session.route_through_navigation()
st.set_page_config(page_title="Ketamine outcomes", page_icon=":material/monitoring:", layout="wide")

# A patient's self-report link (/?token=...) needs no account: run that page alone, before any
# sign-in, so nothing else of the dashboard is reachable from it (docs/self-report.md).
if st.query_params.get("token"):
    st.navigation([st.Page("pages/self_report.py", title="Questionnaire", url_path="self-report", default=True)],
                  position="hidden").run()
    st.stop()

# name: (file, title, icon)
PAGES = {
    "patient": ("pages/patient.py", "Patient trajectory", ":material/person:"),
    "due": ("pages/due.py", "Due list", ":material/event_upcoming:"),
    "cohort": ("pages/cohort.py", "Cohort outcomes", ":material/groups:"),
    "durability": ("pages/durability.py", "Durability and maintenance", ":material/timeline:"),
    "data": ("pages/data.py", "Data", ":material/upload_file:"),
    "method": ("pages/method.py", "Method", ":material/menu_book:"),
    "users": ("pages/admin_users.py", "Users", ":material/manage_accounts:"),
    "audit": ("pages/audit_log.py", "Audit trail", ":material/policy:"),
}

# Sections per role; the first page listed is the role's landing page.
ROLE_PAGES: dict[str, dict[str, list[str]]] = {
    "clinician": {"Clinic": ["due", "patient"], "About": ["method"]},
    "director": {"Clinic": ["cohort", "durability", "due", "patient"], "About": ["method"]},
    "admin": {"Administration": ["data", "users", "audit"], "About": ["method"]},
    "system": {"Clinician": ["due", "patient"], "Director": ["cohort", "durability"],
               "Administration": ["data", "users", "audit"], "About": ["method"]},
}


def navigation_for(role: str) -> dict[str, list[st.Page]]:
    sections = ROLE_PAGES.get(role, {"About": ["method"]})
    landing = next(iter(sections.values()))[0]
    return {
        section: [st.Page(PAGES[n][0], title=PAGES[n][1], icon=PAGES[n][2], url_path=n, default=(n == landing))
                  for n in names]
        for section, names in sections.items()
    }


scope = session.signed_in_scope()
if scope is None:
    # Every page address shows the sign-in form (and nothing else), so a link such as
    # /patient?patient=ID opened before signing in is still there afterwards.
    sign_in = [st.Page("pages/login.py", title="Sign in", icon=":material/login:", url_path=name, default=(name == "login"))
               for name in ["login", *PAGES]]
    st.navigation(sign_in, position="hidden").run()
else:
    with st.sidebar:
        st.caption(f"Signed in as **{scope.user}** ({scope.role})")
        if st.button("Sign out", icon=":material/logout:", key="sign_out"):
            session.sign_out()
    st.navigation(navigation_for(scope.role)).run()
