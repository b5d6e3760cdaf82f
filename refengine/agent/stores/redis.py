"""The Redis store (`--store redis://host:port/db`), shared by replicas; every key carries a native TTL or is
removed with the session it belongs to.

Keys (prefix `refengine:`): `session:{id}` a hash (created_at, last_used_at, messages as JSON), indexed by
two sorted sets, `sessions:by_use` (score: a counter bumped at every use, the LRU order) and `sessions:by_time`
(score: last use, for the TTL); `files:{session}` a list of file ids, `file:{id}` a hash with the bytes;
`response:{id}` a hash, indexed by `responses:by_age`; `approval:{id}` a hash, `approvals:{session}` a set,
`remembered:{session}` a hash tool → decision.

The TTL is judged by the store's clock, as in the SQL stores (reads never see an idle session), and the
native EXPIRE (TTL plus a margin) is the backstop that frees memory if no replica ever looks again. A
read-modify-write (append, a decision) runs under WATCH/MULTI and is retried when another client got there
first, so concurrent replicas never lose each other's writes.
"""
from __future__ import annotations

import json
import math
import time
import uuid
from pathlib import Path
from typing import Callable

import redis

from ..files import INLINE_CAP_BYTES, MAX_FILE_BYTES, FileStore, default_format, mime_type
from ..sessions import Session, SessionInfo, SessionStore, check_session_id
from ..stored_responses import StoredResponse
from .approvals import MAX_AGE_S, ApprovalTable, SharedApprovalBroker
from .base import Store

PREFIX = "refengine:"
EXPIRE_MARGIN_S = 60


def key(*parts: str) -> str:
    return PREFIX + ":".join(parts)


def native_ttl(ttl_s: float) -> int:
    return math.ceil(ttl_s) + EXPIRE_MARGIN_S


def text(value) -> str | None:
    return None if value is None else value.decode("utf-8")


class RedisSessionStore(SessionStore):
    """sessions.SessionStore's contract in Redis; folders stay on this machine (SessionStore.folder)."""

    def __init__(self, client: redis.Redis, state_dir: Path, *, ttl_s: float, max_sessions: int,
                 clock: Callable[[], float], on_remove: Callable[[str], None]):
        self.redis = client
        self._keep_settings(state_dir, ttl_s, max_sessions, clock, on_remove)

    def open(self, session_id: str | None = None) -> Session:
        session_id = uuid.uuid4().hex if session_id is None else check_session_id(session_id)
        now = self.clock()
        dropped = self._drop_idle(now)
        with self.redis.pipeline() as pipe:            # MULTI: the session and its indexes change together
            pipe.hsetnx(key("session", session_id), "created_at", repr(now))
            pipe.hsetnx(key("session", session_id), "messages", "[]")
            self._touch(pipe, session_id, now)
            pipe.execute()
        dropped += self._drop_over_cap()
        self._remove_folders(dropped)
        session = self.get(session_id)
        session.folder.mkdir(exist_ok=True)
        return session

    def get(self, session_id: str) -> Session | None:
        check_session_id(session_id)
        fields = self.redis.hgetall(key("session", session_id))
        if b"last_used_at" not in fields or float(fields[b"last_used_at"]) < self._cutoff():
            return None
        return Session(id=session_id, created_at=float(fields[b"created_at"]),
                       last_used_at=float(fields[b"last_used_at"]), messages=json.loads(fields[b"messages"]),
                       folder=self.folder(session_id))

    def delete(self, session_id: str) -> bool:
        check_session_id(session_id)
        last_used = self.redis.hget(key("session", session_id), "last_used_at")
        self._delete_records([session_id])
        self._remove_folders([session_id])
        return last_used is not None and float(last_used) >= self._cutoff()

    def list(self) -> list[SessionInfo]:
        ids = [text(i) for i in self.redis.zrevrange(key("sessions", "by_use"), 0, -1)]
        infos = []
        for session_id in ids:
            values = self.redis.hmget(key("session", session_id), "created_at", "last_used_at", "messages")
            if values[1] is not None and float(values[1]) >= self._cutoff():
                infos.append(SessionInfo(session_id, float(values[0]), float(values[1]), len(json.loads(values[2]))))
        return sorted(infos, key=lambda info: info.last_used_at, reverse=True)    # stable: by_use breaks ties

    def expire(self) -> list[str]:
        dropped = self._drop_idle(self.clock()) + self._drop_over_cap()
        self._remove_folders(dropped)
        return dropped

    def _write_messages(self, session_id: str, messages: list[dict], *, keep_history: bool) -> Session:
        check_session_id(session_id)
        session_key = key("session", session_id)

        def write(pipe: redis.client.Pipeline) -> None:
            stored = pipe.hget(session_key, "messages")
            if stored is None:
                raise KeyError(session_id)
            history = (json.loads(stored) if keep_history else []) + list(messages)
            pipe.multi()
            pipe.hset(session_key, "messages", json.dumps(history, ensure_ascii=False))
            self._touch(pipe, session_id, self.clock())

        self.redis.transaction(write, session_key)
        session = self.get(session_id)
        session.folder.mkdir(parents=True, exist_ok=True)
        return session

    def _touch(self, pipe, session_id: str, now: float) -> None:
        pipe.hset(key("session", session_id), "last_used_at", repr(now))
        pipe.expire(key("session", session_id), native_ttl(self.ttl_s))
        pipe.zadd(key("sessions", "by_time"), {session_id: now})
        # the LRU order: a counter rather than the clock, so uses at the same clock time stay ordered
        pipe.eval("return redis.call('ZADD', KEYS[1], redis.call('INCR', KEYS[2]), ARGV[1])", 2,
                  key("sessions", "by_use"), key("sessions", "use_counter"), session_id)

    def _drop_idle(self, now: float) -> list[str]:
        ids = [text(i) for i in self.redis.zrangebyscore(key("sessions", "by_time"), "-inf", f"({now - self.ttl_s}")]
        self._delete_records(ids)
        return ids

    def _drop_over_cap(self) -> list[str]:
        extra = self.redis.zcard(key("sessions", "by_use")) - self.max_sessions
        if extra <= 0:
            return []
        ids = [text(i) for i in self.redis.zrange(key("sessions", "by_use"), 0, extra - 1)]
        self._delete_records(ids)
        return ids

    def _delete_records(self, session_ids: list[str]) -> None:
        """The sessions with their files and remembered approvals, each in one MULTI."""
        for session_id in session_ids:
            file_ids = [text(i) for i in self.redis.lrange(key("files", session_id), 0, -1)]
            with self.redis.pipeline() as pipe:
                pipe.delete(key("session", session_id), key("files", session_id), key("remembered", session_id),
                            *(key("file", file_id) for file_id in file_ids))
                pipe.zrem(key("sessions", "by_use"), session_id)
                pipe.zrem(key("sessions", "by_time"), session_id)
                pipe.execute()


