"""Small-cell suppression for cohort views and exports seen by roles without patient-level access.

The rule (CMS cell-size suppression policy uses the same threshold of 11; docs/clinical-rules.md):
- any count under `min_cell` is shown as "<11" (zero included: "none of them" is a disclosure too);
- any figure computed from fewer than `min_cell` patients (a row whose `n_col` is small) is suppressed,
  and so is every other figure in a row where a count was suppressed (a rate or mean next to it
  could give the count back);
- complementary suppression: where a row's counts add up to a known total, or a column's cells add
  up to a known total, a single suppressed cell could be recovered by subtraction, so the smallest
  other cell in that row or column is suppressed as well, repeated until no cell stands alone.

Everything here is pure pandas; pages call `table` (display/export) or `mask` (to drop bars from a
chart) with `min_cell=scope.suppression_threshold` (0 for patient-level roles: nothing hidden).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Hashable, Sequence

import numpy as np
import pandas as pd

DEFAULT_MIN_CELL = 11


def default_min_cell() -> int:
    """$OUTCOMES_MIN_CELL, default 11."""
    text = os.environ.get("OUTCOMES_MIN_CELL", str(DEFAULT_MIN_CELL))
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"OUTCOMES_MIN_CELL must be a whole number, got {text!r}") from None
    if value < 0:
        raise ValueError(f"OUTCOMES_MIN_CELL must be 0 or more, got {text!r}")
    return value


def label(min_cell: int) -> str:
    return f"<{min_cell}"


def count(n, min_cell: int = DEFAULT_MIN_CELL):
    """One count for display: the number, or "<11"."""
    if min_cell > 0 and (n is None or pd.isna(n) or n < min_cell):
        return label(min_cell)
    return n


def mask(
    df: pd.DataFrame,
    count_cols: Sequence[Hashable],
    n_col: Hashable | None = None,
    min_cell: int = DEFAULT_MIN_CELL,
    *,
    value_cols: Sequence[Hashable] | None = None,
    row_totals: bool = False,
    column_totals: bool = True,
    total_row: Hashable | None = None,
) -> pd.DataFrame:
    """Boolean frame (same index and columns as `df`): True where a cell must be suppressed.

    count_cols: columns of patient counts. n_col: the number of patients each row's figures come
    from. value_cols: figures computed from the row (default: every other numeric column).
    row_totals: the row's counts add up to a total the reader knows (n_col, or a total column).
    column_totals: each column's total is known (an "All" row, or the cohort size shown elsewhere).
    total_row: the index label of a totals row, never used as a complement.
    """
    count_cols = list(count_cols)
    missing = [c for c in [*count_cols, *([n_col] if n_col is not None else [])] if c not in df.columns]
    if missing:
        raise KeyError(f"suppress: columns {missing} are not in the table (columns: {list(df.columns)})")
    hidden = pd.DataFrame(False, index=df.index, columns=df.columns)
    if min_cell <= 0 or df.empty:
        return hidden
    if value_cols is None:
        skip = set(count_cols) | ({n_col} if n_col is not None else set())
        value_cols = [c for c in df.columns if c not in skip and pd.api.types.is_numeric_dtype(df[c])]
    value_cols = list(value_cols)
    counted = count_cols + ([n_col] if n_col is not None else [])

    def small(col) -> np.ndarray:
        values = pd.to_numeric(df[col], errors="coerce")
        return (values.isna() | (values < min_cell)).to_numpy()

    for col in counted:
        hidden[col] = small(col)
    if n_col is not None:
        few = small(n_col)
        hidden.loc[few, counted + value_cols] = True

    numbers = df[counted].apply(pd.to_numeric, errors="coerce")
    body = [i for i in range(len(df)) if total_row is None or df.index[i] != total_row]
    for _ in range(len(df) * len(df.columns) + 1):  # each pass hides at least one more cell or stops
        changed = False
        if row_totals:
            for i in range(len(df)):
                cells = hidden.iloc[i][count_cols].to_numpy()
                if cells.sum() == 1:
                    changed |= _hide_smallest(hidden, numbers, [i], [c for c, h in zip(count_cols, cells) if not h], n_col)
        if column_totals:
            for col in counted:
                cells = hidden[col].to_numpy()
                if cells[body].sum() == 1:
                    changed |= _hide_smallest(hidden, numbers, [i for i in body if not cells[i]], [col], None)
        if not changed:
            break
    # any figure in a row with a hidden count could give the count back
    if value_cols:
        any_hidden = hidden[count_cols].any(axis=1).to_numpy()
        hidden.loc[any_hidden, value_cols] = True
    return hidden


def _hide_smallest(hidden: pd.DataFrame, numbers: pd.DataFrame, rows: list[int], cols: list, fallback_col) -> bool:
    """Hide the smallest visible cell among rows x cols (the least information lost)."""
    best = None
    for i in rows:
        for col in cols:
            if hidden.iloc[i][col]:
                continue
            value = numbers.iloc[i][col]
            if best is None or value < best[0]:
                best = (value, i, col)
    if best is None:
        if fallback_col is not None and len(rows) == 1 and not hidden.iloc[rows[0]][fallback_col]:
            hidden.iloc[rows[0], hidden.columns.get_loc(fallback_col)] = True
            return True
        return False
    hidden.iloc[best[1], hidden.columns.get_loc(best[2])] = True
    return True


def table(
    df: pd.DataFrame,
    count_cols: Sequence[Hashable],
    n_col: Hashable | None = None,
    min_cell: int = DEFAULT_MIN_CELL,
    **options,
) -> pd.DataFrame:
    """`df` for display or export with suppressed cells replaced by "<11" (see `mask` for options)."""
    hidden = mask(df, count_cols, n_col, min_cell, **options)
    if not hidden.to_numpy().any():
        return df.copy()
    out = df.astype(object).copy()
    out[hidden] = label(min_cell)
    return out


def blank(
    df: pd.DataFrame,
    count_cols: Sequence[Hashable],
    n_col: Hashable | None = None,
    min_cell: int = DEFAULT_MIN_CELL,
    **options,
) -> pd.DataFrame:
    """`df` for charts: suppressed cells become NaN (a missing bar or point, never a small number)."""
    hidden = mask(df, count_cols, n_col, min_cell, **options)
    out = df.copy()
    for col in df.columns:
        if hidden[col].any():
            out[col] = out[col].astype("float64" if pd.api.types.is_numeric_dtype(out[col]) else object)
            out.loc[hidden[col], col] = np.nan
    return out


def figure(value, n, min_cell: int = DEFAULT_MIN_CELL):
    """A single figure (a median, a rate) computed from `n` patients: the value, or "<11" when n is small."""
    if min_cell > 0 and (n is None or pd.isna(n) or n < min_cell):
        return label(min_cell)
    return value


# --- shares: a part and the rest --------------------------------------------------------

def shown(n, min_cell: int = DEFAULT_MIN_CELL) -> bool:
    """True when a count `n` may be shown (at least `min_cell`; everything when min_cell is 0)."""
    return min_cell <= 0 or (n is not None and not pd.isna(n) and n >= min_cell)


def share_shown(part, whole, min_cell: int = DEFAULT_MIN_CELL) -> bool:
    """A share part/whole (a rate, a percentage) may be shown only when the part and the rest both hold
    at least `min_cell`: "9 of 12" gives the 3 others away as surely as "3 of 12" gives the 3."""
    return min_cell <= 0 or (shown(part, min_cell) and shown(whole - part, min_cell))


# --- coarse filter choices ----------------------------------------------------------------

def pool_small(values: pd.Series, min_cell: int, missing: str = "not recorded") -> tuple[np.ndarray, tuple, dict]:
    """Categories a filter may offer: each value with at least `min_cell` patients is its own; smaller
    ones are pooled with the next smallest (repeatedly) until every category holds `min_cell`.

    Returns (code per row, labels, value -> label). A missing value is the category `missing`.
    Pooled labels list their members, e.g. "dr_osei + dr_tanaka".
    """
    text = values.astype(object).where(values.notna(), missing).astype(str)
    sizes = text.value_counts()
    groups = [[v] for v in sorted(sizes.index)]
    size = {v: int(sizes[v]) for v in sizes.index}
    if min_cell > 0:
        while len(groups) > 1:
            order = sorted(range(len(groups)), key=lambda i: (sum(size[v] for v in groups[i]), groups[i]))
            smallest = order[0]
            if sum(size[v] for v in groups[smallest]) >= min_cell:
                break
            partner = order[1]
            merged = sorted(groups[smallest] + groups[partner])
            groups = [g for i, g in enumerate(groups) if i not in (smallest, partner)] + [merged]
        groups.sort(key=lambda g: g[0])
    labels = tuple(" + ".join(g) for g in groups)
    of_value = {v: labels[i] for i, g in enumerate(groups) for v in g}
    index = {label: i for i, label in enumerate(labels)}
    codes = np.array([index[of_value[v]] for v in text], dtype=np.int32) if len(text) else np.zeros(0, dtype=np.int32)
    return codes, labels, of_value


def pool_flags(flags: dict[str, np.ndarray], min_cell: int) -> tuple[np.ndarray, tuple, dict]:
    """`pool_small` for flags a patient may have several of (comorbidities, "any of" filters): a flag held by
    fewer than `min_cell` patients is pooled with the next smallest (the pool holds patients with either).

    Returns (members: bool flags x patients, labels, flag -> label)."""
    groups = [([name], np.asarray(mask, dtype=bool)) for name, mask in sorted(flags.items())]
    if min_cell > 0:
        while len(groups) > 1:
            order = sorted(range(len(groups)), key=lambda i: (int(groups[i][1].sum()), groups[i][0]))
            smallest = order[0]
            if groups[smallest][1].sum() >= min_cell:
                break
            partner = order[1]
            merged = (sorted(groups[smallest][0] + groups[partner][0]), groups[smallest][1] | groups[partner][1])
            groups = [g for i, g in enumerate(groups) if i not in (smallest, partner)] + [merged]
        groups.sort(key=lambda g: g[0][0])
    labels = tuple(" + ".join(names) for names, _ in groups)
    n = len(next(iter(flags.values()))) if flags else 0
    members = np.array([mask for _, mask in groups], dtype=bool) if groups else np.zeros((0, n), dtype=bool)
    of_flag = {name: labels[i] for i, (names, _) in enumerate(groups) for name in names}
    return members, labels, of_flag


def pool_periods(period_index: np.ndarray, n_periods: int, min_cell: int) -> np.ndarray:
    """Consecutive periods (months) joined into blocks that each hold at least `min_cell` rows, from the
    earliest; a short remainder joins the last block. `period_index` per row (-1: none).
    Returns the block of each period (length n_periods)."""
    counts = np.bincount(period_index[period_index >= 0], minlength=n_periods)
    block = np.zeros(n_periods, dtype=np.int32)
    current, held = 0, 0
    for i in range(n_periods):
        if i and (min_cell <= 0 or held >= min_cell):  # the block so far is full: start the next
            current, held = current + 1, 0
        block[i] = current
        held += counts[i]
    if min_cell > 0 and current > 0 and held < min_cell:  # a short last block joins the one before
        block[block == current] = current - 1
    return block


def ranked_groups(n: int, min_cell: int, max_groups: int) -> np.ndarray:
    """Group of each of `n` ranked rows: at most `max_groups` groups of consecutive rows, every group at
    least `min_cell` rows (sizes differ by at most one). Empty when n < min_cell."""
    if n == 0 or (min_cell > 0 and n < min_cell):
        return np.zeros(0, dtype=np.int64)
    groups = max(1, min(max_groups, n // max(min_cell, 1)))
    return np.arange(n) * groups // n


# --- selections that cannot be told apart by subtraction ------------------------------------
#
# A director changes filters freely, so the rule cannot stop at each view on its own: two views whose
# selections differ by 3 patients give those 3 patients' figures by subtraction. So the selections a
# director may make form a small, known family -- every patient over a range of first-infusion periods,
# or one attribute category (a site, a clinician, ...) over all time -- and a figure of one selection is
# shown only if its patients differ from those of EVERY other member of the family by none or by at
# least min_cell (counting both ways). The check is exact over the family, not a guess about which
# neighbours an attacker would try (docs/security.md, "Disclosure control"). Crossing categories with
# periods was tried and left out: a category's first or last months almost always hold a handful of
# patients, so every such selection would be refused.

@dataclass(frozen=True)
class Populations:
    """The patients each figure is computed from, as (population, patient) pairs: a patient may count
    in several populations (the months they were infused in)."""
    pop: np.ndarray
    patient: np.ndarray
    count: int

    @staticmethod
    def of_masks(masks) -> "Populations":
        masks = [np.asarray(m, dtype=bool) for m in masks]
        pops = [np.full(int(m.sum()), i, dtype=np.int64) for i, m in enumerate(masks)]
        patients = [np.flatnonzero(m) for m in masks]
        return Populations(np.concatenate(pops) if pops else np.zeros(0, np.int64),
                           np.concatenate(patients) if patients else np.zeros(0, np.int64), len(masks))

    @staticmethod
    def of_labels(labels: np.ndarray, count: int) -> "Populations":
        """One population per label value 0..count-1 (label -1: in none)."""
        labels = np.asarray(labels)
        where = np.flatnonzero(labels >= 0)
        return Populations(labels[where].astype(np.int64), where, count)


SIZE = "fewer than {k} patients"
DIFFERENCE = ("another choice of filters ({other}) differs from this one by fewer than {k} patients, "
              "so subtracting one from the other would give them")


@dataclass(frozen=True, eq=False)
class QueryFamily:
    """Every selection a director can ask for: every patient (member 0) over a period -- None (any time,
    never-infused patients included) or a range (first, last) of blocks -- or one category (member g > 0,
    e.g. "site: lakeview") over any time."""
    labels: tuple  # member labels; labels[0] is every patient
    members: np.ndarray  # bool, members x patients (row 0 all True)
    block: np.ndarray  # each patient's period block (-1: none)
    block_labels: tuple
    min_cell: int

    @property
    def n(self) -> int:
        return self.members.shape[1]

    @staticmethod
    def allows(member: int, period: tuple | None) -> bool:
        return member == 0 or period is None

    def select(self, member: int, period: tuple | None) -> np.ndarray:
        if not self.allows(member, period):
            raise ValueError("QueryFamily: a category is chosen over any time only")
        mask = self.members[member].copy()
        if period is not None:
            lo, hi = period
            mask &= (self.block >= lo) & (self.block <= hi)
        return mask

    def describe(self, member: int, period: tuple | None) -> str:
        when = "any time" if period is None else (
            self.block_labels[period[0]] if period[0] == period[1] else
            f"{self.block_labels[period[0]].split('–')[0]}–{self.block_labels[period[1]].split('–')[-1]}")
        return f"{self.labels[member]}, {when}"

    def refusals(self, member: int, period: tuple | None, populations: Populations) -> list:
        """For each population: None (figures of the selection's patients in it may be shown) or why not."""
        k = self.min_cell
        reasons = [None] * populations.count
        if k <= 0 or populations.count == 0:
            return reasons
        selected = self.select(member, period)
        pop, patient = populations.pop, populations.patient
        count = populations.count
        inside = np.bincount(pop, weights=selected[patient], minlength=count)
        for i in np.flatnonzero(inside < k):
            reasons[i] = SIZE.format(k=k)
        if member == 0 and period is None:
            return reasons  # the whole cohort: its figures are what every other selection is checked against
        sizes = self._family_sums(self._member_counts(pop, patient, count))
        shared = self._family_sums(self._member_counts(pop, patient, count, selected))
        apart = inside[:, None] + sizes - 2 * shared  # patients in one of the two selections only
        small = (apart > 0) & (apart < k)
        others = self._family()
        for i in np.flatnonzero(small.any(axis=1)):
            if reasons[i] is None:
                g, r = others[int(np.flatnonzero(small[i])[0])]
                reasons[i] = DIFFERENCE.format(other=self.describe(g, r), k=k)
        return reasons

    def refusal(self, member: int, period: tuple | None, population: np.ndarray | None = None) -> str | None:
        mask = np.ones(self.n, dtype=bool) if population is None else np.asarray(population, dtype=bool)
        return self.refusals(member, period, Populations.of_masks([mask]))[0]

    def _member_counts(self, pop, patient, count, within: np.ndarray | None = None) -> np.ndarray:
        """(populations x members x blocks+1) pairs per member and block (column 0: no block)."""
        width = len(self.block_labels) + 1
        if within is not None:
            keep = within[patient]
            pop, patient = pop[keep], patient[keep]
        key = pop * width + self.block[patient] + 1
        out = np.zeros((count, len(self.labels), width))
        for g in range(len(self.labels)):
            hit = self.members[g, patient]
            out[:, g, :] = np.bincount(key[hit], minlength=count * width).reshape(count, width)
        return out

    def _family(self) -> list:
        """Every (member, period) of the family, in the order of `_family_sums`' columns."""
        blocks = len(self.block_labels)
        return ([(0, None)] + [(0, (a, b)) for a in range(blocks) for b in range(a, blocks)]
                + [(g, None) for g in range(1, len(self.labels))])

    def _family_sums(self, counts: np.ndarray) -> np.ndarray:
        """(populations x family members): per-member-and-block counts summed as each member of `_family()` selects."""
        total = counts.sum(axis=2)
        every = counts[:, 0, :]
        cumulative = np.concatenate([np.zeros((counts.shape[0], 1)), np.cumsum(every[:, 1:], axis=1)], axis=1)
        blocks = len(self.block_labels)
        lo = np.array([a for a in range(blocks) for b in range(a, blocks)], dtype=np.int64)
        hi = np.array([b for a in range(blocks) for b in range(a, blocks)], dtype=np.int64)
        return np.concatenate([total[:, :1], cumulative[:, hi + 1] - cumulative[:, lo], total[:, 1:]], axis=1)
