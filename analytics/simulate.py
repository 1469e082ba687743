"""A synthetic ketamine clinic with known truth: the demo data and the policy simulator.

Every patient has a latent depression severity in MADRS-like units (0-60).
Infusions raise a "benefit" b (0..1) and severity is baseline * (1 - b), so the
patient is in response exactly while b >= 0.5 (severity at least 50% below
baseline, the response definition of every trial in docs/clinical-rules.md).
After an infusion that leaves the patient in response, b decays exponentially
at the rate that makes it cross 0.5 after a drawn time T: the TRUE time from
that infusion to loss of response. T is log-normal around the patient's own
median, which comes from a cohort distribution with covariate effects. So the
durability every analysis estimates is known per patient and per cycle.

PHQ-9, MADRS and GAD-7 answers are noisy measurements of the latent severity:
a noisy total is drawn first, then split into items within the item ranges.
The maintenance schedule is a pluggable `Policy`. Calibration figures and the
numbers this model actually produces are in docs/demo.md.

Random numbers that a policy could change the use of (cycle durations, weekly
measurement noise, missed questionnaires) are a hash of (seed, stream, patient,
index), not draws from a sequential generator: the same patient's 5th cycle
lasts equally long under every policy (common random numbers), which makes
policy comparisons sharp and keeps them deterministic.

Nothing here imports streamlit or touches the database: `python -m analytics demo`
(analytics/commands/demo.py) writes the clinic through the one import path.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from scipy.special import erf as _erf
from scipy.special import ndtri

from . import scales

DEFAULT_END = date(2026, 11, 20)  # fixed so that the same seed gives the same data whatever today is
DEFAULT_DAYS = 730

# site -> its two clinicians (pseudonymous handles)
SITES: dict[str, tuple[str, str]] = {
    "northgate": ("dr_okafor", "dr_lindqvist"),
    "riverside": ("dr_haddad", "dr_moreau"),
    "lakeview": ("dr_tanaka", "dr_osei"),
}
SITE_SHARE = (0.45, 0.35, 0.20)

PATIENT_COLUMNS = [
    "patient_id", "site", "clinician", "birth_year", "sex", "diagnosis", "comorbidities",
    "prior_failed_trials", "enrolled_on", "support_system", "stress_level",
]
TREATMENT_COLUMNS = ["patient_id", "administered_on", "route", "dose_mg_per_kg", "phase"]
ASSESSMENT_COLUMNS = ["patient_id", "instrument", "administered_on", "rater"] + [f"item_{i}" for i in range(1, 11)] + ["total"]
COMORBIDITY_SEPARATOR = ";"

RETURN_SHAPES = ("hold_fade", "exponential", "sharp", "linear")
INDUCTION, MAINTENANCE, RESCUE = 0, 1, 2
PHASE_NAMES = np.array(["induction", "maintenance", "rescue"], dtype=object)
RESPONSE_BENEFIT = 0.5  # benefit at which severity is exactly 50% below baseline


def _sem(code: str) -> float:
    scale = scales.get(code)
    return float(scale.reference_sd * math.sqrt(1.0 - scale.reliability))


@dataclass(frozen=True)
class Calibration:
    """Model constants. Sources and the achieved figures: docs/demo.md."""

    # Induction: typically 6 infusions over 2-3 weeks, real-world 4-8 over 7-28 days
    # (Murrough 2013; McInnes 2022).
    induction_sizes: tuple[int, ...] = (4, 5, 6, 7, 8)
    induction_size_share: tuple[float, ...] = (0.06, 0.10, 0.68, 0.09, 0.07)
    induction_base_gap: tuple[int, ...] = (2, 3, 4)  # days between infusions, per patient
    induction_base_gap_share: tuple[float, ...] = (0.35, 0.45, 0.20)
    # Real-world: about half do not finish six infusions (docs/clinical-rules.md). The demo
    # uses a lower figure so that enough patients reach maintenance.
    induction_dropout: float = 0.25
    # Peak benefit: 0.95 * sigmoid(N(mean, sd)); above 0.5 means a (latent) responder.
    peak_logit_mean: float = 0.9
    peak_logit_sd: float = 1.3
    ramp_a: float = 3.0  # Beta(a, b): fraction of the remaining gap to the peak each infusion closes
    ramp_b: float = 3.0
    # Durability: patient median (days) = exp(log(reference) + effects + N(0, between_sd)).
    durability_reference_days: float = 60.0
    durability_between_sd: float = 0.65
    durability_within_sd: float = 0.40
    effect_per_sd_baseline: float = -0.15  # per 6 MADRS points above 33
    effect_anxiety_ptsd: float = -0.30
    effect_support: tuple[tuple[str, float], ...] = (("strong", 0.15), ("moderate", 0.0), ("limited", -0.15))
    effect_stress: tuple[tuple[str, float], ...] = (("low", 0.10), ("moderate", 0.0), ("high", -0.15))
    # How symptoms return after an infusion (the shape of the benefit's fall; RETURN_SHAPES):
    # "hold_fade": exp(-rate * t**decay_shape), with shape 2 it holds, then fades over the
    # last weeks of a cycle; "exponential": exp(-rate * t), fastest at first, then slower;
    # "sharp": 1 / (1 + (t / c)**sharpness), holds, then drops within a few days;
    # "linear": a straight fall, so the patient drifts slowly across the response line.
    return_shape: str = "hold_fade"
    decay_shape: float = 2.0
    sharpness: float = 6.0
    # Cycle-to-cycle variation of a patient's durability: "lognormal" (sd durability_within_sd
    # on the log scale) or "weibull" (same spread of log durations, a skewed-left shape).
    within_family: str = "lognormal"
    taper_share: float = 0.30  # responders whose benefit lasts longer with each maintenance infusion
    taper_step: float = 0.08
    taper_max: float = 2.0
    maintenance_dropout_per_year: float = 0.30
    # Measurement
    baseline_mean: float = 33.0
    baseline_sd: float = 6.0
    phq_per_madrs_mean: float = 0.55
    # Measurement error = standard error of measurement, SD x sqrt(1 - test-retest
    # reliability), from the scale registry (sources there): PHQ-9 2.2, MADRS 1.6, GAD-7 1.4.
    phq_noise_sd: float = field(default_factory=lambda: _sem("PHQ-9"))
    madrs_noise_sd: float = field(default_factory=lambda: _sem("MADRS"))
    gad_noise_sd: float = field(default_factory=lambda: _sem("GAD-7"))
    phq_missing_mean: float = 0.22  # per-patient share of missed weekly PHQ-9s (Beta(2, ...))
    phq_missing_growth_per_year: float = 0.10
    phq_item_missing: float = 0.02
    madrs_missing: float = 0.08
    gad_share_without_anxiety: float = 0.25
    suicidal_prone_share: float = 0.25
    # Self-report cadence: a PHQ-9 every 7 or 14 days, or None (no self-report after the
    # baseline: MADRS at infusion visits is the only score; patients call when they feel
    # worse, and a call that shows lost response brings a rescue like a weekly PHQ-9 would).
    self_report_every_days: int | None = 7
    # A PHQ-9 check-in the day after this share of maintenance and rescue infusions
    # (self-report cadences only; about half carry a time of day).
    next_day_checkin_share: float = 0.2
    # Sites that record the time of each infusion (09:00-16:00); a PHQ-9 on such a day is
    # then filled in 30 minutes to 3 hours before the dose, with its time.
    timed_infusion_sites: tuple[str, ...] = ("riverside",)

    def __post_init__(self):
        if self.return_shape not in RETURN_SHAPES:
            raise ValueError(f"return_shape must be one of {RETURN_SHAPES}, got {self.return_shape!r}")
        if self.within_family not in ("lognormal", "weibull"):
            raise ValueError(f"within_family must be 'lognormal' or 'weibull', got {self.within_family!r}")
        if self.self_report_every_days not in (7, 14, None):
            raise ValueError(f"self_report_every_days must be 7, 14 or None, got {self.self_report_every_days!r}")


CAL = Calibration()

# --- counter-based random numbers (common random numbers across policies) ----

_STREAM_CYCLE, _STREAM_PHQ_NOISE, _STREAM_PHQ_MISSING, _STREAM_JITTER, _STREAM_DELAY, _STREAM_SCREEN, _STREAM_TIME = range(1, 8)
_STREAM_CHECKIN, _STREAM_CHECKIN_NOISE, _STREAM_INFUSION_TIME = range(8, 11)
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix(x: np.ndarray) -> np.ndarray:
    # splitmix64 finaliser; uint64 arithmetic wraps, which is what the hash wants
    x = (x + np.uint64(0x9E3779B97F4A7C15)) & _M64
    x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _M64
    x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _M64
    return x ^ (x >> np.uint64(31))


def _uniform(seed: int, stream: int, patient, index=0) -> np.ndarray:
    """U(0,1) that depends only on (seed, stream, patient, index)."""
    patient = np.asarray(patient, dtype=np.uint64)
    index = np.asarray(index, dtype=np.uint64)
    with np.errstate(over="ignore"):
        h = _mix(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) ^ np.uint64(stream) * np.uint64(0xD1B54A32D192ED03))
        h = _mix(h ^ patient)
        h = _mix(h ^ (index * np.uint64(0x9E3779B97F4A7C15)))
    return ((h >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / 9007199254740992.0)


def _normal(seed: int, stream: int, patient, index=0) -> np.ndarray:
    return ndtri(_uniform(seed, stream, patient, index))


# --- measurement ---------------------------------------------------------------

def phq_total(severity: np.ndarray, phq_per_madrs: np.ndarray, noise: np.ndarray, cal: Calibration = CAL) -> np.ndarray:
    """The PHQ-9 total a patient reports at a latent severity (standard-normal `noise`)."""
    return np.clip(np.rint(phq_per_madrs * severity + cal.phq_noise_sd * noise), 0, 27)


def _allocate(total: np.ndarray, weights: np.ndarray, cap: int) -> np.ndarray:
    """Split each total into items 0..cap with those weights, keeping the sum exact."""
    total = total.astype(np.int64)
    share = weights / weights.sum(axis=1, keepdims=True)
    ideal = total[:, None] * share
    items = np.minimum(np.floor(ideal), cap)
    priority = ideal - items
    for _ in range(weights.shape[1] * cap):
        remainder = total - items.sum(axis=1).astype(np.int64)
        if not remainder.any():
            break
        open_ = items < cap
        order = np.argsort(-np.where(open_, priority, -np.inf), axis=1, kind="stable")
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.arange(order.shape[1])[None, :].repeat(len(order), 0), axis=1)
        add = (rank < remainder[:, None]) & open_
        items += add
        priority = priority - add
    return items.astype(np.int64)


# --- policies ------------------------------------------------------------------

class Policy:
    """When the next maintenance infusion is due, and whether a measured loss triggers a rescue.

    `intervals(engine, idx)` returns, for patients `idx` who have just had an
    infusion, days until the next scheduled one (np.inf: none scheduled).
    With `rescue`, a weekly PHQ-9 that no longer meets response brings an
    infusion 1-4 days later (phase "rescue") if that comes first.
    """

    name = "policy"
    rescue = False

    def parts(self) -> list[tuple["Policy", float]]:
        return [(self, 1.0)]

    def intervals(self, engine: "_Engine", idx: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass(frozen=True)
class Fixed(Policy):
    """An infusion every `days` days (the common 14/21/28-day schedules)."""

    days: int
    rescue: bool = False

    @property
    def name(self) -> str:
        return f"every {self.days} days" + (" + rescue" if self.rescue else "")

    def intervals(self, engine, idx):
        return np.full(len(idx), float(self.days))


@dataclass(frozen=True)
class SymptomTriggered(Policy):
    """No schedule: infuse when a weekly PHQ-9 no longer meets response."""

    rescue: bool = True
    name: str = "symptom-triggered"

    def intervals(self, engine, idx):
        return np.full(len(idx), np.inf)


@dataclass(frozen=True)
class Personalised(Policy):
    """The next interval comes from `next_interval(decisions, history)`.

    `decisions`: one row per patient who has just had an infusion (patient_id,
    day, on, maintenance_number, baseline_phq9, and the patient's recorded
    attributes). `history`: every completed cycle of those patients so far
    (patient_id, start_day, end_day, first_out_day: the first weekly PHQ-9
    that no longer met response, NaN if none was seen). Returns days (np.inf:
    none scheduled); values are floored at 7 days.
    """

    next_interval: Callable[[pd.DataFrame, pd.DataFrame], Sequence[float]]
    rescue: bool = True
    name: str = "personalised"

    def intervals(self, engine, idx):
        decisions, history = engine.decision_frames(idx)
        days = np.asarray(self.next_interval(decisions, history), dtype=float)
        if days.shape != (len(idx),):
            raise ValueError(f"personalised policy returned {days.shape} intervals for {len(idx)} patients")
        return np.maximum(np.where(np.isnan(days), np.inf, days), 7.0)


@dataclass(frozen=True)
class Oracle(Policy):
    """Knows each patient's true durability: schedules at its `quantile` (a best case)."""

    quantile: float = 0.2
    rescue: bool = True

    @property
    def name(self) -> str:
        return f"oracle q{self.quantile:g}"

    def intervals(self, engine, idx):
        median = engine.cycle_median(idx)
        return np.maximum(np.floor(median * within_quantile(engine.cal, self.quantile)), 7.0)


