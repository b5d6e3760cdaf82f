"""What the web layer serves: one loaded model and the scheduler that batches its requests.

`Engine` is plain data built by the composition root (or by `web.serve` inside a gunicorn worker);
`EngineSlot` holds it, or the news that it is still loading, so the app can answer /health with 503 while
the model loads in the background.
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from refengine.constrain import ConstraintCompiler, ConstraintError, Vocab
from refengine.generate import ContextLengthError
from refengine.model import Model, load_model
from refengine.request import ConstraintSpec, GenerationRequest
from refengine.scheduler import QueueFullError, RequestHandle, Scheduler

from .errors import APIError, context_length_exceeded, engine_loading, invalid_request, queue_full, server_error
from .schema import OutputConstraint

logger = logging.getLogger(__name__)

DEFAULT_MODEL_ALIAS = "default"


def as_api_error(error: BaseException, prompt_param: str) -> APIError:
    """What a client is told about an engine failure: its own fault (4xx) or ours (500, logged)."""
    if isinstance(error, APIError):
        return error
    if isinstance(error, QueueFullError):
        return queue_full(str(error))
    if isinstance(error, ContextLengthError):
        return context_length_exceeded(str(error), prompt_param)
    if isinstance(error, ValueError):          # the engine refuses what it was asked (e.g. an empty prompt)
        logger.warning("request refused by the engine: %s", error)
        return invalid_request(str(error), prompt_param)
    logger.error("generation failed", exc_info=error)
    return server_error(f"The generation failed: {error}")


@dataclass(frozen=True)
class Engine:
    model: Model
    scheduler: Scheduler
    constraints: ConstraintCompiler          # compiled constraints for this model's vocabulary, cached
    created: int = field(default_factory=lambda: int(time.time()))    # the model's `created` in /v1/models

    @property
    def model_id(self) -> str:
        return self.model.name

    @property
    def context_length(self) -> int:
        return self.model.config.max_position_embeddings

    @cached_property
    def fingerprint(self) -> str:
        """`system_fingerprint`: changes when the model (its folder and config) changes."""
        digest = hashlib.sha256(f"{self.model.name}:{self.model.config}".encode()).hexdigest()
        return f"fp_{digest[:10]}"

    def serves(self, model: str) -> bool:
        return model in (DEFAULT_MODEL_ALIAS, self.model_id)

    def submit(self, request: GenerationRequest, *, prompt_param: str) -> RequestHandle:
        """Queue a request, translating the scheduler's refusals into HTTP errors."""
        try:
            return self.scheduler.submit(request)
        except (QueueFullError, ValueError) as error:      # ContextLengthError is a ValueError
            raise as_api_error(error, prompt_param) from None

    def constraint_spec(self, asked: OutputConstraint | None) -> ConstraintSpec | None:
        """Compile what the output must follow; what cannot be compiled is a 400 naming the field."""
        if asked is None:
            return None
        try:
            return ConstraintSpec(self.constraints.compile(asked.kind, asked.value))
        except ConstraintError as error:
            raise invalid_request(f"Invalid '{asked.param}': {error.message}", asked.param) from None

    def stop(self) -> None:
        self.scheduler.stop()


def start_engine(model: Model, *, max_batch: int = 16, max_queue: int = 64) -> Engine:
    scheduler = Scheduler(model, max_batch=max_batch, max_queue=max_queue).start()
    vocab = Vocab(tuple(model.tokenizer.token_bytes), model.eos_ids, model.tokenizer.special_ids)
    return Engine(model, scheduler, ConstraintCompiler(vocab))


def load_engine(model_dir: Path, *, max_batch: int = 16, max_queue: int = 64, device: str = "cpu") -> Engine:
    return start_engine(load_model(model_dir, device=device), max_batch=max_batch, max_queue=max_queue)


class EngineSlot:
    """The engine once it is ready; until then `get()` answers 503."""

    def __init__(self, engine: Engine | None = None):
        self._engine = engine
        self._lock = threading.Lock()

    def set(self, engine: Engine) -> None:
        with self._lock:
            self._engine = engine

    @property
    def ready(self) -> bool:
        return self._engine is not None

    def get(self) -> Engine:
        engine = self._engine
        if engine is None:
            raise engine_loading()
        return engine

    def close(self) -> None:
        with self._lock:
            engine, self._engine = self._engine, None
        if engine is not None:
            engine.stop()
