"""`refengine serve`: the app on gunicorn, with gthread workers.

gthread, not sync: a sync worker is killed when one request outlives `timeout`, which a long stream does;
a gthread worker serves each connection on a thread and its heartbeat does not depend on requests.

Each worker builds its own engine after the fork (never in the master: a scheduler thread and the
model's arrays do not survive a fork well): `load()` returns the app at once with an empty `EngineSlot`
and a loader thread fills it, so /health answers 503 until the model is loaded and the scheduler runs.
If loading fails the worker exits with gunicorn's boot-error status, which stops the whole server.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from gunicorn.app.base import BaseApplication
from prometheus_client.multiprocess import mark_process_dead

from refengine.agent.runtime import AgentRuntime, AgentSettings
from refengine.backends import resolve_backend
from refengine.config import ModelLoadError

from .app import create_app
from .body import DEFAULT_MAX_BODY_BYTES
from .engine import EngineSlot, load_engine
from .lifecycle import Lifecycle
from .metrics import MULTIPROCESS_DIR, multiprocess

logger = logging.getLogger(__name__)

WORKER_BOOT_ERROR = 3                        # gunicorn's arbiter halts when a worker exits with this
LOG_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"


class EngineServer(BaseApplication):
    """A gunicorn application whose workers each load the model and serve `create_app` on it."""

    def __init__(self, model_dir: Path, *, engine_options: dict, app_options: dict, gunicorn_options: dict,
                 agent_settings: AgentSettings | None = None, grace_s: float = 30.0):
        self.model_dir, self.grace_s = model_dir, grace_s
        self.agent_settings = agent_settings
        self.agent: AgentRuntime | None = None   # set in each worker (all share the store)
        self.engine_options, self.app_options, self.gunicorn_options = engine_options, app_options, gunicorn_options
        self.slot: EngineSlot | None = None      # set in each worker, after the fork
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.gunicorn_options.items():
            self.cfg.set(key, value)
        self.cfg.set("worker_exit", self.worker_exit)
        if "control_socket_disable" in self.cfg.settings:      # gunicorn >= 25: one fixed path per user would
            self.cfg.set("control_socket_disable", True)        # clash between servers; we do not use it

    def load(self):
        logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
        self.slot = EngineSlot()
        threading.Thread(target=self._load_engine, name="refengine-loader", daemon=True).start()
        if self.agent_settings is not None:
            self.agent = AgentRuntime(self.agent_settings)
        return Lifecycle(create_app(self.slot, **self.app_options, agent=self.agent), self.grace_s)

    def _load_engine(self) -> None:
        started = time.monotonic()
        logger.info("loading %s", self.model_dir)
        try:
            self.slot.set(load_engine(self.model_dir, **self.engine_options))
        except Exception:
            logger.exception("could not load the model from %s", self.model_dir)
            os._exit(WORKER_BOOT_ERROR)
        logger.info("model loaded in %.1f s; serving", time.monotonic() - started)

    def worker_exit(self, server, worker) -> None:
        if multiprocess():                   # its live gauges stop counting; its counters stay in the sums
            try:
                mark_process_dead(worker.pid)
            except FileNotFoundError:
                # gunicorn runs this hook in the worker as it exits, and in the master too for a worker
                # already gone when it signals it: both mark it dead, and one finds a file the other removed
                pass
        if self.slot is not None:
            self.slot.close()
        if self.agent is not None:
            self.agent.close()


def default_state_dir() -> Path:
    """Where sessions live: $REFENGINE_STATE, else $XDG_STATE_HOME/refengine, else ~/.local/state/refengine."""
    if os.environ.get("REFENGINE_STATE"):
        return Path(os.environ["REFENGINE_STATE"])
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "refengine"


def bind_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def serve(model_dir: Path | None, *, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          max_batch: int = 16, max_queue: int = 64, prefill_chunk: int = 256, prefix_cache_mb: int = 1024,
          max_context: int | None = None, max_kv_mb: int = 4096,
          strict_params: bool = False, workers: int = 1,
          threads: int | None = None, device: str = "cpu", backend: str | None = None,
          weights: str = "f32", max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
          keepalive_s: float = 15.0, access_log: bool = False, metrics_public: bool = False,
          allow_special_in_content: bool = False, agent: AgentSettings | None = None,
          allowed_origins: tuple[str, ...] = (),
          json_schema_mode: str = "generate", grace_s: float = 30.0) -> None:
    """Serve until interrupted; returns by raising SystemExit, as gunicorn's arbiter exits.

    `threads` per worker defaults to enough for a full batch, a full queue and a few probes, so a burst
    is answered by the scheduler (429 when its queue is full) rather than left waiting for a thread.
    `agent`: the agent runtime's settings (sessions, server-side tools); default: on, state in
    `default_state_dir()`.
    """
    agent = agent or AgentSettings(state_dir=default_state_dir())
    resolve_backend(backend, device, weights)   # a backend that cannot run here fails now, not in each worker
    if model_dir is None:
        from refengine.convert import default_model_dir
        model_dir = default_model_dir()      # converted here, once, before the workers start
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise ModelLoadError(f"{model_dir} is not a model folder (no config.json)")
    gunicorn_options = {
        "bind": bind_address(host, port),
        "workers": workers,
        "worker_class": "web.lifecycle.DrainingWorker",     # gthread, draining on SIGTERM
        "threads": threads or max_batch + max_queue + 8,
        "timeout": 120,                      # the worker's heartbeat, not a request deadline (gthread)
        "graceful_timeout": math.ceil(grace_s),      # SIGTERM: running requests get this long (web/lifecycle.py)
        "keepalive": 5,
        "accesslog": "-" if access_log else None,
        # gunicorn's default line plus the worker's pid: with several workers, which one answered
        "access_log_format": '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" pid=%(p)s',
        "errorlog": "-",
        "loglevel": "info",
        "proc_name": "refengine",
    }
    metrics_dir = metrics_folder()
    try:
        EngineServer(model_dir,
                     engine_options={"max_batch": max_batch, "max_queue": max_queue, "prefill_chunk": prefill_chunk,
                                     "prefix_cache_bytes": prefix_cache_mb * 2**20, "device": device,
                                     "backend": backend, "weights": weights,
                                     "max_context": max_context, "max_kv_bytes": max_kv_mb * 2**20,
                                     "json_schema_mode": json_schema_mode},
                     app_options={"api_key": api_key, "strict_params": strict_params, "max_body_bytes": max_body_bytes,
                                  "keepalive_s": keepalive_s, "metrics_public": metrics_public,
                                  "allow_special_in_content": allow_special_in_content,
                                  "allowed_origins": tuple(allowed_origins)},
                     gunicorn_options=gunicorn_options, agent_settings=agent, grace_s=grace_s).run()
    finally:
        if metrics_dir is not None:                # ours: gone with the server, and from the environment
            shutil.rmtree(metrics_dir, ignore_errors=True)
            os.environ.pop(MULTIPROCESS_DIR, None)


def metrics_folder() -> Path | None:
    """The workers' shared metrics files (prometheus-client's multiprocess mode): a fresh private folder, set
    in the environment the workers inherit; returned so it goes when the server does. A folder the operator
    set in PROMETHEUS_MULTIPROC_DIR is used instead (emptied of an earlier run's files, and kept)."""
    chosen = os.environ.get(MULTIPROCESS_DIR)
    if chosen:
        Path(chosen).mkdir(parents=True, exist_ok=True)
        for stale in Path(chosen).glob("*.db"):
            stale.unlink()
        return None
    folder = Path(tempfile.mkdtemp(prefix="refengine-metrics-"))
    os.environ[MULTIPROCESS_DIR] = str(folder)
    return folder