@dataclass(frozen=True)
class Mixed(Policy):
    """Patients assigned at random to policies with the given shares."""

    policies: tuple[Policy, ...]
    shares: tuple[float, ...]
    name: str = "mixed"

    def parts(self):
        return list(zip(self.policies, self.shares))

    def intervals(self, engine, idx):  # pragma: no cover - the engine dispatches to the parts
        raise RuntimeError("Mixed dispatches per patient")


# What a real clinic does: most on a fixed 2-4 weekly schedule (some with rescues), some only when symptoms return.
DEMO_POLICY = Mixed(
    policies=(Fixed(14), Fixed(21, rescue=True), Fixed(28, rescue=True), SymptomTriggered()),
    shares=(0.2, 0.3, 0.25, 0.25),
)


# --- the engine ------------------------------------------------------------------

@dataclass
class Truth:
    """What is really true in a simulated clinic.

    patients: one row per patient (latent baseline, responder flags, true
    median durability, covariates, follow-up, days out of response, ...).
    cycles: one row per infusion: benefit before/after, whether it left the
    patient in response, the true days to (latent) loss of response, the
    median of the distribution that time was drawn from, the next infusion,
    and when the latent severity crossed 50% of baseline (NaT if censored).
    """

    patients: pd.DataFrame
    cycles: pd.DataFrame


@dataclass
class SimulatedClinic:
    tables: dict[str, pd.DataFrame] | None
    truth: Truth
    start: date
    end: date
    seed: int
    policy: str
    engine: "_Engine" = field(repr=False)

    def latent_severity(self, patient_ids: Sequence[str], on: Sequence[date]) -> np.ndarray:
        """Noise-free severity (MADRS-like units) before any infusion given that day."""
        return self.engine.latent_severity(np.asarray(patient_ids), np.asarray(on))

    def write_csv(self, directory) -> dict[str, str]:
        """Write patients.csv, treatments.csv, assessments.csv; same seed gives identical bytes."""
        from pathlib import Path

        if self.tables is None:
            raise ValueError("this clinic was simulated with build_tables=False")
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        paths = {}
        for name, frame in self.tables.items():
            path = out / f"{name}.csv"
            frame.to_csv(path, index=False, lineterminator="\n")
            paths[name] = str(path)
        return paths