class RedisFileStore(FileStore):
    """files.FileStore's contract in Redis: a hash per file, listed under its session, deleted with it."""

    def __init__(self, client: redis.Redis, sessions: RedisSessionStore, *, inline_cap: int = INLINE_CAP_BYTES,
                 max_file_bytes: int = MAX_FILE_BYTES):
        self.redis, self.sessions, self.clock = client, sessions, sessions.clock
        self.inline_cap, self.max_file_bytes = inline_cap, max_file_bytes

    def record(self, session_id, name, content, format=None):
        file_format = default_format(name) if format is None else format.lower()
        file_id, now = "file-" + uuid.uuid4().hex, self.clock()
        session_key = key("session", session_id)

        def write(pipe: redis.client.Pipeline) -> None:
            if not pipe.exists(session_key):          # a file belongs to a live session, as the foreign key says
                raise KeyError(session_id)
            pipe.multi()
            pipe.hset(key("file", file_id), mapping={
                "session_id": session_id, "name": name, "format": file_format, "mime_type": mime_type(file_format),
                "bytes": len(content), "created_at": repr(now), "content": bytes(content)})
            pipe.rpush(key("files", session_id), file_id)

        self.redis.transaction(write, session_key)
        return self._file((file_id, session_id, name, file_format, mime_type(file_format), len(content), now,
                           content))

    def get(self, file_id):
        fields = self.redis.hgetall(key("file", file_id))
        if not fields:
            return None
        return self._file(self._row(file_id, fields)), fields[b"content"]

    def for_session(self, session_id):
        files = []
        for file_id in (text(i) for i in self.redis.lrange(key("files", session_id), 0, -1)):
            fields = self.redis.hgetall(key("file", file_id))
            if fields:
                row = self._row(file_id, fields)
                files.append(self._file(row if row[5] <= self.inline_cap else (*row[:7], None)))
        return files

    @staticmethod
    def _row(file_id: str, fields: dict) -> tuple:
        return (file_id, text(fields[b"session_id"]), text(fields[b"name"]), text(fields[b"format"]),
                text(fields[b"mime_type"]), int(fields[b"bytes"]), float(fields[b"created_at"]), fields[b"content"])


