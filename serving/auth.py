"""Bearer keys per clinic (RFC 6750), stored as salted hashes only.

A key looks like ``otk_<key id>_<secret>``. The key id (12 hex characters) is stored in clear to
find the row; the secret is never stored: only SHA-256(salt || secret) with a random per-key
salt. Verification compares hashes with `hmac.compare_digest` (constant time), and does the
same amount of work for an unknown key id. Keys are 256-bit random, so a fast salted hash is
enough (a slow password hash protects guessable passwords, which these are not).

Scopes: ``assess`` (default: /v1/assess and /v1/noop) and ``benchmark`` (/v1/noop only). A
valid key without the scope a route needs gets 403 ``insufficient_scope``; a missing header
401 without an error code; a malformed, unknown or revoked key 401 ``invalid_token``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from serving.sqlitefile import open_wal

PREFIX = "otk"
SCOPES = ("assess", "benchmark")
_DUMMY_SALT = bytes(16)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_id   TEXT PRIMARY KEY,
    clinic   TEXT NOT NULL,
    scopes   TEXT NOT NULL,
    salt     BLOB NOT NULL,
    hash     BLOB NOT NULL,
    created  TEXT NOT NULL,
    revoked  TEXT
);
"""


@dataclass(frozen=True)
class KeyInfo:
    key_id: str
    clinic: str
    scopes: tuple[str, ...]
    created: str
    revoked: str | None


@dataclass(frozen=True)
class AuthResult:
    ok: bool
    status: int = 200  # 401 / 403 when not ok
    error: str | None = None  # RFC 6750 error code (None: no credentials given)
    clinic: str | None = None
    key_id: str | None = None


def _hash(salt: bytes, secret: str) -> bytes:
    return hashlib.sha256(salt + secret.encode()).digest()


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class KeyStore:
    """API keys in a small SQLite file (created on first use, not at import)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = open_wal(self.path, _SCHEMA)
            self._conn = conn
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # ------------------------------------------------------------------ management
    def add(self, clinic: str, scopes: tuple[str, ...] = ("assess",)) -> str:
        """Create a key for ``clinic``; returns the key (shown once, never stored)."""
        clinic = clinic.strip()
        if not clinic:
            raise ValueError("clinic must not be empty")
        bad = [s for s in scopes if s not in SCOPES]
        if bad:
            raise ValueError(f"unknown scope(s) {bad}; known: {', '.join(SCOPES)}")
        key_id, secret, salt = secrets.token_hex(6), secrets.token_urlsafe(32), secrets.token_bytes(16)
        with self._lock:
            self._db().execute(
                "INSERT INTO api_keys (key_id, clinic, scopes, salt, hash, created) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (key_id, clinic, " ".join(scopes), salt, _hash(salt, secret), _now()))
        return f"{PREFIX}_{key_id}_{secret}"

    def list(self) -> list[KeyInfo]:
        with self._lock:
            rows = self._db().execute(
                "SELECT key_id, clinic, scopes, created, revoked FROM api_keys "
                "ORDER BY created, key_id").fetchall()
        return [KeyInfo(r[0], r[1], tuple(r[2].split()), r[3], r[4]) for r in rows]

    def revoke(self, key_id_or_clinic: str) -> int:
        """Revoke one key (by key id) or every active key of a clinic; returns the count."""
        with self._lock:
            cur = self._db().execute(
                "UPDATE api_keys SET revoked = ? WHERE revoked IS NULL AND "
                "(key_id = ? OR clinic = ?)", (_now(), key_id_or_clinic, key_id_or_clinic))
        return cur.rowcount

    # ------------------------------------------------------------------ verification
    def verify(self, token: str) -> KeyInfo | None:
        """The key's info when ``token`` is a valid, unrevoked key; else None."""
        parts = token.split("_", 2)
        ok_shape = len(parts) == 3 and parts[0] == PREFIX and len(parts[1]) == 12
        key_id, secret = (parts[1], parts[2]) if ok_shape else ("", token)
        with self._lock:
            row = self._db().execute(
                "SELECT clinic, scopes, salt, hash, created, revoked FROM api_keys "
                "WHERE key_id = ?", (key_id,)).fetchone() if ok_shape else None
        if row is None:  # same work as a real comparison
            hmac.compare_digest(_hash(_DUMMY_SALT, secret), bytes(32))
            return None
        clinic, scopes, salt, stored, created, revoked = row
        if not hmac.compare_digest(_hash(salt, secret), stored) or revoked is not None:
            return None
        return KeyInfo(key_id, clinic, tuple(scopes.split()), created, revoked)

    def authorize(self, header: str | None, scope: str) -> AuthResult:
        """RFC 6750 outcome for an ``Authorization`` header value and the scope needed."""
        if not header:
            return AuthResult(False, 401)
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer":
            return AuthResult(False, 401)
        token = token.strip()
        info = self.verify(token) if token else None
        if info is None:
            return AuthResult(False, 401, "invalid_token")
        allowed = scope in info.scopes or (scope == "benchmark" and "assess" in info.scopes)
        if not allowed:
            return AuthResult(False, 403, "insufficient_scope", info.clinic, info.key_id)
        return AuthResult(True, 200, None, info.clinic, info.key_id)


def www_authenticate(result: AuthResult, scope: str) -> str:
    """The ``WWW-Authenticate`` header value for a refused request (RFC 6750 section 3)."""
    value = 'Bearer realm="ontrack"'
    if result.error == "invalid_token":
        value += ', error="invalid_token", error_description="the key is unknown, malformed or revoked"'
    elif result.error == "insufficient_scope":
        value += f', error="insufficient_scope", scope="{scope}"'
    return value