class _Engine:
    def __init__(self, n: int, seed: int, start: date, days: int, policy: Policy, cal: Calibration):
        if n < 1:
            raise ValueError(f"n_patients must be at least 1, got {n}")
        if days < 60:
            raise ValueError(f"days must be at least 60 so an induction and follow-up fit, got {days}")
        self.n, self.seed, self.start, self.days, self.policy, self.cal = n, seed, start, days, policy, cal
        self.rng = np.random.default_rng(np.random.SeedSequence([seed, 20261120]))
        self.n_slots = days // 7 + 3
        self._events: list[dict[str, np.ndarray]] = []
        self._draw_patients()

    # -- patients ---------------------------------------------------------------
    def _draw_patients(self) -> None:
        n, rng, cal, days = self.n, self.rng, self.cal, self.days
        width = max(5, len(str(n)))
        self.patient_ids = np.array([f"P{i:0{width}d}" for i in range(1, n + 1)], dtype=object)
        site_names = list(SITES)
        self.site = rng.choice(len(site_names), size=n, p=SITE_SHARE)
        self.site_name = np.array(site_names, dtype=object)[self.site]
        which = rng.integers(0, 2, size=n)
        clinicians = np.array([SITES[s] for s in site_names], dtype=object)
        self.clinician = clinicians[self.site, which]
        self.sex = rng.choice(np.array(["F", "M", "X", "U"], dtype=object), size=n, p=[0.6, 0.37, 0.02, 0.01])
        age = np.clip(np.rint(rng.normal(44, 13, size=n)), 19, 82).astype(int)
        self.diagnosis = rng.choice(
            np.array(["treatment-resistant depression", "major depressive disorder", "PTSD", "bipolar depression"], dtype=object),
            size=n, p=[0.68, 0.18, 0.08, 0.06],
        )
        comorb = {
            "anxiety": rng.random(n) < 0.45,
            "ptsd": (rng.random(n) < 0.12) | (self.diagnosis == "PTSD"),
            "substance_use": rng.random(n) < 0.12,
            "chronic_pain": rng.random(n) < 0.15,
            "ocd": rng.random(n) < 0.05,
            "bipolar": self.diagnosis == "bipolar depression",
        }
        self.anxiety_ptsd = comorb["anxiety"] | comorb["ptsd"]
        names = np.array(list(comorb), dtype=object)
        flags = np.column_stack(list(comorb.values()))
        self.comorbidities = _join_flags(names, flags)
        trd = self.diagnosis == "treatment-resistant depression"
        self.prior_failed = np.where(trd, 2 + rng.poisson(1.5, n), rng.poisson(1.0, n))
        self.support = rng.choice(np.array(["strong", "moderate", "limited"], dtype=object), size=n, p=[0.35, 0.45, 0.20])
        self.stress = rng.choice(np.array(["low", "moderate", "high"], dtype=object), size=n, p=[0.25, 0.45, 0.30])

        self.baseline = np.clip(rng.normal(cal.baseline_mean, cal.baseline_sd, n), 18.0, 52.0)
        self.phq_scale = np.clip(rng.normal(cal.phq_per_madrs_mean, 0.05, n), 0.40, 0.70)
        self.peak = 0.95 / (1.0 + np.exp(-rng.normal(cal.peak_logit_mean, cal.peak_logit_sd, n)))
        self.ramp = rng.beta(cal.ramp_a, cal.ramp_b, n)
        support = dict(cal.effect_support)
        stress = dict(cal.effect_stress)
        log_median = (
            math.log(cal.durability_reference_days)
            + cal.effect_per_sd_baseline * (self.baseline - cal.baseline_mean) / cal.baseline_sd
            + cal.effect_anxiety_ptsd * self.anxiety_ptsd
            + _lookup(self.support, support)
            + _lookup(self.stress, stress)
            + rng.normal(0.0, cal.durability_between_sd, n)
        )
        self.median_days = np.exp(log_median)
        self.taper = np.where(rng.random(n) < cal.taper_share, 1.0 + cal.taper_step, 1.0)
        self.suicidal_prone = rng.random(n) < cal.suicidal_prone_share
        self.has_gad = comorb["anxiety"] | (rng.random(n) < cal.gad_share_without_anxiety)
        self.gad_baseline = np.clip(rng.normal(np.where(comorb["anxiety"], 14.0, 9.0), 3.0), 3.0, 21.0)
        self.phq_missing = rng.beta(2.0, 2.0 * (1 - cal.phq_missing_mean) / cal.phq_missing_mean, n)

        route_names = np.array(["iv", "im", "intranasal", "oral", "sublingual"], dtype=object)
        self.route = rng.choice(route_names, size=n, p=[0.84, 0.06, 0.06, 0.02, 0.02])
        base_dose = {"iv": 0.5, "im": 0.75, "intranasal": 0.8, "oral": 1.5, "sublingual": 0.75}
        self.dose = _lookup(self.route, base_dose) * np.where(rng.random(n) < 0.25, rng.choice([1.2, 1.5, 2.0], n), 1.0)

        # Calendar: first infusion between day 21 and 14 days before the end.
        self.day0 = rng.integers(21, days - 13, size=n)
        self.enrolled = self.day0 - rng.integers(3, 22, size=n)
        self.birth_year = (self.start + timedelta(int(self.day0.max()))).year - age
        self.follow_end = np.full(n, days, dtype=np.int64)

        # Induction schedule
        self.n_planned = rng.choice(np.array(cal.induction_sizes), size=n, p=cal.induction_size_share)
        base_gap = rng.choice(np.array(cal.induction_base_gap), size=n, p=cal.induction_base_gap_share)
        gaps = np.clip(base_gap[:, None] + rng.choice([-1, 0, 0, 1], size=(n, max(cal.induction_sizes) - 1)), 2, 7)
        self.induction_days = self.day0[:, None] + np.concatenate([np.zeros((n, 1), int), np.cumsum(gaps, axis=1)], axis=1)
        drops = rng.random(n) < cal.induction_dropout
        self.dropped_induction = drops
        self.n_done = np.where(drops, 1 + (rng.random(n) * (self.n_planned - 1)).astype(int), self.n_planned)
        self.n_given = np.minimum(self.n_done, (self.induction_days <= days).sum(axis=1))
        self.maintenance_leave = rng.exponential(365.25 / cal.maintenance_dropout_per_year, n)
        self.stop_after = rng.integers(7, 36, size=n)  # follow-up of non-responders after induction
        self.drop_after = rng.integers(0, 11, size=n)

        # Weekly PHQ-9 slots: day0 + 7s + jitter; slot 0 is on the first infusion day (pre-dose).
        pid = np.arange(n, dtype=np.uint64)[:, None]
        s = np.arange(self.n_slots, dtype=np.uint64)[None, :]
        jitter = np.floor(_uniform(self.seed, _STREAM_JITTER, pid, s) * 3).astype(np.int64) - 1
        jitter[:, 0] = 0
        self.slot_day = self.day0[:, None] + 7 * np.arange(self.n_slots)[None, :] + jitter
        p_miss = self.phq_missing[:, None] + cal.phq_missing_growth_per_year * np.arange(self.n_slots)[None, :] / 52.0
        self.slot_missing = _uniform(self.seed, _STREAM_PHQ_MISSING, pid, s) < p_miss
        # Which weekly slots are written as PHQ-9s (the cadence), and which the clinic acts on:
        # the written ones, or, without self-report, the patient's own call when feeling worse.
        every = cal.self_report_every_days
        cadence = np.ones((1, self.n_slots), dtype=bool) if every == 7 else (
            (np.arange(self.n_slots) % 2 == 0)[None, :] if every == 14 else (np.arange(self.n_slots) == 0)[None, :])
        self.slot_recorded = ~self.slot_missing & cadence
        self.slot_seen = ~self.slot_missing if every is None else self.slot_recorded
        self.slot_noise = _normal(self.seed, _STREAM_PHQ_NOISE, pid, s)
        self.screen_noise = _normal(self.seed, _STREAM_SCREEN, np.arange(n, dtype=np.uint64))
        screening = phq_total(self.baseline, self.phq_scale, self.screen_noise, cal)
        first = phq_total(self.baseline, self.phq_scale, self.slot_noise[:, 0], cal)
        # Baseline as the analytics define it: the last PHQ-9 on or before the first infusion.
        self.phq_baseline = np.where(self.slot_missing[:, 0], screening, first)

    # -- state ------------------------------------------------------------------
    def cycle_median(self, idx: np.ndarray) -> np.ndarray:
        factor = np.minimum(self.taper[idx] ** self.n_maint[idx], self.cal.taper_max)
        return self.median_days[idx] * factor

    def _infuse(self, idx: np.ndarray, day: np.ndarray, phase: int) -> None:
        cal = self.cal
        before = _decay(cal, self.b[idx], self.lam[idx], day - self.t[idx])
        before = np.where(self.t[idx] < 0, 0.0, before)
        if phase == INDUCTION:
            after = before + (self.peak[idx] - before) * self.ramp[idx]
        else:
            after = np.maximum(before, self.peak[idx])
        in_response = after > RESPONSE_BENEFIT
        median = self.cycle_median(idx)
        z = _normal(self.seed, _STREAM_CYCLE, idx.astype(np.uint64), self.n_inf[idx].astype(np.uint64))
        duration = median * _within_factor(cal, z)
        # a partial benefit halves over the patient's own median time
        lam = _decay_param(cal, after, np.where(in_response, duration, self.median_days[idx]), in_response)
        self._events.append({
            "idx": idx, "day": day.astype(np.int64), "phase": np.full(len(idx), phase, np.int8),
            "before": before, "after": after, "lam": lam,
            "duration": np.where(in_response, duration, np.nan), "median": np.where(in_response, median, np.nan),
        })
        self.t[idx], self.b[idx], self.lam[idx] = day, after, lam
        self.n_inf[idx] += 1
        if phase != INDUCTION:
            self.n_maint[idx] += 1

    def benefit_now(self, idx: np.ndarray, day: np.ndarray) -> np.ndarray:
        d = day - self.t[idx][:, None] if day.ndim == 2 else day - self.t[idx]
        b = self.b[idx][:, None] if day.ndim == 2 else self.b[idx]
        lam = self.lam[idx][:, None] if day.ndim == 2 else self.lam[idx]
        return _decay(self.cal, b, lam, d)

    # -- the run ------------------------------------------------------------------
    def run(self, progress: Callable[[str], None] | None = None) -> None:
        n, cal = self.n, self.cal
        self.t = np.full(n, -1, dtype=np.int64)
        self.b = np.zeros(n)
        self.lam = np.zeros(n)
        self.n_inf = np.zeros(n, dtype=np.int64)
        self.n_maint = np.zeros(n, dtype=np.int64)

        for k in range(self.induction_days.shape[1]):
            idx = np.flatnonzero(self.n_given > k)
            if len(idx):
                self._infuse(idx, self.induction_days[idx, k], INDUCTION)
        self.induction_end = self.induction_days[np.arange(n), np.maximum(self.n_given, 1) - 1]
        completed = (self.n_given == self.n_planned) & ~self.dropped_induction
        self.follow_end = np.where(
            self.dropped_induction, np.minimum(self.induction_end + self.drop_after, self.days), self.follow_end
        )

        # The clinic continues with those whose PHQ-9 after induction meets response.
        self.responded_observed = self._responded_after_induction()
        self.continuing = completed & self.responded_observed & (self.follow_end > self.induction_end)
        stopped = completed & ~self.responded_observed
        self.follow_end = np.where(stopped, np.minimum(self.induction_end + self.stop_after, self.days), self.follow_end)
        leave = self.induction_end + np.ceil(self.maintenance_leave).astype(np.int64)
        self.follow_end = np.where(self.continuing, np.minimum(self.follow_end, leave), self.follow_end)
        self.stopped_nonresponse = stopped

        self._maintenance(progress)

    def _responded_after_induction(self) -> np.ndarray:
        """Whether the first PHQ-9 within 8 days after the last induction infusion met response.

        Without one, the last PHQ-9 during induction decides; without that, the latent state.
        """
        n = self.n
        idx = np.arange(n)
        s_hi = np.minimum((self.induction_end - self.day0 + 8) // 7 + 2, self.n_slots)
        width = int(s_hi.max())
        sday = self.slot_day[:, :width]
        valid = (np.arange(width)[None, :] < s_hi[:, None]) & self.slot_seen[:, :width] & (sday > self.day0[:, None])
        valid &= sday <= np.minimum(self.induction_end + 8, self.follow_end)[:, None]
        sev = self.latent_at(idx, sday)
        obs = phq_total(sev, self.phq_scale[:, None], self.slot_noise[:, :width], self.cal)
        meets = obs <= 0.5 * self.phq_baseline[:, None]
        after = valid & (sday > self.induction_end[:, None])
        during = valid & ~after
        first_after = np.argmax(after, axis=1)
        last_during = width - 1 - np.argmax(during[:, ::-1], axis=1)
        latent = self.benefit_now(idx, self.induction_end + 7) >= RESPONSE_BENEFIT
        result = np.where(
            after.any(axis=1), meets[idx, first_after],
            np.where(during.any(axis=1), meets[idx, last_during], latent),
        )
        return result

    def latent_at(self, idx: np.ndarray, days: np.ndarray) -> np.ndarray:
        """Severity on `days` (n_idx x m) before any infusion that day, from the events so far."""
        ev = self._event_arrays()
        span = np.int64(self.days + 400)
        keys = ev["idx"].astype(np.int64) * span + ev["day"]
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        query = idx.astype(np.int64)[:, None] * span + days.astype(np.int64)
        pos = np.searchsorted(keys, query, side="left") - 1
        pos_c = np.maximum(pos, 0)
        hit = (pos >= 0) & (ev["idx"][order][pos_c] == idx[:, None])
        e = order[pos_c]
        benefit = np.where(hit, _decay(self.cal, ev["after"][e], ev["lam"][e], days - ev["day"][e]), 0.0)
        return self.baseline[idx][:, None] * (1.0 - benefit)

    def _event_arrays(self) -> dict[str, np.ndarray]:
        if len(self._events) != getattr(self, "_merged_count", -1):
            self._merged = {k: np.concatenate([e[k] for e in self._events]) for k in self._events[0]}
            self._merged_count = len(self._events)
        return self._merged

    def _maintenance(self, progress) -> None:
        cal, n = self.cal, self.n
        parts = self.policy.parts()
        shares = np.array([s for _, s in parts], dtype=float)
        self.assigned = self.rng.choice(len(parts), size=n, p=shares / shares.sum())
        self.policy_name = np.array([p.name for p, _ in parts], dtype=object)[self.assigned]
        rescue = np.array([p.rescue for p, _ in parts])[self.assigned]
        self.history: list[dict[str, np.ndarray]] = []

        active = self.continuing.copy()
        next_sched = np.full(n, np.inf)
        search_from = self.induction_end.copy()
        cycle_start = self.induction_end.copy()
        first_out = np.full(n, np.nan)
        self._schedule(np.flatnonzero(active), next_sched, parts)

        window = 16
        rounds = 0
        while active.any():
            rounds += 1
            idx = np.flatnonzero(active)
            if progress and rounds % 5 == 0:
                progress(f"maintenance round {rounds}: {len(idx):,} patients in follow-up")
            s_lo = np.clip((search_from[idx] - self.day0[idx]) // 7 - 1, 0, self.n_slots - 1)
            sidx = s_lo[:, None] + np.arange(window)[None, :]
            inside = sidx < self.n_slots
            sidx = np.minimum(sidx, self.n_slots - 1)
            sday = self.slot_day[idx[:, None], sidx]
            limit = np.minimum(next_sched[idx], self.follow_end[idx])
            valid = inside & (sday > search_from[idx][:, None]) & (sday <= limit[:, None]) & self.slot_seen[idx[:, None], sidx]
            sev = self.baseline[idx][:, None] * (1.0 - self.benefit_now(idx, sday))
            obs = phq_total(sev, self.phq_scale[idx][:, None], self.slot_noise[idx[:, None], sidx], cal)
            out = valid & (obs > 0.5 * self.phq_baseline[idx][:, None])
            seen = out.any(axis=1)
            out_day = np.where(seen, sday[np.arange(len(idx)), np.argmax(out, axis=1)], np.inf)
            first_out[idx] = np.where(np.isnan(first_out[idx]) & seen, out_day, first_out[idx])
            delay = 1 + np.floor(_uniform(self.seed, _STREAM_DELAY, idx.astype(np.uint64), self.n_inf[idx].astype(np.uint64)) * 4)
            triggered = rescue[idx] & seen
            rescue_day = np.where(triggered, out_day + delay, np.inf)
            next_day = np.minimum(next_sched[idx], rescue_day)
            window_end = np.where(inside[:, -1], sday[:, -1], np.inf)

            # The window did not reach the next scheduled infusion or the end of
            # follow-up and nothing triggered yet: look further before deciding.
            checkpoint = ~triggered & (window_end < limit)
            search_from[idx[checkpoint]] = window_end[checkpoint]
            ends = ~checkpoint & (next_day > self.follow_end[idx])
            finished = idx[ends]
            active[finished] = False
            self._close_cycles(finished, cycle_start, self.follow_end[finished], first_out)

            go = ~checkpoint & ~ends
            gi = idx[go]
            if len(gi) == 0:
                continue
            day = next_day[go].astype(np.int64)
            is_rescue = rescue_day[go] <= next_sched[gi]
            self._close_cycles(gi, cycle_start, day, first_out)
            for phase, mask in ((MAINTENANCE, ~is_rescue), (RESCUE, is_rescue)):
                if mask.any():
                    self._infuse(gi[mask], day[mask], phase)
            cycle_start[gi] = day
            search_from[gi] = day
            self._schedule(gi, next_sched, parts)
        self.rounds = rounds

    def _close_cycles(self, idx, cycle_start, end_day, first_out) -> None:
        if len(idx):
            self.history.append({"idx": idx.copy(), "start": cycle_start[idx].copy(), "end": np.asarray(end_day, dtype=np.int64).copy(), "first_out": first_out[idx].copy()})
            first_out[idx] = np.nan

    def _schedule(self, idx, next_sched, parts) -> None:
        for k, (policy, _) in enumerate(parts):
            sub = idx[self.assigned[idx] == k]
            if len(sub):
                interval = np.asarray(policy.intervals(self, sub), dtype=float)
                next_sched[sub] = np.where(np.isinf(interval), np.inf, self.t[sub] + np.maximum(np.rint(interval), 1))

    def decision_frames(self, idx: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
        decisions = pd.DataFrame({
            "patient_id": self.patient_ids[idx],
            "day": self.t[idx],
            "on": [self.start + timedelta(int(d)) for d in self.t[idx]],
            "maintenance_number": self.n_maint[idx],
            "baseline_phq9": self.phq_baseline[idx],
            "site": self.site_name[idx], "clinician": self.clinician[idx], "sex": self.sex[idx],
            "diagnosis": self.diagnosis[idx], "comorbidities": self.comorbidities[idx],
            "support_system": self.support[idx], "stress_level": self.stress[idx],
        })
        if self.history:
            h = {k: np.concatenate([c[k] for c in self.history]) for k in self.history[0]}
            keep = np.isin(h["idx"], idx)
            history = pd.DataFrame({
                "patient_id": self.patient_ids[h["idx"][keep]], "start_day": h["start"][keep],
                "end_day": h["end"][keep], "first_out_day": h["first_out"][keep],
            })
        else:
            history = pd.DataFrame({"patient_id": pd.Series(dtype=object), "start_day": pd.Series(dtype="int64"),
                                    "end_day": pd.Series(dtype="int64"), "first_out_day": pd.Series(dtype=float)})
        return decisions, history

    # -- truth ------------------------------------------------------------------------
    def truth(self) -> Truth:
        ev = self._event_arrays()
        order = np.lexsort((ev["day"], ev["idx"]))
        e = {k: v[order] for k, v in ev.items()}
        same_next = np.r_[e["idx"][1:] == e["idx"][:-1], False]
        next_day = np.where(same_next, np.r_[e["day"][1:], 0], -1)
        stop = np.where(same_next, next_day, self.follow_end[e["idx"]]).astype(float)
        start = e["day"].astype(float)
        in_resp = e["after"] > RESPONSE_BENEFIT
        # Pre-dose latent benefit on day d is below 0.5 once d - start > duration.
        first_out = start + np.floor(np.nan_to_num(e["duration"], nan=0.0)) + 1
        lost = in_resp & (first_out <= stop) & (first_out <= self.days)
        span = np.maximum(stop - start, 0.0)
        out_days = np.where(in_resp, np.clip(span - np.nan_to_num(e["duration"]), 0.0, span), span)

        dates = _date_lookup(self.start, self.days + 400)
        cycles = pd.DataFrame({
            "patient_id": self.patient_ids[e["idx"]],
            "infusion_on": pd.to_datetime(dates[e["day"]]),
            "day": e["day"],
            "phase": PHASE_NAMES[e["phase"]],
            "benefit_before": e["before"],
            "benefit_after": e["after"],
            "in_response_after": in_resp,
            "cycle_median_days": e["median"],
            "true_days_to_loss": e["duration"],
            "next_infusion_on": pd.to_datetime(np.where(same_next, dates[np.maximum(next_day, 0)], None)),
            "latent_lost_on": pd.to_datetime(np.where(lost, dates[np.minimum(first_out, self.days).astype(int)], None)),
            "censored": in_resp & ~lost,
            "days_followed": span,
            "days_out_of_response": out_days,
        })

        idx = e["idx"]
        post = e["day"] >= self.induction_end[idx]
        n = self.n
        maint_infusions = np.bincount(idx[post & (e["phase"] != INDUCTION)], minlength=n)
        rescues = np.bincount(idx[post & (e["phase"] == RESCUE)], minlength=n)
        days_after = np.bincount(idx[post], weights=span[post], minlength=n)
        out_after = np.bincount(idx[post], weights=out_days[post], minlength=n)
        last_ind = (e["phase"] == INDUCTION) & (e["day"] == self.induction_end[idx])
        after_induction = np.full(n, np.nan)
        after_induction[idx[last_ind & in_resp]] = e["duration"][last_ind & in_resp]
        latent_responder = np.zeros(n, dtype=bool)
        latent_responder[idx[last_ind]] = in_resp[last_ind]
        ever = np.zeros(n, dtype=bool)
        np.logical_or.at(ever, idx, in_resp)
        patients = pd.DataFrame({
            "patient_id": self.patient_ids,
            "site": self.site_name, "clinician": self.clinician,
            "policy": self.policy_name,
            "baseline_severity": self.baseline,
            "baseline_phq9": self.phq_baseline,
            "anxiety_or_ptsd": self.anxiety_ptsd,
            "support_system": self.support, "stress_level": self.stress,
            "peak_benefit": self.peak,
            "true_median_days": self.median_days,
            "durability_within_sd": self.cal.durability_within_sd,
            "taper_factor": self.taper,
            "induction_planned": self.n_planned,
            "induction_given": self.n_given,
            "dropped_out_in_induction": self.dropped_induction,
            "completed_induction": (self.n_given == self.n_planned) & ~self.dropped_induction,
            "latent_responder": latent_responder,
            "ever_in_response": ever,
            "responded_observed": self.responded_observed,
            "stopped_for_nonresponse": self.stopped_nonresponse,
            "maintained": self.continuing,
            "true_days_to_loss_after_induction": after_induction,
            "first_infusion_on": pd.to_datetime(dates[self.day0]),
            "last_induction_on": pd.to_datetime(dates[self.induction_end]),
            "follow_up_end": pd.to_datetime(dates[self.follow_end]),
            "maintenance_infusions": maint_infusions,
            "rescue_infusions": rescues,
            "days_after_induction": days_after,
            "days_out_of_response_after_induction": out_after,
        })
        return Truth(patients=patients, cycles=cycles)

    def latent_severity(self, patient_ids: np.ndarray, on: np.ndarray) -> np.ndarray:
        lookup = {p: i for i, p in enumerate(self.patient_ids)}
        idx = np.array([lookup[p] for p in patient_ids], dtype=np.int64)
        days = np.array([(pd.Timestamp(d).date() - self.start).days for d in on], dtype=np.int64)
        return self.latent_at(idx, days[:, None])[np.arange(len(idx)), 0] if len(idx) else np.zeros(0)

    # -- tables -----------------------------------------------------------------------
    def tables(self) -> dict[str, pd.DataFrame]:
        n, cal = self.n, self.cal
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 1]))
        dates = _date_lookup(self.start, self.days + 400)
        s = lambda a: _as_text(a)  # noqa: E731

        patients = pd.DataFrame({
            "patient_id": self.patient_ids, "site": self.site_name, "clinician": self.clinician,
            "birth_year": s(self.birth_year), "sex": self.sex, "diagnosis": self.diagnosis,
            "comorbidities": self.comorbidities, "prior_failed_trials": s(self.prior_failed),
            "enrolled_on": dates[self.enrolled], "support_system": self.support, "stress_level": self.stress,
        })

        ev = self._event_arrays()
        order = np.lexsort((ev["day"], ev["idx"]))
        e_idx, e_day, e_phase = ev["idx"][order], ev["day"][order], ev["phase"][order]
        dose = np.round(self.dose[e_idx], 2)
        phase = PHASE_NAMES[e_phase].copy()
        # A few clinics do not record the phase of routine maintenance infusions.
        phase[(e_phase == MAINTENANCE) & (rng.random(len(e_idx)) < 0.02)] = ""
        # Sites that record infusion times: 09:00-16:00.
        e_no = np.arange(len(e_idx)) - np.searchsorted(e_idx, e_idx, side="left")  # infusion number - 1
        timed_site = np.isin(self.site_name, np.array(cal.timed_infusion_sites, dtype=object))
        # (nothing is timed on the last day: `--end` may be today, and a later time would be in the future)
        e_timed = timed_site[e_idx] & (e_day < self.days)
        e_minute = 9 * 60 + np.floor(_uniform(self.seed, _STREAM_INFUSION_TIME, e_idx.astype(np.uint64),
                                              e_no.astype(np.uint64)) * (7 * 60)).astype(int)
        treatments = pd.DataFrame({
            "patient_id": self.patient_ids[e_idx], "administered_on": _when(dates[e_day], e_timed, e_minute),
            "route": self.route[e_idx], "dose_mg_per_kg": _dose_text(dose), "phase": phase,
        })
        span = np.int64(self.days + 400)
        infusion_keys = e_idx.astype(np.int64) * span + e_day  # sorted (events are sorted by patient, day)

        # PHQ-9 at each recorded slot plus screening at enrolment.
        in_follow = self.slot_day <= self.follow_end[:, None]
        observed = in_follow & self.slot_recorded
        pi, si = np.nonzero(observed)
        pday = self.slot_day[pi, si]
        # Check-ins the day after some maintenance/rescue infusions (not on a slot or infusion day).
        c_pick = (e_phase != INDUCTION) & (cal.self_report_every_days is not None) & (
            _uniform(self.seed, _STREAM_CHECKIN, e_idx.astype(np.uint64), e_no.astype(np.uint64)) < cal.next_day_checkin_share)
        c_pid, c_day, c_no = e_idx[c_pick], e_day[c_pick] + 1, e_no[c_pick]
        slot_keys = np.sort(pi.astype(np.int64) * span + pday)
        c_key = c_pid.astype(np.int64) * span + c_day
        c_ok = (c_day <= self.follow_end[c_pid]) & ~np.isin(c_key, slot_keys) & ~np.isin(c_key, infusion_keys)
        c_pid, c_day, c_no = c_pid[c_ok], c_day[c_ok], c_no[c_ok]
        sev = self.latent_at(pi, pday[:, None])[:, 0]
        phq = phq_total(sev, self.phq_scale[pi], self.slot_noise[pi, si], cal)
        c_sev = self.latent_at(c_pid, c_day[:, None])[:, 0] if len(c_pid) else np.zeros(0)
        c_noise = _normal(self.seed, _STREAM_CHECKIN_NOISE, c_pid.astype(np.uint64), c_no.astype(np.uint64))
        c_total = phq_total(c_sev, self.phq_scale[c_pid], c_noise, cal)
        scr_sev = self.baseline
        scr_total = phq_total(scr_sev, self.phq_scale, self.screen_noise, cal)
        a_pid = np.concatenate([np.arange(n), pi, c_pid])
        a_day = np.concatenate([self.enrolled, pday, c_day])
        a_total = np.concatenate([scr_total, phq, c_total]).astype(np.int64)
        a_sev = np.concatenate([scr_sev, sev, c_sev])
        # time-of-day streams are indexed by slot; check-ins use indices past the last slot
        a_slot = np.concatenate([np.full(n, -1), si, self.n_slots + c_no])
        a_key = a_pid.astype(np.int64) * span + a_day
        at_infusion = np.minimum(np.searchsorted(infusion_keys, a_key), max(len(infusion_keys) - 1, 0))
        on_infusion_day = (infusion_keys[at_infusion] == a_key) if len(infusion_keys) else np.zeros(len(a_key), dtype=bool)
        phq_rows = self._phq_items(a_pid, a_total, a_slot > 0, rng)
        minute = np.floor(_uniform(self.seed, _STREAM_TIME + 100, a_pid.astype(np.uint64), a_slot.astype(np.uint64)) * (16 * 60)).astype(int) + 7 * 60
        # On a day with a timed infusion, the PHQ-9 is filled in 30 minutes to 3 hours before it;
        # on other infusion days it carries no time (pre-dose by the course rules).
        timed_dose = on_infusion_day & e_timed[at_infusion] if len(infusion_keys) else on_infusion_day
        minute = np.where(timed_dose, e_minute[at_infusion] - 30 - (minute % 150), minute)
        with_time = timed_dose | ((~on_infusion_day) & (a_slot >= 0) & (
            _uniform(self.seed, _STREAM_TIME, a_pid.astype(np.uint64), a_slot.astype(np.uint64)) < 0.5))
        phq_when = _when(dates[a_day], with_time & (a_day < self.days), minute)

        # GAD-7 every other week for some patients (with the PHQ-9), and at screening.
        gad_mask = self.has_gad[a_pid] & ((a_slot < 0) | (a_slot % 2 == 0)) & (a_slot < self.n_slots)
        g_pid, g_sev = a_pid[gad_mask], a_sev[gad_mask]
        g_expected = self.gad_baseline[g_pid] * (0.4 + 0.6 * g_sev / self.baseline[g_pid])
        g_total = np.clip(np.rint(g_expected + cal.gad_noise_sd * rng.standard_normal(len(g_pid))), 0, 21).astype(np.int64)
        g_items = _allocate(g_total, np.exp(0.3 * rng.standard_normal((len(g_pid), 7))), 3).astype(float)
        g_missing = rng.random(len(g_pid)) < cal.phq_item_missing / 2
        g_items[g_missing, rng.integers(0, 7, g_missing.sum())] = np.nan
        g_total_text = np.where(g_missing, "", _as_text(g_total))

        # MADRS at infusion visits, pre-dose (dated the infusion day, no time).
        m_keep = (rng.random(len(e_idx)) >= cal.madrs_missing) | (e_day == self.day0[e_idx])
        m_pid, m_day = e_idx[m_keep], e_day[m_keep]
        m_before = ev["before"][order][m_keep]
        m_sev = self.baseline[m_pid] * (1.0 - m_before)
        m_total = np.clip(np.rint(m_sev + cal.madrs_noise_sd * rng.standard_normal(len(m_pid))), 0, 60).astype(np.int64)
        m_weights = np.exp(0.3 * rng.standard_normal((len(m_pid), 10))) * np.r_[np.ones(9), 0.6][None, :]
        m_items = _allocate(m_total, m_weights, 6).astype(float)

        blocks = [
            _assessment_block(self.patient_ids[a_pid], "PHQ-9", phq_when, np.full(len(a_pid), "self", dtype=object), phq_rows[0], phq_rows[1]),
            _assessment_block(self.patient_ids[g_pid], "GAD-7", phq_when[gad_mask], np.full(len(g_pid), "self", dtype=object), g_items, g_total_text),
            _assessment_block(self.patient_ids[m_pid], "MADRS", dates[m_day], self.clinician[m_pid], m_items, _as_text(m_total)),
        ]
        sort_day = np.concatenate([a_day, a_day[gad_mask], m_day])
        sort_pid = np.concatenate([a_pid, g_pid, m_pid])
        inst = np.concatenate([np.zeros(len(a_pid)), np.ones(len(g_pid)), np.full(len(m_pid), 2)])
        # Sort the columns as arrays and build the frame once (string frames are slow to reorder).
        row_order = np.lexsort((inst, sort_day, sort_pid))
        assessments = pd.DataFrame({c: np.concatenate([b[c] for b in blocks])[row_order] for c in ASSESSMENT_COLUMNS})
        return {"patients": patients, "treatments": treatments, "assessments": assessments}

    def _phq_items(self, pid, total, may_miss, rng):
        m = len(pid)
        base = np.array([1.1, 1.2, 1.0, 1.2, 0.9, 1.0, 0.9, 0.7, 0.0])
        weights = np.exp(0.3 * rng.standard_normal((m, 9))) * base[None, :]
        weights[:, 8] = np.where(self.suicidal_prone[pid], 0.45, 0.06) * np.exp(0.3 * rng.standard_normal(m))
        items = _allocate(total, weights, 3).astype(float)
        functional = np.clip(np.rint(total / 7.0 + 0.5 * rng.standard_normal(m)), 0, 3)
        items = np.column_stack([items, functional])
        # Item-level gaps: one (sometimes two) unanswered items; the total is then left to the
        # importer's proration. Baseline forms (screening, first infusion) are checked in clinic.
        missing = (rng.random(m) < self.cal.phq_item_missing) & may_miss
        rows = np.flatnonzero(missing)
        items[rows, rng.integers(0, 9, len(rows))] = np.nan
        two = rows[rng.random(len(rows)) < 0.2]
        items[two, rng.integers(0, 9, len(two))] = np.nan
        total_text = np.where(missing, "", _as_text(total))
        return items, total_text


