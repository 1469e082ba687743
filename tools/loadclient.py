"""Simulated dashboard users as real Streamlit sessions, without a browser.

Each simulated user opens the websocket a browser tab opens (`/_stcore/stream`)
and speaks Streamlit's own protocol: a `BackMsg.rerun_script` (a `ClientState`:
which page, the query string, widget values) asks for a page run, and the
server answers with `ForwardMsg`s (`new_session`, `navigation`, the page's
`delta`s) until a `script_finished` that is not `FINISHED_EARLY_FOR_RERUN`
(an `st.rerun()` ends one run and starts the next within one request). A page
run's time is from sending the request to that final `script_finished`, so it
is what a user waits for, server queueing included.

A user first loads the sign-in page, fills the sign-in form (its widgets are
found by their labels in the delta stream and submitted together with the form's
submit button, as the browser does), then repeats its role's flow: clinicians
alternate the Due list and one of their patients (`patient?patient=ID`),
directors Cohort outcomes and Durability and maintenance. Everything the client
knows about the dashboard's pages is in `SIGN_IN` and `FLOWS` below.

Counted as errors: an exception element in the page (`st.exception`, or a
traceback box), a page that does not show what the step expects (its title, the
patient's id; e.g. a "page not found" fallback or a sign-in that did not sign
in), a disconnect, and a page run that does not finish within `timeout_s`.
After a disconnect or a timeout the user reconnects and signs in again.

The client needs Streamlit's protobuf classes (`streamlit.proto`), which import
the `streamlit` package: that is why it lives in `tools/`, not in `analytics/`
(which never imports Streamlit). It runs in its own process, never in the
server's, so its CPU (`client_cpu_s`) is not the server's.

Run it against a running dashboard:

    python -m tools.loadclient http://127.0.0.1:8501 --users 5 --duration 60 --accounts accounts.json --json

where accounts.json is `[{"username": ..., "password": ..., "role": "clinician" | "director",
"patients": [...]}, ...]` (user i signs in as account i modulo their number; a
clinician's `patients` are the ids the flow opens, from their caseload).
"""
from __future__ import annotations

import argparse
import asyncio
import http.cookies
import json
import random
import re
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Callable, Sequence

import websockets
from websockets.asyncio.client import connect as ws_connect
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

from analytics.bench_users import SESSION_PAGES, percentile  # the one load module's, so both count alike

# --- what the client knows about the dashboard: the sign-in form and the flows ---------------


@dataclass(frozen=True)
class SignInForm:
    """The sign-in page (pages/login.py): its address ("" is the site's root, where a user arrives) and
    the labels of its form's widgets."""
    page: str = ""
    title: str = "Sign in"
    user_label: str = "User name"
    password_label: str = "Password"
    submit_label: str = "Sign in"


