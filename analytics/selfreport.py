"""Patient self-report by link: links, submission, safety flags, cadence, reminders.

A clinician creates a link for one patient and one or two self-rated questionnaires
(the registry's self-rated scales: PHQ-9, GAD-7). The token is
`secrets.token_urlsafe(32)` (256 random bits); only its
SHA-256 is stored, so the database cannot hand out a working link. A link works once
and expires (default 72 hours). Submitting stores the answers with rater "self"
through the import's path (`ingest.import_tables`), marks the link used, and, when
PHQ-9 item 9 is above 0 (a safety flag whatever the total, Kroenke 2001; see
docs/clinical-rules.md), raises a flag on the patient that stays until a clinician acknowledges it.
Each step is audited; the token never is. The patient-facing page learns only which
questionnaires to show: never the patient's id, name or any other data.

Sending a link by SMS or e-mail is an optional adapter (`Messenger`), off by default.
"""
from __future__ import annotations

import hashlib
import io
import os
import secrets
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Protocol
from urllib.parse import urlencode, urlsplit, urlunsplit

import pandas as pd

from . import audit, clinic_time, scales, store, throttle
from .access import AccessDenied, DataAccess, Scope
from .permissions import may
from .ingest import import_tables, rules

INSTRUMENTS = scales.self_rated()  # a link may ask for the scales a patient fills in alone (PHQ-9, GAD-7)
DEFAULT_HOURS = 72
MAX_HOURS = 24 * 30
TOKEN_BYTES = 32
SELF_ACTOR = "self-report"  # the audit actor for what a patient does through a link
PAGE = "self_report"
BASE_URL_ENV = "OUTCOMES_BASE_URL"  # the dashboard's address as patients reach it, e.g. https://outcomes.clinic.example
PORT_ENV = "PORT"  # the port `make run PORT=...` serves on: only for a link nobody gave an address for
DEFAULT_PORT = 8501
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1", "0.0.0.0", "[::1]")
# Shown to a patient who answers PHQ-9 item 9 above 0. Override with OUTCOMES_CRISIS_MESSAGE.
DEFAULT_CRISIS_MESSAGE = (
    "If you are thinking about hurting yourself or that you would be better off dead, please reach out now. "
    "In the US, call or text 988 (the 988 Suicide & Crisis Lifeline), available 24 hours a day. "
    "If you are in immediate danger, call 911 or go to the nearest emergency department. "
    "Your care team will see your answers, but this form is not watched around the clock."
)


