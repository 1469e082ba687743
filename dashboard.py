"""Streamlit entry point: `streamlit run dashboard.py` (or `make run`)."""
import streamlit as st

st.set_page_config(page_title="Ketamine outcomes", page_icon=":material/monitoring:", layout="wide")

home = st.Page("pages/home.py", title="Home", icon=":material/home:", default=True)
st.navigation([home]).run()