def _unescape(markdown: str) -> str:
    """Markdown as the browser shows it: the pages escape user-supplied text (a backslash before any ASCII
    punctuation, e.g. `Sign\\-in failed\\:`)."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown).replace("\u200b", "")


@dataclass(frozen=True)
class Open:
    """Open a page as its menu entry or a link does: `path` is its URL path (dashboard.PAGES), `title` its
    menu label, which the page also shows as its title (the landing page is only at "/", so it is found
    by its menu label). `patient=True` adds ?patient=ID, the user's next patient, and expects the page to
    show that id."""
    path: str
    title: str
    patient: bool = False
    expect: tuple[str, ...] = ()  # further texts the page must show


SIGN_IN = SignInForm()
FLOWS: dict[str, tuple[Open, ...]] = {
    "clinician": (Open("due", "Due list"), Open("patient", "Patient trajectory", patient=True)),
    "director": (Open("cohort", "Cohort outcomes", expect=("Active patients", "Response (")),
                 Open("durability", "Durability and maintenance")),
}

# --- the protocol -------------------------------------------------------------------------------

FINAL = {ForwardMsg.FINISHED_SUCCESSFULLY, ForwardMsg.FINISHED_WITH_COMPILE_ERROR,
         ForwardMsg.FINISHED_FRAGMENT_RUN_SUCCESSFULLY}


class Disconnected(Exception):
    pass


@dataclass
class PageRun:
    """What one request produced: the elements on screen at its end, keyed by their position."""
    page: str
    seconds: float = 0.0
    elements: dict[tuple[int, ...], object] = field(default_factory=dict)  # delta path -> Element proto
    page_not_found: bool = False
    messages: int = 0
    bytes: int = 0

    def _each(self, kind: str):
        for path in sorted(self.elements):
            element = self.elements[path]
            if element.WhichOneof("type") == kind:
                yield getattr(element, kind)

    def headings(self) -> list[str]:
        return [_unescape(h.body) for h in self._each("heading")]

    def exceptions(self) -> list[str]:
        return [f"{e.type}: {e.message}" for e in self._each("exception")]

    def alerts(self) -> list[str]:
        return [_unescape(a.body) for a in self._each("alert")]

    def text(self) -> str:
        """The page's visible text, one element a line: titles, markdown and captions, metrics, alerts."""
        lines = []
        for path in sorted(self.elements):
            element = self.elements[path]
            kind = element.WhichOneof("type")
            if kind in ("heading", "markdown", "alert"):
                lines.append(_unescape(getattr(element, kind).body))
            elif kind == "text":
                lines.append(element.text.body)
            elif kind == "metric":
                lines.append(f"{_unescape(element.metric.label)}: {element.metric.body}")
            elif kind == "exception":
                lines.append(f"{element.exception.type}: {element.exception.message}")
        return "\n".join(lines)

    def widget(self, kind: str, label: str):
        """The first widget of `kind` (text_input, button, selectbox, ...) labelled `label`, or None."""
        return next((w for w in self._each(kind) if w.label == label), None)


