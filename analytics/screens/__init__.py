"""What each dashboard page shows: one module per page, each with a function that returns a
dataclass the page only draws (cohort, patient, due, durability, data, method).

A screen function takes a `Workspace` (workspace.py: one scope's view of one data version,
with the cohort-wide tables built once) and the page's inputs (filters, a patient id, today).
Pages and the benchmark call the same functions, so what is measured is what is drawn.
No Streamlit here.
"""
