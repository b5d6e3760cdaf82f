"""The PostgreSQL store (`--store postgresql://...`, psycopg 3), shared by replicas on several machines.

The schema is created and migrated at start (MIGRATIONS, applied in order under an advisory lock, so replicas
starting together migrate once); every change that touches more than one row runs in one transaction, and
a read-modify-write (append) locks its row (`FOR UPDATE`), so two replicas appending to one session never
lose each other's messages. Each call opens its own connection (as the SQLite store does): nothing is shared
across the threads and forked workers, and a replica holds no connection while idle.
"""
from __future__ import annotations

import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import psycopg

from psycopg.types.json import Jsonb

from ..files import INLINE_CAP_BYTES, MAX_FILE_BYTES, FileStore, default_format, mime_type
from ..sessions import Session, SessionInfo, SessionStore, check_session_id
from ..stored_responses import StoredResponse
from .approvals import MAX_AGE_S, ApprovalTable, SharedApprovalBroker
from .base import Store

MIGRATION_LOCK = 0x7265_6600               # pg_advisory_xact_lock key: "ref\0"
CONNECT_TIMEOUT_S = 10

MIGRATIONS = [
    # 1: sessions, their files, stored responses, approvals
    """
    CREATE SEQUENCE session_use_order;
    CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        created_at DOUBLE PRECISION NOT NULL,
        last_used_at DOUBLE PRECISION NOT NULL,
        use_order BIGINT NOT NULL,
        message_count INTEGER NOT NULL,
        messages JSONB NOT NULL
    );
    CREATE INDEX sessions_by_use ON sessions (last_used_at, use_order);
    CREATE TABLE files (
        id TEXT PRIMARY KEY,
        session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        format TEXT NOT NULL,
        mime_type TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        seq BIGSERIAL,
        content BYTEA NOT NULL
    );
    CREATE INDEX files_by_session ON files (session_id, created_at, seq);
    CREATE TABLE responses (
        id TEXT PRIMARY KEY,
        created_at DOUBLE PRECISION NOT NULL,
        seq BIGSERIAL,
        response JSONB NOT NULL,
        messages JSONB NOT NULL
    );
    CREATE INDEX responses_by_age ON responses (created_at, seq);
    CREATE TABLE approvals (
        id TEXT PRIMARY KEY,
        session_id TEXT,
        round INTEGER NOT NULL,
        tool TEXT NOT NULL,
        arguments TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        decision TEXT
    );
    CREATE TABLE remembered_approvals (
        session_id TEXT NOT NULL,
        tool TEXT NOT NULL,
        decision TEXT NOT NULL,
        PRIMARY KEY (session_id, tool)
    );
    """,
]


class Database:
    def __init__(self, url: str):
        self.url = url

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Cursor]:
        """One transaction on a fresh connection: committed when the block ends, rolled back on an error."""
        with psycopg.connect(self.url, connect_timeout=CONNECT_TIMEOUT_S) as connection:
            with connection.transaction(), connection.cursor() as cursor:
                yield cursor

    def migrate(self) -> None:
        with self.transaction() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            cursor.execute("CREATE TABLE IF NOT EXISTS refengine_schema (version INTEGER NOT NULL)")
            cursor.execute("SELECT COALESCE(MAX(version), 0) FROM refengine_schema")
            current = cursor.fetchone()[0]
            if current > len(MIGRATIONS):
                raise RuntimeError(f"the store's schema is version {current}, newer than this server knows "
                                   f"({len(MIGRATIONS)}): upgrade the server")
            for version, sql in enumerate(MIGRATIONS[current:], start=current + 1):
                cursor.execute(sql)
                cursor.execute("INSERT INTO refengine_schema (version) VALUES (%s)", (version,))


