"""The store interface: where sessions, stored responses, produced files and approvals live, chosen by `--store`.

    store = open_store(None, state_dir, ttl_s=1800, max_items=1000, on_remove=runtime.forget)   # SQLite
    store = open_store("postgresql://refengine@db/refengine", state_dir, ...)     # shared by replicas
    store = open_store("redis://cache:6379/0", state_dir, ...)                    # TTLs native
    store.sessions, store.responses, store.files, store.broker

Every implementation answers the same methods, checked by one contract suite (tests/test_store_contract.py):

- sessions (sessions.SessionStore): open, get, append, replace, delete, list, expire, folder
- responses (stored_responses.ResponseStore): put, get, delete
- files (files.FileStore): record, get, for_session, collect, missing
- broker (approvals.SharedApprovalBroker over the store's ApprovalTable): open, wait, decide, deny_waiting,
  withdraw, remembered, forget_session, describe

SQLite is the embedded default: one file in the state folder, shared by the workers of one machine.
PostgreSQL and Redis are shared by replicas on several machines. Session folders (where a session's code
runs) stay on the machine's own disk under the state folder: what continues a session on another replica is
its history and its files, both in the store.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

SCHEMES = {"postgresql": "postgres", "postgres": "postgres", "redis": "redis", "rediss": "redis",
           "sqlite": "sqlite"}


@dataclass(frozen=True)
class Store:
    sessions: Any
    responses: Any
    files: Any
    broker: Any
    close: Callable[[], None] = lambda: None


def store_kind(url: str | None) -> str:
    """"sqlite", "postgres" or "redis"; ValueError naming the accepted schemes for anything else."""
    if url is None:
        return "sqlite"
    scheme = urlsplit(url).scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(f"--store must be a postgresql://, redis:// or sqlite:// URL, not {url!r}")
    return SCHEMES[scheme]


def open_store(url: str | None, state_dir: Path, *, ttl_s: float = 1800, max_items: int = 1000,
               on_remove: Callable[[str], None] = lambda session_id: None, **clock) -> Store:
    """The store `url` names (None or sqlite://: the state folder's SQLite file). The database's schema is
    created or migrated here, so a server that starts serves a schema it understands. `clock` (tests only):
    `clock=callable` for the sessions' and responses' idea of now."""
    kind = store_kind(url)
    if kind == "postgres":
        from .postgres import open_postgres_store
        return open_postgres_store(url, Path(state_dir), ttl_s=ttl_s, max_items=max_items, on_remove=on_remove,
                                   **clock)
    if kind == "redis":
        from .redis import open_redis_store
        return open_redis_store(url, Path(state_dir), ttl_s=ttl_s, max_items=max_items, on_remove=on_remove,
                                **clock)
    from .sqlite import open_sqlite_store
    return open_sqlite_store(Path(state_dir), ttl_s=ttl_s, max_items=max_items, on_remove=on_remove, **clock)
