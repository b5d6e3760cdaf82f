"""POST /v1/responses bodies → a checked `ResponsesCall`: the conversation as chat messages for the engine, and
the fields a Response object repeats. Validation in the style of schema.py (a JSON Schema written from
OpenAI's CreateResponse, then what a schema cannot say in code), with every 400 naming the Responses field.

    input "Hi"                                     → [{"role": "user", "content": "Hi"}]
    {"type": "message", role, content parts}       → a chat message (input_text / output_text parts as text)
    {"type": "function_call", call_id, name, args} → an assistant message's tool_calls (consecutive calls join)
    {"type": "function_call_output", call_id, ...} → a tool message
    {"type": "reasoning", ...}                     → dropped (templates do not render past reasoning)
    instructions                                   → a system message first (never carried to a follow-up)

Function tools (`{"type": "function", "name", "parameters", "strict"}`, strict by default as OpenAI has
it) and `tool_choice` become the chat's `ToolSet`; `text.format` the output constraint; `reasoning.effort`
the template's thinking kwargs; `max_output_tokens` the token limit; `truncation: "auto"` drops the oldest
messages of a prompt that does not fit. The seed request's extension fields (top_k, min_p, penalties, DRY,
seed, stop, logit_bias, grammar, enable_thinking, ignore_eos, min_tokens, truncate_sequence) work as on
chat. What this server cannot do is a 400 naming the field: hosted tools, image / file / audio input (it
serves text-only models), `background`, `conversation`, `prompt` templates, `include`, `top_logprobs`,
item references, reasoning summaries other than "auto".
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from jsonschema import Draft202012Validator

from .errors import APIError, invalid_request, not_supported
from .schema import (CHAT_FIELDS, GRAMMAR, SAMPLING_FIELDS, TOOL_NAME, ChatCall, GenerationOptions, OutputConstraint,
                     check_fields, check_model, check_tool_choice, reasoning_kwargs, sampling_params, stopping_params,
                     tagged, template_messages, tool_request, validate)

TEXT_ONLY = "this server serves text-only models"
STRING = {"type": "string"}
NULLABLE_STRING = {"type": ["string", "null"]}

# ---- input items ----

TEXT_PART = {"required": ["text"], "properties": {"text": STRING}}
UNSUPPORTED_PARTS = ("input_image", "input_file", "input_audio")     # a 400 that says why (input_parts)
INPUT_PARTS = tagged("type", {"input_text": TEXT_PART, "output_text": TEXT_PART,
                              "refusal": {"required": ["refusal"], "properties": {"refusal": STRING}},
                              **{kind: {} for kind in UNSUPPORTED_PARTS}})
CALL_ID = {"type": "string", "minLength": 1, "maxLength": 64}
ITEM_STATUS = {"enum": ["in_progress", "completed", "incomplete"]}
INPUT_ITEM = tagged("type", {
    "message": {"required": ["role", "content"], "properties": {
        "role": {"enum": ["user", "assistant", "system", "developer"]},
        "content": {"type": ["string", "array"], "items": INPUT_PARTS},
        "id": STRING, "status": ITEM_STATUS}},
    "function_call": {"required": ["call_id", "name", "arguments"], "properties": {
        "call_id": CALL_ID, "name": STRING, "arguments": STRING, "id": STRING, "status": ITEM_STATUS}},
    "function_call_output": {"required": ["call_id", "output"], "properties": {
        "call_id": CALL_ID, "output": {"type": ["string", "array"], "items": INPUT_PARTS},
        "id": NULLABLE_STRING, "status": {"anyOf": [ITEM_STATUS, {"type": "null"}]}}},
    "reasoning": {"properties": {"id": STRING, "summary": {"type": "array"}, "content": {"type": ["array", "null"]},
                                 "encrypted_content": NULLABLE_STRING, "status": ITEM_STATUS}},
    "item_reference": {"required": ["id"], "properties": {"id": STRING}},
})

# ---- tools, tool_choice, text format ----

FUNCTION_TOOL = {"required": ["name"], "properties": {
    "name": TOOL_NAME, "description": NULLABLE_STRING, "parameters": {"type": ["object", "null"]},
    "strict": {"type": ["boolean", "null"]}}}
TOOL = {"type": "object", "required": ["type"], "properties": {"type": STRING},
        "allOf": [{"if": {"properties": {"type": {"const": "function"}}}, "then": FUNCTION_TOOL}]}
NAMED_FUNCTION = {"required": ["name"], "properties": {"name": STRING}}
TOOL_CHOICE = {
    "type": ["string", "object", "null"],
    "if": {"type": "string"}, "then": {"enum": ["none", "auto", "required"]},
    "else": {"type": ["object", "null"], "required": ["type"], "properties": {"type": STRING}, "allOf": [
        {"if": {"properties": {"type": {"const": "function"}}}, "then": NAMED_FUNCTION},
        {"if": {"properties": {"type": {"const": "allowed_tools"}}}, "then": {
            "required": ["mode", "tools"], "properties": {
                "mode": {"enum": ["auto", "required"]},
                "tools": {"type": "array", "items": {"type": "object", "required": ["type"],
                                                      "properties": {"type": STRING, "name": STRING}}}}}}]},
}
TEXT_FORMAT = tagged("type", {
    "text": {},
    "json_object": {},
    "json_schema": {"required": ["name", "schema"], "properties": {
        "name": TOOL_NAME, "schema": {"type": "object"}, "description": STRING,
        "strict": {"type": ["boolean", "null"]}}},
})
EFFORT = CHAT_FIELDS["reasoning_effort"]

# ---- the request ----

# the seed request's extensions, as chat takes them (SAMPLING_FIELDS without chat's own n / max_tokens)
EXTENSION_FIELDS = {name: SAMPLING_FIELDS[name] for name in (
    "presence_penalty", "frequency_penalty", "logit_bias", "seed", "stop", "top_k", "min_p", "repetition_penalty",
    "dry_multiplier", "dry_base", "dry_allowed_length", "dry_sequence_breakers", "ignore_eos", "min_tokens",
    # vLLM's (vllm_fields.py), but guided_*: text.format and grammar say that here
    "stop_token_ids", "include_stop_str_in_output", "skip_special_tokens", "spaces_between_special_tokens",
    "priority")}

RESPONSE_FIELDS = {
    "model": STRING,
    "input": {"type": ["string", "array"], "items": INPUT_ITEM},
    "instructions": NULLABLE_STRING,
    "max_output_tokens": {"type": ["integer", "null"], "minimum": 1},
    "temperature": SAMPLING_FIELDS["temperature"],
    "top_p": SAMPLING_FIELDS["top_p"],
    "tools": {"type": ["array", "null"], "items": TOOL},
    "tool_choice": TOOL_CHOICE,
    "parallel_tool_calls": {"type": ["boolean", "null"]},
    "max_tool_calls": {"type": ["integer", "null"], "minimum": 1},   # counts built-in tool calls: none here
    "text": {"type": ["object", "null"], "properties": {
        "format": TEXT_FORMAT, "verbosity": {"enum": ["low", "medium", "high", None]}}},
    "reasoning": {"type": ["object", "null"], "properties": {
        "effort": EFFORT, "summary": {"enum": ["auto", "concise", "detailed", None]},
        "generate_summary": {"enum": ["auto", "concise", "detailed", None]}}},
    "store": {"type": ["boolean", "null"]},
    "previous_response_id": NULLABLE_STRING,
    "stream": {"type": ["boolean", "null"]},
    "stream_options": {"type": ["object", "null"],
                       "properties": {"include_obfuscation": {"type": ["boolean", "null"]}}},
    "truncation": {"enum": ["auto", "disabled", None]},
    "metadata": CHAT_FIELDS["metadata"],
    "user": NULLABLE_STRING,
    "safety_identifier": CHAT_FIELDS["safety_identifier"],
    "prompt_cache_key": NULLABLE_STRING,
    "prompt_cache_retention": CHAT_FIELDS["prompt_cache_retention"],
    "service_tier": CHAT_FIELDS["service_tier"],
    "top_logprobs": {"type": ["integer", "null"], "minimum": 0, "maximum": 20},
    "include": {"type": ["array", "null"], "items": STRING},
    "background": {"type": ["boolean", "null"]},
    "conversation": {"type": ["string", "object", "null"]},
    "prompt": {"type": ["object", "null"]},
    **EXTENSION_FIELDS,
    "grammar": GRAMMAR,
    "enable_thinking": {"type": ["boolean", "null"]},
    "truncate_sequence": {"type": ["boolean", "null"]},
}
RESPONSE_REQUEST = Draft202012Validator({"type": "object", "required": ["input"], "properties": RESPONSE_FIELDS})


@dataclass(frozen=True)
class ResponsesCall:
    chat: ChatCall                          # the engine's call; its messages: instructions + input (no history)
    instructions: str | None
    input_messages: list[dict]              # this request's input as chat messages (what a follow-up continues)
    previous_response_id: str | None
    store: bool | None                      # None: not asked (OpenAI stores by default)
    stream: bool
    echo: dict                              # the request's fields as a Response object repeats them

    def with_history(self, history: list[dict]) -> ChatCall:
        """The engine's call continuing a stored conversation: instructions, then `history`, then the input."""
        messages = template_messages(history + self.input_messages)
        return replace(self.chat, messages=self._instruction_messages() + messages)

    def _instruction_messages(self) -> list[dict]:
        return [{"role": "system", "content": self.instructions}] if self.instructions else []


