"""The agent runtime of one server process: where sessions, produced files, sandboxed interpreters and
pending approvals live, and the server's policy (rounds, permission floor, timeouts). No HTTP in it.

    runtime = AgentRuntime(AgentSettings(state_dir=Path("~/.local/state/refengine").expanduser()))
    session = runtime.sessions.open(None)                    # a new session, with its working folder
    sandbox = runtime.sandbox(session.id)                    # its persistent Python interpreter
    runtime.search                                           # the web-search backend (None: not configured)
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from ..search.backend import SearchBackend, SearchSettings, open_backend
from .permissions import AUTO, check_permission
from .sandbox import PythonSandbox, SandboxLimits, require_bwrap
from .stores.base import open_store
from .stores.files_dir import FolderFiles

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AgentSettings:
    state_dir: Path                          # sessions.sqlite3 and the session folders
    store: str | None = None                 # postgresql:// or redis:// URL shared by replicas; None: SQLite
    files_dir: Path | None = None            # produced files' bytes here (shared storage), not in the store
    max_tool_rounds: int = 8                 # a request may ask for fewer (0: no built-in tool runs)
    permission_floor: str = AUTO             # a request may only tighten it
    approval_timeout_s: float = 300.0        # an unanswered approval denies
    code_exec_timeout_s: float = 30.0
    sandbox_mode: str = "bwrap"              # "none": no isolation (logged loudly)
    session_ttl_s: float = 1800.0
    max_sessions: int = 1000
    max_interpreters: int = 16               # live sandboxed interpreters; the least recently used stop
    search: SearchSettings = SearchSettings()    # web search (`web_search_options`): no local index, none

    def __post_init__(self):
        check_permission(self.permission_floor)


class AgentRuntime:
    def __init__(self, settings: AgentSettings):
        self.settings = settings
        # sessions, produced files, the Responses API's stored responses and pending approvals: in the store
        # every worker (SQLite) or every replica (PostgreSQL, Redis) shares
        self.store = open_store(settings.store, settings.state_dir, ttl_s=settings.session_ttl_s,
                                max_items=settings.max_sessions, on_remove=self.forget)
        self.sessions, self.files, self.responses = self.store.sessions, self.store.files, self.store.responses
        self.broker = self.store.broker
        if settings.files_dir is not None:
            self.files = FolderFiles(self.files, settings.files_dir)
        self._interpreters: OrderedDict[str, PythonSandbox] = OrderedDict()   # session id → its interpreter
        self._lock = threading.Lock()
        self.search: SearchBackend | None = open_backend(settings.search)
        if settings.sandbox_mode == "none":
            logger.warning("CODE EXECUTION RUNS WITHOUT A SANDBOX (--code-exec-sandbox none): model-written code "
                           "can read and write whatever this server's user can, and reach the network")

    def check_code_execution(self) -> None:
        """SandboxUnavailable (its message says how to install bubblewrap) when code cannot run here."""
        if self.settings.sandbox_mode == "bwrap":
            require_bwrap()

    def sandbox(self, session_id: str) -> PythonSandbox:
        """The session's interpreter (variables survive between calls), started on first use (outside the
        lock: a start may take seconds); past `max_interpreters` the least recently used one stops (its
        session's files stay)."""
        with self._lock:
            sandbox = self._interpreters.get(session_id)
            if sandbox is not None:
                self._interpreters.move_to_end(session_id)
                return sandbox
        limits = SandboxLimits(wall_seconds=self.settings.code_exec_timeout_s,
                               cpu_seconds=max(30, int(self.settings.code_exec_timeout_s) + 1))
        started = PythonSandbox(self.sessions.folder(session_id), limits, mode=self.settings.sandbox_mode)
        with self._lock:
            sandbox = self._interpreters.setdefault(session_id, started)
            self._interpreters.move_to_end(session_id)
            stopped = [] if sandbox is started else [started]          # another request started one first
            while len(self._interpreters) > self.settings.max_interpreters:
                stopped.append(self._interpreters.popitem(last=False)[1])
        for old in stopped:
            old.close()
        return sandbox

    def code_service(self, session_id: str) -> "SessionCode":
        """What `execute_python` runs code with: the session's interpreter, started only when code runs
        (not for a request that runs no tool)."""
        return SessionCode(self, session_id)

    def forget(self, session_id: str) -> None:
        """A session goes (deleted, expired, evicted): stop its interpreter (so nothing writes in its folder
        while the folder is removed, and a new session of the same id starts clean) and its remembered
        approvals."""
        with self._lock:
            sandbox = self._interpreters.pop(session_id, None)
        if sandbox is not None:
            sandbox.close()
        self.broker.forget_session(session_id)
        if isinstance(self.files, FolderFiles):
            self.files.remove_session(session_id)

    def close(self) -> None:
        with self._lock:
            interpreters, self._interpreters = list(self._interpreters.values()), OrderedDict()
        for sandbox in interpreters:
            sandbox.close()
        self.store.close()


@dataclass(frozen=True)
class SessionCode:
    """A session's code runner for the `execute_python` tool (`run(code) -> result dict`)."""
    runtime: AgentRuntime
    session_id: str

    def run(self, code: str) -> dict:
        return self.runtime.sandbox(self.session_id).run(code)
