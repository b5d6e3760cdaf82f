"""Sessions: a conversation's stored history and its working folder, kept between requests.

    store = SessionStore(state_dir, ttl_s=1800, max_sessions=1000)
    session = store.open(None)                       # a new session under a fresh uuid4 hex id
    store.append(session.id, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}])
    store.get(session.id).messages                   # the history, tool calls and tool results included
    store.folder(session.id)                         # where the code interpreter of this session works

Everything lives in one SQLite file, `state_dir / "sessions.sqlite3"`, in WAL mode, so that every gunicorn
worker (a process each) sees the same sessions: each call opens its own short-lived connection (no
connection is shared between threads or forks), writers take the write lock up front (`BEGIN IMMEDIATE`)
and wait for each other through SQLite's busy timeout instead of failing. Output files (files.py) are a
second table in the same file whose rows go with their session (`ON DELETE CASCADE`).

A session idle longer than `ttl_s` is gone: reads no longer see it and `open` (which runs `expire`) removes
it with its folder. Past `max_sessions`, the least recently used sessions go first. Folders are named by a
hash of the id, so a client-chosen id ("../../etc") never becomes a path.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sqlite3
import stat
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

logger = logging.getLogger(__name__)

DATABASE_NAME = "sessions.sqlite3"
FOLDERS_NAME = "sessions"
MAX_ID_LENGTH = 128
BUSY_TIMEOUT_S = 30.0                  # how long a writer waits for another worker's write to finish

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    last_used_at REAL NOT NULL,
    use_order INTEGER NOT NULL,        -- increases with every use: orders sessions used at the same clock time
    message_count INTEGER NOT NULL,
    messages TEXT NOT NULL             -- a JSON list of OpenAI chat messages
);
CREATE INDEX IF NOT EXISTS sessions_by_use ON sessions (last_used_at, use_order);
"""


class SessionError(ValueError):
    """A client's mistake about a session (a bad id, a bad file name): the server answers a 400 naming
    `param`."""

    def __init__(self, message: str, param: str = "session_id"):
        super().__init__(message)
        self.message, self.param = message, param


@dataclass(frozen=True)
class SessionInfo:
    """What a listing shows of a session: no messages."""
    id: str
    created_at: float
    last_used_at: float
    message_count: int


@dataclass(frozen=True)
class Session:
    id: str
    created_at: float
    last_used_at: float
    messages: list[dict]
    folder: Path


def check_session_id(session_id, param: str = "session_id") -> str:
    """A client-chosen id: a non-empty printable string of at most 128 characters (no control characters,
    so it logs and prints safely). Any such string is a safe id, since it never names a path itself."""
    if not isinstance(session_id, str):
        raise SessionError(f"Invalid value for '{param}': expected a string.", param)
    if not session_id:
        raise SessionError(f"Invalid value for '{param}': the id is empty.", param)
    if len(session_id) > MAX_ID_LENGTH:
        raise SessionError(f"Invalid value for '{param}': expected at most {MAX_ID_LENGTH} characters, but got "
                           f"{len(session_id)}.", param)
    if not session_id.isprintable():
        raise SessionError(f"Invalid value for '{param}': the id may hold only printable characters.", param)
    return session_id


def folder_name(session_id: str) -> str:
    """The folder of a session: a hash of its id, so no id can climb out of the state folder or collide
    with another's folder by case or normalization."""
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()


# ---- the database file, shared with files.py ----

def connect(database: Path) -> sqlite3.Connection:
    """A fresh connection for one call (never shared across threads or processes): autocommit unless a
    transaction is begun, a busy timeout instead of "database is locked", foreign keys enforced (files go
    with their session)."""
    connection = sqlite3.connect(str(database), timeout=BUSY_TIMEOUT_S, isolation_level=None)
    connection.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    connection.execute("PRAGMA foreign_keys = ON")
    connection.execute("PRAGMA synchronous = NORMAL")      # durable at every checkpoint, safe in WAL mode
    return connection


@contextmanager
def reading(database: Path) -> Iterator[sqlite3.Connection]:
    connection = connect(database)
    try:
        yield connection
    finally:
        connection.close()


@contextmanager
def writing(database: Path) -> Iterator[sqlite3.Connection]:
    """A write transaction that holds SQLite's write lock from its first statement, so a read followed by a
    write (append: read the history, write it back longer) cannot interleave with another worker's."""
    connection = connect(database)
    try:
        connection.execute("BEGIN IMMEDIATE")
        yield connection
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    finally:
        connection.close()


