"""Visit entry on the patient page (clinician): an infusion, a clinician-rated scale (MADRS), a record's versions,
and self-report links. Everything is validated and stored by analytics.visits / analytics.selfreport;
this module only draws the forms and shows each problem next to its field.
"""
from __future__ import annotations

from datetime import date, datetime, time

import pandas as pd
import streamlit as st

from analytics import scales, selfreport, visits
from analytics.access import AccessDenied, Scope
from analytics.permissions import may
from pages._context import db_file as db_path
from pages._text import plain

FLASH = "visit_forms:flash"


def _when(day: date, at: time | None) -> datetime | date:
    return datetime.combine(day, at) if at is not None else day


def _show_errors(slots: dict, errors: dict[str, str]) -> None:
    for field, reason in errors.items():
        (slots.get(field) or slots[visits.FORM]).error(plain(reason), icon=":material/error:")
    if visits.FORM not in errors:
        slots[visits.FORM].error("Nothing was saved: fix the fields marked above.")


def _saved(message: str) -> None:
    st.session_state[FLASH] = message
    st.rerun()  # redraw the page (chart, history) with the new record


def infusion_form(scope: Scope, patient_id: str, today: date) -> None:
    with st.form(f"infusion:{patient_id}", clear_on_submit=False):
        st.markdown("**Record an infusion**")
        slots = {}
        c1, c2 = st.columns(2)
        day = c1.date_input("Date", value=today, max_value=today, key="inf_day")
        at = c2.time_input("Time", value=None, key="inf_time", help="Leave empty if the time is not known.")
        slots["administered_on"] = st.empty()
        c1, c2 = st.columns(2)
        route = c1.selectbox("Route", visits.ROUTES, index=0, key="inf_route")
        phase = c2.selectbox("Phase", visits.PHASES, index=None, key="inf_phase", placeholder="not recorded")
        slots["route"], slots["phase"] = st.empty(), st.empty()
        unit = st.radio("Dose given as", ("mg/kg", "mg (with the patient's weight)"), horizontal=True, key="inf_unit")
        c1, c2 = st.columns(2)
        dose = c1.number_input("Dose (mg/kg or mg, as chosen above)", min_value=0.0, value=None, step=0.05, key="inf_dose")
        weight = c2.number_input("Weight (kg)", min_value=0.0, value=None, step=0.5, key="inf_weight")
        slots["dose_mg_per_kg"], slots["dose_mg"], slots["weight_kg"] = st.empty(), st.empty(), st.empty()
        notes = st.text_area("Notes: side effects (blood pressure rise, dissociation, nausea...)", key="inf_notes",
                             max_chars=visits.MAX_NOTES)
        slots["notes"] = st.empty()
        correct = st.checkbox("This corrects the infusion already recorded at this date and time", key="inf_correct")
        slots[visits.FORM] = st.empty()
        submitted = st.form_submit_button("Save infusion", type="primary")
    if not submitted:
        return
    in_mg = unit.startswith("mg (")
    result = visits.record_infusion(
        db_path(), scope, patient_id, administered_at=_when(day, at), route=route, phase=phase,
        dose_mg_per_kg=None if in_mg else dose, dose_mg=dose if in_mg else None, weight_kg=weight, notes=notes,
        correct=correct)
    if result.ok:
        _saved(f"Infusion on {_when(day, at)} saved ({result.version}).")
    if in_mg and "dose_mg_per_kg" in result.errors:
        result.errors["dose_mg"] = result.errors.pop("dose_mg_per_kg")
    _show_errors(slots, result.errors)


def rating_form(scope: Scope, patient_id: str, today: date, code: str) -> None:
    """A clinician-rated scale (MADRS), item by item with the registry's wording and anchors."""
    scale = scales.get(code)
    key = code.lower().replace("-", "")  # "madrs": the widgets' keys
    between = [s for s in range(scale.item_min, scale.item_max + 1) if s not in scale.anchor_scores]
    with st.form(f"{key}:{patient_id}", clear_on_submit=False):
        st.markdown(f"**Rate a {code}** (clinician-rated; {scale.reference})."
                    + (f" Scores {', '.join(map(str, between[:-1]))} and {between[-1]} lie between the described anchors."
                       if scale.anchors and len(between) > 1 else ""))
        slots = {}
        c1, c2 = st.columns(2)
        day = c1.date_input("Date", value=today, max_value=today, key=f"{key}_day")
        at = c2.time_input("Time", value=None, key=f"{key}_time")
        slots["administered_on"] = st.empty()
        items: dict[int, int | None] = {}
        for n in range(1, scale.scored_items + 1):
            wording = f": {scale.item_wording[n - 1]}" if scale.item_wording else ""
            st.markdown(f"**{n}. {scale.item_labels[n - 1]}**{wording}")
            if scale.anchors:
                st.caption("  \n".join(f"{score}: {text}" for score, text in zip(scale.anchor_scores, scale.anchors[n - 1])))
            items[n] = st.radio(f"Item {n} score", range(scale.item_min, scale.item_max + 1), index=None, horizontal=True,
                                key=f"{key}_item_{n}", label_visibility="collapsed")
            slots[f"item_{n}"] = st.empty()
        correct = st.checkbox(f"This corrects the {code} already recorded at this date and time", key=f"{key}_correct")
        slots["total"] = st.empty()
        slots[visits.FORM] = st.empty()
        submitted = st.form_submit_button(f"Save {code}", type="primary")
    if not submitted:
        return
    result = visits.record_assessment(db_path(), scope, patient_id, code, administered_at=_when(day, at),
                                      items=items, correct=correct)
    if result.ok:
        total = sum(v for v in items.values() if v is not None)
        _saved(f"{code} on {_when(day, at)} saved ({result.version}): total {total}, {scale.band(total)}.")
    if "total" in result.errors and not scale.max_missing_prorated:  # no proration: point at each item still to rate
        for n in (n for n, v in items.items() if v is None):
            result.errors.setdefault(f"item_{n}", f"item {n} is not rated")
    _show_errors(slots, result.errors)