# --- helpers -------------------------------------------------------------------------

def _decay_param(cal: Calibration, after: np.ndarray, days: np.ndarray, in_response: np.ndarray) -> np.ndarray:
    """The one parameter of the benefit's fall after an infusion that left it at `after`:
    crossing RESPONSE_BENEFIT `days` after the infusion (in response), or halving over `days`
    (a partial benefit that never met response)."""
    after = np.asarray(after, dtype=float)
    days = np.asarray(days, dtype=float)
    ok = np.asarray(in_response, dtype=bool) & (after > RESPONSE_BENEFIT)
    shape = cal.return_shape
    with np.errstate(divide="ignore", invalid="ignore"):
        if shape in ("hold_fade", "exponential"):
            k = cal.decay_shape if shape == "hold_fade" else 1.0
            ratio = np.where(ok, np.maximum(after, 1e-9) / RESPONSE_BENEFIT, 2.0)
            return np.log(ratio) / days ** k
        if shape == "sharp":
            return np.where(ok, days / np.maximum(2.0 * after - 1.0, 1e-12) ** (1.0 / cal.sharpness), days)
        # linear
        return np.where(ok, (after - RESPONSE_BENEFIT) / days, after / (2.0 * days))


def _decay(cal: Calibration, benefit: np.ndarray, param: np.ndarray, elapsed: np.ndarray) -> np.ndarray:
    """Benefit `elapsed` days after an infusion left it at `benefit` (see Calibration.return_shape)."""
    t = np.maximum(elapsed, 0)
    shape = cal.return_shape
    if shape in ("hold_fade", "exponential"):
        k = cal.decay_shape if shape == "hold_fade" else 1.0
        return benefit * np.exp(-param * t ** k)
    if shape == "sharp":
        with np.errstate(divide="ignore", invalid="ignore"):
            return benefit / (1.0 + (t / param) ** cal.sharpness)
    return np.maximum(benefit - param * t, 0.0)


