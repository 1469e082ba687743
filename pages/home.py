import streamlit as st

from analytics import access

st.title("Ketamine clinic outcomes")
try:
    patients = access.DataAccess().patients()
except FileNotFoundError as exc:
    st.info(f"No database yet: {exc}")
else:
    st.metric("Patients", len(patients))