class PostgresSessionStore(SessionStore):
    """sessions.SessionStore's contract in PostgreSQL; folders stay on this machine (SessionStore.folder)."""

    def __init__(self, database: Database, state_dir: Path, *, ttl_s: float, max_sessions: int,
                 clock: Callable[[], float], on_remove: Callable[[str], None]):
        self.db = database
        self._keep_settings(state_dir, ttl_s, max_sessions, clock, on_remove)

    def open(self, session_id: str | None = None) -> Session:
        session_id = uuid.uuid4().hex if session_id is None else check_session_id(session_id)
        now = self.clock()
        with self.db.transaction() as cursor:
            dropped = self._drop_idle(cursor, now)
            cursor.execute(
                "INSERT INTO sessions (id, created_at, last_used_at, use_order, message_count, messages) "
                "VALUES (%s, %s, %s, nextval('session_use_order'), 0, '[]') ON CONFLICT (id) DO UPDATE SET "
                "last_used_at = EXCLUDED.last_used_at, use_order = EXCLUDED.use_order "
                "RETURNING id, created_at, last_used_at, messages", (session_id, now, now))
            row = cursor.fetchone()
            dropped += self._drop_over_cap(cursor)
        self._remove_folders(dropped)
        session = self._session(row)
        session.folder.mkdir(exist_ok=True)
        return session

    def get(self, session_id: str) -> Session | None:
        check_session_id(session_id)
        with self.db.transaction() as cursor:
            cursor.execute("SELECT id, created_at, last_used_at, messages FROM sessions "
                           "WHERE id = %s AND last_used_at >= %s", (session_id, self._cutoff()))
            row = cursor.fetchone()
        return None if row is None else self._session(row)

    def delete(self, session_id: str) -> bool:
        check_session_id(session_id)
        with self.db.transaction() as cursor:
            cursor.execute("DELETE FROM sessions WHERE id = %s RETURNING last_used_at", (session_id,))
            row = cursor.fetchone()
        self._remove_folders([session_id])
        return row is not None and row[0] >= self._cutoff()

    def list(self) -> list[SessionInfo]:
        with self.db.transaction() as cursor:
            cursor.execute("SELECT id, created_at, last_used_at, message_count FROM sessions "
                           "WHERE last_used_at >= %s ORDER BY last_used_at DESC, use_order DESC", (self._cutoff(),))
            rows = cursor.fetchall()
        return [SessionInfo(*row) for row in rows]

    def expire(self) -> list[str]:
        with self.db.transaction() as cursor:
            dropped = self._drop_idle(cursor, self.clock()) + self._drop_over_cap(cursor)
        self._remove_folders(dropped)
        return dropped

    def _write_messages(self, session_id: str, messages: list[dict], *, keep_history: bool) -> Session:
        check_session_id(session_id)
        now = self.clock()
        with self.db.transaction() as cursor:
            cursor.execute("SELECT messages FROM sessions WHERE id = %s FOR UPDATE", (session_id,))
            row = cursor.fetchone()
            if row is None:
                raise KeyError(session_id)
            history = (row[0] if keep_history else []) + list(messages)
            cursor.execute(
                "UPDATE sessions SET messages = %s, message_count = %s, last_used_at = %s, "
                "use_order = nextval('session_use_order') WHERE id = %s "
                "RETURNING id, created_at, last_used_at, messages",
                (Jsonb(history), len(history), now, session_id))
            session = self._session(cursor.fetchone())
        session.folder.mkdir(parents=True, exist_ok=True)
        return session

    def _drop_idle(self, cursor, now: float) -> list[str]:
        cursor.execute("DELETE FROM sessions WHERE last_used_at < %s RETURNING id", (now - self.ttl_s,))
        return [row[0] for row in cursor.fetchall()]

    def _drop_over_cap(self, cursor) -> list[str]:
        cursor.execute("DELETE FROM sessions WHERE id IN (SELECT id FROM sessions ORDER BY last_used_at DESC, "
                       "use_order DESC OFFSET %s) RETURNING id", (self.max_sessions,))
        return [row[0] for row in cursor.fetchall()]

    def _session(self, row: tuple) -> Session:
        session_id, created_at, last_used_at, messages = row
        return Session(id=session_id, created_at=created_at, last_used_at=last_used_at, messages=messages,
                       folder=self.folder(session_id))


class PostgresFileStore(FileStore):
    """files.FileStore's contract in PostgreSQL: bytes in the row (BYTEA), deleted with their session."""

    def __init__(self, database: Database, sessions: PostgresSessionStore, *, inline_cap: int = INLINE_CAP_BYTES,
                 max_file_bytes: int = MAX_FILE_BYTES):
        self.db, self.sessions, self.clock = database, sessions, sessions.clock
        self.inline_cap, self.max_file_bytes = inline_cap, max_file_bytes

    def record(self, session_id, name, content, format=None):
        file_format = default_format(name) if format is None else format.lower()
        file_id, now = "file-" + uuid.uuid4().hex, self.clock()
        row = (file_id, session_id, name, file_format, mime_type(file_format), len(content), now, content)
        try:
            with self.db.transaction() as cursor:
                cursor.execute("INSERT INTO files (id, session_id, name, format, mime_type, bytes, created_at, "
                               "content) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", row)
        except psycopg.errors.ForeignKeyViolation:
            raise KeyError(session_id) from None
        return self._file(row)

    def get(self, file_id):
        with self.db.transaction() as cursor:
            cursor.execute("SELECT id, session_id, name, format, mime_type, bytes, created_at, content FROM files "
                           "WHERE id = %s", (file_id,))
            row = cursor.fetchone()
        return None if row is None else (self._file(row), bytes(row[7]))

    def for_session(self, session_id):
        with self.db.transaction() as cursor:
            cursor.execute("SELECT id, session_id, name, format, mime_type, bytes, created_at, "
                           "CASE WHEN bytes <= %s THEN content END FROM files WHERE session_id = %s "
                           "ORDER BY created_at, seq", (self.inline_cap, session_id))
            rows = cursor.fetchall()
        return [self._file(row) for row in rows]


