"""Treatment course segmentation and durability cycles.

Inputs are plain DataFrames (the shapes `analytics.access.DataAccess` returns),
so everything here is testable without a database; the caller reads them
through the scoped data layer.

The whole cohort is processed at once (sort + groupby/shift/cumsum), never
patient by patient: 100,000 patients, 5M scores and 1.5M infusions take a few
seconds.

Rules (all thresholds come from `OutcomeRules`, see outcomes.py):

* Scores and infusions are merged into one time line per patient. A score
  taken on an infusion's date without a time counts as pre-dose (date-only
  scores at 00:00, date-only infusions at the end of the day; timed rows by
  their time; a timed score at exactly the infusion's time is pre-dose).
* Segment k = the time from infusion k up to (not including) infusion k+1.
* Phase, where the `phase` column is empty: induction = infusions from the
  first until the first gap longer than `induction_max_gap_days` or the
  `induction_max_infusions`-th infusion; after induction, an infusion whose
  last pre-dose score was out of response, in a patient who had responded
  before, is a rescue; any other is maintenance. A given `phase` is kept.
* First response: the first score after the first infusion meeting response.
* A durability cycle starts at each infusion given while in response (the
  last score before it met response) and, with `cycles_after_recapture`, at
  an infusion (e.g. the last induction infusion, or a rescue) after which the
  first score is back in response. It ends at loss of response: two
  consecutive scores out of response within the segment, or one followed by
  the next infusion (the clinic acted on it). The event lies between the last
  score still in response (left_days; 0 if none) and the first score of the
  loss (right_days). Without loss the cycle is right-censored at left_days:
  by the next infusion ("next_infusion") or by the end of the data
  ("end_of_follow_up"). A lone out-of-response score followed by a score back
  in response is a blip, not a loss.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from . import memory, outcomes, scales, vocabulary
from .outcomes import DAY, DEFAULT_RULES, OutcomeRules

CYCLE_COLUMNS = [
    "patient_id", "cycle_no", "started_on", "left_days", "right_days", "event", "censor_reason",
    "post_induction",
]


@dataclass
class Course:
    """The annotated time line of one instrument for a cohort."""
    instrument: str
    infusions: pd.DataFrame  # one row per infusion, with phase, pre-dose state, cycle start
    scores: pd.DataFrame     # one row per post-first-infusion score, with segment and response state
    baselines: pd.DataFrame  # outcomes.baselines()
    patients_first_response: pd.DataFrame


def _empty_like(columns: dict) -> pd.DataFrame:
    return pd.DataFrame({k: pd.Series(dtype=v) for k, v in columns.items()})


def _starts(code: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For rows sorted by code: whether each row starts its group, and that start's index."""
    new = np.r_[True, code[1:] != code[:-1]] if len(code) else np.zeros(0, dtype=bool)
    start = np.maximum.accumulate(np.where(new, np.arange(len(code)), 0)) if len(code) else np.zeros(0, dtype=np.int64)
    return new, start