def _within_factor(cal: Calibration, z: np.ndarray) -> np.ndarray:
    """One cycle's durability / the patient's median, from a standard-normal draw `z`."""
    if cal.within_family == "lognormal":
        return np.exp(cal.durability_within_sd * z)
    # Weibull with the same SD of log durations (pi / (k sqrt 6)) and median 1
    k = math.pi / (cal.durability_within_sd * math.sqrt(6.0))
    u = np.clip(0.5 * (1.0 + _erf(z / math.sqrt(2.0))), 1e-12, 1 - 1e-12)
    return (-np.log1p(-u) / math.log(2.0)) ** (1.0 / k)


def within_quantile(cal: Calibration, p: float) -> float:
    """The p-quantile of one cycle's durability / the patient's median (e.g. p = 0.2)."""
    return float(_within_factor(cal, np.array([float(ndtri(p))]))[0])


def _lookup(values: np.ndarray, mapping: dict) -> np.ndarray:
    keys = np.array(list(mapping), dtype=object)
    codes = pd.Categorical(values, categories=keys).codes
    return np.array(list(mapping.values()), dtype=float)[codes]


def _join_flags(names: np.ndarray, flags: np.ndarray) -> np.ndarray:
    # One string per distinct combination, then a lookup: fast at 100,000 patients.
    bits = flags.astype(np.int64) @ (1 << np.arange(flags.shape[1]))
    combos = np.array([COMORBIDITY_SEPARATOR.join(names[[(b >> i) & 1 == 1 for i in range(len(names))]]) for b in range(1 << len(names))], dtype=object)
    return combos[bits]