class StreamlitSession:
    """One browser tab's worth of Streamlit session: a websocket and the pages its navigation offers."""

    def __init__(self, base_url: str, timeout_s: float = 60.0):
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.cookies: dict[str, str] = {}
        self.ws = None
        self.pages: list = []  # the last navigation message's AppPage entries
        self.page_hash = ""  # the page the last run showed
        self.bytes = 0

    async def connect(self) -> None:
        # A browser loads the app first, which sets the XSRF cookie; its value goes back as the second
        # websocket subprotocol entry (the frontend's convention), the cookie with the upgrade request.
        await asyncio.to_thread(self._http_get, "/_stcore/health")
        parsed = urllib.parse.urlsplit(self.base_url)
        scheme = "wss" if parsed.scheme == "https" else "ws"
        protocols = ["streamlit"] + ([self.cookies["_streamlit_xsrf"]] if "_streamlit_xsrf" in self.cookies else [])
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())} if self.cookies else None
        self.ws = await ws_connect(f"{scheme}://{parsed.netloc}{parsed.path}/_stcore/stream", subprotocols=protocols,
                                   additional_headers=headers, origin=f"{parsed.scheme}://{parsed.netloc}",
                                   max_size=None, ping_interval=None, proxy=None, open_timeout=self.timeout_s)
        self.pages, self.page_hash = [], ""

    def _http_get(self, path: str) -> None:
        with urllib.request.urlopen(self.base_url + path, timeout=self.timeout_s) as response:
            for header in response.headers.get_all("Set-Cookie") or []:
                for name, morsel in http.cookies.SimpleCookie(header).items():
                    self.cookies[name] = morsel.value

    async def close(self) -> None:
        if self.ws is not None:
            ws, self.ws = self.ws, None
            try:
                await asyncio.wait_for(ws.close(), 5)
            except Exception:  # already gone: nothing to close
                pass

    def hash_of(self, path: str, title: str | None = None) -> str:
        """The page hash the navigation gives `path` (or, for the landing page, its menu label); '' if neither."""
        for page in self.pages:
            if page.url_pathname == path and path:
                return page.page_script_hash
        for page in self.pages:
            if title and page.page_name == title:
                return page.page_script_hash
        return ""

    async def run(self, page: str, *, path: str = "", page_hash: str | None = None, query: str = "",
                  widgets: Sequence = ()) -> PageRun:
        """Ask for a page run and wait for its end. `page_hash=None` reruns the current page (a widget change);
        otherwise the page is `page_hash` or, if '', the one at `path` (as a typed address)."""
        msg = BackMsg()
        state = msg.rerun_script
        state.query_string = query
        if page_hash is None:
            state.page_script_hash = self.page_hash
        else:
            state.page_script_hash = page_hash
            state.page_name = path if not page_hash else ""
        state.widget_states.widgets.extend(widgets)
        state.context_info.url = f"{self.base_url}/{path}" + (f"?{query}" if query else "")
        state.context_info.timezone = "UTC"
        state.context_info.timezone_offset = 0
        state.context_info.locale = "en-US"
        result = PageRun(page)
        started = time.perf_counter()
        try:
            await self.ws.send(msg.SerializeToString())
            async with asyncio.timeout(self.timeout_s):
                while True:
                    data = await self.ws.recv()
                    result.messages += 1
                    result.bytes += len(data)
                    forward = ForwardMsg()
                    forward.ParseFromString(data)
                    if self._take(forward, result):
                        break
        except websockets.ConnectionClosed as exc:
            raise Disconnected(f"connection closed ({exc})") from exc
        result.seconds = time.perf_counter() - started
        self.bytes += result.bytes
        return result

    def _take(self, msg: ForwardMsg, result: PageRun) -> bool:
        """Apply one message to the run; True when it ends the request."""
        kind = msg.WhichOneof("type")
        if kind == "delta":
            delta = msg.delta
            path = tuple(msg.metadata.delta_path)
            if delta.WhichOneof("type") == "new_element":
                result.elements[path] = delta.new_element
            elif delta.WhichOneof("type") == "add_block":
                result.elements.pop(path, None)
        elif kind == "new_session":  # a run starts (again, after st.rerun): the screen is redrawn from scratch
            result.elements.clear()
            self.page_hash = msg.new_session.page_script_hash
        elif kind == "navigation":
            self.pages = list(msg.navigation.app_pages)
            self.page_hash = msg.navigation.page_script_hash or self.page_hash
        elif kind == "page_not_found":
            result.page_not_found = True
        elif kind == "script_finished":
            return msg.script_finished in FINAL
        return False


# --- simulated users ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Account:
    username: str
    password: str
    role: str  # a key of FLOWS
    patients: tuple[str, ...] = ()  # a clinician's caseload, for steps with patient=True

    @classmethod
    def from_dict(cls, d: dict) -> "Account":
        return cls(d["username"], d["password"], d["role"], tuple(d.get("patients") or ()))




@dataclass
class Sample:
    user: int
    page: str
    started_s: float  # since the load started
    seconds: float
    error: str | None = None