def history_view(scope: Scope, patient_id: str, treatments: pd.DataFrame, assessments: pd.DataFrame) -> None:
    """Every version of one chosen record: corrections never overwrite silently."""
    choices = [(f"infusion {t:%Y-%m-%d %H:%M}", t, None) for t in treatments["administered_at"].sort_values(ascending=False)]
    choices += [(f"{i} {t:%Y-%m-%d %H:%M}", t, i)
                for t, i in assessments.sort_values("administered_at", ascending=False)[["administered_at", "instrument"]].itertuples(index=False)]
    if not choices:
        return
    pick = st.selectbox("Versions of a record", range(len(choices)), format_func=lambda i: choices[i][0], key="history_pick")
    _, at, instrument = choices[pick]
    history = visits.record_history(db_path(), scope, patient_id, at, instrument)
    versions = len(history)
    st.caption("Never corrected." if versions <= 1 else f"{versions} versions, newest first (replaced_at: when that "
                                                         "version was replaced).")
    st.dataframe(history, hide_index=True, width="stretch")


def self_report_link(scope: Scope, patient_id: str) -> None:
    """Create a single-use link, to copy, open or print as a QR code; the token is shown only now."""
    with st.form(f"link:{patient_id}"):
        st.markdown("**Self-report link** (the patient needs no account; the link works once)")
        c1, c2 = st.columns(2)
        chosen = c1.multiselect("Questionnaires", selfreport.INSTRUMENTS, default=list(selfreport.INSTRUMENTS), key="link_instruments")
        hours = c2.number_input("Expires after (hours)", min_value=1, max_value=selfreport.MAX_HOURS,
                                value=selfreport.DEFAULT_HOURS, key="link_hours")
        made = st.form_submit_button("Create link")
    if made:
        try:
            link = selfreport.create_link(db_path(), scope, patient_id, chosen, hours=hours, page="patient")
        except (ValueError, AccessDenied) as exc:
            st.error(plain(str(exc)))
            return
        st.session_state[f"self_report_link:{patient_id}"] = link
    link = st.session_state.get(f"self_report_link:{patient_id}")
    if link is None:
        return
    st.code(link.url, language=None)  # has a copy button
    st.caption(f"{', '.join(link.instruments)} · works once · expires {link.expires_at:%a %d %b %H:%M}. "
               "The link is shown only now: it is stored hashed and cannot be shown again.")
    svg = selfreport.qr_svg(link.url)
    st.image(svg[svg.index("<svg"):], width=220, caption="Print for the waiting room")


def safety_flags(scope: Scope, patient_id: str | None = None, *, page: str = "patient") -> None:
    """Open safety flags (positive PHQ-9 item 9 on a self-report), each with an audited acknowledgement."""
    if patient_id is None and FLASH in st.session_state:  # the due list has no visit section to show it
        st.success(st.session_state.pop(FLASH), icon=":material/check_circle:")
    flags = selfreport.open_flags(db_path(), scope)
    if patient_id is not None:
        flags = flags[flags["patient_id"] == patient_id]
    for flag in flags.itertuples():
        with st.container(border=True):
            st.error(f"Safety flag{'' if patient_id else ' for ' + plain(flag.patient_id)}: {plain(flag.reason)} "
                     f"({flag.raised_at:%d %b %Y %H:%M}). It stays until a clinician acknowledges it.",
                     icon=":material/emergency:")
            if not may(scope, "acknowledge_safety_flag"):
                continue
            note = st.text_input("What was done (optional)", key=f"ack_note:{flag.flag_id}")
            if st.button("Acknowledge", key=f"ack:{flag.flag_id}"):
                try:
                    selfreport.acknowledge_flag(db_path(), scope, flag.flag_id, note, page=page)
                except (ValueError, AccessDenied) as exc:
                    st.warning(plain(str(exc)))
                else:
                    _saved(f"Safety flag acknowledged for {flag.patient_id}.")


def visit_entry(scope: Scope, patient_id: str, today: date, treatments: pd.DataFrame, assessments: pd.DataFrame) -> None:
    """The patient page's entry section (clinician and system roles only)."""
    if not may(scope, "record_visit"):
        return
    st.subheader("Record a visit")
    if FLASH in st.session_state:
        st.success(st.session_state.pop(FLASH), icon=":material/check_circle:")
    safety_flags(scope, patient_id)
    with st.expander("Infusion", icon=":material/vaccines:"):
        infusion_form(scope, patient_id, today)
    for code in scales.clinician_rated():
        with st.expander(f"{code} (clinician-rated)", icon=":material/assignment:"):
            rating_form(scope, patient_id, today, code)
    with st.expander("Self-report link for the patient", icon=":material/qr_code:"):
        self_report_link(scope, patient_id)
    with st.expander("Versions of a record (corrections are kept)", icon=":material/history:"):
        history_view(scope, patient_id, treatments, assessments)
