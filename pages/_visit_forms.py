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
from analytics.screens import patient
from pages import _cache, _routing
from pages._context import db_file as db_path
from pages._text import plain

FLASH = "visit_forms:flash"
ROUTE_WORDS = visits.ROUTE_NAMES


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


DOSE_UNITS = ("mg/kg", "mg (with the patient's weight)", "not recorded")


def infusion_form(scope: Scope, patient_id: str, today: date, treatments: pd.DataFrame,
                  assessments: pd.DataFrame) -> None:
    """Record an infusion in two steps: the form is checked and summarised (the phase worked out
    from the course when none is chosen), and only "Save" on that summary writes it."""
    pending_key = f"infusion_pending:{patient_id}"
    with st.form(f"infusion:{patient_id}", clear_on_submit=False):
        st.markdown("**Record an infusion**")
        slots = {}
        c1, c2 = st.columns(2)
        day = c1.date_input("Date", value=today, max_value=today, key="inf_day", format="DD/MM/YYYY")
        at = c2.time_input("Time", value=None, key="inf_time", help="Leave empty if the time is not known.")
        slots["administered_on"] = st.empty()
        c1, c2 = st.columns(2)
        route = c1.selectbox("Route", visits.ROUTES, index=0, key="inf_route", format_func=ROUTE_WORDS.get)
        phase = c2.selectbox("Phase", visits.PHASES, index=None, key="inf_phase",
                             placeholder="work it out from the course",
                             help="Left empty, the phase follows the course rules (Method page): induction series, "
                                  "then maintenance, or rescue after a loss of response. The summary shows it before saving.")
        slots["route"], slots["phase"] = st.empty(), st.empty()
        unit = st.radio("Dose given as", DOSE_UNITS, horizontal=True, key="inf_unit",
                        help="Choose 'not recorded' only when the dose is not known: it leaves the dose out of dose analyses.")
        c1, c2 = st.columns(2)
        dose = c1.number_input("Dose (mg/kg or mg, as chosen above)", min_value=0.0, value=None, step=0.05, key="inf_dose")
        weight = c2.number_input("Weight (kg)", min_value=0.0, value=None, step=0.5, key="inf_weight")
        slots["dose_mg_per_kg"], slots["dose_mg"], slots["weight_kg"] = st.empty(), st.empty(), st.empty()
        notes = st.text_area("Notes: side effects (blood pressure rise, dissociation, nausea...)", key="inf_notes",
                             max_chars=visits.MAX_NOTES)
        slots["notes"] = st.empty()
        correct = st.checkbox("This corrects the infusion already recorded at this date and time", key="inf_correct")
        slots[visits.FORM] = st.empty()
        submitted = st.form_submit_button("Review before saving", type="primary")
    if submitted:
        st.session_state.pop(pending_key, None)
        in_mg, none = unit == DOSE_UNITS[1], unit == DOSE_UNITS[2]
        entry = dict(administered_at=_when(day, at), route=route, phase=phase,
                     dose_mg_per_kg=None if in_mg or none else dose, dose_mg=dose if in_mg else None,
                     weight_kg=weight, notes=notes, dose_not_recorded=none)
        checked = visits.check_infusion(db_path(), scope, patient_id, **entry, correct=correct)
        if not checked.ok:
            errors = dict(checked.errors)
            if in_mg and "dose_mg_per_kg" in errors:
                errors["dose_mg"] = errors.pop("dose_mg_per_kg")
            _show_errors(slots, errors)
            return
        why = "as chosen"
        if checked.phase is None:
            entry["phase"], why = patient.derived_phase(patient_id, treatments, assessments, checked.administered_at,
                                                        checked.has_time)
            why = "worked out from the course: " + why
        st.session_state[pending_key] = {"entry": {**entry, "correct": correct}, "checked": checked, "phase_why": why}
    pending = st.session_state.get(pending_key)
    if pending:
        _infusion_summary(scope, patient_id, pending, pending_key)