@dataclass
class LoadResult:
    users: int
    duration_s: float
    samples: list[Sample]
    client_cpu_s: float
    bytes_received: int
    started_at: float = 0.0  # wall clock (time.time()) when the load started: Sample.started_s counts from here

    @property
    def runs(self) -> int:
        return len(self.samples)

    @property
    def errors(self) -> int:
        return sum(1 for s in self.samples if s.error)

    def times(self, pages: Callable[[str], bool] | None = None, window: tuple[float, float] | None = None) -> list[float]:
        return [s.seconds for s in self.samples if not s.error and (pages is None or pages(s.page))
                and (window is None or window[0] <= s.started_s < window[1])]

    @property
    def p50_s(self) -> float | None:
        return percentile(self.times(), 50)

    @property
    def p95_s(self) -> float | None:
        return percentile(self.times(), 95)

    def per_page(self) -> dict[str, dict]:
        out = {}
        for page in sorted({s.page for s in self.samples}):
            times = self.times(lambda p, page=page: p == page)
            out[page] = {"runs": sum(1 for s in self.samples if s.page == page),
                         "errors": sum(1 for s in self.samples if s.page == page and s.error),
                         "p50_s": percentile(times, 50), "p95_s": percentile(times, 95),
                         "max_s": max(times) if times else None}
        return out

    def flow_times(self) -> list[float]:
        """Times of the flows' page runs only: what signed-in users wait for, without the sign-in itself."""
        return self.times(lambda page: page not in SESSION_PAGES)

    def summary(self) -> dict:
        times, flow = self.times(), self.flow_times()
        return {"users": self.users, "duration_s": round(self.duration_s, 2), "runs": self.runs, "errors": self.errors,
                "p50_s": _round(self.p50_s), "p95_s": _round(self.p95_s), "max_s": _round(max(times) if times else None),
                "flow_runs": len(flow), "flow_p50_s": _round(percentile(flow, 50)), "flow_p95_s": _round(percentile(flow, 95)),
                "runs_per_s": round(self.runs / self.duration_s, 3) if self.duration_s else None,
                "client_cpu_s": round(self.client_cpu_s, 2), "bytes_received": self.bytes_received,
                "per_page": {k: {kk: _round(vv) for kk, vv in v.items()} for k, v in self.per_page().items()},
                "error_samples": sorted({s.error for s in self.samples if s.error})[:10],
                "started_at": round(self.started_at, 3)}

    def sample_rows(self) -> list[list]:
        """Every page run as [user, page, started_s, seconds, error] (started_s from `started_at`)."""
        return [[s.user, s.page, round(s.started_s, 3), round(s.seconds, 4), s.error] for s in self.samples]


def _round(x, digits=3):
    return round(x, digits) if isinstance(x, float) else x


