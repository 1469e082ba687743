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