class LinkRefused(Exception):
    """A link that cannot be used. `reason` is for the audit trail; str() is safe to show anyone."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


REFUSALS = {
    "invalid": "This link is not valid. Please check it, or ask your clinic for a new one.",
    "expired": "This link has expired. Please ask your clinic for a new one.",
    "used": "This link has already been used, so your answers were received. Thank you. "
            "Ask your clinic for a new link if you need to answer again.",
    "busy": "This page is busy just now. Please try again in a minute.",
}

# Openings of links are audited without anyone signed in: at most one entry per link a minute, and
# at most OUTCOMES_SELF_REPORT_OPENINGS_PER_MINUTE (120) a minute in all, beyond which openings are
# refused ("busy") and write nothing, so a flood of requests cannot flood the audit trail.
_openings = throttle.AnonymousWrites(per_key=60.0, per_minute=int(os.environ.get("OUTCOMES_SELF_REPORT_OPENINGS_PER_MINUTE", "120")))


def crisis_message() -> str:
    return os.environ.get("OUTCOMES_CRISIS_MESSAGE") or DEFAULT_CRISIS_MESSAGE


def hash_token(token: str) -> str:
    return hashlib.sha256(str(token).encode("utf-8")).hexdigest()


def _checked_base(url: str, where: str) -> str:
    """An http(s) address with a host, without a query or a trailing slash; ValueError naming `where`."""
    parts = urlsplit(str(url).strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{where} must be the dashboard's address as patients reach it, such as "
                         f"https://outcomes.clinic.example or http://192.168.1.20:8501; got {str(url)[:200]!r}")
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def request_base_url(request_url: str | None = None, headers: dict | None = None,
                     page_names: tuple[str, ...] = ()) -> str | None:
    """The dashboard's address as the clinician's browser reached it: `request_url` (the page's
    address, st.context.url) without its page name, else the request's Host header (behind a proxy,
    X-Forwarded-Host and X-Forwarded-Proto), else None."""
    if request_url:
        parts = urlsplit(request_url)
        if parts.scheme in ("http", "https") and parts.hostname:
            path = parts.path.rstrip("/")
            head, _, last = path.rpartition("/")
            if last in page_names:
                path = head
            return urlunsplit((parts.scheme, parts.netloc, path, "", ""))
    lowered = {str(k).lower(): str(v) for k, v in (headers or {}).items()}
    host = (lowered.get("x-forwarded-host") or lowered.get("host") or "").split(",")[0].strip()
    if host:
        scheme = (lowered.get("x-forwarded-proto") or "http").split(",")[0].strip().lower()
        try:
            return _checked_base(f"{scheme}://{host}", "the request's address")
        except ValueError:
            return None
    return None


def base_url(explicit: str | None = None, *, request: str | None = None, port: int | None = None) -> str:
    """Where a self-report link points, one rule for the page and the command line:
    `explicit` (--base-url), else $OUTCOMES_BASE_URL, else `request` (the address the clinician's
    browser used, request_base_url), else http://localhost:<port, $PORT or 8501>, which only this
    computer can open (`is_local_address`: no QR code unless asked)."""
    if explicit:
        return _checked_base(explicit, "the link's address (--base-url)")
    configured = os.environ.get(BASE_URL_ENV, "").strip()
    if configured:
        return _checked_base(configured, BASE_URL_ENV)
    if request:
        return _checked_base(request, "the request's address")
    port = port or os.environ.get(PORT_ENV, "").strip() or DEFAULT_PORT
    return f"http://localhost:{port}"


def is_local_address(url: str) -> bool:
    """True when `url` points at the computer that opens it (localhost, 127.x): a phone cannot reach it."""
    host = (urlsplit(url).hostname or "").lower()
    return host in LOCAL_HOSTS or host.startswith("127.") or host.endswith(".localhost")


def link_url(token: str, base: str | None = None) -> str:
    return f"{base_url(base)}/?{urlencode({'token': token})}"


def _now() -> datetime:
    """The clinic's wall-clock time (stored times are clinic time, analytics/clinic_time.py)."""
    return clinic_time.now().replace(microsecond=0)


