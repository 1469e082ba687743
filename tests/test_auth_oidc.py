"""OpenID Connect sign-in: claims mapped to a role (unit), and the whole st.login round trip
against a small OIDC provider these tests start on localhost (no internet), in Chromium."""
from __future__ import annotations

import json
import secrets
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from analytics import audit, auth

import authlib  # noqa: E402,F401  st.login needs Authlib (requirements.txt): fail, never skip, without it


# -- mapping claims to a session ---------------------------------------------------------

def test_first_sign_in_creates_the_account_with_the_claimed_role(writable_db):
    session = auth.session_from_identity(writable_db, {"iss": "https://idp", "sub": "1", "email": "dir@clinic.org",
                                                       "email_verified": True, "role": "director"})
    assert (session.username, session.role, session.clinician) == ("dir@clinic.org", "director", None)
    row = auth.list_users(writable_db).set_index("username").loc["dir@clinic.org"]
    assert row["role"] == "director" and not row["local_password"]
    assert audit.entries(writable_db).iloc[-1][["actor", "action"]].tolist() == ["dir@clinic.org", "sign_in"]
    assert auth.validate_session(writable_db, session).username == "dir@clinic.org"


def test_clinician_claim_names_the_caseload_and_a_role_change_ends_old_sessions(writable_db):
    me = {"iss": "https://idp", "sub": "okafor-1"}
    first = auth.session_from_identity(writable_db, {**me, "preferred_username": "okafor", "role": "clinician",
                                                     "clinician": "dr_okafor"})
    assert first.clinician == "dr_okafor"
    second = auth.session_from_identity(writable_db, {**me, "preferred_username": "okafor", "role": ["director"]})
    assert second.role == "director"
    with pytest.raises(auth.SessionEnded):
        auth.validate_session(writable_db, first)
    assert audit.entries(writable_db, action="user_set_role").iloc[-1]["actor"] == "oidc"


@pytest.mark.parametrize("claims", [
    {"preferred_username": "x1", "role": "superuser"},
    {"preferred_username": "x1"},
    {"preferred_username": "x1", "role": ["admin", "clinician"]},
    {"role": "admin"},
    {"preferred_username": "'; DROP TABLE users; --", "role": "admin"},
])
def test_claims_without_one_known_role_or_a_usable_name_are_refused_and_audited(writable_db, claims):
    with pytest.raises(auth.SignInFailed):
        auth.session_from_identity(writable_db, claims)
    last = audit.entries(writable_db).iloc[-1]
    assert (last["action"], last["outcome"], last["detail"]["via"]) == ("sign_in_failed", "denied", "oidc")
    assert auth.list_users(writable_db).empty


def test_a_disabled_account_stays_out_whatever_the_provider_says(writable_db):
    amy = {"iss": "https://idp", "sub": "amy-1", "preferred_username": "amy", "role": "admin"}
    auth.session_from_identity(writable_db, amy)
    auth.disable_user(writable_db, "amy", actor="admin")
    with pytest.raises(auth.SignInFailed, match="disabled"):
        auth.session_from_identity(writable_db, amy)


# -- a small OIDC provider -----------------------------------------------------------------

