"""What the web layer serves: one loaded model and the scheduler that batches its requests.

`Engine` is plain data built by the composition root (or by `web.serve` inside a gunicorn worker);
`EngineSlot` holds it, or the news that it is still loading, so the app can answer /health with 503 while
the model loads in the background.
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from refengine.constrain import (JSON_SCHEMA_MODES, Constraint, ConstraintCompiler, ConstraintError, Vocab,
                                 build_grammar)
from refengine.constrain.automaton import Automaton
from refengine.lru import LRUCache
from refengine.model import Model, load_model
from refengine.request import ConstraintSpec
from refengine.scheduler import Scheduler
from refengine.tools import ToolConstraintSpec, ToolFormat, ToolSet, tool_call_grammar, tool_constraint_spec

from .errors import engine_loading, invalid_request
from .schema import OutputConstraint

DEFAULT_MODEL_ALIAS = "default"
TOOL_CONSTRAINT_CACHE_SIZE = 16


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
    constraints: ConstraintCompiler          # compiled constraints for this model's vocabulary, cached; its
                                             # style is the server's json_schema_mode
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

    def constraint_spec(self, asked: OutputConstraint | None) -> ConstraintSpec | None:
        """Compile what the output must follow; what cannot be compiled is a 400 naming the field."""
        if asked is None:
            return None
        style = JSON_SCHEMA_MODES[asked.json_schema_mode] if asked.json_schema_mode else None
        try:
            constraint = self.constraints.compile(asked.kind, asked.value, style)
        except ConstraintError as error:
            param = f"{asked.param}.{error.path}" if error.path else asked.param   # grammar.value.grammars[1]...
            raise invalid_request(f"Invalid '{param}': {error.message}", param) from None
        return ConstraintSpec(constraint, max_tokens=constraint.max_tokens)

    def tool_constraint(self, tools: ToolSet, fmt: ToolFormat) -> ConstraintSpec | None:
        """The compiled call grammar, from the first token (trigger None) or lazily from the call's opening
        (tool_choice auto); None when no call may be made. A strict function whose `parameters` cannot be
        compiled is a 400 naming it. Arguments are read in the server's JSON style."""
        style = self.constraints.style

        def build() -> Constraint:
            constraint = Constraint(Automaton(tool_call_grammar(spec, style)), self.constraints.vocab)
            constraint.warm()                    # in the request's thread, not the scheduler's
            return constraint
        try:
            spec = tool_constraint_spec(tools, fmt)
            if spec is None:
                return None
            constraint = self.tool_constraints.get_or_build(tool_constraint_key(spec), build)
        except (ConstraintError, RecursionError) as error:
            param = _failing_parameters(tools, style)
            reason = error.message if isinstance(error, ConstraintError) else "the schema is nested too deeply"
            raise invalid_request(f"Invalid '{param}': {reason}", param) from None
        return ConstraintSpec(constraint, trigger=spec.trigger)

    def stop(self) -> None:
        self.scheduler.stop()


def _failing_parameters(tools: ToolSet, style) -> str:
    """The strict function whose parameters schema does not compile (the field a 400 names)."""
    for i, function in enumerate(tools.functions):
        if function.get("strict") and function.get("parameters") is not None:
            try:
                build_grammar("json_schema", function["parameters"], style)
            except (ConstraintError, RecursionError):
                return f"tools[{i}].function.parameters"
    return "tools"


def start_engine(model: Model, *, json_schema_mode: str = "generate", **scheduler_options) -> Engine:
    """The engine over a loaded model; `scheduler_options` are Scheduler's (max_batch, max_queue, ...);
    `json_schema_mode`: how JSON schemas are read unless a request says (refengine/constrain/json_style.py)."""
    scheduler = Scheduler(model, **scheduler_options).start()
    vocab = Vocab(tuple(model.tokenizer.token_bytes[:model.vocab_size]), model.eos_ids, model.tokenizer.special_ids)
    compiler = ConstraintCompiler(vocab, style=JSON_SCHEMA_MODES[json_schema_mode])
    threading.Thread(target=compiler.warm_up, name="constraint-warm-up", daemon=True).start()
    return Engine(model, scheduler, compiler)


def load_engine(model_dir: Path, *, device: str = "cpu", backend: str | None = None, weights: str = "f32",
                max_context: int | None = None, **scheduler_options) -> Engine:
    model = load_model(model_dir, device=device, backend=backend, weights=weights, max_context=max_context)
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
