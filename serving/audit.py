"""Append-only audit log of every assessment (SQLite, WAL).

One row per assessed client: time, request id, clinic, client pseudonym (HMAC-SHA256 of the
client id with the deployment secret, so the clinic can re-identify its own client and nobody
else can), instrument, model version, signal colour, the not-on-track flag (``at_risk`` = 1 when
it is open, kept under its first name for existing logs; ``flag_state`` new / continuing /
cleared / none) and safety status. No scores, no dates, no client id. Triggers refuse UPDATE and DELETE, so rows can only be added.

CDS Hooks cards (`serving.cdshooks`) are logged too: each card issued (its uuid, the client's
pseudonym, instrument, indicator, flag state), and the EHR's feedback on it (accepted or
overridden, the coded override reason, whether the user wrote a comment; never the comment).
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import hmac
import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from serving.sqlitefile import open_wal

COLUMNS = ("id", "time", "request_id", "clinic", "client_pseudonym", "instrument",
           "model_version", "signal", "at_risk", "flag_state", "safety")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS assessments (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    time             TEXT NOT NULL,
    request_id       TEXT NOT NULL,
    clinic           TEXT NOT NULL,
    client_pseudonym TEXT NOT NULL,
    instrument       TEXT NOT NULL,
    model_version    TEXT NOT NULL,
    signal           TEXT NOT NULL,
    at_risk          INTEGER,
    safety           TEXT NOT NULL,
    flag_state       TEXT
);
CREATE TABLE IF NOT EXISTS cds_cards (
    card             TEXT PRIMARY KEY,
    time             TEXT NOT NULL,
    clinic           TEXT NOT NULL,
    client_pseudonym TEXT NOT NULL,
    instrument       TEXT,
    indicator        TEXT NOT NULL,
    flag_state       TEXT
);
CREATE TABLE IF NOT EXISTS cds_feedback (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    time             TEXT NOT NULL,
    clinic           TEXT NOT NULL,
    card             TEXT NOT NULL,
    client_pseudonym TEXT NOT NULL,
    outcome          TEXT NOT NULL,
    override_reason  TEXT,
    has_comment      INTEGER NOT NULL,
    outcome_time     TEXT
);
"""
# rows can only be added: UPDATE and DELETE are refused on every table
_SCHEMA += "".join(
    f"CREATE TRIGGER IF NOT EXISTS {table}_no_{op.lower()} BEFORE {op} ON {table}\n"
    f"BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: {op} refused'); END;\n"
    for table in ("assessments", "cds_cards", "cds_feedback") for op in ("UPDATE", "DELETE"))


#: OnTrack heuristic: seconds a caller is asked to wait (``Retry-After``) when the audit log
#: cannot be written.
RETRY_AFTER = "30"


class AuditUnavailable(Exception):
    """The audit log cannot be written (disk full, read-only, locked, gone). No assessment is
    given without its audit row: the service answers 503 with this reason."""

    def __init__(self, cause: sqlite3.Error) -> None:
        super().__init__("the audit log cannot be written "
                         f"({type(cause).__name__}: {str(cause).split(':')[0][:80]})")


def pseudonym(secret: bytes, client_id: str) -> str:
    return hmac.new(secret, client_id.encode(), hashlib.sha256).hexdigest()