def parse_instruments(text: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """'PHQ-9,GAD-7' -> ('PHQ-9', 'GAD-7'); only self-rated scales; ValueError naming the bad one."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n and n.strip()]
    if not names:
        raise ValueError(f"name at least one instrument: {', '.join(INSTRUMENTS)}")
    codes = []
    for name in names:
        scale = scales.resolve(name)
        if scale is None or scale.code not in INSTRUMENTS:
            raise ValueError(f"instrument {name!r} cannot be self-reported by link; choose from {', '.join(INSTRUMENTS)}")
        if scale.code not in codes:
            codes.append(scale.code)
    return tuple(codes)


# --- links ---------------------------------------------------------------------------

@dataclass(frozen=True)
class CreatedLink:
    link_id: int
    url: str  # holds the token: shown once to the clinician, never stored
    instruments: tuple[str, ...]
    expires_at: datetime

    @property
    def local(self) -> bool:
        """The link points at this computer (localhost): a patient's phone cannot open it."""
        return is_local_address(self.url)


def create_link(db, scope: Scope, patient_id: str, instruments, *, hours: float = DEFAULT_HOURS,
                base: str | None = None, request: str | None = None, port: int | None = None,
                now: datetime | None = None, page: str | None = None) -> CreatedLink:
    """A new single-use link for one patient; ValueError or AccessDenied name what is wrong.
    Its address: `base` (--base-url), else $OUTCOMES_BASE_URL, else `request` (the address the
    clinician's browser used), else localhost (`base_url`)."""
    codes = parse_instruments(instruments)
    base = base_url(base, request=request, port=port)  # a bad address is refused before anything is stored
    hours = float(hours)
    if not 0 < hours <= MAX_HOURS:
        raise ValueError(f"a link must expire within 0-{MAX_HOURS} hours, got {hours:g}")
    patient_id = str(patient_id).strip()
    refusal = None
    if not may(scope, "create_self_report_link"):
        refusal = f"the {scope.role} role cannot create self-report links"
    elif not DataAccess(db, scope).can_see_patient(patient_id):
        refusal = f"no patient {patient_id[:64]!r} in your caseload"
    if refusal:  # a refused write is audited too
        audit.append(db, scope.user, "self_report_link", role=scope.role, outcome="denied", page=page,
                     patients=[patient_id[:64]], detail={"reason": refusal})
        raise AccessDenied(refusal)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    created = now or _now()
    expires = created + timedelta(hours=hours)
    with store.transaction(db) as con:
        link_id = con.execute(
            """INSERT INTO self_report_links (token_sha256, patient_id, instruments, created_at, created_by, expires_at)
               VALUES (?, ?, ?, ?, ?, ?) RETURNING link_id""",
            [hash_token(token), patient_id, ",".join(codes), created, scope.user, expires]).fetchall()[0][0]
        audit.append(db, scope.user, "self_report_link", role=scope.role, page=page, patients=[patient_id],
                     detail={"link": link_id, "instruments": list(codes), "expires_at": expires.isoformat()}, con=con)
    return CreatedLink(link_id, link_url(token, base), codes, expires)


@dataclass(frozen=True)
class OpenLink:
    """What the patient-facing page may know: which questionnaires, and until when."""
    link_id: int
    instruments: tuple[str, ...]
    expires_at: datetime


def _lookup(con, token: str) -> tuple | None:
    rows = con.execute(
        "SELECT link_id, patient_id, instruments, expires_at, used_at FROM self_report_links WHERE token_sha256 = ?",
        [hash_token(token)]).fetchall()
    return rows[0] if rows else None


def _refusal(row, now: datetime) -> str | None:
    if row is None:
        return "invalid"
    if row[4] is not None:
        return "used"
    if row[3] <= now:
        return "expired"
    return None


def open_link(db, token: str, *, now: datetime | None = None) -> OpenLink:
    """Check a token and audit the opening; LinkRefused (a message safe to show) when it cannot be used."""
    now = now or _now()
    token = str(token or "")[:200]
    with store.transaction(db) as con:  # a write: the opening is audited, allowed or not (once a minute per link)
        row = _lookup(con, token) if token else None
        reason = _refusal(row, now)
        patients = [row[1]] if row is not None else []
        detail = {"link": row[0]} if row is not None else {}
        # per database: one process may serve several (a test run on both backends, a server's two stores)
        decision = _openings.decide(f"{store.label(db)}:{hash_token(token)}:{reason or 'ok'}", time.monotonic())
        if decision == "busy":
            reason = "busy"  # nothing is written
        elif decision == "repeat":
            pass  # the same opening, with the same outcome, was recorded less than a minute ago
        elif reason:
            audit.append(db, SELF_ACTOR, "self_report_open", outcome="denied", page=PAGE, patients=patients,
                         detail={**detail, "reason": reason}, con=con)
        else:
            audit.append(db, SELF_ACTOR, "self_report_open", page=PAGE, patients=patients, detail=detail, con=con)
    if reason:
        raise LinkRefused(reason, REFUSALS[reason])
    return OpenLink(row[0], tuple(row[2].split(",")), row[3])


# --- submission ----------------------------------------------------------------------------

@dataclass
class Submission:
    ok: bool
    errors: dict[str, str]  # "PHQ-9 item_3" -> reason (form problems), "form" -> refusal
    safety_flag: bool = False
    crisis_message: str | None = None


def _answers_rows(link: OpenLink, answers: dict[str, dict[int, int | None]], when: str,
                  errors: dict[str, str]) -> list[dict[str, str]]:
    """One raw assessment row per questionnaire of the link; unanswered questions go to `errors`."""
    from .visits import assessment_row

    rows = []
    for code in link.instruments:
        scale = scales.get(code)
        given = {int(k): v for k, v in (answers.get(code) or {}).items()}
        for n in range(1, scale.scored_items + 1):  # a self-report is complete: no proration of skipped answers
            if given.get(n) is None:
                errors[f"{code} item_{n}"] = f"please answer question {n}"
        rows.append(assessment_row("-", code, when, given, None, "self"))
    return rows


def submit(db, token: str, answers: dict[str, dict[int, int | None]], *, now: datetime | None = None) -> Submission:
    """Store a patient's answers through a link, once. LinkRefused when the link cannot be used."""
    now = now or clinic_time.now()  # to the microsecond: two reports of one patient never share a key
    link = _peek(db, token, now)
    unexpected = sorted(set(answers) - set(link.instruments))
    errors: dict[str, str] = {f"{c}": "this link does not ask for this questionnaire" for c in unexpected}
    rows = _answers_rows(link, answers, now.isoformat(timespec="microseconds"), errors)
    for row in rows:  # the import's own checks (ranges) before anything is written
        validated = rules.validate("assessments", pd.DataFrame([row], dtype="str"), now=now)
        for column, reason in zip(validated.rejects["column"], validated.rejects["reason"]):
            errors.setdefault(f"{row['instrument']} {column}", str(reason))
    if errors:
        return Submission(False, errors)
    state: dict = {}

    def after(con, report):
        row = _lookup(con, token)
        reason = _refusal(row, now)
        if reason:  # used or expired since it was opened: roll the answers back
            raise LinkRefused(reason, REFUSALS[reason])
        if report.rejects or sum(f.rows_inserted for f in report.files) != len(rows):
            raise LinkRefused("invalid", "Your answers could not be saved. Please ask your clinic for a new link.")
        link_id, patient_id = row[0], row[1]
        # Single use is the database's to enforce: two servers submitting one link at once (PostgreSQL)
        # both pass the check above, and only the first UPDATE finds the link unused.
        if not con.execute("UPDATE self_report_links SET used_at = ? WHERE link_id = ? AND used_at IS NULL "
                           "RETURNING link_id", [now, link_id]).fetchall():
            raise LinkRefused("used", REFUSALS["used"])
        audit.append(db, SELF_ACTOR, "self_report_submit", page=PAGE, patients=[patient_id],
                     detail={"link": link_id, "instruments": list(link.instruments)}, con=con)
        for code in link.instruments:  # a safety item above 0 raises a flag whatever the total
            scale = scales.get(code)
            answer = (answers.get(code) or {}).get(scale.safety_item) if scale.safety_item else None
            if answer is None or int(answer) <= 0:
                continue
            flag_id = con.execute(
                """INSERT INTO safety_flags (patient_id, raised_at, reason, link_id) VALUES (?, ?, ?, ?) RETURNING flag_id""",
                [patient_id, now, f"{code} item {scale.safety_item} answered {int(answer)} on a self-report",
                 link_id]).fetchall()[0][0]
            audit.append(db, SELF_ACTOR, "safety_flag_raise", page=PAGE, patients=[patient_id],
                         detail={"flag": flag_id, "link": link_id, "item": scale.safety_column}, con=con)  # not the answer: admins read the trail
            state["flag"] = True

    # The patient id is filled in only here, from the stored link: the page never holds it.
    patient_id = _patient_of(db, token)
    frame = pd.DataFrame([{**r, "patient_id": patient_id} for r in rows], dtype="str")
    report = import_tables({"assessments": frame}, file_name=f"self-report link {link.link_id}", source="ui",
                           db=db, user=SELF_ACTOR, after_write=after)
    if report.error:
        return Submission(False, {"form": "Your answers could not be saved just now. Please try again in a minute."})
    flagged = bool(state.get("flag"))
    return Submission(True, {}, flagged, crisis_message() if flagged else None)


def _peek(db, token: str, now: datetime) -> OpenLink:
    """Check a token without auditing (the opening was audited); LinkRefused when unusable."""
    with store.connect(db) as con:
        row = _lookup(con, str(token or "")[:200])
    reason = _refusal(row, now)
    if reason:
        raise LinkRefused(reason, REFUSALS[reason])
    return OpenLink(row[0], tuple(row[2].split(",")), row[3])


def _patient_of(db, token: str) -> str:
    with store.connect(db) as con:
        return con.execute("SELECT patient_id FROM self_report_links WHERE token_sha256 = ?",
                           [hash_token(token)]).fetchall()[0][0]


# --- safety flags ------------------------------------------------------------------------------

def open_flags(db, scope: Scope) -> pd.DataFrame:
    """Unacknowledged safety flags of the patients the scope may open."""
    return DataAccess(db, scope).safety_flags(open_only=True)


def acknowledge_flag(db, scope: Scope, flag_id: int, note: str = "", *, page: str | None = None) -> None:
    """A clinician has seen the flag (and acted); audited in the same transaction. ValueError/AccessDenied."""
    if not may(scope, "acknowledge_safety_flag"):
        raise AccessDenied(f"the {scope.role} role cannot acknowledge safety flags")
    flags = DataAccess(db, scope).safety_flags(open_only=False)
    match = flags[flags["flag_id"] == int(flag_id)]
    if match.empty:
        audit.append(db, scope.user, "safety_flag_ack", role=scope.role, outcome="denied", page=page,
                     detail={"flag": int(flag_id), "reason": "not a flag of a patient in the caseload"})
        raise AccessDenied(f"no safety flag {int(flag_id)} for a patient in your caseload")
    if pd.notna(match["acknowledged_at"].iloc[0]):
        raise ValueError(f"safety flag {int(flag_id)} was already acknowledged by {match['acknowledged_by'].iloc[0]}")
    patient_id = match["patient_id"].iloc[0]
    note = (note or "").strip()[:1000]
    with store.transaction(db) as con:
        changed = con.execute(
            """UPDATE safety_flags SET acknowledged_at = ?, acknowledged_by = ?, acknowledgement_note = ?
               WHERE flag_id = ? AND acknowledged_at IS NULL RETURNING flag_id""",
            [_now(), scope.user, note or None, int(flag_id)]).fetchall()
        if not changed:
            raise ValueError(f"safety flag {int(flag_id)} was acknowledged meanwhile")
        audit.append(db, scope.user, "safety_flag_ack", role=scope.role, page=page, patients=[patient_id],
                     detail={"flag": int(flag_id), "note_given": bool(note)}, con=con)


# --- when a self-report is due -------------------------------------------------------------------

@dataclass(frozen=True)
class Cadence:
    """Ask for a self-report every `every_days` days, and `before_infusion_days` before a due infusion.
    None switches a rule off."""
    every_days: int | None = 7
    before_infusion_days: int | None = 1

    @classmethod
    def from_env(cls) -> "Cadence":
        """OUTCOMES_SELF_REPORT_EVERY_DAYS / OUTCOMES_SELF_REPORT_BEFORE_INFUSION_DAYS (a number, or "off")."""
        def read(name: str, default: int) -> int | None:
            text = os.environ.get(name, "").strip().lower()
            if not text:
                return default
            if text in ("off", "none", "0"):
                return None
            if not text.isdigit():
                raise ValueError(f"{name} must be a whole number of days or 'off', got {text!r}")
            return int(text)
        return cls(read("OUTCOMES_SELF_REPORT_EVERY_DAYS", 7), read("OUTCOMES_SELF_REPORT_BEFORE_INFUSION_DAYS", 1))


def self_reports_due(patients: pd.DataFrame, assessments: pd.DataFrame, today: date,
                     next_infusion: pd.DataFrame | None = None, cadence: Cadence = Cadence()) -> pd.DataFrame:
    """Per patient: last_self_report, self_report_due (bool) and self_report_reason.

    `next_infusion`: patient_id, next_due_on (e.g. intervals.py suggestions) or None.
    A self-report is a PHQ-9 or GAD-7 with rater "self".
    """
    mine = assessments[assessments["instrument"].isin(INSTRUMENTS)]
    if "rater" in mine:
        mine = mine[mine["rater"].astype("str").str.lower() == "self"]
    last = mine.groupby("patient_id")["administered_at"].max()
    out = pd.DataFrame({"patient_id": patients["patient_id"].astype("str")})
    # dict lookups: Series.map with an empty datetime Series fails in pandas 3
    out["last_self_report"] = pd.to_datetime(out["patient_id"].map(last.to_dict()), errors="coerce")
    days_since = clinic_time.days_since(out["last_self_report"], today)
    reasons = [[] for _ in range(len(out))]
    if cadence.every_days:
        weekly = (out["last_self_report"].isna() | (days_since >= cadence.every_days)).fillna(False).to_numpy(dtype=bool)
        for i in range(len(out)):
            if weekly[i]:
                reasons[i].append(f"none in {cadence.every_days} days" if pd.notna(days_since.iloc[i]) else "none yet")
    if cadence.before_infusion_days and next_infusion is not None and len(next_infusion):
        due_on = out["patient_id"].map(next_infusion.set_index("patient_id")["next_due_on"].to_dict())
        ahead = -clinic_time.days_since(pd.to_datetime(due_on), today)
        soon = ((ahead >= 0) & (ahead <= cadence.before_infusion_days)
                & (out["last_self_report"].isna() | (days_since >= 1))).fillna(False).to_numpy(dtype=bool)
        for i in range(len(out)):
            if soon[i]:
                n = int(ahead.iloc[i])
                reasons[i].append("infusion due " + ("today" if n == 0 else "tomorrow" if n == 1 else f"in {n} days"))
    out["self_report_reason"] = ["; ".join(r) for r in reasons]
    out["self_report_due"] = out["self_report_reason"] != ""
    return out[["patient_id", "last_self_report", "self_report_due", "self_report_reason"]]


def due_columns(patients: pd.DataFrame, assessments: pd.DataFrame, flags: pd.DataFrame, today: date,
                next_infusion: pd.DataFrame | None = None, cadence: Cadence | None = None) -> pd.DataFrame:
    """What the due list adds per patient: safety_flag (an unacknowledged flag), safety_flag_since,
    and self_reports_due's columns. `flags`: DataAccess.safety_flags() (open ones)."""
    out = self_reports_due(patients, assessments, today, next_infusion, cadence or Cadence.from_env())
    open_flags = flags[flags["acknowledged_at"].isna()] if "acknowledged_at" in flags else flags
    since = open_flags.groupby("patient_id")["raised_at"].min().to_dict() if len(open_flags) else {}
    out["safety_flag_since"] = pd.to_datetime(out["patient_id"].map(since), errors="coerce")
    out["safety_flag"] = out["safety_flag_since"].notna()
    return out


# --- printing and sending -------------------------------------------------------------------

def qr_svg(url: str) -> str:
    """The link as a QR code (SVG text, qrcode's PIL-free factory) for printing in the waiting room."""
    import qrcode
    import qrcode.image.svg

    buffer = io.BytesIO()
    qrcode.make(url, image_factory=qrcode.image.svg.SvgPathImage).save(buffer)
    return buffer.getvalue().decode("utf-8")


class Messenger(Protocol):
    """An SMS or e-mail vendor adapter. None is configured by default: links are copied or printed."""

    def send(self, to: str, text: str) -> None: ...


class MessagingOff(RuntimeError):
    """No messaging adapter is configured."""


def reminder_text(link: CreatedLink) -> str:
    """The message body: the link and its expiry, nothing about the patient or the clinic's findings."""
    return (f"Your clinic asks you to fill in a short questionnaire before your next visit: {link.url} "
            f"(works once, until {link.expires_at:%d %b %H:%M}).")


def send_link(db, scope: Scope, messenger: Messenger | None, to: str, link: CreatedLink, patient_id: str,
              *, page: str | None = None) -> None:
    """Hand a link to the messaging adapter; audited (the address is not logged). MessagingOff when none."""
    if messenger is None:
        raise MessagingOff("messaging is off: no SMS or e-mail adapter is configured; copy or print the link instead")
    if not str(to or "").strip():
        raise ValueError("give a phone number or e-mail address to send the link to")
    audit.append(db, scope.user, "self_report_send", role=scope.role, page=page, patients=[patient_id],
                 detail={"link": link.link_id, "adapter": type(messenger).__name__})
    messenger.send(str(to).strip(), reminder_text(link))


__all__ = ["base_url", "request_base_url", "is_local_address", "create_link", "open_link", "submit", "acknowledge_flag", "open_flags", "self_reports_due", "due_columns", "Cadence",
           "qr_svg", "send_link", "Messenger", "MessagingOff", "LinkRefused", "CreatedLink", "OpenLink", "Submission",
           "hash_token", "link_url", "crisis_message", "parse_instruments"]