class PostgresResponses:
    """stored_responses.ResponseStore's contract in PostgreSQL."""

    def __init__(self, database: Database, *, ttl_s: float, max_responses: int, clock: Callable[[], float]):
        self.db, self.ttl_s, self.max_responses, self.clock = database, ttl_s, max_responses, clock

    def put(self, response_id: str, response: dict, messages: list[dict]) -> None:
        now = self.clock()
        with self.db.transaction() as cursor:
            cursor.execute("DELETE FROM responses WHERE created_at < %s", (now - self.ttl_s,))
            cursor.execute(
                "INSERT INTO responses (id, created_at, response, messages) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (id) DO UPDATE SET created_at = EXCLUDED.created_at, response = EXCLUDED.response, "
                "messages = EXCLUDED.messages, seq = nextval(pg_get_serial_sequence('responses', 'seq'))",
                (response_id, now, Jsonb(response), Jsonb(messages)))
            cursor.execute("DELETE FROM responses WHERE id IN (SELECT id FROM responses ORDER BY created_at DESC, "
                           "seq DESC OFFSET %s)", (self.max_responses,))

    def get(self, response_id: str):
        with self.db.transaction() as cursor:
            cursor.execute("SELECT id, created_at, response, messages FROM responses WHERE id = %s "
                           "AND created_at >= %s", (response_id, self.clock() - self.ttl_s))
            row = cursor.fetchone()
        return None if row is None else StoredResponse(*row)

    def delete(self, response_id: str) -> bool:
        with self.db.transaction() as cursor:
            cursor.execute("DELETE FROM responses WHERE id = %s RETURNING created_at", (response_id,))
            row = cursor.fetchone()
        return row is not None and row[0] >= self.clock() - self.ttl_s


class PostgresApprovals(ApprovalTable):
    def __init__(self, database: Database):
        self.db = database

    def create(self, approval_id, session_id, round, tool, arguments):
        now = time.time()
        with self.db.transaction() as cursor:
            cursor.execute("DELETE FROM approvals WHERE created_at < %s", (now - MAX_AGE_S,))
            cursor.execute("INSERT INTO approvals (id, session_id, round, tool, arguments, created_at) "
                           "VALUES (%s, %s, %s, %s, %s, %s)", (approval_id, session_id, round, tool, arguments, now))

    def decide(self, approval_id, decision):
        with self.db.transaction() as cursor:
            cursor.execute("UPDATE approvals SET decision = %s WHERE id = %s AND decision IS NULL "
                           "RETURNING session_id, tool", (decision, approval_id))
            row = cursor.fetchone()
        return None if row is None else (row[0], row[1])

    def decision(self, approval_id):
        with self.db.transaction() as cursor:
            cursor.execute("SELECT decision FROM approvals WHERE id = %s", (approval_id,))
            row = cursor.fetchone()
        return (False, None) if row is None else (True, row[0])

    def close(self, approval_id):
        with self.db.transaction() as cursor:
            cursor.execute("DELETE FROM approvals WHERE id = %s RETURNING decision", (approval_id,))
            row = cursor.fetchone()
        return None if row is None else row[0]

    def deny_waiting(self, session_id):
        with self.db.transaction() as cursor:
            cursor.execute("UPDATE approvals SET decision = 'deny' WHERE session_id = %s AND decision IS NULL "
                           "RETURNING id", (session_id,))
            return [row[0] for row in cursor.fetchall()]

    def describe(self, approval_id):
        with self.db.transaction() as cursor:
            cursor.execute("SELECT session_id, round, tool, arguments, decision FROM approvals WHERE id = %s",
                           (approval_id,))
            row = cursor.fetchone()
        if row is None:
            return None
        return {"session_id": row[0], "round": row[1], "tool": row[2], "arguments": row[3],
                "decided": row[4] is not None}

    def remember(self, session_id, tool, decision):
        with self.db.transaction() as cursor:
            cursor.execute("INSERT INTO remembered_approvals (session_id, tool, decision) VALUES (%s, %s, %s) "
                           "ON CONFLICT (session_id, tool) DO UPDATE SET decision = EXCLUDED.decision",
                           (session_id, tool, decision))

    def remembered(self, session_id, tool):
        with self.db.transaction() as cursor:
            cursor.execute("SELECT decision FROM remembered_approvals WHERE session_id = %s AND tool = %s",
                           (session_id, tool))
            row = cursor.fetchone()
        return None if row is None else row[0]

    def forget_session(self, session_id):
        with self.db.transaction() as cursor:
            cursor.execute("DELETE FROM remembered_approvals WHERE session_id = %s", (session_id,))


def open_postgres_store(url: str, state_dir: Path, *, ttl_s: float, max_items: int,
                        on_remove: Callable[[str], None], clock: Callable[[], float] = time.time) -> Store:
    database = Database(url)
    database.migrate()
    sessions = PostgresSessionStore(database, state_dir, ttl_s=ttl_s, max_sessions=max_items, clock=clock,
                                    on_remove=on_remove)
    return Store(sessions=sessions, files=PostgresFileStore(database, sessions),
                 responses=PostgresResponses(database, ttl_s=ttl_s, max_responses=max_items, clock=clock),
                 broker=SharedApprovalBroker(PostgresApprovals(database)))
