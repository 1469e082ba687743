"""The checks of a large file's blocks, run in worker processes: on two cores two blocks at a time.

`rules.validate` is column-wise pandas and numpy, and most of it holds the GIL: in threads the
blocks of a large file would still be checked one at a time. Here each block goes to a worker
process (`checkers.serve` in a fresh interpreter: nothing of the parent's DuckDB
threads or main module is inherited), which checks it with the very same `rules.validate` and hands
back its rejects and its good rows as Arrow; the parent keeps the order of the blocks, numbers the
rows and stages them (csv_source.py). The outcome is the same as checking the blocks in the parent,
rejects, lines and messages included (tests/test_ingest_blocks.py). Blocks travel through pipes,
never through files: no patient row is written anywhere new.

Only files of at least `PARALLEL_ROWS` rows use the workers (starting one costs about 1.5 s of CPU,
spent while the parent scans the file); when they cannot be started the blocks are checked in the
parent as before.
"""
from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
from collections import deque
from datetime import datetime
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa

from .. import scales

# A staged file with at least this many rows has its blocks checked in worker processes...
PARALLEL_ROWS = 1_000_000
# ... and the workers are started before the scan when a file has at least this many bytes.
PARALLEL_BYTES = 32 << 20
# Test hook: "1" checks every staged file in workers, whatever its size; "0" never.
WORKERS_ENV = "OUTCOMES_IMPORT_CHECK_WORKERS"


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def wanted(rows_total: int) -> bool:
    """Are the blocks of a staged file of `rows_total` rows checked in workers?"""
    forced = os.environ.get(WORKERS_ENV)
    if forced in ("0", "1"):
        return forced == "1" and _cores() >= 2
    return _cores() >= 2 and rows_total >= PARALLEL_ROWS


def _clean_table(clean: pd.DataFrame) -> pa.Table:
    """A block's good rows as the staging wants them: Arrow, no pandas metadata, no null-typed column."""
    table = pa.Table.from_pandas(clean, preserve_index=False).replace_schema_metadata(None)
    # A column empty in a block comes out typed null: every block gets the same types.
    return pa.table([c.cast(pa.large_string()) if pa.types.is_null(c.type) else c for c in table.columns],
                    names=table.column_names)


def check_block(kind: str, frame: pd.DataFrame, now: datetime) -> tuple[pd.DataFrame, pa.Table, list[str], frozenset]:
    """One block checked: (rejects, good rows as Arrow, notes, columns given); `_row` is numbered by
    `numbered` once the rows of the blocks before are known."""
    from . import rules  # here: a worker sets the scale registry first, and rules reads it when it loads

    v = rules.validate(kind, frame, now=now, trimmed=True)
    del frame
    return v.rejects, _clean_table(v.clean), v.notes, v.given


def numbered(table: pa.Table, offset: int) -> pa.Table:
    """`table` with its `_row` column set to offset, offset + 1, ...: the position among the file's good rows."""
    at = table.schema.get_field_index("_row")
    return table.set_column(at, "_row", pa.array(np.arange(offset, offset + table.num_rows, dtype="int64")))


class WorkerFailed(RuntimeError):
    """A worker process ended without an answer (killed, out of memory)."""


# The worker imports this module and rules.py only, not the whole import package (its __init__ loads
# DuckDB, the store and the sources): a bare package stands in for it. That halves a worker's start-up.
_ENTRY = """
import pathlib, sys, types
import analytics
package = types.ModuleType("analytics.ingest")
package.__path__ = [str(pathlib.Path(analytics.__file__).parent / "ingest")]
sys.modules["analytics.ingest"] = package
from analytics.ingest.checkers import serve
serve()
"""


class _Worker:
    def __init__(self):
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        self.process = subprocess.Popen([sys.executable, "-c", _ENTRY], env=env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def send(self, request) -> None:
        pickle.dump(request, self.process.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        self.process.stdin.flush()

    def receive(self):
        try:
            status, value = pickle.load(self.process.stdout)
        except (EOFError, pickle.UnpicklingError) as exc:
            raise WorkerFailed(f"a check worker ended unexpectedly (exit {self.process.poll()})") from exc
        if status == "error":
            raise value
        return value

    def close(self) -> None:
        # Both pipes closed first: a worker waiting for a block ends at once, one writing an answer
        # nobody reads ends on the broken pipe (quietly, see `serve`).
        for pipe in (self.process.stdin, self.process.stdout):
            try:
                pipe.close()
            except OSError:
                pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Workers:
    """Up to two worker processes for one reading of files, started on demand, ended by `close`."""

    def __init__(self):
        self._workers: list[_Worker] = []

    def start(self) -> bool:
        if not self._workers and _cores() >= 2:
            try:
                self._workers = [_Worker() for _ in range(2)]
            except OSError:
                self.close()
        return bool(self._workers)

    def close(self) -> None:
        for worker in self._workers:
            worker.close()
        self._workers = []

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def checked(self, kind: str, blocks: Iterator[pd.DataFrame], now: datetime,
                ) -> Iterator[tuple[pd.DataFrame, pa.Table, list[str], frozenset]]:
        """`check_block` of each block, in the order of the blocks: block i goes to worker i mod 2, so two
        are checked at once while the next is parsed (memory: three blocks). Without workers, here."""
        if not self._workers:
            for frame in blocks:
                yield check_block(kind, frame, now)
            return
        waiting: deque[_Worker] = deque()
        registry = (scales.SCALES, scales._ALIASES)  # instruments a plugin registered in this process too
        try:
            for i, frame in enumerate(blocks):
                worker = self._workers[i % len(self._workers)]
                if worker in waiting:  # its last block first: one request at a time per worker
                    while waiting:
                        yield waiting.popleft().receive()
                        if worker not in waiting:
                            break
                worker.send((kind, frame, now, registry))
                waiting.append(worker)
                del frame
            while waiting:
                yield waiting.popleft().receive()
        except BaseException:
            self.close()  # a worker may be mid-answer: these pipes cannot be used again
            raise


def serve() -> None:
    """The worker's loop: requests (kind, frame, now, the parent's scale registry) on stdin, answers ("ok", result) or ("error", exc) on stdout."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which ends the workers
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed goes to stderr, never into the answers
    requests = sys.stdin.buffer
    while True:
        try:
            kind, frame, now, (registered, aliases) = pickle.load(requests)
        except (EOFError, OSError, pickle.UnpicklingError):  # the parent ended or gave up on the workers
            return
        try:
            scales.SCALES.clear()
            scales.SCALES.update(registered)
            scales._ALIASES.clear()
            scales._ALIASES.update(aliases)
            answer = ("ok", check_block(kind, frame, now))
        except Exception as exc:  # noqa: BLE001 - raised again in the parent
            answer = ("error", exc)
        del frame
        try:
            data = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # noqa: BLE001 - an exception that does not pickle
            data = pickle.dumps(("error", RuntimeError(f"{type(exc).__name__}: {exc}")))
        try:
            answers.write(data)
            answers.flush()
        except OSError:  # the parent closed the pipe (it stopped early): nothing to say to anyone
            return

