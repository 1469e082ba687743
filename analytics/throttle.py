"""Sign-in throttling by client, in this process's memory (docs/security.md, "Lockout").

Two counters of consecutive failures, each with its own backoff:
- per (client, user name): a client that keeps guessing one name is locked out of that name,
  whether or not the name exists, while every other client may still sign in with it;
- per client: a client that fails with many names is locked out altogether, so that one
  client cannot lock every account.
An account attacked from many clients is slowed down by a third counter kept in the database
with the account (analytics/auth.py), because it must hold across processes.

Names are never kept: only an HMAC of them under a random key of this process, so a password
typed into the user-name box cannot be read back from memory dumps or logs.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

_PROCESS_KEY = secrets.token_bytes(32)


def backoff(failures: int, free: int, first: timedelta, longest: timedelta) -> timedelta | None:
    """The lock after `failures` consecutive failures: none for the first `free - 1`, then `first`,
    doubling with each further failure, at most `longest`."""
    if failures < free:
        return None
    return min(first * (2 ** min(failures - free, 40)), longest)


@dataclass
class _Count:
    failures: int = 0
    locked_until: datetime | None = None
    last_failure: datetime | None = None


@dataclass(frozen=True)
class Policy:
    free: int
    first: timedelta
    longest: timedelta
    forget_after: timedelta | None = None  # failures this old start the count afresh


class SignInThrottle:
    """Consecutive-failure counters per (place, client, name) and per (place, client); `place` keeps
    databases apart."""

    def __init__(self, per_name: Policy, per_client: Policy, max_entries: int = 100_000):
        self.per_name, self.per_client = per_name, per_client
        self.max_entries = max_entries
        self._counts: dict[tuple, _Count] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _name_key(name: str) -> str:
        return hmac.new(_PROCESS_KEY, (name or "").encode("utf-8", "replace"), hashlib.sha256).hexdigest()

    def _keys(self, place: str, client: str, name: str) -> tuple[tuple, tuple]:
        return ("name", place, client, self._name_key(name)), ("client", place, client)

    def wait(self, place: str, client: str, name: str, now: datetime) -> tuple[timedelta | None, str | None]:
        """(how long this client must still wait, "name" or "client": which lock), or (None, None)."""
        longest, which = None, None
        with self._lock:
            for key in self._keys(place, client, name):
                count = self._counts.get(key)
                if count and count.locked_until and count.locked_until > now:
                    left = count.locked_until - now
                    if longest is None or left > longest:
                        longest, which = left, key[0]
        return longest, which

    def failed(self, place: str, client: str, name: str, now: datetime) -> timedelta | None:
        """Count a failure; returns the lock it starts on (client, name), if any."""
        started = None
        with self._lock:
            if len(self._counts) >= self.max_entries:  # a flood of random names: forget unlocked counters
                self._counts = {k: c for k, c in self._counts.items() if c.locked_until and c.locked_until > now}
            for key, policy in zip(self._keys(place, client, name), (self.per_name, self.per_client)):
                count = self._counts.setdefault(key, _Count())
                if policy.forget_after and count.last_failure and now - count.last_failure > policy.forget_after:
                    count.failures = 0
                count.failures += 1
                count.last_failure = now
                lock = backoff(count.failures, policy.free, policy.first, policy.longest)
                count.locked_until = now + lock if lock else None
                if key[0] == "name":
                    started = lock
        return started

    def succeeded(self, place: str, client: str, name: str) -> None:
        """A sign-in with this name from this client succeeded: its (client, name) count starts afresh.
        The client's own count does not: one good account must not reset a client's guessing."""
        with self._lock:
            self._counts.pop(self._keys(place, client, name)[0], None)


class AnonymousWrites:
    """How often something nobody signed in to may cause an audit write (a self-report link opened):
    at most once per key (a token's hash) per `per_key` seconds, and at most `per_minute` writes a
    minute in all. `decide` answers "write" (record it), "repeat" (the same key was recorded within
    `per_key`: go on without a new entry) or "busy" (the cap is reached: refuse, write nothing)."""

    def __init__(self, per_key: float = 60.0, per_minute: int = 120, max_keys: int = 50_000):
        self.per_key, self.per_minute, self.max_keys = per_key, per_minute, max_keys
        self._last: dict[str, float] = {}
        self._recent: list[float] = []
        self._lock = threading.Lock()

    def decide(self, key: str, now: float) -> str:
        with self._lock:
            self._recent = [t for t in self._recent if now - t < 60.0]
            last = self._last.get(key)
            if last is not None and now - last < self.per_key:
                return "repeat"
            if len(self._recent) >= self.per_minute:
                return "busy"
            if len(self._last) >= self.max_keys:
                self._last = {k: t for k, t in self._last.items() if now - t < self.per_key}
            self._last[key] = now
            self._recent.append(now)
            return "write"