class Provider:
    """Authorization-code flow with one auto-approving user; RS256 id tokens (Authlib's jose)."""

    def __init__(self, claims: dict, client_id: str, client_secret: str):
        from authlib.jose import JsonWebKey

        self.claims, self.client_id, self.client_secret = claims, client_id, client_secret
        self.key = JsonWebKey.generate_key("RSA", 2048, is_private=True)
        self.kid = "test-key"
        self.codes: dict[str, dict] = {}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def metadata(self) -> dict:
        return {"issuer": self.url, "authorization_endpoint": f"{self.url}/authorize",
                "token_endpoint": f"{self.url}/token", "jwks_uri": f"{self.url}/jwks",
                "response_types_supported": ["code"], "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
                "scopes_supported": ["openid", "profile", "email"]}

    def id_token(self, nonce: str | None) -> str:
        from authlib.jose import jwt

        now = int(time.time())
        body = {"iss": self.url, "aud": self.client_id, "sub": "user-1", "iat": now, "exp": now + 300, **self.claims}
        if nonce:
            body["nonce"] = nonce
        return jwt.encode({"alg": "RS256", "kid": self.kid}, body, self.key).decode()

    def _handler(self):
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _json(self, obj, status=200):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                url = urllib.parse.urlparse(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                if url.path == "/.well-known/openid-configuration":
                    return self._json(provider.metadata())
                if url.path == "/jwks":
                    public = provider.key.as_dict(is_private=False)
                    return self._json({"keys": [{**public, "kid": provider.kid, "use": "sig", "alg": "RS256"}]})
                if url.path == "/authorize":
                    if query.get("client_id") != provider.client_id:
                        return self._json({"error": "unauthorized_client"}, 400)
                    code = secrets.token_urlsafe(16)
                    provider.codes[code] = {"nonce": query.get("nonce"), "redirect_uri": query["redirect_uri"]}
                    target = query["redirect_uri"] + "?" + urllib.parse.urlencode({"code": code, "state": query.get("state", "")})
                    self.send_response(302)
                    self.send_header("Location", target)
                    self.end_headers()
                    return None
                return self._json({"error": "not_found"}, 404)

            def do_POST(self):
                if urllib.parse.urlparse(self.path).path != "/token":
                    return self._json({"error": "not_found"}, 404)
                form = dict(urllib.parse.parse_qsl(self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()))
                grant = provider.codes.pop(form.get("code", ""), None)
                if grant is None:
                    return self._json({"error": "invalid_grant"}, 400)
                return self._json({"access_token": secrets.token_urlsafe(16), "token_type": "Bearer", "expires_in": 300,
                                   "id_token": provider.id_token(grant["nonce"])})

        return Handler

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()


def _provider_round_trip(browser, db, tmp_path, claims: dict, until) -> tuple[str, str]:
    """Serve the dashboard on `db` with `claims` at a local provider, click the provider button in Chromium
    and wait for `until(page)`; returns (the page's text, the provider's URL)."""
    from tests.conftest import free_port, serve_dashboard

    port = free_port()
    client_id, client_secret = "outcomes-dashboard", secrets.token_urlsafe(16)
    with Provider(claims, client_id, client_secret) as provider:
        secrets_file = tmp_path / "secrets.toml"
        secrets_file.write_text(
            "[auth]\n"
            f'redirect_uri = "http://127.0.0.1:{port}/oauth2callback"\n'
            f'cookie_secret = "{secrets.token_urlsafe(24)}"\n'
            f'client_id = "{client_id}"\n'
            f'client_secret = "{client_secret}"\n'
            f'server_metadata_url = "{provider.url}/.well-known/openid-configuration"\n'
        )
        with serve_dashboard(db, tmp_path / "streamlit.log", port=port, env={"OUTCOMES_TODAY": "2026-11-21"},
                             args=("--secrets.files", str(secrets_file))) as url:
            context = browser.new_context()
            try:
                page = context.new_page()
                page.goto(f"{url}/")
                page.get_by_role("button", name="Sign in with your organisation's account").click(timeout=120_000)
                until(page)
                text = page.inner_text("body")
            finally:
                context.close()
    return text, provider.url


def test_st_login_round_trip_maps_the_role_claim(browser, writable_db, tmp_path):
    """The browser clicks the provider button, is sent to the provider and back, and lands on
    the director's pages; the account was created from the claims and the sign-in audited."""
    text, issuer = _provider_round_trip(
        browser, writable_db, tmp_path, {"preferred_username": "dr_director", "role": "director", "email": "d@clinic.test"},
        lambda page: page.get_by_role("heading", name="Cohort outcomes", level=1).wait_for(timeout=120_000))
    assert "Signed in as" in text
    users = auth.list_users(writable_db).set_index("username")
    assert users.loc["dr_director", "role"] == "director" and not users.loc["dr_director", "local_password"]
    signed = audit.entries(writable_db, action="sign_in").iloc[-1]
    assert signed["actor"] == "dr_director"
    assert signed["detail"] == {"via": "oidc", "issuer": issuer, "subject": "user-1"}


def test_st_login_cannot_take_over_a_local_account(browser, writable_db, tmp_path):
    """The provider claims the local admin's name with a clinician role: the browser stays on the sign-in
    page, the admin keeps its role, and the refusal is audited."""
    auth.create_user(writable_db, "admin", "admin", "correct horse battery", actor="test")

    def refused(page):
        # the refusal is audited when the provider's answer comes back (not a fixed pause: a loaded machine is slow)
        for _ in range(240):
            if not audit.entries(writable_db, action="sign_in_failed").empty:
                break
            page.wait_for_timeout(500)
        page.get_by_role("heading", name="Sign in", level=1).wait_for(timeout=120_000)

    text, _ = _provider_round_trip(browser, writable_db, tmp_path, {"preferred_username": "admin", "role": "clinician"}, refused)
    assert "Signed in as" not in text
    assert auth.list_users(writable_db).set_index("username").loc["admin", "role"] == "admin"
    last = audit.entries(writable_db, action="sign_in_failed").iloc[-1]
    assert last["detail"]["reason"] == "name belongs to an account not linked to this identity"
    assert audit.entries(writable_db, action="sign_in").empty
