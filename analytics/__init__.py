"""Outcome tracking and durability analytics for ketamine clinics.

No Streamlit here: the dashboard (dashboard.py, pages/) draws what this package computes.
"""
from .allocator import return_freed_arrays_to_os

__version__ = "0.1.0"

# Every entry point (dashboard, command line, benchmark) holds cohort-sized frames: see allocator.py.
return_freed_arrays_to_os()
