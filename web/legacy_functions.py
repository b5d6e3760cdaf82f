"""The legacy `functions` / `function_call` fields (OpenAI's before `tools`), which older clients still send
(LangChain's older chat models, say): mapped onto tools on the way in, answered in their own shape on the way
out.

    functions: [F]                   → tools: [{"type": "function", "function": F}], one call at most
    function_call: "none" | "auto"   → tool_choice
    function_call: {"name": N}       → tool_choice {"type": "function", "function": {"name": N}}
    assistant's function_call        → its tool_calls
    a role "function" message        → a tool message answering the latest call of that name
    the answer                       → message.function_call {name, arguments} instead of tool_calls, and
                                       finish_reason "function_call"; streamed: delta.function_call pieces

`functions` beside `tools` (or `function_call` beside `tool_choice`) is a 400: one vocabulary at a time.
"""
from __future__ import annotations

from .errors import invalid_request

LEGACY_FINISH = "function_call"


def as_tools(body: dict) -> tuple[dict, bool]:
    """The chat body in today's vocabulary, and whether the answer must be given in the legacy one."""
    functions, choice = body.get("functions"), body.get("function_call")
    messages = [m for m in body["messages"]]
    legacy_history = any(m["role"] == "function" or m.get("function_call") for m in messages)
    if functions is None and choice is None and not legacy_history:
        return body, False
    for old, new in (("functions", "tools"), ("function_call", "tool_choice")):
        if body.get(old) is not None and body.get(new) is not None:
            raise invalid_request(f"'{old}' (the legacy form of '{new}') cannot be combined with '{new}'.", old)
    if choice is not None and functions is None:
        raise invalid_request("'function_call' is only allowed when 'functions' are specified.", "function_call")
    converted = {key: value for key, value in body.items() if key not in ("functions", "function_call")}
    converted["messages"] = _history(messages)
    if functions is not None:
        converted["tools"] = [{"type": "function", "function": function} for function in functions]
        converted["parallel_tool_calls"] = False              # the legacy answer holds one call
        converted["tool_choice"] = (choice if isinstance(choice, str) or choice is None else
                                    {"type": "function", "function": {"name": choice["name"]}})
    return converted, functions is not None


def _history(messages: list[dict]) -> list[dict]:
    out, pending = [], {}                    # function name → the id of its latest call
    for i, message in enumerate(messages):
        call = message.get("function_call") if message["role"] == "assistant" else None
        if call is not None:
            call_id = f"call_legacy_{i}"
            pending[call["name"]] = call_id
            rest = {k: v for k, v in message.items() if k != "function_call"}
            out.append({**rest, "tool_calls": [{"id": call_id, "type": "function", "function": dict(call)}]})
        elif message["role"] == "function":
            call_id = pending.pop(message["name"], None)
            if call_id is None:
                raise invalid_request(f"'messages[{i}]' answers a call of '{message['name']}' that no earlier "
                                      "assistant message made.", f"messages[{i}].name")
            out.append({"role": "tool", "tool_call_id": call_id, "content": message.get("content") or ""})
        else:
            out.append(message)
    return out


def legacy_message(message: dict) -> dict:
    """A chat.completion message with its (one) tool call as `function_call`."""
    calls = message.pop("tool_calls", None)
    if calls:
        message["function_call"] = calls[0]["function"]
    return message


def legacy_delta(delta: dict) -> dict:
    """A streamed delta with its tool-call piece as a `function_call` piece."""
    calls = delta.get("tool_calls")
    if not calls:
        return delta
    return {"function_call": calls[0]["function"]}


def legacy_finish(finish_reason: str | None) -> str | None:
    return LEGACY_FINISH if finish_reason == "tool_calls" else finish_reason
