"""The dashboard's server: `streamlit run serve.py` (what `make run` does) serves dashboard.py through
Streamlit's ASGI app (st.App, Starlette on uvicorn) with what plain `streamlit run dashboard.py`
cannot give (docs/security.md):

- `/session/claim` and `/session/end`: the only way to set and clear the sign-in cookie as
  HttpOnly (a Streamlit script can read cookies, never set them). After a sign-in the page
  loads `/session/client.js`, which trades a one-time claim code for the cookie; a sign-out or
  an idle expiry loads it again to clear the cookie. The token is random; the server keeps only
  its SHA-256 (analytics/sessions.py).
- security headers on every HTTP response: a Content-Security-Policy that lets the page load
  images, scripts and fonts and open connections only from its own origin, no framing, no
  referrer, no MIME sniffing; HSTS and Secure cookies when the request came over HTTPS.
- `/media/...` (downloads, images) only for a browser holding a live session cookie.
"""
from __future__ import annotations

import base64
import hashlib
import re
import urllib.parse
from pathlib import Path

import streamlit as st
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from analytics import auth, sessions
from analytics.access import db_path

ROOT = Path(__file__).resolve().parent

CLIENT_JS = """(function () {
  var me = document.currentScript;
  if (!me) { return; }
  var claim = me.getAttribute("data-claim");
  var body = claim ? "code=" + encodeURIComponent(claim) : "";
  fetch(claim ? "/session/claim" : "/session/end", {
    method: "POST", credentials: "same-origin", cache: "no-store",
    headers: {"Content-Type": "application/x-www-form-urlencoded"}, body: body
  });
})();
"""


def _inline_script_hashes() -> list[str]:
    """CSP hashes of the inline scripts in Streamlit's own index.html (it sets one flag inline)."""
    index = Path(st.__file__).parent / "static" / "index.html"
    try:
        html = index.read_text(encoding="utf-8")
    except OSError:
        return []
    bodies = re.findall(r"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", html, flags=re.S)
    return [f"'sha256-{base64.b64encode(hashlib.sha256(b.encode('utf-8')).digest()).decode()}'" for b in bodies]


CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self' " + " ".join(_inline_script_hashes()),
    "style-src 'self' 'unsafe-inline'",  # Streamlit and plotly style elements inline
    "img-src 'self' data: blob:",
    "font-src 'self' data:",
    "connect-src 'self'",
    "media-src 'self' data: blob:",
    "frame-src 'self' data: blob:",
    "worker-src 'self' blob:",
    "object-src 'none'",
    "base-uri 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])
HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",  # self-report links carry their token in the address
    "cross-origin-opener-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
}


def _https(scope) -> bool:
    return scope.get("scheme") in ("https", "wss")


def _cookie_token(cookie_header: str) -> str | None:
    jar = {}
    for part in (cookie_header or "").split(";"):
        name, _, value = part.strip().partition("=")
        jar[name] = value
    for name in sessions.COOKIE_NAMES:
        if jar.get(name):
            return jar[name]
    return None


def _same_origin(request: Request) -> bool:
    """A POST from a page of this very server (Origin, else Referer, must name this host)."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin:
        return False
    parsed = urllib.parse.urlsplit(origin)
    return parsed.netloc == request.headers.get("host") and parsed.scheme in ("http", "https")


def _cookie(response: Response, request: Request, token: str | None) -> None:
    """Set (or, with None, clear) the session cookie: HttpOnly, SameSite=Strict, Path=/, Secure over HTTPS
    (then under the __Host- prefix, which browsers bind to this exact host)."""
    secure = _https(request.scope)
    for name in sessions.COOKIE_NAMES:
        if name.startswith("__Host-") and not secure:
            continue
        wanted = token is not None and (name.startswith("__Host-") == secure)
        response.set_cookie(name, token if wanted else "", max_age=None if wanted else 0, path="/", secure=secure,
                            httponly=True, samesite="strict")


async def client_js(request: Request) -> Response:
    return Response(CLIENT_JS, media_type="text/javascript", headers={"cache-control": "no-cache"})


async def claim(request: Request) -> Response:
    if not _same_origin(request):
        return Response("cross-site request refused", status_code=403)
    body = urllib.parse.parse_qs((await request.body())[:1024].decode("ascii", "replace"))
    code = (body.get("code") or [""])[0]
    token = await run_in_threadpool(auth.claim_session, db_path(), code)
    if token is None:
        return Response("unknown or used claim", status_code=403)
    response = Response(status_code=204, headers={"cache-control": "no-store"})
    _cookie(response, request, token)
    return response


async def end(request: Request) -> Response:
    if not _same_origin(request):
        return Response("cross-site request refused", status_code=403)
    token = _cookie_token(request.headers.get("cookie", ""))
    if token:
        await run_in_threadpool(auth.sign_out_token, db_path(), token)
    response = Response(status_code=204, headers={"cache-control": "no-store"})
    _cookie(response, request, None)
    return response


def _is_media(path: str) -> bool:
    """Streamlit's /media/<file> route (under server.baseUrlPath), not its /static/media/ assets."""
    base = (st.get_option("server.baseUrlPath") or "").strip("/")
    return path.startswith(f"/{base}/media/" if base else "/media/")


def _session_alive(token: str | None) -> bool:
    if not token:
        return False
    try:
        auth.resume(db_path(), token=token, touch=False)
    except auth.SessionEnded:
        return False
    return True


class SecurityMiddleware:
    """Security headers on every HTTP response; /media/ only with a live session cookie."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = dict(HEADERS)
        if _https(scope):
            extra["strict-transport-security"] = "max-age=31536000"
        if _is_media(scope.get("path", "")):
            extra["cache-control"] = "no-store"
            cookie = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"cookie"), "")
            if not await run_in_threadpool(_session_alive, _cookie_token(cookie)):
                refused = Response("sign in to download this file", status_code=403, headers=extra)
                await refused(scope, receive, send)
                return

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in extra.items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


app = st.App(
    str(ROOT / "dashboard.py"),
    routes=[Route("/session/client.js", client_js, methods=["GET"]),
            Route("/session/claim", claim, methods=["POST"]),
            Route("/session/end", end, methods=["POST"])],
    middleware=[Middleware(SecurityMiddleware)],
)

if __name__ == "__main__":
    app.run()
