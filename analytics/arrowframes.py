"""Arrow columns as the pandas frame DuckDB's `.df()` gives, so both store backends hand callers the same dtypes."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

_STRINGS = pd.StringDtype("pyarrow", na_value=np.nan)
_NULLABLE = {pa.int8(): pd.Int8Dtype(), pa.int16(): pd.Int16Dtype(), pa.int32(): pd.Int32Dtype(),
             pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}


def pandas_like_df(names: list[str], columns: list, order: pa.Array | None = None) -> pd.DataFrame:
    """The frame DuckDB's `.df()` gives for the same rows (same dtypes: nullable integers and booleans
    only where a column has NULLs, dates as datetime64[us], Arrow-backed strings), converted one
    column at a time so the Arrow copy is released as the frame grows: at 100,000 patients the
    assessments frame peaks at about twice its size instead of five times (docs/performance.md).
    `columns` (Arrow columns named `names`) is emptied as they are converted; `order`, if given,
    the row positions to take, one column at a time (never a second copy of the whole table)."""
    data = {}
    for i, name in enumerate(names):
        column, columns[i] = columns[i], None
        if order is not None:
            column = column.take(order)
        kind = column.type
        if pa.types.is_date32(kind) or pa.types.is_date64(kind):
            column = column.cast(pa.timestamp("us"))
            kind = column.type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
            mapper = {kind: _STRINGS}.get
        elif kind in _NULLABLE and column.null_count:
            mapper = {kind: _NULLABLE[kind]}.get
        else:
            mapper = None
        data[name] = column.to_pandas(types_mapper=mapper)
        del column
    return pd.DataFrame(data, columns=names)