class RedisResponses:
    """stored_responses.ResponseStore's contract in Redis."""

    def __init__(self, client: redis.Redis, *, ttl_s: float, max_responses: int, clock: Callable[[], float]):
        self.redis, self.ttl_s, self.max_responses, self.clock = client, ttl_s, max_responses, clock

    def put(self, response_id: str, response: dict, messages: list[dict]) -> None:
        now, by_age = self.clock(), key("responses", "by_age")
        expired = self.redis.zrangebyscore(by_age, "-inf", f"({now - self.ttl_s}")
        self._drop([text(i) for i in expired])
        with self.redis.pipeline() as pipe:
            pipe.hset(key("response", response_id), mapping={
                "created_at": repr(now), "response": json.dumps(response, ensure_ascii=False),
                "messages": json.dumps(messages, ensure_ascii=False)})
            pipe.expire(key("response", response_id), native_ttl(self.ttl_s))
            pipe.zadd(by_age, {response_id: now})
            pipe.execute()
        extra = self.redis.zcard(by_age) - self.max_responses
        if extra > 0:
            self._drop([text(i) for i in self.redis.zrange(by_age, 0, extra - 1)])

    def get(self, response_id: str) -> StoredResponse | None:
        fields = self.redis.hgetall(key("response", response_id))
        if not fields or float(fields[b"created_at"]) < self.clock() - self.ttl_s:
            return None
        return StoredResponse(response_id, float(fields[b"created_at"]), json.loads(fields[b"response"]),
                              json.loads(fields[b"messages"]))

    def delete(self, response_id: str) -> bool:
        created = self.redis.hget(key("response", response_id), "created_at")
        self._drop([response_id])
        return created is not None and float(created) >= self.clock() - self.ttl_s

    def _drop(self, response_ids: list[str]) -> None:
        if response_ids:
            with self.redis.pipeline() as pipe:
                pipe.delete(*(key("response", i) for i in response_ids))
                pipe.zrem(key("responses", "by_age"), *response_ids)
                pipe.execute()


class RedisApprovals(ApprovalTable):
    def __init__(self, client: redis.Redis):
        self.redis = client

    def create(self, approval_id, session_id, round, tool, arguments):
        fields = {"round": round, "tool": tool, "arguments": arguments}
        if session_id is not None:
            fields["session_id"] = session_id
        with self.redis.pipeline() as pipe:
            pipe.hset(key("approval", approval_id), mapping=fields)
            pipe.expire(key("approval", approval_id), int(MAX_AGE_S))
            if session_id is not None:
                pipe.sadd(key("approvals", session_id), approval_id)
                pipe.expire(key("approvals", session_id), int(MAX_AGE_S))
            pipe.execute()

    def decide(self, approval_id, decision):
        approval_key, decided = key("approval", approval_id), []

        def write(pipe: redis.client.Pipeline) -> None:
            session_id, tool, current = pipe.hmget(approval_key, "session_id", "tool", "decision")
            if tool is None or current is not None:
                return
            pipe.multi()
            pipe.hset(approval_key, "decision", decision)
            decided.append((text(session_id), text(tool)))

        self.redis.transaction(write, approval_key)
        return decided[-1] if decided else None

    def decision(self, approval_id):
        tool, decision = self.redis.hmget(key("approval", approval_id), "tool", "decision")
        return tool is not None, text(decision)

    def close(self, approval_id):
        with self.redis.pipeline() as pipe:
            pipe.hmget(key("approval", approval_id), "session_id", "decision")
            pipe.delete(key("approval", approval_id))
            (session_id, decision), _ = pipe.execute()
        if session_id is not None:
            self.redis.srem(key("approvals", text(session_id)), approval_id)
        return text(decision)

    def deny_waiting(self, session_id):
        denied = []
        for approval_id in (text(i) for i in self.redis.smembers(key("approvals", session_id))):
            if self.decide(approval_id, "deny") is not None:
                denied.append(approval_id)
        return denied

    def describe(self, approval_id):
        fields = self.redis.hgetall(key("approval", approval_id))
        if b"tool" not in fields:
            return None
        return {"session_id": text(fields.get(b"session_id")), "round": int(fields[b"round"]),
                "tool": text(fields[b"tool"]), "arguments": text(fields[b"arguments"]),
                "decided": b"decision" in fields}

    def remember(self, session_id, tool, decision):
        self.redis.hset(key("remembered", session_id), tool, decision)

    def remembered(self, session_id, tool):
        return text(self.redis.hget(key("remembered", session_id), tool))

    def forget_session(self, session_id):
        self.redis.delete(key("remembered", session_id))


def open_redis_store(url: str, state_dir: Path, *, ttl_s: float, max_items: int,
                     on_remove: Callable[[str], None], clock: Callable[[], float] = time.time) -> Store:
    # a client is a connection pool: safe across threads; forked workers each open the store after the fork
    client = redis.Redis.from_url(url, socket_connect_timeout=10, health_check_interval=30)
    client.ping()                                    # an unreachable store fails the start, not the first request
    sessions = RedisSessionStore(client, state_dir, ttl_s=ttl_s, max_sessions=max_items, clock=clock,
                                 on_remove=on_remove)
    return Store(sessions=sessions, files=RedisFileStore(client, sessions),
                 responses=RedisResponses(client, ttl_s=ttl_s, max_responses=max_items, clock=clock),
                 broker=SharedApprovalBroker(RedisApprovals(client)), close=client.close)