def open_database(state_dir: Path, schema: str) -> Path:
    """The state folder's database file, in WAL mode (readers never wait for a writer, and every worker
    process sees each commit), with `schema` created if missing."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)     # histories and files: the server's user only
    database = state_dir / DATABASE_NAME
    with reading(database) as connection:
        mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise RuntimeError(f"{database}: SQLite refused WAL mode (journal mode {mode}); put the state folder "
                           "on a local file system.")
    with writing(database) as connection:
        for statement in schema.split(";"):
            if statement.strip():
                connection.execute(statement)
    return database


def remove_folder(path: Path) -> None:
    """Remove a session folder whatever the sandboxed code left in it (folders it made unreadable or
    unwritable included). A failure is logged, not raised: a leftover folder must not fail a request."""
    if not path.is_dir() or path.is_symlink():
        return
    try:
        _make_removable(path)
        shutil.rmtree(path)
    except (OSError, RecursionError) as error:
        logger.warning("could not remove the session folder %s: %s", path, error)


def _make_removable(root: Path) -> None:
    """Give the owner full rights on every folder under `root` (top down, since a folder must be readable
    before its entries can be listed), never through a link: each folder is opened relative to its parent's
    descriptor with O_NOFOLLOW and changed by descriptor, so a folder swapped for a link (to /, say) is not
    followed. (The session's interpreter is stopped before its folder goes: `on_remove`.)"""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW

    def walk(fd: int) -> None:
        os.fchmod(fd, stat.S_IRWXU)
        for entry in os.scandir(fd):
            if entry.is_dir(follow_symlinks=False):
                try:
                    child = os.open(entry.name, flags, dir_fd=fd)
                except OSError:              # gone, or swapped for a link meanwhile: not ours to touch
                    continue
                try:
                    walk(child)
                finally:
                    os.close(child)

    top = os.open(root, flags)
    try:
        walk(top)
    finally:
        os.close(top)


# ---- the store ----

class SessionStore:
    """Sessions in `state_dir / "sessions.sqlite3"`, folders under `state_dir / "sessions"`; every worker's
    store on the same folder is the same store."""

    def __init__(self, state_dir: Path, *, ttl_s: float = 1800, max_sessions: int = 1000,
                 clock: Callable[[], float] = time.time, on_remove: Callable[[str], None] = lambda session_id: None):
        """`on_remove(session_id)` runs before a session's folder goes (deleted, expired or evicted): the
        runtime stops the session's interpreter there, so nothing writes in the folder while it is removed."""
        self._keep_settings(state_dir, ttl_s, max_sessions, clock, on_remove)
        self.database = open_database(self.state_dir, SCHEMA)

    def _keep_settings(self, state_dir: Path, ttl_s: float, max_sessions: int, clock: Callable[[], float],
                       on_remove: Callable[[str], None]) -> None:
        """What every store of sessions keeps, wherever its records live: the limits, the clock, the
        removal hook, and the folders, which stay on this machine."""
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, not {ttl_s}")
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be at least 1, not {max_sessions}")
        self.state_dir = Path(state_dir)
        self.ttl_s, self.max_sessions, self.clock, self.on_remove = ttl_s, max_sessions, clock, on_remove
        self.folders = self.state_dir / FOLDERS_NAME
        self.folders.mkdir(parents=True, exist_ok=True)

    def folder(self, session_id: str) -> Path:
        return self.folders / folder_name(check_session_id(session_id))

    def open(self, session_id: str | None = None) -> Session:
        """The session under `session_id`, created (empty) when unknown or expired, and marked as just used;
        a new uuid4 hex id when `session_id` is None. Expired sessions go first; past the cap, the least
        recently used after (never this one, just used)."""
        session_id = uuid.uuid4().hex if session_id is None else check_session_id(session_id)
        now = self.clock()
        with writing(self.database) as connection:
            dropped = self._drop_idle(connection, now)
            touched = connection.execute(
                "UPDATE sessions SET last_used_at = ?, use_order = (SELECT MAX(use_order) + 1 FROM sessions) "
                "WHERE id = ?", (now, session_id)).rowcount
            if not touched:
                connection.execute(
                    "INSERT INTO sessions (id, created_at, last_used_at, use_order, message_count, messages) "
                    "VALUES (?, ?, ?, (SELECT COALESCE(MAX(use_order), 0) + 1 FROM sessions), 0, '[]')",
                    (session_id, now, now))
            dropped += self._drop_over_cap(connection)
            session = self._session(connection.execute(
                "SELECT id, created_at, last_used_at, messages FROM sessions WHERE id = ?", (session_id,)).fetchone())
        self._remove_folders(dropped)              # an expired session of the same id leaves no files behind
        session.folder.mkdir(exist_ok=True)
        return session

    def get(self, session_id: str) -> Session | None:
        """The session with its messages, or None when unknown or idle past the TTL. Reading is not using:
        an export leaves the session's place in the LRU order as it was."""
        check_session_id(session_id)
        with reading(self.database) as connection:
            row = connection.execute(
                "SELECT id, created_at, last_used_at, messages FROM sessions WHERE id = ? AND last_used_at >= ?",
                (session_id, self._cutoff())).fetchone()
        return None if row is None else self._session(row)

    def append(self, session_id: str, messages: list[dict]) -> Session:
        """Add messages to the history (in one transaction, so two requests on one session never lose each
        other's messages) and mark the session used. KeyError when unknown: `open` it first."""
        return self._write_messages(session_id, messages, keep_history=True)

    def replace(self, session_id: str, messages: list[dict]) -> Session:
        """Import: the session's history becomes `messages`; an unknown id is created first."""
        self.open(session_id)
        return self._write_messages(session_id, messages, keep_history=False)

    def delete(self, session_id: str) -> bool:
        """Remove the session, its output files and its folder; False when there was none (or it had expired)."""
        check_session_id(session_id)
        with writing(self.database) as connection:
            row = connection.execute("SELECT last_used_at FROM sessions WHERE id = ?", (session_id,)).fetchone()
            connection.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
        self._remove_folders([session_id])
        return row is not None and row[0] >= self._cutoff()      # an expired one was already gone to clients

    def list(self) -> list[SessionInfo]:
        """The live sessions, most recently used first."""
        with reading(self.database) as connection:
            rows = connection.execute(
                "SELECT id, created_at, last_used_at, message_count FROM sessions WHERE last_used_at >= ? "
                "ORDER BY last_used_at DESC, use_order DESC", (self._cutoff(),)).fetchall()
        return [SessionInfo(*row) for row in rows]

    def expire(self) -> list[str]:
        """Drop the sessions idle longer than the TTL, then the least recently used past `max_sessions`,
        with their folders; the ids dropped."""
        with writing(self.database) as connection:
            dropped = self._drop_idle(connection, self.clock()) + self._drop_over_cap(connection)
        self._remove_folders(dropped)
        return dropped

    # ---- internals ----

    def _cutoff(self) -> float:
        return self.clock() - self.ttl_s

    def _write_messages(self, session_id: str, messages: list[dict], *, keep_history: bool) -> Session:
        check_session_id(session_id)
        now = self.clock()
        with writing(self.database) as connection:
            row = connection.execute("SELECT messages FROM sessions WHERE id = ?", (session_id,)).fetchone()
            if row is None:
                raise KeyError(session_id)
            history = (json.loads(row[0]) if keep_history else []) + list(messages)
            connection.execute(
                "UPDATE sessions SET messages = ?, message_count = ?, last_used_at = ?, "
                "use_order = (SELECT MAX(use_order) + 1 FROM sessions) WHERE id = ?",
                (json.dumps(history, ensure_ascii=False), len(history), now, session_id))
            session = self._session(connection.execute(
                "SELECT id, created_at, last_used_at, messages FROM sessions WHERE id = ?", (session_id,)).fetchone())
        session.folder.mkdir(parents=True, exist_ok=True)
        return session

    def _drop_idle(self, connection: sqlite3.Connection, now: float) -> list[str]:
        cutoff = now - self.ttl_s
        ids = [row[0] for row in connection.execute("SELECT id FROM sessions WHERE last_used_at < ?", (cutoff,))]
        connection.execute("DELETE FROM sessions WHERE last_used_at < ?", (cutoff,))
        return ids

    def _drop_over_cap(self, connection: sqlite3.Connection) -> list[str]:
        ids = [row[0] for row in connection.execute(
            "SELECT id FROM sessions ORDER BY last_used_at DESC, use_order DESC LIMIT -1 OFFSET ?",
            (self.max_sessions,))]
        connection.executemany("DELETE FROM sessions WHERE id = ?", [(i,) for i in ids])
        return ids

    def _remove_folders(self, session_ids: list[str]) -> None:
        for session_id in session_ids:
            try:
                self.on_remove(session_id)
            except Exception:                # noqa: BLE001 - logged; the folder goes all the same
                logger.exception("stopping what used the session %s failed", session_id)
            remove_folder(self.folders / folder_name(session_id))

    def _session(self, row: tuple) -> Session:
        session_id, created_at, last_used_at, messages = row
        return Session(id=session_id, created_at=created_at, last_used_at=last_used_at,
                       messages=json.loads(messages), folder=self.folders / folder_name(session_id))
