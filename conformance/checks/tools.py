"""Tools: tool_choice modes, tool-call shape and finish_reason, streamed tool-call deltas."""
from __future__ import annotations

import json

import jsonschema

from ..check import Skip, check, require
from ..expect import choice_deltas, first_choice, ok_completion, ok_stream, stream_finish_reasons

CATEGORY = "tools"
TOOL_MAX_TOKENS = 64
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city.",
    "parameters": {"type": "object",
                   "properties": {"city": {"type": "string"},
                                  "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Get the current time in a timezone.",
    "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}},
                   "required": ["timezone"]}}}
TOOLS = [WEATHER, TIME]
PARAMETERS = {tool["function"]["name"]: tool["function"]["parameters"] for tool in TOOLS}
PROMPT = "What is the weather like in Paris right now?"


def tool_request(ctx, tool_choice, **fields):
    return ctx.chat(PROMPT, tools=TOOLS, tool_choice=tool_choice, max_tokens=TOOL_MAX_TOKENS, **fields)


def verify_call(exchange, call: dict, names: tuple[str, ...]) -> dict:
    """One complete tool call: id, type "function", a known name, arguments JSON valid for that tool."""
    evidence = exchange.evidence(call, "tool call")
    require(isinstance(call, dict) and isinstance(call.get("id"), str) and call["id"],
            "a tool call has no id", evidence)
    require(call.get("type") == "function", 'a tool call\'s type is not "function"', evidence)
    function = call.get("function") or {}
    require(function.get("name") in names, f"called {function.get('name')!r}, expected one of {names}", evidence)
    arguments = function.get("arguments")
    require(isinstance(arguments, str), "function.arguments must be a JSON string", evidence)
    try:
        parsed = json.loads(arguments)
    except ValueError:
        require(False, "function.arguments is not valid JSON", evidence)
    problems = [e.message for e in jsonschema.Draft202012Validator(PARAMETERS[function["name"]]).iter_errors(parsed)]
    require(not problems, "arguments violate the tool's parameters: " + "; ".join(problems), evidence)
    return call


def tool_calls_of(exchange, choice: dict) -> list:
    calls = (choice.get("message") or {}).get("tool_calls")
    if choice.get("finish_reason") == "length" and not calls:
        raise Skip(f"the model ran out of {TOOL_MAX_TOKENS} tokens before completing a tool call")
    require(isinstance(calls, list) and calls, "no tool_calls in the message", exchange.evidence(choice))
    return calls


@check(CATEGORY, "MUST", "required",
       'tool_choice="required" yields valid tool calls and finish_reason "tool_calls"')
def required(ctx):
    exchange = tool_request(ctx, "required")
    choice = first_choice(ok_completion(exchange))
    for call in tool_calls_of(exchange, choice):
        verify_call(exchange, call, tuple(PARAMETERS))
    require(choice.get("finish_reason") == "tool_calls",
            f'finish_reason is {choice.get("finish_reason")!r}, expected "tool_calls"',
            exchange.evidence({"finish_reason": choice.get("finish_reason")}))


@check(CATEGORY, "MUST", "named", "tool_choice naming a function calls exactly that function")
def named(ctx):
    exchange = tool_request(ctx, {"type": "function", "function": {"name": "get_time"}})
    choice = first_choice(ok_completion(exchange))
    for call in tool_calls_of(exchange, choice):
        verify_call(exchange, call, ("get_time",))
    # OpenAI itself answers a forced function with "stop"; either is acceptable here.
    require(choice.get("finish_reason") in ("tool_calls", "stop"),
            f'finish_reason is {choice.get("finish_reason")!r}', exchange.evidence(choice))


@check(CATEGORY, "MUST", "none", 'tool_choice="none" yields a plain message with no tool calls')
def none(ctx):
    exchange = tool_request(ctx, "none")
    choice = first_choice(ok_completion(exchange))
    message = choice.get("message") or {}
    require(not message.get("tool_calls"), 'tool calls despite tool_choice="none"', exchange.evidence(message))
    require(isinstance(message.get("content"), str), "no text content", exchange.evidence(message))
    require(choice.get("finish_reason") in ("stop", "length"),
            f'finish_reason is {choice.get("finish_reason")!r}', exchange.evidence(choice))


@check(CATEGORY, "MUST", "auto",
       'tool_choice="auto": tool calls come with finish_reason "tool_calls", text with "stop"/"length"')
