"""The EHR's signed token on every CDS Hooks call (CDS Hooks 2.0, "Trusting CDS Clients").

Each call carries ``Authorization: Bearer <JWT>`` signed by the EHR with its private key. OnTrack
accepts a token only when all of these hold (PyJWT does the cryptography):

* the header's ``alg`` is ES384 or RS384 (the two the specification requires services to
  support); ``none``, HMAC and every other algorithm are refused;
* ``iss`` is on the issuer allow-list (``ONTRACK_CDS_ISSUERS``, a JSON file), and the key is
  the issuer's: from its configured JWKS, or from its ``jwks_url``, or from the header's
  ``jku`` when that URL is on the issuer's own ``jku`` allow-list;
* the signature verifies with the key named by ``kid``;
* ``aud`` is the URL of the CDS Service being called (``ONTRACK_PUBLIC_URL`` + path);
* ``exp``, ``iat``, ``jti`` and ``sub`` are present; ``exp`` has not passed and ``iat`` is not
  in the future (30 s leeway for clock skew), and the token lives at most 5 minutes (the
  specification's recommended lifetime);
* ``jti`` has not been seen from that issuer before (a replay cache in SQLite, shared by the
  service's workers, kept until the token's expiry).

Anything else: 401 with no detail (the reason goes to the log as a rule name, never the token).

The issuer file::

    {"issuers": [{"iss": "https://ehr.example.org", "clinic": "clinic-a",
                  "jwks": {"keys": [...]}, "jwks_url": null, "jku": [],
                  "fhir_servers": ["https://ehr.example.org/fhir"]}]}

``clinic`` names the clinic in the audit log and for its flag budget; ``fhir_servers`` are the
FHIR base URLs OnTrack may fetch from on that issuer's behalf when prefetch is missing.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt

from serving.sqlitefile import open_wal

log = logging.getLogger("serving.ehrauth")

ALGORITHMS = ("ES384", "RS384")
LEEWAY_SECONDS = 30  # OnTrack heuristic: clock skew between the EHR and the service
MAX_LIFETIME_SECONDS = 300  # CDS Hooks 2.0: exp SHOULD be no more than 5 minutes after iat
JWKS_CACHE_SECONDS = 300  # OnTrack heuristic: how long a fetched JWKS is trusted

_SCHEMA = """
CREATE TABLE IF NOT EXISTS seen_jti (
    iss TEXT NOT NULL,
    jti TEXT NOT NULL,
    exp INTEGER NOT NULL,
    PRIMARY KEY (iss, jti)
);
"""


@dataclass(frozen=True)
class Issuer:
    iss: str
    clinic: str
    jwks: dict[str, Any] | None = None
    jwks_url: str | None = None
    jku: tuple[str, ...] = ()
    fhir_servers: tuple[str, ...] = ()

    def may_fetch_from(self, url: str) -> bool:
        return any(url.rstrip("/") == s.rstrip("/") or url.startswith(s.rstrip("/") + "/")
                   for s in self.fhir_servers)


@dataclass(frozen=True)
class Caller:
    issuer: Issuer
    subject: str


class Refused(Exception):
    """A token that is not accepted; ``rule`` names why (for the log, never the reply)."""

    def __init__(self, rule: str) -> None:
        super().__init__(rule)
        self.rule = rule


def load_issuers(path: Path | None) -> dict[str, Issuer]:
    if path is None or not Path(path).exists():
        return {}
    doc = json.loads(Path(path).read_text())
    out = {}
    for row in doc.get("issuers", []):
        out[row["iss"]] = Issuer(iss=row["iss"], clinic=row.get("clinic") or row["iss"],
                                 jwks=row.get("jwks"), jwks_url=row.get("jwks_url"),
                                 jku=tuple(row.get("jku") or ()),
                                 fhir_servers=tuple(row.get("fhir_servers") or ()))
    return out


@dataclass
class Verifier:
    issuers: dict[str, Issuer]
    replay_path: Path
    _clients: dict[str, jwt.PyJWKClient] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _conn: sqlite3.Connection | None = None

    def verify(self, authorization: str | None, audience: str) -> Caller:
        if not authorization or not authorization.startswith("Bearer "):
            raise Refused("missing_token")
        token = authorization[7:].strip()
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise Refused("malformed_token") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise Refused("algorithm_not_allowed")
        issuer = self.issuers.get(claims.get("iss"))
        if issuer is None:
            raise Refused("unknown_issuer")
        key = self._key(issuer, header)
        try:
            claims = jwt.decode(
                token, key, algorithms=[alg], audience=audience, issuer=issuer.iss,
                leeway=LEEWAY_SECONDS,
                options={"require": ["iss", "sub", "aud", "exp", "iat", "jti"]})
        except jwt.ExpiredSignatureError:
            raise Refused("expired") from None
        except jwt.InvalidAudienceError:
            raise Refused("wrong_audience") from None
        except jwt.MissingRequiredClaimError:
            raise Refused("missing_claim") from None
        except jwt.PyJWTError:
            raise Refused("invalid_token") from None
        if int(claims["exp"]) - int(claims["iat"]) > MAX_LIFETIME_SECONDS:
            raise Refused("lifetime_too_long")
        if not isinstance(claims["jti"], str) or not claims["jti"]:
            raise Refused("missing_claim")
        self._remember(issuer.iss, claims["jti"], int(claims["exp"]))
        return Caller(issuer=issuer, subject=str(claims["sub"]))

    def _key(self, issuer: Issuer, header: dict[str, Any]):
        kid = header.get("kid")
        jku = header.get("jku")
        try:
            if jku is not None:
                if jku not in issuer.jku:
                    raise Refused("jku_not_allowed")
                return self._client(jku).get_signing_key(kid).key
            if issuer.jwks is not None:
                keys = jwt.PyJWKSet.from_dict(issuer.jwks).keys
                for k in keys:
                    if kid is None or k.key_id == kid:
                        return k.key
                raise Refused("unknown_key")
            if issuer.jwks_url:
                return self._client(issuer.jwks_url).get_signing_key(kid).key
        except jwt.PyJWTError:
            raise Refused("unknown_key") from None
        raise Refused("no_key_configured")

    def _client(self, url: str) -> jwt.PyJWKClient:
        with self._lock:
            if url not in self._clients:
                self._clients[url] = jwt.PyJWKClient(url, cache_jwk_set=True,
                                                     lifespan=JWKS_CACHE_SECONDS, timeout=10)
            return self._clients[url]

    def _remember(self, iss: str, jti: str, exp: int) -> None:
        with self._lock:
            if self._conn is None:
                self._conn = open_wal(self.replay_path, _SCHEMA)
            db = self._conn
            now = int(time.time())
            try:
                db.execute("BEGIN IMMEDIATE")
                db.execute("DELETE FROM seen_jti WHERE exp < ?", (now - LEEWAY_SECONDS,))
                db.execute("INSERT INTO seen_jti (iss, jti, exp) VALUES (?, ?, ?)",
                           (iss, jti, exp))
                db.execute("COMMIT")
            except sqlite3.IntegrityError:
                db.execute("ROLLBACK")
                raise Refused("replayed_jti") from None
