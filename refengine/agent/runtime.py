"""The agent runtime of one server process: where sessions, produced files, sandboxed interpreters and
pending approvals live, and the server's policy (rounds, permission floor, timeouts). No HTTP in it.

    runtime = AgentRuntime(AgentSettings(state_dir=Path("~/.local/state/refengine").expanduser()))
    session = runtime.sessions.open(None)                    # a new session, with its working folder
    sandbox = runtime.sandbox(session.id)                    # its persistent Python interpreter
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from .files import FileStore
from .permissions import AUTO, ApprovalBroker, check_permission
from .sandbox import PythonSandbox, SandboxLimits, require_bwrap
from .sessions import SessionStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AgentSettings:
    state_dir: Path                          # sessions.sqlite3 and the session folders
    max_tool_rounds: int = 8                 # a request may ask for fewer (0: no built-in tool runs)
    permission_floor: str = AUTO             # a request may only tighten it
    approval_timeout_s: float = 300.0        # an unanswered approval denies
    code_exec_timeout_s: float = 30.0
    sandbox_mode: str = "bwrap"              # "none": no isolation (logged loudly)
    session_ttl_s: float = 1800.0
    max_sessions: int = 1000
    max_interpreters: int = 16               # live sandboxed interpreters; the least recently used stop

    def __post_init__(self):
        check_permission(self.permission_floor)


class AgentRuntime:
    def __init__(self, settings: AgentSettings):
        self.settings = settings
        self.sessions = SessionStore(settings.state_dir, ttl_s=settings.session_ttl_s,
                                     max_sessions=settings.max_sessions)
        self.files = FileStore(self.sessions)
        self.broker = ApprovalBroker()
        self._interpreters: OrderedDict[str, PythonSandbox] = OrderedDict()   # session id → its interpreter
        self._lock = threading.Lock()
        if settings.sandbox_mode == "none":
            logger.warning("CODE EXECUTION RUNS WITHOUT A SANDBOX (--code-exec-sandbox none): model-written code "
                           "can read and write whatever this server's user can, and reach the network")

    def check_code_execution(self) -> None:
        """SandboxUnavailable (its message says how to install bubblewrap) when code cannot run here."""
        if self.settings.sandbox_mode == "bwrap":
            require_bwrap()

    def sandbox(self, session_id: str) -> PythonSandbox:
        """The session's interpreter (variables survive between calls), started on first use; past
        `max_interpreters` the least recently used one stops (its session's files stay)."""
        limits = SandboxLimits(wall_seconds=self.settings.code_exec_timeout_s)
        with self._lock:
            sandbox = self._interpreters.pop(session_id, None)
            if sandbox is None:
                sandbox = PythonSandbox(self.sessions.folder(session_id), limits, mode=self.settings.sandbox_mode)
            self._interpreters[session_id] = sandbox
            stopped = []
            while len(self._interpreters) > self.settings.max_interpreters:
                stopped.append(self._interpreters.popitem(last=False)[1])
        for old in stopped:
            old.close()
        return sandbox

    def forget(self, session_id: str) -> None:
        """Stop a deleted session's interpreter."""
        with self._lock:
            sandbox = self._interpreters.pop(session_id, None)
        if sandbox is not None:
            sandbox.close()

    def close(self) -> None:
        with self._lock:
            interpreters, self._interpreters = list(self._interpreters.values()), OrderedDict()
        for sandbox in interpreters:
            sandbox.close()