def _last_of_groups(idx: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Of sorted row indices `idx`, the last one of each group (group = group id per row)."""
    if len(idx) == 0:
        return idx
    g = group[idx]
    return idx[np.r_[g[1:] != g[:-1], True]]


def _first_of_groups(idx: np.ndarray, group: np.ndarray) -> np.ndarray:
    if len(idx) == 0:
        return idx
    g = group[idx]
    return idx[np.r_[True, g[1:] != g[:-1]]]


def _clock_ranks(code: np.ndarray, key: np.ndarray, kind: np.ndarray) -> np.ndarray | None:
    """One int64 per row that sorts exactly like (patient, clock, kind), or None if it cannot fit.

    The clock is split into (day, time within the day): days are numbered per patient
    (one run of day numbers per patient, so patients never mix) and times within a day
    are replaced by their rank among the distinct times present. Nothing is rounded, so
    two rows tie only when patient, clock and kind are all equal. `kind`: 0 assessment,
    1 infusion (at the same clock an assessment comes first: pre-dose).
    """
    if len(code) == 0:
        return np.zeros(0, dtype=np.int64)
    day = np.floor_divide(key, outcomes._US_PER_DAY)
    within = key - day * outcomes._US_PER_DAY
    n_pat = int(code.max()) + 1
    first = np.full(n_pat, np.iinfo(np.int64).max)
    last = np.full(n_pat, np.iinfo(np.int64).min)
    np.minimum.at(first, code, day)
    np.maximum.at(last, code, day)
    span = np.where(last >= first, last - first + 1, 0)
    offset = np.concatenate([[0], np.cumsum(span)[:-1]])
    day_no = offset[code] + (day - first[code])
    codes, uniques = pd.factorize(within, sort=True)
    rank = codes.astype(np.int64)
    rank_bits = max(int(len(uniques)).bit_length(), 1)
    day_bits = max(int(span.sum()).bit_length(), 1)
    if day_bits + rank_bits + 1 > 62:
        return None
    return (day_no << (rank_bits + 1)) | (rank << 1) | kind.astype(np.int64)


def _sorted_order(code: np.ndarray, key: np.ndarray, rank: np.ndarray | None, tie_breaks: list[np.ndarray]) -> np.ndarray:
    """Row order by (patient, clock), then by `tie_breaks` (values, never input order) where
    patient and clock are equal, so the order does not depend on how the rows came in."""
    if len(code) == 0:
        return np.zeros(0, dtype=np.int64)
    if rank is not None:
        order = np.argsort(rank)
        r = rank[order]
        if not np.any(r[1:] == r[:-1]):
            return order
    return np.lexsort((*reversed(tie_breaks), key, code))


def _value_codes(values) -> np.ndarray:
    """Sortable codes of a column's values (missing first), independent of row order."""
    if _is_arrow_text(getattr(values, "dtype", None)):
        # the same codes without a Python string per row: Arrow text sorts as the "string" dtype does
        codes, _ = pd.factorize(values, sort=True)
        return codes
    codes, _ = pd.factorize(pd.Series(values, dtype=object).astype("string"), sort=True)
    return codes


# --- text columns as Arrow arrays (pandas' "str" dtype), never a Python string per row ------------------

_TEXT = pd.StringDtype("pyarrow", na_value=np.nan)  # what a frame makes of a column of Python strings


def _is_arrow_text(dtype) -> bool:
    return isinstance(dtype, pd.StringDtype) and dtype.storage == "pyarrow"


def _text_of_codes(codes: np.ndarray, labels) -> pa.Array:
    """labels[codes] as Arrow text (code -1: missing): the column a frame makes of the object array
    labels[codes], without making it."""
    codes = np.asarray(codes, dtype=np.int64)
    missing = codes < 0
    index = pa.array(codes, mask=missing) if missing.any() else pa.array(codes)
    return pc.take(pa.array(list(labels), type=pa.large_string()), index)


def _taken_text(values: pd.Series, rows: np.ndarray | None = None):
    """values[rows] (all rows if None) for a frame column: Arrow text where `values` is Arrow text or a
    categorical of Arrow text, else the object array the column was made from before (same frame column)."""
    dtype = values.dtype
    if isinstance(dtype, pd.CategoricalDtype) and _is_arrow_text(dtype.categories.dtype):
        codes = values.cat.codes.to_numpy()
        codes = codes if rows is None else codes[rows]
        missing = codes < 0
        index = pa.array(codes, mask=missing) if missing.any() else pa.array(codes)
        return pc.take(dtype.categories.array.__arrow_array__(), index)
    if _is_arrow_text(dtype):
        return values.array if rows is None else values.array.take(rows)
    return values.to_numpy() if rows is None else values.to_numpy()[rows]


def _joined_arrow(pieces: list) -> pa.Array:
    """Arrow (or Arrow-backed pandas) pieces of one column as one Arrow array, in order."""
    chunks = []
    for piece in pieces:
        arrow = piece if isinstance(piece, (pa.Array, pa.ChunkedArray)) else piece.__arrow_array__()
        chunks.extend(arrow.chunks if isinstance(arrow, pa.ChunkedArray) else [arrow])
    kind = chunks[0].type if chunks else pa.large_string()
    return pa.concat_arrays([c.cast(kind) for c in chunks]) if chunks else pa.array([], type=kind)


def _as_text(values, *, empty_object: bool = True):
    """A text column for a frame: Arrow as pandas' text array (what the frame inferred from the object array
    made before), others as they are. Empty: an empty object array (a frame keeps it as object, as before)
    unless `empty_object` is False (the column was a numpy string array, which a frame makes "str")."""
    if isinstance(values, (pa.Array, pa.ChunkedArray, pd.api.extensions.ExtensionArray)):
        if len(values) == 0 and empty_object:
            return np.zeros(0, dtype=object)
        if isinstance(values, (pa.Array, pa.ChunkedArray)):
            return pd.array(values, dtype=_TEXT)
    return values


def _check_rows(frame: pd.DataFrame, what: str) -> None:
    bad = frame["patient_id"].isna().to_numpy() | pd.to_datetime(frame["administered_at"]).isna().to_numpy()
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(f"course: {int(bad.sum())} {what} row(s) lack a patient_id or administered_at "
                         f"(first: row {first}); they cannot be placed on a patient's time line")


def _searchsorted_pairs(tc: np.ndarray, t_key: np.ndarray, ac: np.ndarray, a_key: np.ndarray):
    """What the ranks give, for clocks too spread out to rank in one int64 (exact, slower):
    per score the number of infusions before it, per infusion the index of the last score
    before it (global indices into the sorted arrays; callers check the patient)."""
    pid = np.concatenate([tc, ac])
    key = np.concatenate([t_key, a_key])
    kind = np.concatenate([np.ones(len(tc), dtype=np.int8), np.zeros(len(ac), dtype=np.int8)])
    order = np.lexsort((kind, key, pid))
    is_inf = kind[order] == 1
    inf_seen = np.cumsum(is_inf)          # infusions up to and including each position
    score_seen = np.cumsum(~is_inf)
    pos = np.empty(len(order), dtype=np.int64)
    pos[order] = np.arange(len(order))
    n_before = inf_seen[pos[len(tc):]] if len(ac) else np.zeros(0, dtype=np.int64)
    last_before = (score_seen[pos[:len(tc)]] - 1) if len(tc) else np.zeros(0, dtype=np.int64)
    return n_before, last_before


# Rows (infusions plus scores of the instrument) per block of patients: the course is built a block
# of whole patients at a time, so its ~50 column-sized working arrays are a block's size, not the
# cohort's (100,000 patients: 3.5 M rows, 1.4 GB of working arrays at once). Every rule is within one
# patient, so the blocks' rows put together are exactly the course of the whole cohort.
BLOCK_ROWS = 500_000
BLOCK_THREADS = max(1, min(2, os.cpu_count() or 1))   # blocks of the course worked on at once (build_course)


# The course columns `cycles_from_course` (and `screens.workspace.induction_ends`) read: a caller that
# needs only the cycles builds only these (`build_course(columns=CYCLE_COLUMNS_READ)`).
CYCLE_COLUMNS_READ = {
    "infusions": ("patient_id", "code", "at", "starts_cycle", "right_at", "left_at", "has_next", "last_induction",
                  "infusion_no", "phase", "start_kind", "route", "next_at", "n_assessments", "pre_dose_score"),
    "scores": ("patient_id", "code", "segment", "percent_fall"),
}


def build_course(treatments: pd.DataFrame, assessments: pd.DataFrame, instrument: str = scales.PRIMARY,
                 rules: OutcomeRules = DEFAULT_RULES, *, block_rows: int = BLOCK_ROWS,
                 columns: dict | None = None) -> Course:
    """The course of `instrument`. `columns`: {"infusions": names, "scores": names} to keep only those
    columns of the infusions and scores (the others are let go block by block; each kept column is
    exactly the whole course's): at 100,000 patients the whole course is about 0.6 GB."""
    code = rules.check_instrument(instrument)
    # the instrument's safety item (scales registry; PHQ-9 item 9), where it has one: kept with each score
    safety = scales.get(code).safety_column
    _check_rows(treatments, "treatment")
    # Only the columns used below: a copy of whole rows was the largest single allocation.
    keep = assessments["total"].notna().to_numpy().copy()
    if "instrument" in assessments.columns:
        keep &= (assessments["instrument"] == code).to_numpy(dtype=bool, na_value=False)
    a = assessments.loc[keep, [c for c in ("patient_id", "administered_at", "has_time", "total", safety)
                               if c is not None and c in assessments.columns]]
    del keep
    _check_rows(a, "assessment")

    # Patients as integer codes (sorted ids, the whole cohort's): everything below is array work on them.
    n_t_rows = len(treatments)
    all_pid = pd.concat([treatments["patient_id"], a["patient_id"]], ignore_index=True)
    if not _is_arrow_text(all_pid.dtype):  # Arrow text sorts and factorizes as "string" does, without the copy
        all_pid = all_pid.astype("string")
    codes, uniques = pd.factorize(all_pid, sort=True)
    del all_pid
    a = a.drop(columns="patient_id")  # the blocks work on the codes: no copy of the ids' text per block
    uniques = np.asarray(uniques, dtype=object)
    tc, ac = codes[:n_t_rows], codes[n_t_rows:]
    edges = _block_edges(tc, ac, len(uniques), block_rows)
    if len(edges) <= 2:
        return _assemble(code, uniques, [_only(_course_block(treatments, a, tc, ac, uniques, code, rules), columns)])
    # Whole patients per block, in code order; within a patient the rows keep their input order.
    t_sort, a_sort = np.argsort(tc, kind="stable"), np.argsort(ac, kind="stable")
    t_cut = np.searchsorted(tc[t_sort], edges)
    a_cut = np.searchsorted(ac[a_sort], edges)
    t_cols = [c for c in treatments.columns if c in _TREATMENT_COLUMNS and c != "patient_id"]

    def block(i: int) -> tuple[dict, dict, dict, dict]:
        t_rows, a_rows = t_sort[t_cut[i]:t_cut[i + 1]], a_sort[a_cut[i]:a_cut[i + 1]]
        part = _course_block(treatments[t_cols].iloc[t_rows], a.iloc[a_rows], tc[t_rows], ac[a_rows],
                             uniques, code, rules)
        part[1]["segment_row"] = part[1]["segment_row"] + (t_cut[i] - t_cut[0])  # rows of the whole course's infusions
        part = _only(part, columns)
        del t_rows, a_rows
        return part

    # Blocks are whole patients and each is its own: BLOCK_THREADS at a time (numpy, pandas' takes and Arrow
    # let go of the GIL in their loops), put together in block order: the same course on any number of threads.
    n_blocks = len(edges) - 1
    workers = min(BLOCK_THREADS, n_blocks)
    if workers <= 1:
        parts = [block(i) for i in range(n_blocks)]
    else:
        with ThreadPoolExecutor(workers) as pool:
            parts = list(pool.map(block, range(n_blocks)))
    # The blocks' working arrays (heap-sized: glibc keeps them resident) are handed back once, after the last
    # block, before the columns are put together: handed back after each block, the next block's arrays were
    # fresh pages again, and this machine pays for a fresh page (the kernel zeroes it): 100,000 patients,
    # 365,000 page faults and 1.1-1.6 s of system time in the course, 150,000-165,000 and 0.5-0.7 s so
    # (docs/performance.md, wave 10), the course's peak the same within noise (+10-25 MB).
    memory.release_freed()
    crs = _assemble(code, uniques, parts)
    # the blocks' pieces of each column (500,000 rows: just under the mmap threshold, so on glibc's heaps),
    # let go as the columns were put together: ~0.4 GB resident at 100,000 patients until handed back
    memory.release_freed()
    return crs


def assessment_columns(instrument: str = scales.PRIMARY) -> list[str]:
    """The assessments columns `build_course` reads for `instrument` (a read may fetch only these)."""
    safety = scales.get(instrument).safety_column
    return ["patient_id", "instrument", "administered_at", "has_time", "total"] + ([safety] if safety else [])


def _only(part: tuple[dict, dict, dict, dict], columns: dict | None) -> tuple[dict, dict, dict, dict]:
    """A block's infusion and score columns limited to `columns` (build_course), in their order."""
    if columns is None:
        return part
    inf, sc, baselines, first_response = part
    keep_inf = set(columns.get("infusions", inf)) | {"patient_id", "code"}
    keep_sc = set(columns.get("scores", sc)) | {"patient_id", "code"}
    return ({k: v for k, v in inf.items() if k in keep_inf}, {k: v for k, v in sc.items() if k in keep_sc},
            baselines, first_response)


# How a cycle started (the infusions' start_kind): not a cycle's start, in response, recaptured.
START_KINDS = ("", "in_response", "recaptured")

# The treatments columns the course reads (a block copies only these).
_TREATMENT_COLUMNS = ("treatment_id", "patient_id", "administered_at", "has_time", "route", "phase")


def _block_edges(tc: np.ndarray, ac: np.ndarray, n_pat: int, block_rows: int) -> np.ndarray:
    """Patient codes where blocks start (and the end): about `block_rows` rows each, whole patients."""
    if n_pat == 0 or len(tc) + len(ac) <= block_rows:
        return np.array([0, n_pat])
    per_patient = np.bincount(tc, minlength=n_pat) + np.bincount(ac, minlength=n_pat)
    upto = np.cumsum(per_patient)
    cuts = np.searchsorted(upto, np.arange(block_rows, int(upto[-1]), block_rows), side="left") + 1
    return np.unique(np.concatenate([[0], cuts[cuts < n_pat], [n_pat]]))


def _assemble(code: str, uniques: np.ndarray, parts: list[tuple[dict, dict, dict, dict]]) -> Course:
    """The Course from its blocks' columns, put together one column at a time (each block's copy
    of a column is let go once the column is whole)."""
    def frame(which: int, categorical: bool) -> pd.DataFrame:
        columns = {}
        for name in list(parts[0][which]):
            pieces = [part[which].pop(name) for part in parts]
            if pieces[0] is None or np.isscalar(pieces[0]):
                columns[name] = pieces[0]
                continue
            if isinstance(pieces[0], (pa.Array, pa.ChunkedArray, pd.api.extensions.ExtensionArray)):
                # phase_source was a numpy string array (a "str" column even when empty), the others object arrays
                columns[name] = _as_text(_joined_arrow(pieces), empty_object=name != "phase_source")
                del pieces
                continue
            whole = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
            del pieces
            if categorical and name == "patient_id":
                whole = pd.Categorical.from_codes(whole, categories=uniques)
            columns[name] = whole
        return pd.DataFrame(copy=False, data=columns) if categorical else pd.DataFrame(columns)

    inf = frame(0, True)
    sc = frame(1, True)
    baselines = frame(2, False)
    first_response = frame(3, False)
    first_response["days_to_response"] = (first_response["first_response_at"] - first_response["first_infusion_at"]) / DAY
    return Course(code, inf, sc, baselines, first_response)


def _course_block(treatments: pd.DataFrame, a: pd.DataFrame, tc: np.ndarray, ac: np.ndarray, uniques: np.ndarray,
                  code: str, rules: OutcomeRules) -> tuple[dict, dict, dict, dict]:
    """The course of the patients whose rows these are (every row of each of them): the columns of the
    infusions, scores, baselines and first responses (patient_id of infusions and scores as codes)."""
    n_pat = len(uniques)
    n_t_rows = len(treatments)

    # One ordering rule, per patient: by date, then by time where given. An assessment
    # without a time counts as taken at 00:00 and an infusion without one at the end of its
    # day (outcomes.assessment_clock / infusion_clock), so an untimed assessment on an
    # infusion day is pre-dose and anything on a later day is after the dose; at an equal
    # clock the assessment comes first. The clocks are compared exactly (no rounding).
    t_key_all = outcomes._us(outcomes.infusion_clock(treatments))
    a_key_all = outcomes._us(outcomes.assessment_clock(a))
    kind_all = np.concatenate([np.ones(n_t_rows, dtype=np.int8), np.zeros(len(a), dtype=np.int8)])
    ranks = _clock_ranks(np.concatenate([tc, ac]).astype(np.int64), np.concatenate([t_key_all, a_key_all]), kind_all)
    t_rank_all = None if ranks is None else ranks[:n_t_rows]
    a_rank_all = None if ranks is None else ranks[n_t_rows:]

    # --- infusions, sorted by (patient, clock) ---------------------------------------------
    t_ties = [_value_codes(treatments[c]) for c in ("phase", "route") if c in treatments.columns]
    t_order = _sorted_order(tc, t_key_all, t_rank_all, t_ties)
    tc, t_key = tc[t_order], t_key_all[t_order]
    t_rank = None if t_rank_all is None else t_rank_all[t_order]
    t_at = outcomes._us(pd.to_datetime(treatments["administered_at"]))[t_order]
    n_t = len(tc)
    t_new, t_start = _starts(tc)
    infusion_no = np.arange(n_t) - t_start + 1
    n_inf = np.bincount(tc, minlength=n_pat)
    same_next_t = np.r_[tc[1:] == tc[:-1], False] if n_t else np.zeros(0, dtype=bool)
    t_day = t_at - np.mod(t_at, outcomes._US_PER_DAY)
    gap_days = np.where(t_new, np.nan, (t_day - np.r_[t_day[:1], t_day[:-1]]) / outcomes._US_PER_DAY)
    long_gap = np.nan_to_num(gap_days, nan=0.0) > rules.induction_max_gap_days
    cum_gap = np.cumsum(long_gap)
    broken = (cum_gap - (cum_gap[t_start] - long_gap[t_start])) > 0 if n_t else long_gap
    derived_induction = ~broken & (infusion_no <= rules.induction_max_infusions)
    NAT = np.iinfo(np.int64).min
    next_key = np.where(same_next_t, np.r_[t_key[1:], 0] if n_t else t_key, NAT)
    next_at = np.where(same_next_t, np.r_[t_at[1:], 0] if n_t else t_at, NAT)
    first_key = np.full(n_pat, np.iinfo(np.int64).max)
    first_key[tc[t_new]] = t_key[t_new]
    first_at = np.zeros(n_pat, dtype=np.int64)
    first_at[tc[t_new]] = t_at[t_new]

    # --- baselines and scores after the first infusion ---------------------------------------
    a_total_all = a["total"].to_numpy(dtype=float)
    safety = scales.get(code).safety_column
    a_safety_all = pd.to_numeric(a[safety], errors="coerce").to_numpy(dtype=float) \
        if safety is not None and safety in a.columns else None
    a_ties = [a_total_all] + ([np.nan_to_num(a_safety_all, nan=-1.0)] if a_safety_all is not None else [])
    a_order = _sorted_order(ac, a_key_all, a_rank_all, a_ties)
    ac, a_key = ac[a_order], a_key_all[a_order]
    a_rank = None if a_rank_all is None else a_rank_all[a_order]
    a_at = outcomes._us(pd.to_datetime(a["administered_at"]))[a_order]
    a_total = a_total_all[a_order]
    a_safety = a_safety_all[a_order] if a_safety_all is not None else None
    first_day = first_key - np.mod(first_key, outcomes._US_PER_DAY)
    base_score, base_when = outcomes.baseline_arrays(first_key, first_day, ac, a_key, a_total, rules)
    base_mean, base_n = outcomes.baseline_mean_arrays(first_key, first_day, ac, a_key, a_total, rules)
    treated = n_inf > 0
    baselines = {
        "patient_id": uniques[treated],
        "first_infusion_at": first_at[treated].astype("datetime64[us]"),
        "baseline_score": base_score[treated],
        "baseline_at": np.where(base_when[treated] >= 0, base_when[treated], NAT).astype("datetime64[us]"),
        "baseline_mean": base_mean[treated], "baseline_n": base_n[treated],
    }
    usable = ~np.isnan(base_score) & (np.nan_to_num(base_score, nan=-1.0) >= rules.min_baseline)
    keep = (a_key > first_key[ac]) & usable[ac]
    ac, a_key, a_at, a_total = ac[keep], a_key[keep], a_at[keep], a_total[keep]
    if a_rank is not None:
        a_rank = a_rank[keep]
    if a_safety is not None:
        a_safety = a_safety[keep]
    a_base = base_score[ac]
    responding = outcomes.is_response(a_total, a_base, rules)
    out = outcomes.is_out(a_total, a_base, code, rules)
    n_a = len(ac)

    # --- each score's infusion, each infusion's pre-dose score (within the patient) -------------
    if t_rank is not None:
        # ranks order (patient, clock, kind) exactly: an assessment at an infusion's clock is below it
        n_before = np.searchsorted(t_rank, a_rank, side="left")
        last_before = np.searchsorted(a_rank, t_rank, side="left") - 1
    else:
        n_before, last_before = _searchsorted_pairs(tc, t_key, ac, a_key)
    has_pre_t = (last_before >= 0) & (ac[np.maximum(last_before, 0)] == tc) if n_a else np.zeros(n_t, dtype=bool)
    pre_src = np.where(has_pre_t, last_before, -1)
    pre_score = np.where(has_pre_t, a_total[np.maximum(pre_src, 0)] if n_a else np.nan, np.nan)
    pre_resp = has_pre_t & (responding[np.maximum(pre_src, 0)] if n_a else False)
    pre_at = np.where(has_pre_t, a_at[np.maximum(pre_src, 0)] if n_a else NAT, NAT)
    a_seg_row = n_before - 1
    own = (a_seg_row >= 0) & (tc[np.maximum(a_seg_row, 0)] == ac) if n_t else np.zeros(n_a, dtype=bool)
    if not own.all():  # cannot happen (scores before the first infusion were left out above); never cross patients
        ac, a_key, a_at, a_total, a_base = ac[own], a_key[own], a_at[own], a_total[own], a_base[own]
        responding, out, a_seg_row = responding[own], out[own], a_seg_row[own]
        if a_safety is not None:
            a_safety = a_safety[own]
        n_a = len(ac)

    # --- loss of response within each segment ------------------------------------------------
    seg_new, seg_start = _starts(a_seg_row)
    pos = np.arange(n_a) - seg_start
    same_next = np.r_[~seg_new[1:], False] if n_a else np.zeros(0, dtype=bool)
    next_out = np.r_[out[1:], False] & same_next
    seg_has_next_inf = same_next_t[a_seg_row] if n_a else np.zeros(0, dtype=bool)
    cand = out & (next_out | (~same_next & seg_has_next_inf & rules.loss_on_infusion))
    loss_row = _first_of_groups(np.flatnonzero(cand), a_seg_row)
    loss_pos = np.full(n_t, np.iinfo(np.int64).max)
    loss_pos[a_seg_row[loss_row]] = pos[loss_row]
    is_loss = np.zeros(n_a, dtype=bool)
    is_loss[loss_row] = True
    held_before_loss = ~out & (pos < loss_pos[a_seg_row])
    held_row = _last_of_groups(np.flatnonzero(held_before_loss), a_seg_row)
    left_at = np.full(n_t, NAT)
    left_at[a_seg_row[held_row]] = a_at[held_row]
    right_at = np.full(n_t, NAT)
    right_at[a_seg_row[loss_row]] = a_at[loss_row]
    n_scores = np.bincount(a_seg_row, minlength=n_t) if n_a else np.zeros(n_t, dtype=np.int64)
    first_row = np.flatnonzero(seg_new)
    first_post_resp = np.zeros(n_t, dtype=bool)
    first_post_resp[a_seg_row[first_row]] = responding[first_row]

    # --- first response and phases --------------------------------------------------------------
    fr_rows = _first_of_groups(np.flatnonzero(responding), ac)
    first_response_key = np.full(n_pat, np.iinfo(np.int64).max)
    first_response_key[ac[fr_rows]] = a_key[fr_rows]
    first_response = {
        "patient_id": uniques[ac[fr_rows]],
        "first_response_at": a_at[fr_rows].astype("datetime64[us]"),
        "infusions_to_response": infusion_no[a_seg_row[fr_rows]] if len(fr_rows) else np.zeros(0, dtype=np.int64),
        "first_infusion_at": first_at[ac[fr_rows]].astype("datetime64[us]"),
    }

    responded_before = first_response_key[tc] < t_key
    # Phase labels as codes into a few labels (made Arrow text at the end; never a string per infusion):
    # 0 maintenance, 1 rescue, 2 induction, then each recorded label (stripped, lower case).
    phase_labels = ["maintenance", "rescue", "induction"]
    phase = np.zeros(n_t, dtype=np.int64)
    phase[responded_before & has_pre_t & ~pre_resp] = 1
    phase[derived_induction] = 2
    if "phase" in treatments.columns:
        codes_given, labels = pd.factorize(treatments["phase"])
        codes_given = codes_given[t_order]
        given_labels = [str(v).strip().lower() for v in labels]
        given_code = np.where(codes_given >= 0, codes_given + len(phase_labels), -1)
        has_label = np.array([v != "" for v in given_labels] + [False], dtype=bool)
        has_given = has_label[codes_given]  # code -1 (missing) picks the trailing False
        phase = np.where(has_given, given_code, phase)
        phase_labels += given_labels
    else:
        has_given = np.zeros(n_t, dtype=bool)
    is_induction = np.array([v == "induction" for v in phase_labels], dtype=bool)[phase]
    last_ind_no = np.zeros(n_pat, dtype=np.int64)
    np.maximum.at(last_ind_no, tc[is_induction], infusion_no[is_induction])
    last_induction = is_induction & (infusion_no == last_ind_no[tc])
    starts_cycle = pre_resp | (first_post_resp & (last_induction | rules.cycles_after_recapture))
    # A cycle needs an assessment after its infusion that says something: response seen to
    # hold (left_at) or a loss (right_at). Infusions with no assessment between them are
    # merged: the cycle runs from the last of them (the most recent dose); an infusion with
    # no assessment yet after it starts no cycle until one comes (no "0 days" cycles).
    starts_cycle &= (left_at != NAT) | (right_at != NAT)
    start_kind = np.where(pre_resp, 1, np.where(starts_cycle, 2, 0))  # codes of START_KINDS

    inf = {
        "patient_id": tc, "code": tc,
        "at": t_at.astype("datetime64[us]"), "key": t_key.astype("datetime64[us]"),
        "infusion_no": infusion_no, "n_infusions": n_inf[tc], "gap_days": gap_days,
        "route": _taken_text(treatments["route"], t_order) if "route" in treatments.columns else None,
        "phase": _text_of_codes(phase, phase_labels),
        "phase_source": _text_of_codes(has_given.astype(np.int64), ("derived", "recorded")),
        "derived_induction": derived_induction, "last_induction": last_induction,
        "next_at": next_at.astype("datetime64[us]"), "has_next": same_next_t,
        "pre_dose_score": pre_score, "pre_dose_responding": pre_resp, "pre_dose_at": pre_at.astype("datetime64[us]"),
        "first_post_responding": first_post_resp, "starts_cycle": starts_cycle,
        "start_kind": _text_of_codes(start_kind, START_KINDS),
        "left_at": left_at.astype("datetime64[us]"), "right_at": right_at.astype("datetime64[us]"),
        "n_assessments": n_scores,
    }
    if "treatment_id" in treatments.columns:
        inf["treatment_id"] = treatments["treatment_id"].to_numpy()[t_order]
    sc = {
        "patient_id": ac, "code": ac, "at": a_at.astype("datetime64[us]"), "key": a_key.astype("datetime64[us]"),
        "total": a_total, "baseline_score": a_base, "responding": responding, "out": out,
        "percent_fall": outcomes.percent_fall(a_total, a_base),
        "segment": infusion_no[a_seg_row] if n_a else np.zeros(0, dtype=np.int64), "segment_row": a_seg_row,
        "pos": pos, "loss": is_loss, "held_before_loss": held_before_loss,
    }
    if a_safety is not None:
        sc[safety] = a_safety
    return inf, sc, baselines, first_response


# --- cycles -----------------------------------------------------------------------------

def _comorbidity_flags(patients: pd.DataFrame) -> pd.DataFrame:
    """has_<name> for every known comorbidity and any other listed (comma or semicolon separated)."""
    text = patients["comorbidities"].fillna("").astype(str).str.lower().str.replace(";", ",")
    names = set(vocabulary.COMORBIDITIES)
    for entry in text.unique():
        names.update(n.strip().replace(" ", "_") for n in entry.split(",") if n.strip())
    # each distinct entry once (a clinic has a few hundred), then taken by patient: the same flags
    codes, entries = pd.factorize(text)
    entries = pd.Series(entries, dtype=text.dtype)
    padded = "," + entries.str.replace(r"\s*,\s*", ",", regex=True).str.strip().str.replace(" ", "_") + ","
    return pd.DataFrame({f"has_{n}": padded.str.contains("," + n + ",", regex=False).to_numpy(dtype=bool)[codes]
                         for n in sorted(names)}, index=patients.index)


def pivot_attributes(attributes: pd.DataFrame | None) -> pd.DataFrame:
    """patient_attributes rows -> one column per attribute name (numeric where every value is)."""
    if attributes is None or attributes.empty:
        return pd.DataFrame(index=pd.Index([], name="patient_id"))
    wide = attributes.pivot_table(index="patient_id", columns="name", values="value", aggfunc="last")
    for col in wide.columns:
        as_num = pd.to_numeric(wide[col], errors="coerce")
        if as_num.notna().sum() == wide[col].notna().sum():
            wide[col] = as_num
    wide.columns = [str(c) for c in wide.columns]
    return wide


def labels_as_categories(frame: pd.DataFrame, columns) -> None:
    """`columns` of `frame` (those it has) as categoricals of their sorted values, in place; missing values stay missing."""
    for name in columns:
        if name in frame.columns and not isinstance(frame[name].dtype, pd.CategoricalDtype):
            values = frame[name]
            if isinstance(values.dtype, pd.StringDtype) and values.dtype.storage == "pyarrow":
                # Arrow text: its sorted codes (Arrow's own, C++) instead of looking each row's string up (~1 s a
                # column at 100,000 patients); the same categories and codes
                codes, uniques = pd.factorize(values, sort=True)
                frame[name] = pd.Categorical.from_codes(codes, categories=pd.Index(uniques))
            else:
                frame[name] = pd.Categorical(values, categories=sorted(values.dropna().unique()))
            del values


def _text_columns(frame: pd.DataFrame) -> list[str]:
    return [name for name in frame.columns if isinstance(frame[name].dtype, pd.StringDtype)]


def cycles_from_course(course: Course, patients: pd.DataFrame | None = None,
                       attributes: pd.DataFrame | None = None,
                       rules: OutcomeRules = DEFAULT_RULES, *, labels_as_categoricals: bool = False) -> pd.DataFrame:
    """One row per durability cycle. `labels_as_categoricals`: the text columns but the patient id as
    categoricals of their sorted values (`labels_as_categories` of the text table: the same frame), each
    patient's text covariates made so before they are taken for every cycle (100,000 patients: no ~1.1 M-row
    text column of each made first)."""
    inf, sc = course.infusions, course.scores
    st = inf[inf["starts_cycle"].to_numpy()]
    at = st["at"]
    event = st["right_at"].notna().to_numpy()
    left = ((st["left_at"] - at) / DAY).fillna(0.0).clip(lower=0.0).to_numpy(dtype=float)
    right = np.where(event, ((st["right_at"] - at) / DAY).clip(lower=0.0).to_numpy(dtype=float), np.inf)
    code = st["code"].to_numpy()
    new, start = _starts(code)
    has_next = st["has_next"].to_numpy(dtype=bool)
    cycles = pd.DataFrame({
        "patient_id": _as_text(_taken_text(st["patient_id"])),
        "cycle_no": np.arange(len(st)) - start + 1,
        "started_on": at.dt.normalize().to_numpy(),
        "left_days": left,
        "right_days": right,
        "event": event,
        "censor_reason": _as_text(_text_of_codes(np.where(event, 0, np.where(has_next, 1, 2)),
                                                 ("loss", "next_infusion", "end_of_follow_up")), empty_object=False),
        "post_induction": st["last_induction"].to_numpy(dtype=bool),
        "instrument": course.instrument,
        "started_at": at.to_numpy(),
        "infusion_no": st["infusion_no"].to_numpy(),
        "phase": _as_text(_taken_text(st["phase"])),
        "start_kind": _as_text(_taken_text(st["start_kind"])),
        "route": _as_text(_taken_text(st["route"])),
        "interval_days": np.where(has_next, ((st["next_at"] - at) / DAY).to_numpy(dtype=float), np.inf),
        "n_assessments": st["n_assessments"].to_numpy(dtype=int),
        "pre_dose_score": st["pre_dose_score"].to_numpy(dtype=float),
        "pre_dose_remission": outcomes.is_remission(st["pre_dose_score"].to_numpy(dtype=float), course.instrument, rules),
    })
    # Patient-level covariates: one row per patient, then taken by position.
    scale = scales.get(course.instrument)
    per = course.baselines[["patient_id", "baseline_score"]].set_index("patient_id")
    bands = {v: scale.band(v) for v in pd.unique(per["baseline_score"].dropna())}
    per["baseline_band"] = per["baseline_score"].map(bands)
    early = sc[sc["segment"].to_numpy() <= rules.early_response_after]
    early = early.iloc[_last_of_groups(np.arange(len(early)), early["code"].to_numpy())] if len(early) else early
    per["early_response"] = early.set_index("patient_id")["percent_fall"].reindex(per.index)
    if patients is not None and not patients.empty:
        p = patients.copy()
        p["patient_id"] = p["patient_id"].astype(str)
        p = p.drop_duplicates("patient_id").set_index("patient_id")
        keep = [c for c in ("site", "clinician", "prior_failed_trials", "diagnosis", "sex", "birth_year") if c in p.columns]
        parts = [p[keep]]
        if "comorbidities" in p.columns:
            parts.append(_comorbidity_flags(p))
        per = per.join(pd.concat(parts, axis=1), how="left")
    wide = pivot_attributes(attributes)
    if not wide.empty:
        wide.index = wide.index.astype(str)
        wide = wide.rename(columns={c: (f"attr_{c}" if c in per.columns or c in cycles.columns else c) for c in wide.columns})
        per = per.join(wide, how="left")
    take = per.index.get_indexer(cycles["patient_id"])
    # (an empty table keeps the column types it had, as `labels_as_categories` of the text table leaves them)
    per_text = _text_columns(per) if labels_as_categoricals and len(cycles) else []
    labels_as_categories(per, per_text)  # one code per patient's label, sorted over every patient's values
    covariates = per.iloc[np.maximum(take, 0)].reset_index(drop=True)
    covariates[take < 0] = np.nan
    for name in per_text:  # the categories the cycles' own values give (sorted: the order is kept)
        covariates[name] = covariates[name].cat.remove_unused_categories()
    table = pd.concat([cycles.reset_index(drop=True), covariates], axis=1)
    if labels_as_categoricals and len(table):
        labels_as_categories(table, [name for name in _text_columns(table) if name != "patient_id"])
    return table


def cycle_scores(course: Course, rules: OutcomeRules = DEFAULT_RULES, *, settled_in_response: bool = False) -> pd.DataFrame:
    """Every score inside a durability cycle, for models of the measurement (durability.measured).

    One row per score between a cycle's infusion and the next infusion (the pre-dose score at
    the next infusion included): patient_id, cycle_no (as in cycles_from_course), days since
    the cycle's infusion, total, and line: the score above which it no longer meets response
    (baseline x (1 - response_fall); for loss_rule "madrs_relapse_22" half a point below the
    relapse score, so that an integer score is out exactly when it is above the line).
    start_kind: how the cycle started ("in_response": an infusion given in response;
    "recaptured": counted only because its first score was back in response).

    `settled_in_response`: only the rows with `settled` true and start_kind "in_response", as
    `table[table["settled"] & (table["start_kind"] == "in_response")]` of the whole table gives them (index
    included), without making the whole table first (100,000 patients: ~2 M score rows, ~0.15 GB).
    """
    inf, sc = course.infusions, course.scores
    starts = inf["starts_cycle"].to_numpy(dtype=bool)
    code = inf["code"].to_numpy()
    cyc_no = np.zeros(len(inf), dtype=np.int64)
    if starts.any():
        sc_code = code[starts]
        new, start = _starts(sc_code)
        cyc_no[starts] = np.arange(starts.sum()) - start + 1
    seg_row = sc["segment_row"].to_numpy()
    in_cycle = starts[seg_row] if len(seg_row) else np.zeros(0, dtype=bool)
    rows = np.flatnonzero(in_cycle)
    seg = seg_row[rows]
    building = (inf["phase"] == "induction").to_numpy(dtype=bool, na_value=False) \
        & ~inf["last_induction"].to_numpy(dtype=bool)
    index, whole = None, len(rows)
    if settled_in_response:
        kept = ~building[seg] & (inf["start_kind"] == "in_response").to_numpy(dtype=bool, na_value=False)[seg]
        index = pd.RangeIndex(len(rows))[kept]  # the rows' numbers in the whole table
        rows, seg = rows[kept], seg[kept]
    days = (sc["at"].to_numpy()[rows] - inf["at"].to_numpy()[seg]) / np.timedelta64(1, "D")
    base = course.baselines
    # each score's row of the baselines, through the patient codes (a string per score row was 0.5 GB at
    # 100,000 patients); the same values as baselines.set_index("patient_id")[...].reindex(patient ids)
    at_base = pd.Index(base["patient_id"].astype(str))
    pid = sc["patient_id"]
    if isinstance(pid.dtype, pd.CategoricalDtype):
        base_row = at_base.get_indexer(pid.cat.categories.astype(str))[pid.cat.codes.to_numpy()[rows]]
    else:
        base_row = at_base.get_indexer(pid.astype(str).to_numpy()[rows])

    def per_score(column: str) -> np.ndarray:
        values = base[column].to_numpy(dtype=float)[np.maximum(base_row, 0)] if len(base) else np.full(len(rows), np.nan)
        values[base_row < 0] = np.nan
        return values

    n_base = per_score("baseline_n") if "baseline_n" in base else np.ones(len(rows))
    if rules.loss_rule == "madrs_relapse_22":
        line = np.full(len(rows), rules.madrs_relapse_score - 0.5)
        latent = line
    else:
        line = sc["baseline_score"].to_numpy(dtype=float)[rows] * (1.0 - rules.response_fall)
        mean = per_score("baseline_mean") if "baseline_mean" in base else line
        latent = np.where(np.isfinite(mean), mean * (1.0 - rules.response_fall), line)
    ids = _taken_text(pid, rows)  # Arrow text from the course's codes: no Python string per score row
    return pd.DataFrame({
        "patient_id": _as_text(ids, empty_object=not whole)
        if isinstance(ids, (pa.Array, pa.ChunkedArray, pd.api.extensions.ExtensionArray))
        else _object_ids(pid, rows),
        "cycle_no": cyc_no[seg],
        "days": days.astype(float),
        "total": sc["total"].to_numpy(dtype=float)[rows],
        "line": line,
        "latent_line": latent,
        "baseline_scores": n_base,
        "settled": ~building[seg],
        "start_kind": _as_text(_taken_text(inf["start_kind"], seg), empty_object=False) if whole
        else inf["start_kind"].to_numpy(dtype=object)[seg],
    }, index=index)


def _object_ids(pid: pd.Series, rows: np.ndarray) -> np.ndarray:
    """pid's values at `rows` as an object array. From a categorical, one Python string per patient shared by
    all their rows (taking the categorical itself made a new string per row, ~0.1 GB for 2 M score rows at
    100,000 patients, before the frame turned them into its text column)."""
    if not len(rows):
        return np.zeros(0, dtype=object)
    if isinstance(pid.dtype, pd.CategoricalDtype):
        codes = pid.cat.codes.to_numpy()[rows]
        if not (codes < 0).any():
            return np.asarray(pid.cat.categories.to_numpy(dtype=object), dtype=object)[codes]
    return pid.to_numpy()[rows].astype(object)


def build_cycles(patients: pd.DataFrame | None, treatments: pd.DataFrame, assessments: pd.DataFrame,
                 attributes: pd.DataFrame | None = None, *, instrument: str = scales.PRIMARY,
                 rules: OutcomeRules = DEFAULT_RULES) -> pd.DataFrame:
    """The durability cycle table (CYCLE_COLUMNS first, then covariates)."""
    course = build_course(treatments, assessments, instrument, rules)
    return cycles_from_course(course, patients, attributes, rules)


def frames_from_csv_tables(tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Import-format tables (text columns, `administered_on` with an optional
    time, as simulate.py writes them) -> the shapes DataAccess returns."""
    def timed(frame):
        text = frame["administered_on"].astype(str).str.strip()
        out = frame.drop(columns="administered_on").copy()
        out["administered_at"] = pd.to_datetime(text, format="mixed")
        out["has_time"] = text.str.len() > 10
        return out
    patients = tables["patients"].copy()
    for col in ("prior_failed_trials", "birth_year"):
        if col in patients:
            patients[col] = pd.to_numeric(patients[col], errors="coerce")
    core = [c for c in ("patient_id", "site", "clinician", "birth_year", "sex", "diagnosis", "comorbidities",
                        "prior_failed_trials", "enrolled_on") if c in patients.columns]
    extra = [c for c in patients.columns if c not in core]
    attributes = patients.melt(id_vars="patient_id", value_vars=extra, var_name="name", value_name="value") \
        if extra else pd.DataFrame(columns=["patient_id", "name", "value"])
    patients["comorbidities"] = patients.get("comorbidities", pd.Series("", index=patients.index)).fillna("").astype(str).str.replace(";", ",")
    treatments = timed(tables["treatments"])
    treatments["phase"] = treatments["phase"].replace("", None) if "phase" in treatments else None
    assessments = timed(tables["assessments"])
    for col in [c for c in assessments.columns if c.startswith("item_")] + ["total"]:
        assessments[col] = pd.to_numeric(assessments[col], errors="coerce")
    return {"patients": patients[core], "treatments": treatments, "assessments": assessments,
            "attributes": attributes.dropna(subset=["value"])}

