"""The SQLite store, the embedded default: sessions, responses and files are the modules that have always kept
them in `state_dir / "sessions.sqlite3"` (sessions.py, stored_responses.py, files.py); approvals are a fourth
table of the same file, so every gunicorn worker of the machine sees a decision.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from ..files import FileStore
from ..sessions import SessionStore, open_database, reading, writing
from ..stored_responses import ResponseStore
from .approvals import MAX_AGE_S, ApprovalTable, SharedApprovalBroker
from .base import Store

SCHEMA = """
CREATE TABLE IF NOT EXISTS approvals (
    id TEXT PRIMARY KEY,
    session_id TEXT,                   -- NULL outside a session
    round INTEGER NOT NULL,
    tool TEXT NOT NULL,
    arguments TEXT NOT NULL,
    created_at REAL NOT NULL,
    decision TEXT                      -- NULL until a person decides
);
CREATE TABLE IF NOT EXISTS remembered_approvals (
    session_id TEXT NOT NULL,
    tool TEXT NOT NULL,
    decision TEXT NOT NULL,
    PRIMARY KEY (session_id, tool)
);
"""


class SQLiteApprovals(ApprovalTable):
    def __init__(self, state_dir: Path):
        self.database = open_database(state_dir, SCHEMA)

    def create(self, approval_id, session_id, round, tool, arguments):
        now = time.time()
        with writing(self.database) as connection:
            connection.execute("DELETE FROM approvals WHERE created_at < ?", (now - MAX_AGE_S,))
            connection.execute("INSERT INTO approvals (id, session_id, round, tool, arguments, created_at) "
                               "VALUES (?, ?, ?, ?, ?, ?)", (approval_id, session_id, round, tool, arguments, now))

    def decide(self, approval_id, decision):
        with writing(self.database) as connection:
            row = connection.execute("SELECT session_id, tool FROM approvals WHERE id = ? AND decision IS NULL",
                                     (approval_id,)).fetchone()
            if row is not None:
                connection.execute("UPDATE approvals SET decision = ? WHERE id = ?", (decision, approval_id))
        return None if row is None else (row[0], row[1])

    def decision(self, approval_id):
        with reading(self.database) as connection:
            row = connection.execute("SELECT decision FROM approvals WHERE id = ?", (approval_id,)).fetchone()
        return (False, None) if row is None else (True, row[0])

    def close(self, approval_id):
        with writing(self.database) as connection:
            row = connection.execute("SELECT decision FROM approvals WHERE id = ?", (approval_id,)).fetchone()
            connection.execute("DELETE FROM approvals WHERE id = ?", (approval_id,))
        return None if row is None else row[0]

    def deny_waiting(self, session_id):
        with writing(self.database) as connection:
            ids = [row[0] for row in connection.execute(
                "SELECT id FROM approvals WHERE session_id = ? AND decision IS NULL", (session_id,))]
            connection.execute("UPDATE approvals SET decision = 'deny' WHERE session_id = ? AND decision IS NULL",
                               (session_id,))
        return ids

    def describe(self, approval_id):
        with reading(self.database) as connection:
            row = connection.execute("SELECT session_id, round, tool, arguments, decision FROM approvals "
                                     "WHERE id = ?", (approval_id,)).fetchone()
        if row is None:
            return None
        return {"session_id": row[0], "round": row[1], "tool": row[2], "arguments": row[3],
                "decided": row[4] is not None}

    def remember(self, session_id, tool, decision):
        with writing(self.database) as connection:
            connection.execute("INSERT OR REPLACE INTO remembered_approvals (session_id, tool, decision) "
                               "VALUES (?, ?, ?)", (session_id, tool, decision))

    def remembered(self, session_id, tool):
        with reading(self.database) as connection:
            row = connection.execute("SELECT decision FROM remembered_approvals WHERE session_id = ? AND tool = ?",
                                     (session_id, tool)).fetchone()
        return None if row is None else row[0]

    def forget_session(self, session_id):
        with writing(self.database) as connection:
            connection.execute("DELETE FROM remembered_approvals WHERE session_id = ?", (session_id,))


def open_sqlite_store(state_dir: Path, *, ttl_s: float, max_items: int, on_remove: Callable[[str], None],
                      clock: Callable[[], float] = time.time) -> Store:
    sessions = SessionStore(state_dir, ttl_s=ttl_s, max_sessions=max_items, clock=clock, on_remove=on_remove)
    return Store(sessions=sessions, files=FileStore(sessions),
                 responses=ResponseStore(state_dir, ttl_s=ttl_s, max_responses=max_items, clock=clock),
                 broker=SharedApprovalBroker(SQLiteApprovals(state_dir)))