def _date_lookup(start: date, days: int) -> np.ndarray:
    return np.array([(start + timedelta(d)).isoformat() for d in range(days + 1)], dtype=object)


_SMALL_INTS = np.array([str(i) for i in range(0, 2201)], dtype=object)


def _as_text(values: np.ndarray) -> np.ndarray:
    """Whole numbers as strings, NaN as the empty string (vectorised lookup)."""
    v = np.asarray(values, dtype=float)
    missing = np.isnan(v)
    iv = np.where(missing, 0, v).astype(np.int64)
    if iv.size and (iv.min() < 0 or iv.max() >= len(_SMALL_INTS)):
        out = np.array([str(x) for x in iv], dtype=object)
    else:
        out = _SMALL_INTS[iv]
    return np.where(missing, "", out)


def _dose_text(dose: np.ndarray) -> np.ndarray:
    unique, inverse = np.unique(dose, return_inverse=True)
    return np.array([f"{d:g}" for d in unique], dtype=object)[inverse]


def _when(day_text: np.ndarray, with_time: np.ndarray, minute: np.ndarray) -> np.ndarray:
    clock = np.array([f"T{h:02d}:{m:02d}:00" for h in range(24) for m in range(60)], dtype=object)
    return np.where(with_time, day_text + clock[np.clip(minute, 0, 1439)], day_text)


