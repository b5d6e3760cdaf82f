"""Who may run a built-in tool: the permission policy, and the broker that carries a person's decision.

Policies, loosest first: "auto" (run), "ask" (a person approves or denies each call), "deny" (the model
gets `{"status": "denied", ...}`). The server's `--agent-permission` is a floor a request may only tighten:
a server that asks cannot be talked into running code unattended by a request that says "auto".

`ApprovalBroker` joins the stream that waits for a decision (the tool loop, blocked in `wait`) and the
request that brings it (`POST /v1/agent/approvals/{id}` → `decide`). It lives in this process's memory
only; the server uses stores/approvals.py's SharedApprovalBroker (same methods), which carries decisions
through the store so the POST may land on any worker or replica.
"""
from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field

AUTO, ASK, DENY = "auto", "ask", "deny"
PERMISSIONS = (AUTO, ASK, DENY)              # loosest first
APPROVE = "approve"
DECISIONS = (APPROVE, DENY)


def check_permission(value: str) -> str:
    if value not in PERMISSIONS:
        raise ValueError(f"permission must be one of {', '.join(PERMISSIONS)}, not {value!r}")
    return value


def effective_permission(server_floor: str, requested: str | None) -> str:
    """The stricter of the server's floor and what the request asks (None: the floor). A looser request
    keeps the floor rather than failing: tightening is the only thing a request can do, so asking for less
    is not an error worth refusing a request over. ValueError for a value that is no policy."""
    check_permission(server_floor)
    if requested is None:
        return server_floor
    check_permission(requested)
    return max(server_floor, requested, key=PERMISSIONS.index)


@dataclass
class _Pending:
    session_id: str | None
    round: int
    tool: str
    arguments: str
    decided: threading.Event = field(default_factory=threading.Event)
    decision: str | None = None


class ApprovalBroker:
    """Open approvals by id, and decisions remembered per (session, tool name). Thread-safe.

    An approval lives from `open` until its `wait` returns (or it is withdrawn): a decision for an id that is
    unknown, already decided or given up on (timed out, its stream gone) changes nothing and `decide` says
    False, so a late click can never be mistaken for the approval of a later call.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        self._remembered: dict[tuple[str, str], str] = {}

    def open(self, session_id: str | None, round: int, tool: str, arguments: str) -> str:
        """A new approval for one call; its id is what the client echoes in its decision."""
        approval_id = "appr_" + uuid.uuid4().hex
        with self._lock:
            self._pending[approval_id] = _Pending(session_id, round, tool, arguments)
        return approval_id

    def wait(self, approval_id: str, timeout_s: float) -> str:
        """Block until the approval is decided or `timeout_s` passes: "approve" or "deny" (no answer in time,
        or an unknown id, denies: running code nobody approved is never the default). Closes the approval."""
        with self._lock:
            pending = self._pending.get(approval_id)
        if pending is None:
            return DENY
        pending.decided.wait(max(0.0, timeout_s))
        with self._lock:                          # a decision that lands just as the wait ends still counts
            self._pending.pop(approval_id, None)
            return pending.decision or DENY

    def decide(self, approval_id: str, decision: str, remember_for_session: bool = False) -> bool:
        """Record a person's decision; False when `approval_id` is not open (unknown, decided, timed out).
        With `remember_for_session`, later calls of the same tool in the same session get this decision
        without asking (not for a call outside a session: there is nothing to remember it in).
        ValueError for a decision that is neither "approve" nor "deny"."""
        if decision not in DECISIONS:
            raise ValueError(f"decision must be one of {', '.join(DECISIONS)}, not {decision!r}")
        with self._lock:
            pending = self._pending.get(approval_id)
            if pending is None or pending.decision is not None:
                return False
            pending.decision = decision
            if remember_for_session and pending.session_id is not None:
                self._remembered[(pending.session_id, pending.tool)] = decision
        pending.decided.set()
        return True

    def deny_waiting(self, session_id: str) -> None:
        """Deny every approval of `session_id` still waiting (its client went away): the loop goes on at
        once instead of waiting out the timeout, and a late POST finds nothing to approve."""
        with self._lock:
            waiting = [(i, p) for i, p in self._pending.items() if p.session_id == session_id and p.decision is None]
            for approval_id, pending in waiting:
                pending.decision = DENY
                del self._pending[approval_id]
        for _, pending in waiting:
            pending.decided.set()

    def withdraw(self, approval_id: str) -> None:
        """Close an approval nobody will wait for (the stream that showed it went away): a decision that comes
        later is refused instead of being recorded for nothing. A no-op for an id already closed."""
        with self._lock:
            self._pending.pop(approval_id, None)

    def remembered(self, session_id: str | None, tool: str) -> str | None:
        """The decision remembered for `tool` in this session, or None (ask)."""
        if session_id is None:
            return None
        with self._lock:
            return self._remembered.get((session_id, tool))

    def forget_session(self, session_id: str) -> None:
        """Drop a session's remembered decisions (when the session is deleted or expires)."""
        with self._lock:
            for key in [k for k in self._remembered if k[0] == session_id]:
                del self._remembered[key]

    def describe(self, approval_id: str) -> dict | None:
        """What an open approval is about (for the endpoint's 404 / logs), or None."""
        with self._lock:
            pending = self._pending.get(approval_id)
            if pending is None:
                return None
            return {"approval_id": approval_id, "session_id": pending.session_id, "round": pending.round,
                    "tool": pending.tool, "arguments": pending.arguments, "decided": pending.decision is not None}
