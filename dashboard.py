"""Streamlit entry point: `streamlit run dashboard.py` (or `make run`).

Navigation is built from ROLE_PAGES, the one table of which role may open
which page: a page a role may not use is simply not registered for it.
"""
import streamlit as st

from pages._session import current_scope

st.set_page_config(page_title="Ketamine outcomes", page_icon=":material/monitoring:", layout="wide")

# name: (file, title, icon)
PAGES = {
    "patient": ("pages/patient.py", "Patient trajectory", ":material/person:"),
    "due": ("pages/due.py", "Due list", ":material/event_upcoming:"),
    "cohort": ("pages/cohort.py", "Cohort outcomes", ":material/groups:"),
    "durability": ("pages/durability.py", "Durability and maintenance", ":material/timeline:"),
    "data": ("pages/data.py", "Data", ":material/upload_file:"),
    "method": ("pages/method.py", "Method", ":material/menu_book:"),
}

# Sections per role; the first page listed is the role's landing page.
ROLE_PAGES: dict[str, dict[str, list[str]]] = {
    "clinician": {"Clinic": ["due", "patient"], "About": ["method"]},
    "director": {"Clinic": ["cohort", "durability", "due", "patient"], "About": ["method"]},
    "admin": {"Administration": ["data"], "About": ["method"]},
    "system": {"Clinician": ["due", "patient"], "Director": ["cohort", "durability"],
               "Administration": ["data"], "About": ["method"]},
}


def navigation_for(role: str) -> dict[str, list[st.Page]]:
    sections = ROLE_PAGES.get(role, {"About": ["method"]})
    landing = next(iter(sections.values()))[0]
    return {
        section: [st.Page(PAGES[n][0], title=PAGES[n][1], icon=PAGES[n][2], url_path=n, default=(n == landing))
                  for n in names]
        for section, names in sections.items()
    }


st.navigation(navigation_for(current_scope().role)).run()