class _User:
    def __init__(self, number: int, account: Account, base_url: str, started: float, samples: list[Sample],
                 timeout_s: float, on_run: Callable[[int, PageRun, Sample], None] | None):
        self.number, self.account, self.started, self.samples = number, account, started, samples
        self.session = StreamlitSession(base_url, timeout_s)
        self.on_run = on_run
        self.patient_turn = number  # users of one account start on different patients

    def _record(self, run: PageRun | None, page: str, began: float, error: str | None) -> None:
        seconds = run.seconds if run is not None else time.perf_counter() - began
        sample = Sample(self.number, page, began - self.started, seconds, error)
        self.samples.append(sample)
        if self.on_run is not None and run is not None:
            self.on_run(self.number, run, sample)

    async def _request(self, page: str, check: Callable[[PageRun], str | None], **kwargs) -> PageRun | None:
        """One timed request; a disconnect or timeout is recorded and re-raised (the caller reconnects)."""
        began = time.perf_counter()
        try:
            run = await self.session.run(page, **kwargs)
        except (Disconnected, TimeoutError, OSError) as exc:
            kind = "timeout" if isinstance(exc, TimeoutError) else "disconnect"
            self._record(None, page, began, f"{page}: {kind} ({exc})" if str(exc) else f"{page}: {kind}")
            raise
        problems = run.exceptions()
        error = f"{page}: exception {problems[0]}" if problems else check(run)
        self._record(run, page, began, error)
        return run

    async def sign_in(self) -> None:
        began = time.perf_counter()
        try:
            await self.session.connect()
        except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
            self._record(None, "connect", began, f"connect: {type(exc).__name__} ({exc})")
            raise
        fields = (("text_input", SIGN_IN.user_label, self.account.username),
                  ("text_input", SIGN_IN.password_label, self.account.password),
                  ("button", SIGN_IN.submit_label, True))

        def has_form(run: PageRun) -> str | None:
            missing = [label for kind, label, _ in fields if run.widget(kind, label) is None]
            return f"login: no sign-in form (missing {missing}; headings {run.headings()})" if missing else None

        form = await self._request("login", has_form, path=SIGN_IN.page, page_hash="")
        if has_form(form):
            raise Disconnected("no sign-in form")
        widgets = [_widget_state(form.widget(kind, label).id, value) for kind, label, value in fields]

        def signed_in(run: PageRun) -> str | None:
            if SIGN_IN.title in run.headings():
                return f"sign-in: still on the sign-in page ({'; '.join(run.alerts()) or 'no message'})"
            return None

        run = await self._request("sign-in", signed_in, widgets=widgets)
        if signed_in(run):
            raise Disconnected("sign-in failed")

    def next_patient(self) -> str:
        patients = self.account.patients
        if not patients:
            raise ValueError(f"account {self.account.username} has no patients for the flow's patient step")
        patient = patients[self.patient_turn % len(patients)]
        self.patient_turn += 1
        return patient

    async def open(self, step: Open) -> None:
        query, expect = "", [step.title, *step.expect]
        if step.patient:
            patient = self.next_patient()
            query = urllib.parse.urlencode({"patient": patient})
            expect.append(patient)

        def check(run: PageRun) -> str | None:
            if run.page_not_found:
                return f"{step.path}: page not found"
            text = run.text()
            missing = [e for e in expect if e not in text]
            return f"{step.path}: page does not show {missing}" if missing else None

        page_hash = self.session.hash_of(step.path, step.title)
        await self._request(step.path, check, path=step.path, page_hash=page_hash, query=query)

    async def live(self, going: Callable[[], bool], rounds: int | None, think_s: float, rng: random.Random,
                   on_signed_in: Callable[[], None] | None = None) -> None:
        flow = FLOWS[self.account.role]
        done = 0
        signed_in = False
        while going() and (rounds is None or done < rounds):
            try:
                if not signed_in:
                    await self.sign_in()
                    signed_in = True
                    if on_signed_in is not None:
                        on_signed_in()
                        on_signed_in = None  # the first sign-in only
                for step in flow:
                    if not going():
                        break
                    if think_s:
                        await asyncio.sleep(think_s * rng.uniform(0.5, 1.5))
                    await self.open(step)
            except (Disconnected, TimeoutError, OSError, websockets.InvalidHandshake):
                await self.session.close()
                signed_in = False
                await asyncio.sleep(0.5)  # a browser retries after a pause too
            done += 1  # a round that failed is a round too, so `rounds` bounds a user who cannot sign in
        await self.session.close()


def _widget_state(widget_id: str, value):
    from streamlit.proto.WidgetStates_pb2 import WidgetState

    state = WidgetState(id=widget_id)
    if isinstance(value, bool):
        state.trigger_value = value
    elif isinstance(value, str):
        state.string_value = value
    else:
        raise TypeError(f"no widget state for {value!r}")
    return state


