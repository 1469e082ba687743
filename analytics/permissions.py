"""Who may do what: roles x named actions, and the one check, `may(who, action)`.

Every role check in the product asks `may` with an action named here: the scoped data
layer (analytics/access.py), visit entry and self-report, exports, the admin pages and
the dashboard's page registration. A new action is one row of `ACTIONS`; a new role is
one more name in the role sets (and in `ROLES` if accounts may hold it). docs/security.md
documents every action (tests/test_access_static.py fails otherwise).

`who` is anything with a `role` (an `access.Scope`, a signed-in `auth.Session`) or a role's
name. An unknown role may do nothing. A role written `role:granted` in an action's set may
take it only while holding a grant on at least one patient (`who.granted` non-empty): a
director's patient page is useful only for the patients granted to them.
"""
from __future__ import annotations

ROLES = ("clinician", "director", "admin")  # the roles an account can hold
SYSTEM_ROLE = "system"  # the operator at the command line, who owns the database file; never an account

_CLINICAL = frozenset({"clinician", SYSTEM_ROLE})
_COHORT = frozenset({"director", "admin", SYSTEM_ROLE})
_ADMIN = frozenset({"admin", SYSTEM_ROLE})
GRANTED = ":granted"  # suffix: the role may take the action only while holding a patient grant

# action: (what it allows, the roles that may take it)
ACTIONS: dict[str, tuple[str, frozenset[str]]] = {
    # reading patient rows (analytics/access.py)
    "compute_over_all_patients": ("compute cohort figures over every patient, not only a caseload", _COHORT),
    "open_caseload_records": ("open the records of the patients filed under one's own clinician handle", frozenset({"clinician"})),
    "open_any_record": ("open any patient's record without a grant", frozenset({SYSTEM_ROLE})),
    "see_patient_rows": ("see per-patient rows and ids (the due list, patient ids in cohort charts)", _CLINICAL),
    "see_identifying_attributes": ("see patient attributes whose names look identifying", _CLINICAL),
    "view_import_history": ("see import batches (file names and row counts)", _ADMIN),
    "view_rejected_rows": ("see quarantined import rows: line, column and reason (raw text only with a break-glass grant)", _ADMIN),
    "break_glass": ("hold a time-limited break-glass grant: identifiable export and raw rejected rows", frozenset({"admin"})),
    "export_from_read_only_database": ("export a database that cannot be written (a read-only file or snapshot), "
                                       "the audit entry written beside the exported files", frozenset({SYSTEM_ROLE})),
    # writing clinical records
    "record_visit": ("record an infusion or a clinician-rated assessment; correct, re-date or void a record", _CLINICAL),
    "create_self_report_link": ("create a patient's single-use self-report link", _CLINICAL),
    "acknowledge_safety_flag": ("acknowledge a safety flag", _CLINICAL),
    # dashboard pages (registered in the navigation only for roles that may open them)
    # the due list names a caseload's patients: a director has none (their menu would hold a dead end)
    "open_page:due": ("open the due list", frozenset({"clinician", SYSTEM_ROLE})),
    "open_page:patient": ("open the patient trajectory page (a director: only while granted a patient)",
                          frozenset({"clinician", "director" + GRANTED, SYSTEM_ROLE})),
    "open_page:cohort": ("open the cohort outcomes page", frozenset({"director", SYSTEM_ROLE})),
    "open_page:durability": ("open the durability and maintenance page", frozenset({"director", SYSTEM_ROLE})),
    "open_page:data": ("open the data page (imports, history, rejects, export)", _ADMIN),
    "open_page:users": ("manage accounts and patient grants", _ADMIN),
    "open_page:audit": ("view, verify and export the audit trail", _ADMIN),
    "open_page:health": ("see the store's health: schema, integrity, audit chain, imports, disk, backups", _ADMIN),
    "open_page:method": ("read the method page", frozenset({*ROLES, SYSTEM_ROLE})),
}


def may(who, action: str) -> bool:
    """True when `who` (anything with a `role`, or a role's name) may take `action`; a misspelt
    action is an error, not a no."""
    try:
        _, roles = ACTIONS[action]
    except KeyError:
        raise KeyError(f"unknown action {action!r}; the actions are listed in analytics/permissions.py") from None
    role = who if isinstance(who, str) else getattr(who, "role", None)
    if role in roles:
        return True
    return f"{role}{GRANTED}" in roles and bool(getattr(who, "granted", None))


def page_action(page: str) -> str:
    """The action that opens a dashboard page."""
    return f"open_page:{page}"
