"""Outcome tracking and durability analytics for ketamine clinics.

No Streamlit here: the dashboard (dashboard.py, pages/) draws what this package computes.
"""
__version__ = "0.1.0"