def _infusion_summary(scope: Scope, patient_id: str, pending: dict, pending_key: str) -> None:
    entry, checked = pending["entry"], pending["checked"]
    details = checked.details
    if checked.dose_mg_per_kg is None:
        dose = "not recorded"
    else:
        dose = f"{checked.dose_mg_per_kg:.3g} mg/kg"
        if details.get("dose_mg") is not None:
            dose += f" ({details['dose_mg']:g} mg for {details['weight_kg']:g} kg)"
    rows = [
        ("Patient", patient_id),
        ("Date and time", f"{checked.administered_at:%a %d %b %Y}" + (f" at {checked.administered_at:%H:%M}"
                                                                   if checked.has_time else " (time not known)")),
        ("Route", ROUTE_WORDS.get(checked.route, checked.route)),
        ("Dose", dose),
        ("Weight", "not given" if details.get("weight_kg") is None else f"{details['weight_kg']:g} kg"),
        ("Phase", f"{entry['phase']} ({pending['phase_why']})"),
        ("Notes", details.get("notes") or "none"),
        ("Saved as", "a correction of the infusion recorded at this date and time" if entry["correct"]
         else "a new infusion"),
    ]
    with st.container(border=True, key=f"infusion_summary_{patient_id}"):
        st.markdown("**Check before saving: this is what will be saved**")
        # st.table renders its cells as markdown: every value (the notes are free text) as literal text
        st.table(pd.DataFrame([(k, plain(v, limit=None)) for k, v in rows], columns=["", "will be saved"]).set_index(""))
        slot = st.empty()
        save_col, back_col = st.columns([1, 3])
        if save_col.button("Save infusion", type="primary", key="inf_save"):
            result = visits.record_infusion(db_path(), scope, patient_id, **entry)
            if result.ok:
                st.session_state.pop(pending_key, None)
                _saved(f"Infusion of {checked.administered_at:%d %b %Y}"
                       + (f" {checked.administered_at:%H:%M}" if checked.has_time else "")
                       + f" saved ({ {'new': 'new record', 'corrected': 'correction saved as a new version', 'unchanged': 'nothing changed'}.get(result.version, result.version)}).")
            slot.error(plain("Nothing was saved: " + "; ".join(result.errors.values())), icon=":material/error:")
        if back_col.button("Change something", key="inf_back"):
            st.session_state.pop(pending_key, None)
            st.rerun()


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


def record_tools(scope: Scope, patient_id: str, today: date, treatments: pd.DataFrame, assessments: pd.DataFrame,
                 voided: pd.DataFrame | None = None, voided_records: dict | None = None) -> None:
    """One record's versions (corrections never overwrite silently), and, for a mistaken record, moving
    it to the right date or voiding it with a reason (analytics.visits: both kept and audited)."""
    choices = [(f"infusion of {_words(t)}", t, None, False) for t in treatments["administered_at"].sort_values(ascending=False)]
    choices += [(f"{i} of {_words(t)}", t, i, False) for t, i in assessments.sort_values(
        "administered_at", ascending=False)[["administered_at", "instrument"]].itertuples(index=False)]
    for kind, frame in (voided_records or {}).items():
        for r in frame.to_dict("records"):
            what = "infusion" if kind == "treatments" else r["instrument"]
            choices.append((f"voided: {what} of {_words(r['administered_at'])}", r["administered_at"],
                            None if kind == "treatments" else r["instrument"], True))
    if not choices:
        st.caption("No records yet.")
        return
    # Chosen by its label, not its position: after a save, void or re-date the list changes, and a record
    # that is gone falls back to the newest one instead of showing one label over another record.
    by_label = {c[0]: c for c in choices}
    pick = st.selectbox("Record", list(by_label), key="history_pick")
    label, at, instrument, is_voided = by_label[pick]
    history = patient.record_history(_cache.workspace(scope), patient_id, at, instrument)
    versions = len(history)
    st.caption("Never corrected." if versions <= 1 else f"{versions} versions, newest first.")
    st.dataframe(patient.version_rows(history), hide_index=True, width="stretch")
    if is_voided or not may(scope, "record_visit"):
        return
    what = label.split(" of ")[0]
    date_col, void_col = st.columns(2)
    with date_col, st.form(f"redate:{patient_id}", clear_on_submit=False):
        st.markdown(f"**Correct the date** of this {what}")
        slots = {}
        c1, c2 = st.columns(2)
        day = c1.date_input("Right date", value=pd.Timestamp(at).date(), max_value=today, key=f"redate_day:{label}",
                            format="DD/MM/YYYY")  # keyed by the record: another record starts from its own date
        stamp = pd.Timestamp(at)
        time_at = c2.time_input("Right time", value=None if stamp == stamp.normalize() else stamp.time(), key=f"redate_time:{label}",
                                help="Leave empty if the time is not known.")
        slots["new_administered_on"] = st.empty()
        reason = st.text_input("Why", key=f"redate_reason:{label}", placeholder="e.g. typed yesterday's date", max_chars=visits.MAX_REASON)
        slots["correction_reason"] = st.empty()
        slots[visits.FORM] = st.empty()
        if st.form_submit_button("Move to this date"):
            result = visits.correct_date(db_path(), scope, patient_id, at, _when(day, time_at), instrument, reason=reason)
            if result.ok:
                _saved(result.message + " The record at the wrong date is kept, voided, in its history.")
            _show_errors(slots, {("new_administered_on" if k == "administered_on" else k): v for k, v in result.errors.items()})
    with void_col, st.form(f"void:{patient_id}", clear_on_submit=False):
        st.markdown(f"**Void** this {what} (it did not happen, or belongs to another patient)")
        slots = {}
        reason = st.text_input("Why", key=f"void_reason:{label}", placeholder="e.g. entered for the wrong patient",
                               max_chars=visits.MAX_REASON)
        slots["void_reason"] = st.empty()
        sure = st.checkbox("Leave it out of every analysis (it stays in the record's history)", key=f"void_sure:{label}")
        slots[visits.FORM] = st.empty()
        if st.form_submit_button("Void this record"):
            if not sure:
                slots[visits.FORM].error("Tick the box above to confirm: nothing was voided.", icon=":material/error:")
            else:
                result = visits.void_record(db_path(), scope, patient_id, at, instrument, reason=reason)
                if result.ok:
                    _saved(result.message + " It stays in its history with your name and reason.")
                _show_errors(slots, result.errors)
    if voided is not None and len(voided):
        st.markdown("**Voided records of this patient**")
        st.dataframe(voided, hide_index=True, width="stretch")


