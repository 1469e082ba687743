"""`python -m analytics serve --processes N`: several dashboard processes behind one port (analytics/serve.py).

Behaviour only (how fast is the benchmark's business, docs/performance.md): each process is the dashboard
with its security routes and headers (serve.py), a browser stays on one process, and users of different
processes sign in and run their flows against the same database.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import duckdb
import pytest

from analytics import serve
from analytics.bench_users import process_tree
from conftest import BROWSER_PASSWORD, DEMO_TODAY, ROOT, free_port, wait_until_healthy
from tools.loadclient import Account, run_load


def _xsrf_cookie(token: bytes, mask: bytes) -> str:
    masked = bytes(b ^ mask[i % len(mask)] for i, b in enumerate(token))
    return f"_streamlit_xsrf=2|{mask.hex()}|{masked.hex()}|1700000000"


def test_a_browser_is_known_by_its_xsrf_token_whatever_its_mask():
    token = bytes(range(32))
    one, other = _xsrf_cookie(token, b"\x01\x02\x03\x04"), _xsrf_cookie(token, b"\xff\x00\xaa\x55")
    assert one != other
    assert serve.browser_token(f"a=b; {one}") == serve.browser_token(other) == token.hex()
    assert serve.browser_token("a=b") is None and serve.browser_token(None) is None


def test_the_proxy_keeps_a_browser_on_its_process_and_spreads_new_ones():
    proxy = serve.Proxy([("127.0.0.1", 1), ("127.0.0.1", 2)])
    first = proxy.choose("browser-1")
    proxy.websockets[first] += 1  # its websocket is open
    second = proxy.choose("browser-2")
    assert second != first  # the new browser goes to the process with fewer sessions
    assert all(proxy.choose("browser-1") == first for _ in range(5))
    assert all(proxy.choose("browser-2") == second for _ in range(5))


@pytest.fixture(scope="module")
def two_processes(server_db, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = dict(os.environ, OUTCOMES_DB=str(server_db), OUTCOMES_TODAY=DEMO_TODAY, PYTHONPATH=str(ROOT),
               STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
    env.pop("OUTCOMES_ROLE", None)
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "analytics", "serve", "--port", str(port), "--processes", "2"],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, proc, log, timeout_s=120)
        yield url, proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)


def test_every_process_serves_the_dashboard_with_its_security_headers(two_processes):
    url, proc = two_processes
    dashboards = [pid for pid in process_tree(proc.pid)
                  if b"streamlit" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(dashboards) == 2  # two dashboard processes behind the one port
    for _ in range(4):  # requests without a browser cookie take the processes in turn
        with urllib.request.urlopen(f"{url}/", timeout=30) as resp:
            assert resp.status == 200
            assert "default-src 'self'" in (resp.headers.get("Content-Security-Policy") or "")


def test_users_on_different_processes_sign_in_and_run_their_flows(two_processes, server_db):
    url, _proc = two_processes
    with duckdb.connect(str(server_db), read_only=True) as con:
        clinicians = [r[0] for r in con.execute("SELECT DISTINCT clinician FROM patients ORDER BY 1 LIMIT 2").fetchall()]
        patients = {c: tuple(r[0] for r in con.execute(
            "SELECT patient_id FROM patients WHERE clinician = ? ORDER BY patient_id LIMIT 2", [c]).fetchall())
            for c in clinicians}
    accounts = [Account(c, BROWSER_PASSWORD, "clinician", patients[c]) for c in clinicians]
    accounts.append(Account("director", BROWSER_PASSWORD, "director"))

    result = run_load(url, len(accounts), accounts, rounds=1, timeout_s=240)

    assert result.errors == 0, result.summary()["error_samples"]
    assert {page: row["runs"] for page, row in result.per_page().items()} == {
        "login": 3, "sign-in": 3, "due": 2, "patient": 2, "cohort": 1, "durability": 1}