def _given(body: dict, name: str, default):
    value = body.get(name)
    return default if value is None else value


def _part_text(part: dict, param: str) -> dict:
    if part["type"] in UNSUPPORTED_PARTS:
        raise invalid_request(f"Content parts of type '{part['type']}' are not supported: {TEXT_ONLY}, so only "
                              "text parts (input_text, output_text) can be given.", param, "unsupported_parameter")
    return {"type": "text", "text": part["refusal"] if part["type"] == "refusal" else part["text"]}


def _content(content, param: str):
    """A string, or text parts as chat's `[{"type": "text", "text"}]` (joined by the template as chat's are)."""
    if isinstance(content, str):
        return content
    return [_part_text(part, f"{param}[{j}]") for j, part in enumerate(content)]


def input_messages(items) -> list[dict]:
    """`input` as chat messages (see the module's table)."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    messages: list[dict] = []
    for i, item in enumerate(items):
        kind = item["type"]
        if kind == "message":
            messages.append({"role": item["role"], "content": _content(item["content"], f"input[{i}].content")})
        elif kind == "function_call":
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}
            if messages and messages[-1]["role"] == "assistant":    # the text and calls of one turn
                messages[-1]["tool_calls"] = messages[-1].get("tool_calls", []) + [call]
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item["call_id"],
                             "content": _content(item["output"], f"input[{i}].output")})
        elif kind == "item_reference":
            raise invalid_request("Item references are not supported by this server; send the item itself, or "
                                  "continue a stored response with 'previous_response_id'.", f"input[{i}]",
                                  "unsupported_parameter")
    return messages


def chat_tools(body: dict) -> dict:
    """`tools`, `tool_choice` and `parallel_tool_calls` in chat's shapes (for schema.py's tool checks, whose
    400s name `tools[i]` and `tool_choice` as the Responses API does). Hosted tools are a 400."""
    tools = []
    for i, tool in enumerate(body.get("tools") or ()):
        if tool["type"] != "function":
            raise invalid_request(f"Tools of type '{tool['type']}' are not supported by this server (function "
                                  "tools only).", f"tools[{i}].type", "unsupported_parameter")
        function = {key: tool[key] for key in ("name", "description", "parameters") if tool.get(key) is not None}
        tools.append({"type": "function", "function": {**function, "strict": _given(tool, "strict", True)}})
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        if choice["type"] == "function":
            choice = {"type": "function", "function": {"name": choice["name"]}}
        elif choice["type"] == "allowed_tools":
            choice = {"type": "allowed_tools", "allowed_tools": {"mode": choice["mode"], "tools": [
                {"type": t["type"], "function": {"name": t.get("name")}} for t in choice["tools"]]}}
        else:
            raise invalid_request(f"tool_choice of type '{choice['type']}' is not supported by this server "
                                  "(function tools only).", "tool_choice.type", "unsupported_parameter")
    return {"tools": tools or None, "tool_choice": choice, "parallel_tool_calls": body.get("parallel_tool_calls")}


def text_constraint(body: dict) -> OutputConstraint | None:
    """`text.format` (json_object, json_schema) or the `grammar` extension, never both."""
    fmt = (body.get("text") or {}).get("format") or {"type": "text"}
    grammar = body.get("grammar")
    if grammar is not None and fmt["type"] != "text":
        raise invalid_request("'grammar' cannot be combined with a JSON 'text.format'; use one of them.", "grammar")
    if fmt["type"] == "json_object":
        return OutputConstraint("json_object", None, "text.format")
    if fmt["type"] == "json_schema":
        return OutputConstraint("json_schema", fmt["schema"], "text.format.schema")
    if grammar is None:
        return None
    return OutputConstraint(grammar["type"], grammar["value"], "grammar.value")


def _refuse_unoffered(body: dict) -> None:
    for name in ("background", "conversation", "prompt"):
        if body.get(name):
            raise not_supported(name)
    if body.get("include"):
        raise invalid_request(f"'include' is not supported by this server (nothing beyond the output can be "
                              f"included): {body['include'][0]!r}.", "include", "unsupported_parameter")
    if body.get("top_logprobs"):
        raise not_supported("top_logprobs")
    summary = (body.get("reasoning") or {}).get("summary") or (body.get("reasoning") or {}).get("generate_summary")
    if summary not in (None, "auto"):
        raise invalid_request(f"Reasoning summaries ('{summary}') are not supported by this server; thinking "
                              "models return their reasoning as a reasoning item's content.", "reasoning.summary",
                              "unsupported_parameter")
    if body.get("stream_options") is not None and not body.get("stream"):
        raise invalid_request("'stream_options' is only allowed when 'stream' is true.", "stream_options")


def _reasoning_kwargs(body: dict) -> dict:
    try:
        return reasoning_kwargs({"enable_thinking": body.get("enable_thinking"),
                                 "reasoning_effort": (body.get("reasoning") or {}).get("effort")})
    except APIError as error:               # schema.py's 400 names chat's field: name ours
        if error.param != "reasoning_effort":
            raise
        raise invalid_request(error.message.replace("'reasoning_effort'", "'reasoning.effort'"),
                              "reasoning.effort") from None


def echo_fields(body: dict, tool_choice) -> dict:
    """What a Response object repeats of its request, with OpenAI's defaults for what was not sent."""
    reasoning = body.get("reasoning") or {}
    text = body.get("text") or {}
    return {
        "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": body.get("max_tool_calls"), "metadata": body.get("metadata") or {},
        "parallel_tool_calls": _given(body, "parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "service_tier": "default",         # the one tier this server has, whatever was asked
        "temperature": _given(body, "temperature", 1.0), "top_p": _given(body, "top_p", 1.0),
        "text": {"format": text.get("format") or {"type": "text"}, "verbosity": _given(text, "verbosity", "medium")},
        "tool_choice": tool_choice, "tools": [{"strict": True, **tool} for tool in body.get("tools") or ()],
        "top_logprobs": _given(body, "top_logprobs", 0),
        "truncation": _given(body, "truncation", "disabled"),
        "safety_identifier": body.get("safety_identifier"), "prompt_cache_key": body.get("prompt_cache_key"),
        "background": False, **({"user": body["user"]} if body.get("user") is not None else {}),
    }


def parse_responses(body: dict, *, serves, vocab_size: int, context_length: int,
                    strict: bool = False) -> ResponsesCall:
    ignored = check_fields(body, RESPONSE_FIELDS, strict=strict)
    if isinstance(body.get("input"), list):           # an item without `type` is a message (EasyInputMessage)
        body = {**body, "input": [{"type": "message", **item} if isinstance(item, dict) and "type" not in item
                                  else item for item in body["input"]]}
    validate(body, RESPONSE_REQUEST)
    check_model(body, serves)
    _refuse_unoffered(body)
    messages = input_messages(body["input"])
    tool_fields = chat_tools(body)
    check_tool_choice(tool_fields)
    tools = tool_request(tool_fields)
    constraint = text_constraint(body)
    if tools is not None and tools.callable and constraint is not None:
        param = "grammar" if body.get("grammar") is not None else "text.format"
        raise invalid_request(f"'{param}' cannot be combined with 'tools' (tool calls follow their own grammar); "
                              "use tool_choice 'none' or drop one of them.", param)
    max_tokens = body.get("max_output_tokens")
    options = GenerationOptions(sampling=sampling_params(body, vocab_size),
                                stopping=stopping_params(body, max_tokens, "max_output_tokens", context_length,
                                                         vocab_size),
                                priority=int(_given(body, "priority", 0)))
    stream = bool(body.get("stream"))
    chat = ChatCall(messages=[], options=options, tools=tools, template_kwargs=_reasoning_kwargs(body),
                    truncate=body.get("truncation") == "auto" or bool(body.get("truncate_sequence")),
                    stream=stream, constraint=constraint, max_tokens_param="max_output_tokens", ignored=ignored)
    call = ResponsesCall(chat=chat, instructions=body.get("instructions"), input_messages=messages,
                         previous_response_id=body.get("previous_response_id"), store=body.get("store"),
                         stream=stream, echo=echo_fields(body, _given(body, "tool_choice", "auto")))
    return replace(call, chat=call.with_history([]))
