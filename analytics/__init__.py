"""Outcome tracking and durability analytics for ketamine clinics.

No Streamlit here: the dashboard (dashboard.py, pages/) draws what this package computes.
Importing it has no side effects; entry points tune memory themselves (analytics/memory.py).
"""
__version__ = "0.1.0"
