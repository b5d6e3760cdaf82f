"""The request's `tools` and `tool_choice`: which functions a call may name, and the finish_reason it yields.

tool_choice `none` is honoured by leaving the tools out of the prompt and not parsing calls (the history
still renders); no constraint is needed, since nothing in the output is ever read as a call.
"""
from __future__ import annotations

from dataclasses import dataclass


class ToolRequestError(ValueError):
    """The request's tools or tool_choice cannot be honoured (a 400 naming `param`)."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


def function_specs(tools: list[dict] | None) -> list[dict]:
    """The `function` objects of OpenAI `tools` ({"type": "function", "function": {...}})."""
    functions = []
    for i, tool in enumerate(tools or []):
        if tool.get("type", "function") != "function" or not isinstance(tool.get("function"), dict):
            raise ToolRequestError(f"tools[{i}]: only tools of type 'function' are supported", f"tools[{i}]")
        functions.append(tool["function"])
    return functions


@dataclass(frozen=True)
class ToolChoice:
    mode: str                        # "none" | "auto" | "required"
    names: tuple[str, ...]           # the functions a call may name
    named: bool = False              # a specific function was asked for (finish_reason stays "stop")


def resolve_tool_choice(tools: list[dict] | None, tool_choice) -> ToolChoice:
    """OpenAI's tool_choice: None (auto with tools, none without), "none" | "auto" | "required",
    {"type": "function", "function": {"name"}}, or {"type": "allowed_tools", "allowed_tools": {"mode", "tools"}}.
    """
    return choose_among(tuple(f["name"] for f in function_specs(tools)), tool_choice)


def choose_among(names: tuple[str, ...], tool_choice) -> ToolChoice:
    """`resolve_tool_choice` for functions already read: their `names`."""
    if tool_choice is None:
        return ToolChoice("auto" if names else "none", names)
    if tool_choice in ("none", "auto", "required"):
        if tool_choice == "required" and not names:
            raise ToolRequestError("tool_choice 'required' needs at least one tool in 'tools'", "tool_choice")
        return ToolChoice(tool_choice if names else "none", names)
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        name = (tool_choice.get("function") or {}).get("name")
        return ToolChoice("required", _known(names, [name]), named=True)
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "allowed_tools":
        allowed = tool_choice.get("allowed_tools") or {}
        mode = allowed.get("mode", "auto")
        if mode not in ("auto", "required"):
            raise ToolRequestError(f"allowed_tools mode must be 'auto' or 'required', not {mode!r}", "tool_choice")
        listed = [(t.get("function") or {}).get("name", t.get("name")) for t in allowed.get("tools", [])]
        return ToolChoice(mode, _known(names, listed))
    raise ToolRequestError(f"unsupported tool_choice {tool_choice!r}", "tool_choice")


def _known(names: tuple[str, ...], wanted: list) -> tuple[str, ...]:
    for name in wanted:
        if name not in names:
            raise ToolRequestError(f"tool_choice names {name!r}, which is not in 'tools'", "tool_choice")
    if not wanted:
        raise ToolRequestError("tool_choice allows no tool", "tool_choice")
    return tuple(dict.fromkeys(wanted))


@dataclass(frozen=True)
class ToolSet:
    """A request's function tools, read once: the tools as sent (for templates that render them), their
    `function` objects, the resolved tool_choice, and whether calls may come in parallel."""
    tools: list[dict]
    functions: list[dict]
    choice: ToolChoice
    parallel_tool_calls: bool | None = None

    @classmethod
    def read(cls, tools: list[dict] | None, tool_choice=None, parallel_tool_calls: bool | None = None) -> ToolSet:
        """ToolRequestError (naming the field) for tools or a tool_choice that cannot be honoured."""
        functions = function_specs(tools)
        choice = choose_among(tuple(f["name"] for f in functions), tool_choice)
        return cls(list(tools or []), functions, choice, parallel_tool_calls)

    @property
    def callable(self) -> bool:
        """A call may be made (tool_choice is not "none"): tools are offered and the output is parsed."""
        return self.choice.mode != "none"

    @property
    def max_calls(self) -> int | None:
        """1 when only one call may be made (parallel_tool_calls false, or a named function)."""
        return 1 if self.parallel_tool_calls is False or self.choice.named else None


def tool_finish_reason(tool_choice: ToolChoice, has_calls: bool, finish_reason: str) -> str:
    """OpenAI's finish_reason: "tool_calls" when calls come back for auto / required, but "stop" for a named
    function (vllm-project/vllm#25054); a cut-off output ("length") stays "length"."""
    if has_calls and finish_reason == "stop" and not tool_choice.named:
        return "tool_calls"
    return finish_reason
