"""Built-in tools: what the server runs itself, described exactly as a client's strict function tool.

A `BuiltinTool` is a name, a description, a strict JSON Schema for its arguments and a function from those
arguments (and a `ToolContext`) to a JSON-able result. The `ToolRegistry` holds the tools a server offers;
a request picks some by name (`enable_code_execution` → "execute_python", `web_search_options` →
"search_the_web" and "extract_page"; neither needs anything else from the loop).

`as_openai_tools` renders tools as OpenAI `{"type": "function", "function": {..., "strict": True}}` entries,
so a built-in call is prompted, constrained (strict arguments through the constrainer) and parsed by the
very code that serves client tools; the loop then tells built-in calls from client calls by name.

A tool's schema is compiled once at registration (`build_grammar`), so a schema the constrainer cannot
follow is the server author's error at start-up, never a request's 500 later.
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping

from ..constrain import ConstraintError, build_grammar

TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")        # OpenAI's function-name rule


@dataclass(frozen=True)
class ToolContext:
    """What a built-in tool may know about the call it serves: plain data, filled by the runtime.

    `services` is opaque to the loop: the runtime puts there what its tools need (the session's sandbox
    under "sandbox", the request's web search under "web_search"), so tools depend on an interface, never on
    the server."""
    session_id: str | None = None
    folder: Path | None = None               # the session's working folder on the host (None: none)
    round: int = 0                           # the loop's round the call was made in (1-based; 0: outside one)
    services: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class BuiltinTool:
    name: str
    description: str
    parameters: dict                         # a strict JSON Schema object for the arguments
    run: Callable[[dict, ToolContext], dict] = field(compare=False, repr=False)

    def as_openai(self) -> dict:
        """The tool as a client would send it, strict, so built-in calls follow the constrainer."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters, "strict": True}}


def check_tool(tool: BuiltinTool) -> None:
    """ValueError for a tool a model could not be held to: a bad name, a non-object schema, or one that
    the constrainer cannot compile."""
    if not TOOL_NAME.match(tool.name):
        raise ValueError(f"tool name {tool.name!r} must match {TOOL_NAME.pattern}")
    parameters = tool.parameters
    if not isinstance(parameters, dict) or parameters.get("type") != "object":
        raise ValueError(f"tool {tool.name!r}: parameters must be a JSON Schema of type 'object'")
    if parameters.get("additionalProperties", True) is not False:
        raise ValueError(f"tool {tool.name!r}: a strict schema sets additionalProperties to false")
    try:
        build_grammar("json_schema", parameters)
    except (ConstraintError, RecursionError) as error:
        raise ValueError(f"tool {tool.name!r}: the constrainer cannot compile its parameters: {error}") from None


class ToolRegistry:
    """The built-in tools a server offers, by name; safe to read from request threads while one registers."""

    def __init__(self, tools: Iterable[BuiltinTool] = ()):
        self._tools: dict[str, BuiltinTool] = {}
        self._lock = threading.Lock()
        for tool in tools:
            self.register(tool)

    def register(self, tool: BuiltinTool, *, replace: bool = False) -> BuiltinTool:
        """Add `tool` (ValueError when its name is taken, unless `replace`, or when `check_tool` refuses it)."""
        check_tool(tool)
        with self._lock:
            if tool.name in self._tools and not replace:
                raise ValueError(f"a built-in tool named {tool.name!r} is already registered")
            self._tools[tool.name] = tool
        return tool

    def get(self, name: str) -> BuiltinTool:
        """KeyError for a name that is not registered."""
        with self._lock:
            return self._tools[name]

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._tools

    def names(self) -> tuple[str, ...]:
        """In registration order."""
        with self._lock:
            return tuple(self._tools)

    def tools(self, names: Iterable[str]) -> list[BuiltinTool]:
        """The named tools, in the order asked (KeyError for an unknown one)."""
        return [self.get(name) for name in names]

    def as_openai_tools(self, names: Iterable[str]) -> list[dict]:
        """The named tools as strict OpenAI function tools, in the order asked."""
        return [tool.as_openai() for tool in self.tools(names)]
