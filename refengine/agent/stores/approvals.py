"""Approvals decided through the store: the stream that waits for a person's decision and the POST that brings
it may be served by different workers or different replicas, so the decision travels through the shared store.

    broker = SharedApprovalBroker(table)                 # table: the store's ApprovalTable (SQLite, PostgreSQL, Redis)
    approval_id = broker.open("s1", 1, "execute_python", '{"code": "1"}')
    broker.decide(approval_id, "approve")                # on any replica sharing the store
    broker.wait(approval_id, timeout_s=300)              # on the replica streaming the request → "approve"

The waiting side polls the store every `poll_s` (a decision made in this very process wakes it at once):
polling needs nothing from the database but reads, and a missed notification can never strand a stream.
The broker keeps permissions.ApprovalBroker's contract: a decision for an approval that is unknown, already
decided, withdrawn or given up on is refused (`decide` → False), and no decision in time denies.
"""
from __future__ import annotations

import threading
import time
import uuid
from abc import ABC, abstractmethod

from ..permissions import DECISIONS, DENY

POLL_S = 0.1                              # how often a waiting stream looks for a decision made elsewhere
MAX_AGE_S = 24 * 3600.0                   # rows left by a replica that died while waiting are dropped after this


class ApprovalTable(ABC):
    """What the broker needs of a store: each call is atomic on its own."""

    @abstractmethod
    def create(self, approval_id: str, session_id: str | None, round: int, tool: str, arguments: str) -> None:
        """A new undecided approval (dropping those older than MAX_AGE_S)."""

    @abstractmethod
    def decide(self, approval_id: str, decision: str) -> tuple[str | None, str] | None:
        """Set the decision if the approval exists undecided: then (its session id, its tool), else None."""

    @abstractmethod
    def decision(self, approval_id: str) -> tuple[bool, str | None]:
        """(exists, decision or None)."""

    @abstractmethod
    def close(self, approval_id: str) -> str | None:
        """Remove the approval; its decision (None when undecided or gone), read in the same step as the
        removal so a decision landing just as a wait ends still counts."""

    @abstractmethod
    def deny_waiting(self, session_id: str) -> list[str]:
        """Deny every undecided approval of the session; their ids."""

    @abstractmethod
    def describe(self, approval_id: str) -> dict | None:
        """{session_id, round, tool, arguments, decided} or None."""

    @abstractmethod
    def remember(self, session_id: str, tool: str, decision: str) -> None: ...

    @abstractmethod
    def remembered(self, session_id: str, tool: str) -> str | None: ...

    @abstractmethod
    def forget_session(self, session_id: str) -> None: ...


class SharedApprovalBroker:
    """permissions.ApprovalBroker's methods over an ApprovalTable shared by every worker and replica."""

    def __init__(self, table: ApprovalTable, *, poll_s: float = POLL_S):
        self.table, self.poll_s = table, poll_s
        self._woken: dict[str, threading.Event] = {}        # approvals waited on in this process
        self._lock = threading.Lock()

    def open(self, session_id: str | None, round: int, tool: str, arguments: str) -> str:
        approval_id = "appr_" + uuid.uuid4().hex
        self.table.create(approval_id, session_id, round, tool, arguments)
        return approval_id

    def wait(self, approval_id: str, timeout_s: float) -> str:
        """"approve" or "deny" (no decision in time, or an unknown id, denies); closes the approval."""
        event = threading.Event()
        with self._lock:
            self._woken[approval_id] = event
        deadline = time.monotonic() + max(0.0, timeout_s)
        try:
            while True:
                exists, decision = self.table.decision(approval_id)
                if not exists or decision is not None:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                event.wait(min(self.poll_s, left))
        finally:
            with self._lock:
                self._woken.pop(approval_id, None)
        return self.table.close(approval_id) or DENY

    def decide(self, approval_id: str, decision: str, remember_for_session: bool = False) -> bool:
        if decision not in DECISIONS:
            raise ValueError(f"decision must be one of {', '.join(DECISIONS)}, not {decision!r}")
        decided = self.table.decide(approval_id, decision)
        if decided is None:
            return False
        session_id, tool = decided
        if remember_for_session and session_id is not None:
            self.table.remember(session_id, tool, decision)
        self._wake(approval_id)
        return True

    def deny_waiting(self, session_id: str) -> None:
        for approval_id in self.table.deny_waiting(session_id):
            self._wake(approval_id)

    def withdraw(self, approval_id: str) -> None:
        self.table.close(approval_id)

    def remembered(self, session_id: str | None, tool: str) -> str | None:
        return None if session_id is None else self.table.remembered(session_id, tool)

    def forget_session(self, session_id: str) -> None:
        self.table.forget_session(session_id)

    def describe(self, approval_id: str) -> dict | None:
        described = self.table.describe(approval_id)
        return None if described is None else {"approval_id": approval_id, **described}

    def _wake(self, approval_id: str) -> None:
        with self._lock:
            event = self._woken.get(approval_id)
        if event is not None:
            event.set()