async def run_load_async(base_url: str, users: int, accounts: Sequence[Account], *, duration_s: float | None = None,
                         rounds: int | None = None, think_s: float = 0.0, ramp_s: float = 0.0,
                         timeout_s: float = 60.0, seed: int = 0, stop: Callable[[], bool] | None = None,
                         on_run: Callable[[int, PageRun, Sample], None] | None = None,
                         on_all_signed_in: Callable[[], None] | None = None) -> LoadResult:
    """`users` simulated users against the dashboard at `base_url` until `duration_s` has passed or each has run
    its flow `rounds` times, or `stop()` returns True (whichever comes first; one of them is needed). User i signs in as
    accounts[i % len(accounts)], starting `ramp_s * i / users` seconds after the first, and waits
    `think_s` (0.5-1.5 x) before each step. `on_run(user, page_run, sample)` sees every finished run;
    `on_all_signed_in()` is called once, when every user has signed in for the first time."""
    if duration_s is None and rounds is None and stop is None:
        raise ValueError("give duration_s, rounds or stop")
    if not accounts:
        raise ValueError("no accounts to sign in with")
    unknown = {a.role for a in accounts} - set(FLOWS)
    if unknown:
        raise ValueError(f"no flow for role(s) {sorted(unknown)}; flows exist for {sorted(FLOWS)}")
    samples: list[Sample] = []
    wall0 = time.time()
    cpu0, started = time.process_time(), time.perf_counter()
    deadline = started + (duration_s if duration_s is not None else float("inf"))

    def going() -> bool:
        return time.perf_counter() < deadline and not (stop is not None and stop())

    people = [_User(i, accounts[i % len(accounts)], base_url, started, samples, timeout_s, on_run) for i in range(users)]

    signed_in = [0]

    def one_signed_in() -> None:
        signed_in[0] += 1
        if signed_in[0] == users and on_all_signed_in is not None:
            on_all_signed_in()

    async def one(person: _User) -> None:
        await asyncio.sleep(ramp_s * person.number / max(users, 1))
        await person.live(going, rounds, think_s, random.Random(seed * 1000 + person.number), one_signed_in)

    await asyncio.gather(*(one(p) for p in people))
    elapsed = time.perf_counter() - started
    return LoadResult(users, elapsed, samples, time.process_time() - cpu0, sum(p.session.bytes for p in people), wall0)


def run_load(base_url: str, users: int, accounts: Sequence[Account], **kwargs) -> LoadResult:
    """Blocking form of `run_load_async` (same arguments)."""
    return asyncio.run(run_load_async(base_url, users, accounts, **kwargs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.loadclient", description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the dashboard's base URL, e.g. http://127.0.0.1:8501")
    parser.add_argument("--users", type=int, default=1)
    parser.add_argument("--duration", type=float, default=None, metavar="SECONDS")
    parser.add_argument("--rounds", type=int, default=None, help="flow repetitions per user")
    parser.add_argument("--accounts", required=True, metavar="FILE", help="JSON list of accounts (see the module docstring)")
    parser.add_argument("--think", type=float, default=0.0, metavar="SECONDS", help="mean pause before each step")
    parser.add_argument("--ramp", type=float, default=0.0, metavar="SECONDS", help="spread the users' starts over this long")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS", help="longest wait for one page run")
    parser.add_argument("--stop-file", default=None, metavar="PATH",
                        help="stop (after each user's current page run) once this file exists")
    parser.add_argument("--ready-file", default=None, metavar="PATH",
                        help="create this file once every user has signed in")
    parser.add_argument("--samples", action="store_true", help="with --json: every page run too (user, page, start, seconds, error)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if args.duration is None and args.rounds is None and args.stop_file is None:
        parser.error("give --duration, --rounds or --stop-file")
    try:
        with open(args.accounts) as f:
            accounts = [Account.from_dict(d) for d in json.load(f)]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"loadclient: cannot read accounts from {args.accounts}: {exc}", file=sys.stderr)
        return 2
    stop = None
    if args.stop_file:
        import os

        stop = lambda: os.path.exists(args.stop_file)  # noqa: E731
    ready = None
    if args.ready_file:
        ready = lambda: open(args.ready_file, "w").close()  # noqa: E731
    result = run_load(args.url, args.users, accounts, duration_s=args.duration, rounds=args.rounds,
                      think_s=args.think, ramp_s=args.ramp, timeout_s=args.timeout, stop=stop, on_all_signed_in=ready)
    summary = result.summary()
    if args.samples:
        summary["samples"] = result.sample_rows()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{summary['users']} users, {summary['runs']} page runs in {summary['duration_s']} s, "
              f"{summary['errors']} errors; p50 {summary['p50_s']} s, p95 {summary['p95_s']} s")
        for page, row in summary["per_page"].items():
            print(f"  {page:<12} runs {row['runs']:>5}  errors {row['errors']:>3}  p50 {row['p50_s']}  p95 {row['p95_s']}")
        for error in summary["error_samples"]:
            print(f"  error: {error}")
    return 0 if result.errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
