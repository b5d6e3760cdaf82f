"""What the web layer serves: one loaded model and the scheduler that batches its requests.

`Engine` is plain data built by the composition root (or by `web.serve` inside a gunicorn worker);
`EngineSlot` holds it, or the news that it is still loading, so the app can answer /health with 503 while
the model loads in the background.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

from refengine.constrain import Constraint, ConstraintCompiler, ConstraintError, Vocab, build_grammar
from refengine.constrain.automaton import Automaton
from refengine.generate import ContextLengthError
from refengine.model import Model, load_model
from refengine.request import ConstraintSpec, GenerationRequest
from refengine.scheduler import QueueFullError, RequestHandle, Scheduler
from refengine.tools import ToolConstraintSpec, function_specs, tool_call_grammar

from .errors import APIError, context_length_exceeded, engine_loading, invalid_request, queue_full, server_error
from .schema import OutputConstraint

logger = logging.getLogger(__name__)

DEFAULT_MODEL_ALIAS = "default"
TOOL_CONSTRAINT_CACHE_SIZE = 16


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


class LRUCache:
    """The last `max_entries` values built, by key (least recently used out); safe across request threads."""

    def __init__(self, max_entries: int):
        self.max_entries = max_entries
        self._entries: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get_or_build(self, key, build: Callable[[], object]):
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        value = build()                          # outside the lock: two threads may build it, both correctly
        with self._lock:
            self._entries[key] = value
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._entries)


def tool_constraint_key(spec: ToolConstraintSpec) -> str:
    """What the call grammar depends on, as canonical JSON (the trigger only says when the grammar starts,
    so auto and required with the same tools share one compiled constraint). Schema keys keep their order:
    it is the order the grammar writes them in."""
    return json.dumps([spec.schema, spec.opening, spec.end, spec.separator, spec.max_calls],
                      ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class Engine:
    model: Model
    scheduler: Scheduler
    constraints: ConstraintCompiler          # compiled constraints for this model's vocabulary, cached
    created: int = field(default_factory=lambda: int(time.time()))    # the model's `created` in /v1/models
    tool_constraints: LRUCache = field(default_factory=lambda: LRUCache(TOOL_CONSTRAINT_CACHE_SIZE),
                                       compare=False, repr=False)    # compiled tool-call grammars

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

    def tool_constraint(self, spec: ToolConstraintSpec, tools: list[dict]) -> ConstraintSpec:
        """The compiled call grammar, from the first token (trigger None) or lazily from `spec.trigger`; a
        strict function whose `parameters` cannot be compiled is a 400 naming it."""
        def build() -> Constraint:
            return Constraint(Automaton(tool_call_grammar(spec)), self.constraints.vocab)
        try:
            constraint = self.tool_constraints.get_or_build(tool_constraint_key(spec), build)
        except ConstraintError as error:
            raise invalid_request(f"Invalid '{_failing_parameters(tools)}': {error.message}",
                                  _failing_parameters(tools)) from None
        return ConstraintSpec(constraint, trigger=spec.trigger)

    def stop(self) -> None:
        self.scheduler.stop()


def _failing_parameters(tools: list[dict]) -> str:
    """The strict function whose parameters schema does not compile (the field a 400 names)."""
    for i, function in enumerate(function_specs(tools)):
        if function.get("strict") and function.get("parameters") is not None:
            try:
                build_grammar("json_schema", function["parameters"])
            except ConstraintError:
                return f"tools[{i}].function.parameters"
    return "tools"


def start_engine(model: Model, **scheduler_options) -> Engine:
    """The engine over a loaded model; `scheduler_options` are Scheduler's (max_batch, max_queue, ...)."""
    scheduler = Scheduler(model, **scheduler_options).start()
    vocab = Vocab(tuple(model.tokenizer.token_bytes), model.eos_ids, model.tokenizer.special_ids)
    return Engine(model, scheduler, ConstraintCompiler(vocab))


def load_engine(model_dir: Path, *, device: str = "cpu", max_context: int | None = None,
                **scheduler_options) -> Engine:
    model = load_model(model_dir, device=device, max_context=max_context)
    return start_engine(model, **scheduler_options)


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
