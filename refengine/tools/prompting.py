"""Tools into the prompt: the messages and tools as the model's chat template should see them.

A template that reads `tools` gets them as they are. A template that does not (the default SmolLM2's) gets
the documented fallback: a system message (merged into the first system message, else prepended) that lists
each tool's name, description and JSON-schema parameters and asks for the hermes call format. Assistant
`tool_calls` and `tool` results that such a template cannot render become text in the same format:

    assistant:  <content, if any>\\n<tool_call>{"name": "f", "arguments": {...}}</tool_call>   (one line a call)
    user:       <tool_response>\\n<result>\\n</tool_response>                  (consecutive results: one message)
"""
from __future__ import annotations

import json
from typing import NamedTuple

from .choice import ToolSet
from .format import ToolFormat, model_tool_format


class PreparedChat(NamedTuple):
    messages: list[dict]             # for ChatTemplate.render / chat_prompt_ids
    tools: list[dict] | None         # for the template's `tools` (None: the template is not given tools)
    format: ToolFormat


def prepare_chat(model, messages: list[dict], tools: ToolSet | None = None) -> PreparedChat:
    """Messages and tools as the model's template should see them (tool_choice "none" offers no tool):

        chat = prepare_chat(model, messages, ToolSet.read(tools, tool_choice))
        ids = chat_prompt_ids(model, chat.messages, tools=chat.tools, template_kwargs=...)
    """
    fmt = model_tool_format(model)
    offered = tools is not None and tools.callable and bool(tools.functions)
    messages = _with_tool_names(messages)
    if fmt.renders_tool_history:
        messages = [_arguments_as_objects(m) for m in messages]
    else:
        messages = history_as_text(messages)
    if fmt.native:
        return PreparedChat(messages, tools.tools if offered else None, fmt)
    if offered:
        messages = with_system_text(messages, fallback_tool_prompt(tools.functions))
    return PreparedChat(messages, None, fmt)


def fallback_tool_prompt(functions: list[dict]) -> str:
    """The system text that offers tools to a template that cannot render them."""
    lines = ["# Tools", "", "You may call one or more of these functions to answer the user.", ""]
    for function in functions:
        lines.append(f"## {function['name']}")
        if function.get("description"):
            lines.append(function["description"])
        parameters = function.get("parameters") or {"type": "object", "properties": {}}
        lines.append("Parameters (JSON Schema): " + json.dumps(parameters, ensure_ascii=False))
        lines.append("")
    lines += ["To call a function, answer with one line per call, exactly in this format:",
              '<tool_call>{"name": "<function name>", "arguments": {<arguments as a JSON object>}}</tool_call>',
              "Results come back in <tool_response></tool_response> tags, in the order of the calls."]
    return "\n".join(lines)


def with_system_text(messages: list[dict], text: str) -> list[dict]:
    """`text` appended to the first message when it is a system message, else a new system message first."""
    if messages and messages[0].get("role") in ("system", "developer"):
        first = messages[0]
        content = first.get("content")
        if isinstance(content, list):
            content = [*content, {"type": "text", "text": text}]
        else:
            content = f"{content}\n\n{text}" if content else text
        return [{**first, "content": content}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def history_as_text(messages: list[dict]) -> list[dict]:
    """Assistant tool calls and tool results as plain text in the hermes format (consecutive tool results
    become one user message), for templates that know neither."""
    out: list[dict] = []
    for message in messages:
        role = message.get("role")
        if role == "assistant" and message.get("tool_calls"):
            calls = "\n".join(_call_text(call) for call in message["tool_calls"])
            content = _text_of(message.get("content"))
            rest = {k: v for k, v in message.items() if k != "tool_calls"}
            out.append({**rest, "content": f"{content}\n{calls}" if content else calls})
        elif role == "tool":
            response = f"<tool_response>\n{_text_of(message.get('content'))}\n</tool_response>"
            if out and out[-1].get("role") == "user" and out[-1].get("_tool_results"):
                out[-1] = {**out[-1], "content": out[-1]["content"] + "\n" + response}
            else:
                out.append({"role": "user", "content": response, "_tool_results": True})
        else:
            out.append(message)
    return [{k: v for k, v in m.items() if k != "_tool_results"} for m in out]


def _call_text(call: dict) -> str:
    function = call.get("function", call)
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except (ValueError, RecursionError):
            pass                                  # kept as the string the client sent
    body = {"name": function.get("name"), "arguments": arguments if arguments is not None else {}}
    return f"<tool_call>{json.dumps(body, ensure_ascii=False)}</tool_call>"


def _text_of(content) -> str:
    if content is None:
        return ""
    if isinstance(content, list):
        return "\n".join(part.get("text", "") for part in content if part.get("type") == "text")
    return str(content)


def _with_tool_names(messages: list[dict]) -> list[dict]:
    """Tool results get the `name` of the call they answer (looked up by tool_call_id): several templates
    render it, and one (vLLM's hermes) refuses a tool message without it."""
    names: dict[str, str] = {}
    out = []
    for message in messages:
        for call in message.get("tool_calls") or ():
            if call.get("id") is not None:
                names[call["id"]] = call.get("function", {}).get("name")
        if message.get("role") == "tool" and "name" not in message and message.get("tool_call_id") in names:
            message = {**message, "name": names[message["tool_call_id"]]}
        out.append(message)
    return out


def _arguments_as_objects(message: dict) -> dict:
    """OpenAI sends arguments as a JSON string; templates expect the object (they `tojson` it)."""
    if not message.get("tool_calls"):
        return message
    calls = []
    for call in message["tool_calls"]:
        function = call.get("function") or {}
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            try:
                function = {**function, "arguments": json.loads(arguments)}
            except (ValueError, RecursionError):
                pass                              # kept as the string the client sent
        calls.append({**call, "function": function})
    return {**message, "tool_calls": calls}
