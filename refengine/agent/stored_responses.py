"""Stored responses of the Responses API (`store: true`): the Response object as answered, and the
conversation it ends, so that `previous_response_id` can continue it.

    responses = ResponseStore(state_dir, ttl_s=1800, max_responses=1000)    # sessions.sqlite3, beside sessions
    responses.put("resp_1", response_object, messages)                       # messages: the chat history after it
    responses.get("resp_1").messages                                         # what a follow-up continues
    responses.delete("resp_1")

A third table of the sessions' SQLite file (sessions.py: WAL mode, one short-lived connection per call,
`BEGIN IMMEDIATE` writers), so every worker sees the same responses. A response older than `ttl_s` is gone
(reads no longer see it; the next `put` removes it); past `max_responses`, the oldest go first.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .sessions import open_database, reading, writing

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    response TEXT NOT NULL,            -- the Response object as answered (JSON)
    messages TEXT NOT NULL             -- the conversation it ends, as chat messages (JSON): input and output
);
CREATE INDEX IF NOT EXISTS responses_by_age ON responses (created_at);
"""


@dataclass(frozen=True)
class StoredResponse:
    id: str
    created_at: float
    response: dict
    messages: list[dict]


class ResponseStore:
    def __init__(self, state_dir: Path, *, ttl_s: float = 1800, max_responses: int = 1000,
                 clock: Callable[[], float] = time.time):
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, not {ttl_s}")
        if max_responses < 1:
            raise ValueError(f"max_responses must be at least 1, not {max_responses}")
        self.ttl_s, self.max_responses, self.clock = ttl_s, max_responses, clock
        self.database = open_database(Path(state_dir), SCHEMA)

    def put(self, response_id: str, response: dict, messages: list[dict]) -> None:
        """Keep (or replace) a response; expired ones go first, then the oldest past the cap."""
        now = self.clock()
        with writing(self.database) as connection:
            connection.execute("DELETE FROM responses WHERE created_at < ?", (now - self.ttl_s,))
            connection.execute(
                "INSERT OR REPLACE INTO responses (id, created_at, response, messages) VALUES (?, ?, ?, ?)",
                (response_id, now, json.dumps(response, ensure_ascii=False), json.dumps(messages, ensure_ascii=False)))
            connection.execute(
                "DELETE FROM responses WHERE id IN (SELECT id FROM responses ORDER BY created_at DESC, rowid DESC "
                "LIMIT -1 OFFSET ?)", (self.max_responses,))

    def get(self, response_id: str) -> StoredResponse | None:
        with reading(self.database) as connection:
            row = connection.execute(
                "SELECT id, created_at, response, messages FROM responses WHERE id = ? AND created_at >= ?",
                (response_id, self.clock() - self.ttl_s)).fetchone()
        if row is None:
            return None
        return StoredResponse(row[0], row[1], json.loads(row[2]), json.loads(row[3]))

    def delete(self, response_id: str) -> bool:
        """False when there was none (or it had expired)."""
        with writing(self.database) as connection:
            removed = connection.execute("DELETE FROM responses WHERE id = ? AND created_at >= ?",
                                         (response_id, self.clock() - self.ttl_s)).rowcount
            connection.execute("DELETE FROM responses WHERE id = ?", (response_id,))
        return removed > 0