class AuditLog:
    def __init__(self, path: Path, secret: str) -> None:
        self.path = Path(path)
        self._secret = secret.encode()
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            # FULL: a commit returns only once the WAL is on disk, so a response is never
            # sent for an assessment whose row a crash (or power loss) could still lose
            conn = open_wal(self.path, _SCHEMA, synchronous="FULL")
            cols = {r[1] for r in conn.execute("PRAGMA table_info(assessments)")}
            if "flag_state" not in cols:  # a log written before the flag policy
                conn.execute("ALTER TABLE assessments ADD COLUMN flag_state TEXT")
            self._conn = conn
        return self._conn

    def open(self) -> AuditLog:
        """Open the log and check that it can be written now (a write, rolled back): a
        read-only file or volume is refused here, at start-up."""
        try:
            db = self._db()
            version = db.execute("PRAGMA user_version").fetchone()[0]
            db.execute("BEGIN IMMEDIATE")  # a read-only WAL file still gives this lock:
            try:  # only a write shows it (rolled back, nothing changes)
                db.execute(f"PRAGMA user_version = {int(version)}")
            finally:
                db.execute("ROLLBACK")
        except sqlite3.Error:
            self.close()  # a connection opened read-only would stay read-only
            raise
        return self

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def record(self, request_id: str, clinic: str, assessments: Iterable) -> int:
        """Append one row per `models.assess.Assessment`; returns the number of rows."""
        now = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
        rows = [(now, request_id, clinic, pseudonym(self._secret, a.client_id), a.instrument,
                 a.risk.model_version if a.risk is not None else "none", a.signal.colour,
                 int(a.flag.flagged), a.flag.state, a.safety.status)
                for a in assessments]
        self._insert("INSERT INTO assessments (time, request_id, clinic, client_pseudonym, "
                     "instrument, model_version, signal, at_risk, flag_state, safety) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        return len(rows)

    def _insert(self, sql: str, rows: list[tuple]) -> None:
        """All rows or none; `AuditUnavailable` when they cannot be made durable."""
        with self._lock:
            try:
                db = self._db()
                db.execute("BEGIN")
                try:
                    db.executemany(sql, rows)
                    db.execute("COMMIT")
                except sqlite3.Error:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as err:
                raise AuditUnavailable(err) from None

    def record_cards(self, clinic: str, cards: Iterable[tuple[str, str, str | None, str,
                                                              str | None]]) -> None:
        """Cards issued: (card uuid, client id, instrument, indicator, flag state)."""
        now = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
        self._insert("INSERT INTO cds_cards (card, time, clinic, client_pseudonym, instrument, "
                     "indicator, flag_state) VALUES (?, ?, ?, ?, ?, ?, ?)",
                     [(card, now, clinic, pseudonym(self._secret, client), inst, ind, state)
                      for card, client, inst, ind, state in cards])

    def card_owner(self, card: str, clinic: str) -> str | None:
        """The client pseudonym of a card this clinic was given, or None."""
        with self._lock:
            row = self._db().execute("SELECT client_pseudonym FROM cds_cards WHERE card = ? "
                                     "AND clinic = ?", (card, clinic)).fetchone()
        return row[0] if row else None

    def record_feedback(self, clinic: str, rows: Iterable[tuple[str, str, str, str | None,
                                                                bool, str | None]]) -> int:
        """Feedback on cards: (card, client pseudonym, outcome, override reason code, whether a
        comment was written, the EHR's outcome time)."""
        now = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
        data = [(now, clinic, card, pseud, outcome, reason, int(comment), when)
                for card, pseud, outcome, reason, comment, when in rows]
        self._insert("INSERT INTO cds_feedback (time, clinic, card, client_pseudonym, outcome, "
                     "override_reason, has_comment, outcome_time) VALUES "
                     "(?, ?, ?, ?, ?, ?, ?, ?)", data)
        return len(data)

    def feedback(self) -> list[dict]:
        cols = ("time", "clinic", "card", "client_pseudonym", "outcome", "override_reason",
                "has_comment", "outcome_time")
        with self._lock:
            data = self._db().execute(f"SELECT {', '.join(cols)} FROM cds_feedback "
                                      "ORDER BY id").fetchall()
        return [dict(zip(cols, r, strict=True)) for r in data]

    def rows(self, since: str | None = None) -> Iterator[dict]:
        sql = f"SELECT {', '.join(COLUMNS)} FROM assessments"
        args: tuple = ()
        if since:
            sql += " WHERE time >= ?"
            args = (since,)
        with self._lock:
            data = self._db().execute(sql + " ORDER BY id", args).fetchall()
        for r in data:
            yield dict(zip(COLUMNS, r, strict=True))

    def export(self, out: IO[str], fmt: str = "csv", since: str | None = None) -> int:
        n = 0
        if fmt == "csv":
            w = csv.DictWriter(out, fieldnames=COLUMNS)
            w.writeheader()
            for r in self.rows(since):
                w.writerow(r)
                n += 1
        elif fmt == "jsonl":
            for r in self.rows(since):
                out.write(json.dumps(r) + "\n")
                n += 1
        else:
            raise ValueError(f"unknown format {fmt!r}; expected csv or jsonl")
        return n