def _assessment_block(pid, instrument, when, rater, items, total_text) -> dict[str, np.ndarray]:
    cols = {"patient_id": pid, "instrument": np.full(len(pid), instrument, dtype=object), "administered_on": when, "rater": rater}
    for i in range(10):
        cols[f"item_{i + 1}"] = _as_text(items[:, i]) if i < items.shape[1] else np.full(len(pid), "", dtype=object)
    cols["total"] = np.asarray(total_text, dtype=object)
    return cols


# --- public API ------------------------------------------------------------------------

def _resolve_calendar(start: date | None, end: date | None, days: int | None) -> tuple[date, int]:
    if start is not None and end is not None:
        span = (end - start).days
        if days is not None and days != span:
            raise ValueError(f"start {start}, end {end} and days {days} disagree")
        return start, span
    days = DEFAULT_DAYS if days is None else int(days)
    if start is not None:
        return start, days
    end = DEFAULT_END if end is None else end
    return end - timedelta(days=days), days


def simulate_clinic(
    n_patients: int,
    seed: int,
    policy: Policy | None = None,
    start: date | None = None,
    days: int | None = None,
    *,
    end: date | None = None,
    calibration: Calibration = CAL,
    build_tables: bool = True,
    progress: Callable[[str], None] | None = None,
) -> SimulatedClinic:
    """Simulate `n_patients` from their first contact to `end` (default 2026-11-20).

    The calendar runs over `days` (default 730) ending at `end`, or from
    `start`. `policy` (default: the demo's mix of 14/21/28-day and
    symptom-triggered schedules) decides maintenance. Same arguments, same data.
    """
    start, days = _resolve_calendar(start, end, days)
    engine = _Engine(int(n_patients), int(seed), start, days, policy or DEMO_POLICY, calibration)
    engine.run(progress)
    if progress:
        progress("computing truth")
    truth = engine.truth()
    tables = None
    if build_tables:
        if progress:
            progress("writing tables")
        tables = engine.tables()
    return SimulatedClinic(
        tables=tables, truth=truth, start=start, end=start + timedelta(days=days), seed=int(seed),
        policy=(policy or DEMO_POLICY).name, engine=engine,
    )


def evaluate_policy(
    policy: Policy,
    n_patients: int = 2000,
    seed: int = 0,
    days: int | None = None,
    *,
    end: date | None = None,
    calibration: Calibration = CAL,
) -> dict:
    """What a maintenance policy costs and achieves over the maintenance period.

    Among patients who responded to induction and went on to maintenance, from
    their last induction infusion to the end of follow-up: maintenance and
    rescue infusions per patient-year, and the share of days out of (latent)
    response. Same seed, same patients and cycle durations for every policy.
    """
    clinic = simulate_clinic(n_patients, seed, policy, days=days, end=end, calibration=calibration, build_tables=False)
    return summarise_policy(clinic)