def auto(ctx):
    exchange = tool_request(ctx, "auto")
    choice = first_choice(ok_completion(exchange))
    calls = (choice.get("message") or {}).get("tool_calls")
    if calls:
        for call in calls:
            verify_call(exchange, call, tuple(PARAMETERS))
        require(choice.get("finish_reason") == "tool_calls", 'tool calls without finish_reason "tool_calls"',
                exchange.evidence(choice))
    else:
        require(choice.get("finish_reason") in ("stop", "length"),
                f'a text answer with finish_reason {choice.get("finish_reason")!r}', exchange.evidence(choice))


def assemble_stream_calls(exchange, chunks: list[dict]) -> list[dict]:
    """Rebuild tool calls from streamed deltas the way OpenAI clients do: keyed by `index`."""
    calls: dict[int, dict] = {}
    for choice in choice_deltas(chunks, 0):
        for delta in (choice.get("delta") or {}).get("tool_calls") or []:
            evidence = exchange.evidence(delta, "tool_calls delta")
            require(isinstance(delta, dict) and isinstance(delta.get("index"), int),
                    "a streamed tool-call delta has no integer index", evidence)
            function = delta.get("function") or {}
            if delta["index"] not in calls:
                require(isinstance(delta.get("id"), str) and delta.get("type") == "function"
                        and isinstance(function.get("name"), str),
                        "the first delta of a tool call must carry id, type and function.name", evidence)
                calls[delta["index"]] = {"id": delta["id"], "type": "function",
                                         "function": {"name": function["name"], "arguments": ""}}
            calls[delta["index"]]["function"]["arguments"] += function.get("arguments") or ""
    return [calls[index] for index in sorted(calls)]


@check(CATEGORY, "MUST", "stream_deltas",
       "streamed tool calls arrive as deltas with an index; id/type/name first; arguments concatenate")
def stream_deltas(ctx):
    exchange = tool_request(ctx, "required", stream=True)
    chunks = ok_stream(exchange)
    calls = assemble_stream_calls(exchange, chunks)
    reasons = stream_finish_reasons(chunks, 0)
    if not calls and reasons == ["length"]:
        raise Skip(f"the model ran out of {TOOL_MAX_TOKENS} tokens before completing a tool call")
    require(calls, "no tool-call deltas in the stream", exchange.evidence(exchange.data_events[:10]))
    for call in calls:
        verify_call(exchange, call, tuple(PARAMETERS))
    require(reasons == ["tool_calls"], f'stream finish_reason(s) {reasons}, expected ["tool_calls"]',
            exchange.evidence(reasons))


@check(CATEGORY, "SHOULD", "stream_matches_non_stream",
       "at temperature 0 streamed tool calls equal the non-streamed ones")
def stream_matches_non_stream(ctx):
    plain = tool_request(ctx, "required")
    choice = first_choice(ok_completion(plain))
    expected = [(c.get("function") or {}) for c in (choice.get("message") or {}).get("tool_calls") or []]
    exchange = tool_request(ctx, "required", stream=True)
    got = [c["function"] for c in assemble_stream_calls(exchange, ok_stream(exchange))]
    require(got == expected, "streamed tool calls differ from non-streamed ones",
            exchange.evidence(got, f"non-stream: {expected!r}"))


@check(CATEGORY, "MUST", "result_round_trip",
       "a conversation with an assistant tool call and the tool's result is accepted and answered")
def result_round_trip(ctx):
    call = {"id": "call_conformance_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    messages = [{"role": "user", "content": PROMPT},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_conformance_1", "content": '{"temperature_c": 21}'}]
    exchange = ctx.chat_raw(ctx.chat_body(messages=messages, tools=TOOLS))
    choice = first_choice(ok_completion(exchange))
    require(isinstance(choice.get("message"), dict), "no message in the answer", exchange.evidence(choice))


@check(CATEGORY, "SHOULD", "parallel_tool_calls_false",
       "parallel_tool_calls=false is accepted and yields at most one call")
def parallel_tool_calls_false(ctx):
    exchange = tool_request(ctx, "required", parallel_tool_calls=False)
    choice = first_choice(ok_completion(exchange))
    calls = tool_calls_of(exchange, choice)
    require(len(calls) == 1, f"{len(calls)} tool calls with parallel_tool_calls=false", exchange.evidence(calls))


CHECKS = (required, named, none, auto, stream_deltas, stream_matches_non_stream, result_round_trip,
          parallel_tool_calls_false)