def _words(at) -> str:
    at = pd.Timestamp(at)
    return f"{at:%d %b %Y}" + ("" if at == at.normalize() else f" {at:%H:%M}")


def self_report_link(scope: Scope, patient_id: str, *, page: str = "patient") -> None:
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
            link = selfreport.create_link(db_path(), scope, patient_id, chosen, hours=hours, page=page,
                                          request=_request_address(), port=st.get_option("server.port"))
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
    if link.local:
        # A QR code of a localhost address would be printed and then fail on every phone.
        st.warning("This address points at this computer itself (localhost), so a patient's phone cannot open it "
                   "and no QR code is shown. Open the dashboard by the address patients can reach, or ask your "
                   f"administrator to set {selfreport.BASE_URL_ENV} to it.", icon=":material/phonelink_off:")
        if not st.checkbox("Show the QR code anyway (for a test on this computer)", key=f"local_qr:{link.link_id}"):
            return
    svg = selfreport.qr_svg(link.url)
    st.image(svg[svg.index("<svg"):], width=220, caption="Print for the waiting room")


def _request_address() -> str | None:
    """The dashboard's address as this browser reached it (st.context: the page's URL, else the Host header)."""
    try:
        url, headers = st.context.url, st.context.headers.to_dict()
    except Exception:  # no browser behind this run (AppTest)
        return None
    return selfreport.request_base_url(url, headers, page_names=(*_routing.PAGES, "login"))


def safety_flags(scope: Scope, patient_id: str | None = None, *, page: str = "patient",
                 flags: pd.DataFrame | None = None) -> None:
    """Open safety flags (positive PHQ-9 item 9 on a self-report), each with an audited acknowledgement;
    `flags`: the open flags this page run has just read (the due list's), else they are read here."""
    if patient_id is None and FLASH in st.session_state:  # the due list has no visit section to show it
        st.success(st.session_state.pop(FLASH), icon=":material/check_circle:")
    if flags is None:
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


SECTION_KEY = "visit_section_{}"  # each section's open state in st.session_state (True: open)


def _section(label: str, name: str, icon: str):
    return st.expander(label, icon=icon, key=SECTION_KEY.format(name), on_change="rerun")


def visit_entry(scope: Scope, patient_id: str, today: date, treatments: pd.DataFrame, assessments: pd.DataFrame) -> None:
    """The patient page's entry section (clinician and system roles only).

    Each section's form is built only while its section is open (`.open`): a closed section draws
    nothing inside it, so a page run does not build four forms nobody sees, nor read the newest
    record's version history (most of the patient page's server time before, docs/performance.md)."""
    if not may(scope, "record_visit"):
        return
    st.subheader("Record a visit")
    if FLASH in st.session_state:
        st.success(st.session_state.pop(FLASH), icon=":material/check_circle:")
    safety_flags(scope, patient_id)
    # Keyed expanders keep their open state across reruns: a save, an error or a summary never folds the
    # form away under the user (an unkeyed one closes when the elements above it change).
    with _section("Infusion", "infusion", ":material/vaccines:") as section:
        if section.open:
            infusion_form(scope, patient_id, today, treatments, assessments)
    for code in scales.clinician_rated():
        with _section(f"{code} (clinician-rated)", f"rating_{code}", ":material/assignment:") as section:
            if section.open:
                rating_form(scope, patient_id, today, code)
    with _section("Self-report link for the patient", "link", ":material/qr_code:") as section:
        if section.open:
            self_report_link(scope, patient_id)
    with _section("Correct, re-date or void a record (every version is kept)", "records", ":material/history:") as section:
        if section.open:
            voided = patient.voided_records(_cache.workspace(scope), patient_id)
            record_tools(scope, patient_id, today, treatments, assessments, patient.voided_list(voided), voided)