def summarise_policy(clinic: SimulatedClinic) -> dict:
    p = clinic.truth.patients
    m = p[p["maintained"] & (p["days_after_induction"] > 0)]
    years = float(m["days_after_induction"].sum()) / 365.25
    infusions = int(m["maintenance_infusions"].sum())
    rescues = int(m["rescue_infusions"].sum())
    out = float(m["days_out_of_response_after_induction"].sum())
    return {
        "policy": clinic.policy,
        "patients_maintained": int(len(m)),
        "patient_years": years,
        "infusions": infusions,
        "infusions_per_patient_year": infusions / years if years else float("nan"),
        "rescue_share": rescues / infusions if infusions else 0.0,
        "share_days_out_of_response": out / float(m["days_after_induction"].sum()) if years else float("nan"),
    }


def noise_free_loss(clinic: SimulatedClinic, instrument: str = "PHQ-9") -> pd.DataFrame:
    """What the outcome definitions would find with noise-free scores on the real assessment dates.

    One row per infusion that left the patient in (latent) response. A score
    meets response while it is at least 50% below baseline; for a noise-free
    score that is latent severity <= 50% of the latent baseline. Loss of
    response is dated at the first assessment no longer meeting response that
    is followed by another assessment or by an infusion (the analytics'
    definition); `last_in_response_on` (the infusion if none) and `lost_on`
    bracket the true loss. Assessments on an infusion day count as pre-dose,
    so they belong to the cycle that infusion ends.
    """
    if clinic.tables is None:
        raise ValueError("noise_free_loss needs the tables (build_tables=True)")
    eng = clinic.engine
    a = clinic.tables["assessments"]
    a = a[a["instrument"] == instrument]  # rows with missing items still get a (prorated) score
    lookup = pd.Series(np.arange(eng.n), index=eng.patient_ids)
    a_idx = lookup.loc[a["patient_id"].to_numpy()].to_numpy()
    a_day = (pd.to_datetime(a["administered_on"].str.slice(0, 10)).to_numpy() - np.datetime64(clinic.start)).astype("timedelta64[D]").astype(np.int64)

    c = clinic.truth.cycles
    c_idx = lookup.loc[c["patient_id"].to_numpy()].to_numpy()
    c_day = c["day"].to_numpy()
    span = np.int64(eng.days + 400)
    c_key = c_idx * span + c_day  # cycles are sorted by patient, day
    pos = np.searchsorted(c_key, a_idx * span + a_day, side="left") - 1
    own = (pos >= 0) & (c_idx[np.maximum(pos, 0)] == a_idx)
    pos, a_day = pos[own], a_day[own]
    after = c["benefit_after"].to_numpy()[pos]
    in_resp = c["in_response_after"].to_numpy()[pos]
    rate = _decay_param(eng.cal, after, np.where(in_resp, c["true_days_to_loss"].to_numpy()[pos], 1.0), in_resp)
    benefit = _decay(eng.cal, after, rate, a_day - c_day[pos])
    in_resp_cycle = c["in_response_after"].to_numpy()[pos]
    frame = pd.DataFrame({"cycle": pos, "day": a_day, "meets": benefit >= RESPONSE_BENEFIT})
    frame = frame[in_resp_cycle].sort_values(["cycle", "day"], kind="stable")
    has_next_assessment = frame["cycle"].shift(-1).eq(frame["cycle"]).to_numpy()
    ends_with_infusion = c["next_infusion_on"].notna().to_numpy()[frame["cycle"].to_numpy()]
    frame["confirmed"] = ~frame["meets"].to_numpy() & (has_next_assessment | ends_with_infusion)
    lost = frame[frame["confirmed"]].groupby("cycle")["day"].first()
    last_in = frame[frame["meets"]].groupby("cycle")["day"].last()

    cycles = c[c["in_response_after"]].copy()
    rows = np.flatnonzero(c["in_response_after"].to_numpy())
    lost_day = lost.reindex(rows).to_numpy()
    last_day = last_in.reindex(rows).to_numpy()
    last_day = np.where(np.isnan(last_day), c_day[rows], last_day)
    base = pd.Timestamp(clinic.start)
    cycles["last_in_response_on"] = base + pd.to_timedelta(last_day, unit="D")
    cycles["lost_on"] = base + pd.to_timedelta(lost_day, unit="D")
    cycles["loss_seen"] = ~np.isnan(lost_day)
    return cycles[["patient_id", "infusion_on", "phase", "true_days_to_loss", "latent_lost_on", "last_in_response_on", "lost_on", "loss_seen"]].reset_index(drop=True)


def cohort_figures(clinic: SimulatedClinic) -> dict:
    """Calibration figures (truth and measured) reported in docs/demo.md."""
    p = clinic.truth.patients
    started = p[p["induction_given"] > 0]
    done = p[p["completed_induction"]]
    dur = p["true_days_to_loss_after_induction"].dropna().to_numpy()
    out = {
        "patients": int(len(p)),
        "dropout_in_induction": float(p["dropped_out_in_induction"].mean()),
        "latent_response_after_induction": float(done["latent_responder"].mean()) if len(done) else float("nan"),
        "measured_response_after_induction": float(done["responded_observed"].mean()) if len(done) else float("nan"),
        "true_median_days_to_loss_after_induction": float(np.median(dur)) if len(dur) else float("nan"),
        "true_share_in_response_28d": float((dur > 28).mean()) if len(dur) else float("nan"),
        "true_share_in_response_56d": float((dur > 56).mean()) if len(dur) else float("nan"),
        "patient_median_days_q10_q90": [float(x) for x in np.percentile(p.loc[p["latent_responder"], "true_median_days"], [10, 90])] if p["latent_responder"].any() else [],
        "started_induction": int(len(started)),
    }
    if clinic.tables is not None:
        out.update(_measured(clinic, done["patient_id"]))
    out.update({k: v for k, v in summarise_policy(clinic).items() if k != "policy"})
    return out


def _measured(clinic: SimulatedClinic, completers: pd.Series) -> dict:
    """Response/remission measured on the PHQ-9 as the analytics define them."""
    a = clinic.tables["assessments"]
    phq = a[a["instrument"] == "PHQ-9"].copy()
    phq["on"] = pd.to_datetime(phq["administered_on"].str.slice(0, 10))
    phq["total"] = pd.to_numeric(phq["total"], errors="coerce")
    phq = phq.dropna(subset=["total"])
    p = clinic.truth.patients.set_index("patient_id")
    phq = phq.join(p[["first_infusion_on", "last_induction_on"]], on="patient_id")
    base = phq[phq["on"] <= phq["first_infusion_on"]].groupby("patient_id")["total"].last()
    window = phq[(phq["on"] > phq["last_induction_on"]) & (phq["on"] <= phq["last_induction_on"] + pd.Timedelta(days=14))]
    first_after = window.groupby("patient_id")["total"].first()
    both = pd.concat([base.rename("base"), first_after.rename("after")], axis=1, join="inner")
    both = both[both.index.isin(set(completers))]
    item9 = pd.to_numeric(phq["item_9"], errors="coerce")
    return {
        "measured_phq9_response_2wk_after_induction": float((both["after"] <= 0.5 * both["base"]).mean()) if len(both) else float("nan"),
        "measured_phq9_remission_2wk_after_induction": float((both["after"] < 5).mean()) if len(both) else float("nan"),
        "phq9_item9_positive_share": float((item9 > 0).mean()),
        "assessments_per_patient": len(a) / len(p),
        "infusions_per_patient": len(clinic.tables["treatments"]) / len(p),
    }


def calibration_report(n_patients: int = 5000, seed: int = 7) -> dict:
    """The figures quoted in docs/demo.md: the demo cohort, then each policy on the same patients."""
    figures = cohort_figures(simulate_clinic(n_patients, seed))
    policies = (Fixed(14), Fixed(21), Fixed(28), Fixed(21, rescue=True), SymptomTriggered(), Oracle(0.2), Oracle(0.5))
    figures["policies"] = [evaluate_policy(p, n_patients=n_patients, seed=seed) for p in policies]
    return figures


if __name__ == "__main__":  # python -m analytics.simulate [N] [SEED]: reproduce docs/demo.md
    import json

    from . import memory

    memory.tune_allocator()  # an entry point of its own, like the command line

    n_arg = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    seed_arg = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    json.dump(calibration_report(n_arg, seed_arg), sys.stdout, indent=1, default=float)
    sys.stdout.write("\n")
