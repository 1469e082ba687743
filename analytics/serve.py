"""Serving the dashboard from one or several processes (`python -m analytics serve`, `make run`).

One Streamlit process runs every session's page script on one core: Python's GIL lets one
thread run at a time, whatever the number of sessions. Streamlit has no multi-process mode, so
with `--processes N` (N > 1) this starts N ordinary `streamlit run serve.py` processes (the dashboard
with its session routes and security headers, docs/security.md) on
private ports of 127.0.0.1 and a small TCP proxy on the public address that gives each browser
to one of them:

- a browser is recognised by Streamlit's own XSRF cookie (`_streamlit_xsrf`, set on the first
  response, re-sent with every request and with the websocket): its token bytes are the same on
  every request of that browser (the cookie is re-masked each time, so the proxy unmasks it);
- the first time a token is seen it goes to the process with the fewest open websockets, and
  every later request with it to the same process: the session's websocket, its file uploads
  (`/_stcore/upload_file`, which must reach the process that holds the session) and its
  downloads (`/media`, kept in that process's memory);
- a request without the cookie (the first page load, static files, the health check) goes to
  the next process in turn; the proxy asks for `Connection: close` on every request that is not
  a websocket, so each request is routed on its own (a kept-alive connection never carries a
  later request of another browser to the wrong process).

All processes get the same `server.cookieSecret` (XSRF and sign-in cookies made by one are
valid in another). They read the same database: the store (analytics/store.py) lets several
processes read while one writes. Each keeps its own caches, so memory is about N times one
process's; the CPU is what the processes add.

With `--processes 1` (the default when the machine has one core) the dashboard is simply
`streamlit run serve.py`, with no proxy in between.
"""
from __future__ import annotations

import asyncio
import binascii
import itertools
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import OrderedDict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HEAD_LIMIT = 64 * 1024
XSRF_COOKIE = "_streamlit_xsrf"
MAX_BROWSERS = 10_000  # browsers remembered (least recently seen forgotten first)


def default_processes() -> int:
    """One process per core, at most 4 (each holds its own caches)."""
    return max(1, min(os.cpu_count() or 1, 4))


def streamlit_command(port: int, address: str, extra: list[str] = ()) -> list[str]:
    # serve.py, not dashboard.py: its routes (the HttpOnly session cookie) and security headers in every process.
    return [sys.executable, "-m", "streamlit", "run", str(REPO / "serve.py"), "--server.port", str(port),
            "--server.address", address, "--server.headless", "true", *extra]


def browser_token(cookie_header: str | None) -> str | None:
    """The stable part of Streamlit's XSRF cookie in a Cookie header (its token bytes), or None."""
    if not cookie_header:
        return None
    for part in cookie_header.split(";"):
        name, _, value = part.strip().partition("=")
        if name != XSRF_COOKIE or not value:
            continue
        value = value.strip('"')
        pieces = value.split("|")
        if len(pieces) == 4 and pieces[0] == "2":  # version 2: 2|mask|masked token|timestamp
            try:
                mask, masked = binascii.a2b_hex(pieces[1]), binascii.a2b_hex(pieces[2])
            except (binascii.Error, ValueError):
                return value
            if not mask:
                return value
            return bytes(b ^ mask[i % len(mask)] for i, b in enumerate(masked)).hex()
        return value
    return None


def _header(head: bytes, name: bytes) -> str | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip().decode("latin-1")
    return None


def _close_after(head: bytes) -> bytes:
    """The request head with `Connection: close` (so the next request comes on a new, re-routed connection)."""
    lines = [line for line in head.split(b"\r\n") if line and not line.lower().startswith((b"connection:", b"keep-alive:"))]
    return b"\r\n".join(lines + [b"Connection: close"]) + b"\r\n\r\n"


class Proxy:
    """Routes each browser to one backend (see the module docstring)."""

    def __init__(self, backends: list[tuple[str, int]]):
        self.backends = backends
        self.browsers: OrderedDict[str, int] = OrderedDict()
        self.websockets = [0] * len(backends)
        self._turn = itertools.cycle(range(len(backends)))

    def choose(self, token: str | None) -> int:
        if token is None:
            return next(self._turn)
        if token in self.browsers:
            self.browsers.move_to_end(token)
            return self.browsers[token]
        least = min(self.websockets)
        choice = next(i for i in self._turn if self.websockets[i] == least)
        self.browsers[token] = choice
        while len(self.browsers) > MAX_BROWSERS:
            self.browsers.popitem(last=False)
        return choice

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = None
        counted = None
        try:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                return
            upgrade = (_header(head, b"upgrade") or "").lower() == "websocket"
            index = self.choose(browser_token(_header(head, b"cookie")))
            host, port = self.backends[index]
            try:
                up_reader, upstream = await asyncio.open_connection(host, port)
            except OSError:
                writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                await writer.drain()
                return
            if upgrade:
                self.websockets[index] += 1
                counted = index
            else:
                head = _close_after(head)
            upstream.write(head)
            await upstream.drain()
            await asyncio.gather(self._pipe(reader, upstream), self._pipe(up_reader, writer))
        finally:
            if counted is not None:
                self.websockets[counted] -= 1
            for w in (upstream, writer):
                if w is not None:
                    w.close()

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await source.read(65536)
                if not data:
                    break
                sink.write(data)
                await sink.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            try:
                if sink.can_write_eof():
                    sink.write_eof()
            except (OSError, RuntimeError):
                pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(ports: list[int], procs: list[subprocess.Popen], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    pending = set(ports)
    while pending:
        for port in list(pending):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        pending.discard(port)
            except OSError:
                pass
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("a dashboard process exited while starting")
        if pending and time.monotonic() > deadline:
            raise RuntimeError(f"dashboard processes on ports {sorted(pending)} did not start")
        if pending:
            time.sleep(0.3)


def serve(port: int, address: str = "127.0.0.1", processes: int | None = None, extra: list[str] = ()) -> int:
    """Run the dashboard on `address:port` until interrupted; returns the exit code."""
    processes = processes or default_processes()
    if processes == 1:  # Streamlit itself, in this process (signals reach it directly)
        os.chdir(REPO)
        command = streamlit_command(port, address, list(extra))
        os.execv(command[0], command)
    env = dict(os.environ)
    env.setdefault("STREAMLIT_SERVER_COOKIE_SECRET", secrets.token_hex(32))  # shared: cookies valid in every process
    ports = [_free_port() for _ in range(processes)]
    procs = [subprocess.Popen(streamlit_command(p, "127.0.0.1", list(extra)), cwd=REPO, env=env) for p in ports]

    def stop(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        _wait_healthy(ports, procs)
        proxy = Proxy([("127.0.0.1", p) for p in ports])

        async def main():
            server = await asyncio.start_server(proxy.handle, address, port, limit=HEAD_LIMIT, reuse_address=True)
            print(f"dashboard: http://{address}:{port} ({processes} processes)", flush=True)
            async with server:
                while all(p.poll() is None for p in procs):
                    await asyncio.sleep(1)
            print("dashboard: a dashboard process exited; stopping", file=sys.stderr, flush=True)

        asyncio.run(main())
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
