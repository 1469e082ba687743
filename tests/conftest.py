"""Shared fixtures: one demo database per test session, and a live Streamlit server.

The demo database is built through the ordinary command line
(`python -m analytics demo`), so page tests see what a clinic would import.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO_PATIENTS = 120
DEMO_SEED = 7


def _build_demo(path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "analytics", "demo", "--db", str(path),
         "--patients", str(DEMO_PATIENTS), "--seed", str(DEMO_SEED)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    if result.returncode != 0 or not path.exists():
        raise RuntimeError(f"demo database build failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")


@pytest.fixture(scope="session")
def demo_db(tmp_path_factory) -> Path:
    """A 120-patient demo clinic (seed 7), built once and shared read-only."""
    path = tmp_path_factory.mktemp("demo") / "demo.duckdb"
    _build_demo(path)
    return path


@pytest.fixture()
def writable_db(demo_db, tmp_path) -> Path:
    """A private copy of the demo database that a test may change."""
    copy = tmp_path / "writable.duckdb"
    shutil.copy(demo_db, copy)
    wal = Path(str(demo_db) + ".wal")
    if wal.exists():
        shutil.copy(wal, Path(str(copy) + ".wal"))
    return copy


@pytest.fixture()
def outcomes_db(monkeypatch, demo_db) -> Path:
    """Point the app (store.db_path) at the demo database for this test."""
    monkeypatch.setenv("OUTCOMES_DB", str(demo_db))
    return demo_db


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def streamlit_server(demo_db, tmp_path_factory):
    """`streamlit run dashboard.py` on a free port against the demo database; yields the base URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "streamlit.log"
    env = dict(os.environ, OUTCOMES_DB=str(demo_db), STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "dashboard.py",
             "--server.port", str(port), "--server.headless", "true", "--server.address", "127.0.0.1"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"streamlit did not start:\n{log.read_text()}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
