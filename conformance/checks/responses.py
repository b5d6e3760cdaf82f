"""The Responses API (`POST /responses`, `GET | DELETE /responses/{id}`): objects, events, their order, ids.

Every Response body is validated against OpenAI's `Response` schema and every stream event against the
event schema its `type` names (schemas/ResponseStreamEvent.json), so a wrong field is found wherever it is.
A server without the Responses API fails only `responses.available` (a SHOULD: the API is newer than Chat
Completions); the other checks skip there.
"""
from __future__ import annotations

import json
from functools import lru_cache

import jsonschema

from ..check import Skip, check, require
from ..client import Exchange
from ..context import DEFAULT_PROMPT
from ..expect import error_body, ok_json
from ..schemas import load, validate

CATEGORY = "responses"
MAX_OUTPUT = 16                              # OpenAI's smallest max_output_tokens
LONG_OUTPUT = 64
LIFECYCLE = ("response.created", "response.in_progress", "response.completed", "response.incomplete",
             "response.failed")
ENDINGS = ("response.completed", "response.incomplete", "response.failed")
WEATHER = {"type": "function", "name": "get_weather", "description": "Get the current weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"], "additionalProperties": False}, "strict": True}
FORCED = {"type": "function", "name": "get_weather"}
WEATHER_PROMPT = "What is the weather like in Paris right now?"
PICK = {"type": "object", "additionalProperties": False, "required": ["colour", "count"],
        "properties": {"colour": {"enum": ["teal", "mauve"]}, "count": {"type": "integer", "minimum": 3,
                                                                        "maximum": 7}}}
EVIDENCE_LIMIT = 3


# ---- requests ----

def response_body(ctx, prompt: str = DEFAULT_PROMPT, **fields) -> dict:
    body = {"model": ctx.model, "input": prompt, "max_output_tokens": MAX_OUTPUT, "temperature": 0}
    body.update(fields)
    return {key: value for key, value in body.items() if value is not None}


def create(ctx, prompt: str = DEFAULT_PROMPT, *, fresh: bool = False, **fields) -> Exchange:
    return ctx.send("POST", "responses", response_body(ctx, prompt, **fields), fresh=fresh)


def available(ctx) -> Exchange:
    """The plain request; Skip when the server has no Responses API (only `responses.available` fails then)."""
    exchange = create(ctx)
    if exchange.status in (404, 405):
        raise Skip(f"no Responses API here (POST /responses answered {exchange.status})")
    return exchange


def ok_response(exchange: Exchange) -> dict:
    """A 200 JSON object (`response_schema` judges its shape)."""
    return ok_json(exchange)


def output_text(response: dict) -> str:
    """The text of the output's message items (what the SDK's `output_text` joins)."""
    return "".join(part.get("text") or "" for item in response.get("output") or () if isinstance(item, dict)
                   and item.get("type") == "message" for part in item.get("content") or ()
                   if isinstance(part, dict) and part.get("type") == "output_text")


def events_of(exchange: Exchange) -> list[dict]:
    """A 200 event stream's events (their JSON data, [DONE] tolerated and left out)."""
    require(exchange.status == 200, f"expected HTTP 200 for a stream, got {exchange.status}", exchange.evidence())
    require(exchange.content_type == "text/event-stream", f"Content-Type is {exchange.headers.get('content-type')!r}",
            exchange.evidence(dict(exchange.headers), "response headers"))
    events = exchange.chunks
    require(events and all(isinstance(e, dict) and isinstance(e.get("type"), str) for e in events),
            "an event is not a JSON object with a `type`", exchange.evidence(exchange.data_events[:5]))
    return events


def stream(ctx, prompt: str = DEFAULT_PROMPT, **fields) -> tuple[Exchange, list[dict]]:
    exchange = ctx.send("POST", "responses", response_body(ctx, prompt, stream=True, **fields))
    return exchange, events_of(exchange)


@lru_cache(maxsize=None)
def event_schemas() -> dict[str, str]:
    """Event type → the name of its schema in ResponseStreamEvent.json's `$defs`."""
    definitions = load("ResponseStreamEvent")["$defs"]
    union = definitions["ResponseStreamEvent"]["anyOf"]
    names = [branch["$ref"].rsplit("/", 1)[1] for branch in union if "$ref" in branch]
    return {definitions[name]["properties"]["type"]["enum"][0]: name for name in names}


def schema_problems(name: str, instance) -> list[str]:
    return [f"{e.path}: {e.message[:200]}" for e in validate(name, instance) if not e.soft]


def final_response(exchange: Exchange, events: list[dict]) -> dict:
    last = events[-1]
    require(last.get("type") in ENDINGS and isinstance(last.get("response"), dict),
            f"the stream does not end with one of {', '.join(ENDINGS)}", exchange.evidence(last, "last event"))
    return last["response"]


def items_by_kind(response: dict, kind: str) -> list[dict]:
    return [item for item in response.get("output") or () if isinstance(item, dict) and item.get("type") == kind]


# ---- checks ----

@check(CATEGORY, "SHOULD", "available", "POST /responses answers a Response (the API OpenAI's SDKs now default to)")
def responses_available(ctx):
    exchange = create(ctx)
    require(exchange.status == 200, f"POST /responses answered {exchange.status}", exchange.evidence())
    ok_response(exchange)


@check(CATEGORY, "MUST", "response_schema", "a Response body follows OpenAI's Response schema")
def response_schema(ctx):
    exchange = available(ctx)
    body = ok_response(exchange)
    problems = schema_problems("Response", body)
    require(not problems, "; ".join(problems[:8]), exchange.evidence(body))
    require(body.get("object") == "response", f"object is {body.get('object')!r}, not \"response\"",
            exchange.evidence({"object": body.get("object")}))
    require(body.get("status") in ("completed", "incomplete"), f"status {body.get('status')!r} for a finished "
            "response", exchange.evidence({"status": body.get("status")}))


@check(CATEGORY, "MUST", "output_text", "the output holds a message item with an output_text part")
def response_output_text(ctx):
    exchange = available(ctx)
    body = ok_response(exchange)
    messages = items_by_kind(body, "message")
    require(messages and output_text(body), "no message item with output_text in the output",
            exchange.evidence(body.get("output")))
    require(all(item.get("role") == "assistant" and isinstance(item.get("id"), str) for item in messages),
            "a message item has no id or is not the assistant's", exchange.evidence(messages))


@check(CATEGORY, "MUST", "usage", "usage has input_tokens and output_tokens, and total_tokens is their sum")
def response_usage(ctx):
    exchange = available(ctx)
    usage = ok_response(exchange).get("usage")
    evidence = exchange.evidence(usage, "usage")
    require(isinstance(usage, dict), "no usage object", evidence)
    counts = [usage.get(key) for key in ("input_tokens", "output_tokens", "total_tokens")]
    require(all(isinstance(c, int) and c > 0 for c in counts), "a token count is missing or not positive", evidence)
    require(counts[2] == counts[0] + counts[1], f"total_tokens {counts[2]} != {counts[0]} + {counts[1]}", evidence)


@check(CATEGORY, "MUST", "max_output_tokens",
       'output cut by max_output_tokens: status "incomplete", reason max_output_tokens, no more output tokens')
def max_output_tokens(ctx):
    exchange = available(ctx)
    body = ok_response(exchange)
    usage = body.get("usage") or {}
    evidence = exchange.evidence({key: body.get(key) for key in ("status", "incomplete_details", "usage")})
    require(isinstance(usage.get("output_tokens"), int) and usage["output_tokens"] <= MAX_OUTPUT,
            f"{usage.get('output_tokens')} output tokens with max_output_tokens {MAX_OUTPUT}", evidence)
    if usage["output_tokens"] < MAX_OUTPUT:
        raise Skip("the model ended its answer before the limit")
    require(body.get("status") == "incomplete" and (body.get("incomplete_details") or {}).get("reason")
            == "max_output_tokens", "a cut-off response is not incomplete with reason max_output_tokens", evidence)


@check(CATEGORY, "MUST", "stream_events",
       "a stream's events follow their schemas, numbered one by one, from response.created to its ending")
def stream_events(ctx):
    available(ctx)
    exchange, events = stream(ctx)
    schemas, bad = event_schemas(), []
    for event in events:
        name = schemas.get(event["type"])
        problems = schema_problems(f"ResponseStreamEvent#{name}" if name else "ResponseStreamEvent", event)
        if problems:
            bad.append(exchange.evidence(event, "; ".join(problems[:4])))
    require(not bad, f"{len(bad)} of {len(events)} events violate their schema", *bad[:EVIDENCE_LIMIT])
    named = [(e.event, json.loads(e.data).get("type")) for e in exchange.stream.events
             if e.event is not None and e.data.strip() != "[DONE]"]
    wrong = [pair for pair in named if pair[0] != pair[1]]
    require(not wrong, "an event's `event:` name differs from its type", exchange.evidence(wrong[:3]))
    numbers = [e.get("sequence_number") for e in events]
    first = numbers[0] if isinstance(numbers[0], int) else 0
    require(numbers == list(range(first, first + len(numbers))), "sequence_number does not count up one by one",
            exchange.evidence(numbers, "sequence numbers"))
    require(events[0]["type"] == "response.created", f"the first event is {events[0]['type']}",
            exchange.evidence(events[0]))
    final_response(exchange, events)
    ids = {e["response"].get("id") for e in events if e["type"] in LIFECYCLE and isinstance(e.get("response"), dict)}
    require(len(ids) == 1, "the lifecycle events name different responses", exchange.evidence(sorted(map(str, ids))))


def item_order_problems(events: list[dict]) -> list[str]:
    """Each item announced (output_item.added) before its parts and deltas, a part added before its deltas,
    every `done` repeating what the deltas built, the item done last; item ids and indexes consistent."""
    items, parts, texts, problems = {}, set(), {}, []
    for event in events:
        kind, index = event["type"], event.get("output_index")
        if kind == "response.output_item.added":
            if index in items:
                problems.append(f"output_index {index} added twice")
            items[index] = {"id": (event.get("item") or {}).get("id"), "done": False, "arguments": ""}
            continue
        if kind in LIFECYCLE or kind == "error":
            continue
        item = items.get(index)
        if item is None or item["done"]:
            problems.append(f"{kind} for output_index {index}, which is not open")
            continue
        if "item_id" in event and event["item_id"] != item["id"]:
            problems.append(f"{kind} names item {event['item_id']}, output_index {index} is {item['id']}")
        key = (index, event.get("content_index"))
        if kind == "response.content_part.added":
            parts.add(key)
            texts[key] = ""
        elif kind in ("response.output_text.delta", "response.reasoning_text.delta"):
            if key not in parts:
                problems.append(f"{kind} before content_part.added for {key}")
            texts[key] = texts.get(key, "") + (event.get("delta") or "")
        elif kind in ("response.output_text.done", "response.reasoning_text.done"):
            if event.get("text") != texts.get(key, ""):
                problems.append(f"{kind} text differs from its deltas at {key}")
        elif kind == "response.function_call_arguments.delta":
            item["arguments"] += event.get("delta") or ""
        elif kind == "response.function_call_arguments.done":
            if event.get("arguments") != item["arguments"]:
                problems.append(f"function_call_arguments.done differs from its deltas at {index}")
        elif kind == "response.output_item.done":
            item["done"] = True
            done = event.get("item") or {}
            if done.get("id") != item["id"]:
                problems.append(f"output_item.done at {index} is item {done.get('id')}, added as {item['id']}")
            if done.get("type") == "function_call" and done.get("arguments") != item["arguments"]:
                problems.append(f"output_item.done's arguments differ from the deltas at {index}")
            if done.get("type") == "message" and output_text({"output": [done]}) != texts.get((index, 0), ""):
                problems.append(f"output_item.done's text differs from the deltas at {index}")
    problems += [f"output_index {index} never done" for index, item in items.items() if not item["done"]]
    return problems


@check(CATEGORY, "MUST", "stream_item_order",
       "items are added before their parts and deltas and done after them, each done repeating its deltas")
def stream_item_order(ctx):
    available(ctx)
    exchange, events = stream(ctx)
    problems = item_order_problems(events)
    require(not problems, "; ".join(problems[:5]), exchange.evidence([e["type"] for e in events], "event types"))


@check(CATEGORY, "MUST", "stream_matches_final",
       "the streamed text equals the final response's, and the non-streamed one at temperature 0")
def stream_matches_final(ctx):
    plain = ok_response(available(ctx))
    exchange, events = stream(ctx)
    streamed = "".join(e.get("delta") or "" for e in events if e["type"] == "response.output_text.delta")
    final = output_text(final_response(exchange, events))
    require(streamed == final, "the deltas differ from the final response's text",
            exchange.evidence({"deltas": streamed, "final": final}))
    if streamed != output_text(plain):
        again = ok_response(create(ctx, fresh=True))
        if output_text(again) != output_text(plain):
            raise Skip("two identical requests at temperature 0 gave different texts; cannot compare")
        require(False, "the streamed text differs from the non-streamed one",
                exchange.evidence({"stream": streamed, "non_stream": output_text(plain)}))


@check(CATEGORY, "MUST", "json_schema", "text.format json_schema (strict) gives JSON valid against the schema")
def json_schema(ctx):
    available(ctx)
    fmt = {"type": "json_schema", "name": "pick", "schema": PICK, "strict": True}
    exchange = create(ctx, "Pick a colour and a count, as JSON.", text={"format": fmt}, max_output_tokens=LONG_OUTPUT)
    text = output_text(ok_response(exchange))
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    require(value is not None and jsonschema.Draft202012Validator(PICK).is_valid(value),
            "the output is not JSON valid against the schema", exchange.evidence({"output_text": text}))


def forced_call(ctx, **fields) -> Exchange:
    return ctx.send("POST", "responses", response_body(ctx, WEATHER_PROMPT, tools=[WEATHER], tool_choice=FORCED,
                                                       max_output_tokens=LONG_OUTPUT, **fields))


def verify_function_call(exchange: Exchange, item: dict) -> None:
    evidence = exchange.evidence(item, "function_call item")
    require(isinstance(item.get("call_id"), str) and item["call_id"], "the call has no call_id", evidence)
    require(item.get("name") == "get_weather", f"called {item.get('name')!r}, not get_weather", evidence)
    try:
        arguments = json.loads(item.get("arguments"))
    except (TypeError, ValueError):
        arguments = None
    require(jsonschema.Draft202012Validator(WEATHER["parameters"]).is_valid(arguments),
            "the arguments are not JSON valid for the function's parameters", evidence)


@check(CATEGORY, "MUST", "function_call", "a forced function tool gives a function_call item with valid arguments")
def function_call(ctx):
    available(ctx)
    exchange = forced_call(ctx)
    calls = items_by_kind(ok_response(exchange), "function_call")
    require(len(calls) >= 1, "no function_call item in the output", exchange.evidence(exchange.json.get("output")))
    verify_function_call(exchange, calls[0])


@check(CATEGORY, "MUST", "function_call_stream",
       "a streamed function call: its item, arguments deltas that add up to .done, then output_item.done")
def function_call_stream(ctx):
    available(ctx)
    exchange = forced_call(ctx, stream=True)
    events = events_of(exchange)
    added = [e for e in events if e["type"] == "response.output_item.added"
             and (e.get("item") or {}).get("type") == "function_call"]
    require(added, "no function_call item was added", exchange.evidence([e["type"] for e in events]))
    problems = item_order_problems(events)
    require(not problems, "; ".join(problems[:5]), exchange.evidence([e["type"] for e in events], "event types"))
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"
            and (e.get("item") or {}).get("type") == "function_call"]
    verify_function_call(exchange, done[0])


@check(CATEGORY, "MUST", "function_call_output",
       "function_call and function_call_output input items (a tool round trip) are accepted")
def function_call_output(ctx):
    available(ctx)
    items = [{"role": "user", "content": WEATHER_PROMPT},
             {"type": "function_call", "call_id": "call_conformance1", "name": "get_weather",
              "arguments": '{"city": "Paris"}'},
             {"type": "function_call_output", "call_id": "call_conformance1", "output": '{"celsius": 21}'}]
    exchange = ctx.send("POST", "responses", response_body(ctx, items, tools=[WEATHER]))
    ok_response(exchange)


@check(CATEGORY, "SHOULD", "store_retrieve",
       "a stored response can be retrieved by id and deleted, after which it is gone (404)")
def store_retrieve(ctx):
    available(ctx)
    created = create(ctx, store=True, fresh=True)
    body = ok_response(created)
    path = f"responses/{body.get('id')}"
    got = ctx.send("GET", path, fresh=True)
    require(got.status == 200 and got.is_json and isinstance(got.json, dict) and got.json.get("id") == body["id"]
            and got.json.get("output") == body.get("output"), "GET does not return the stored response",
            got.evidence())
    deleted = ctx.send("DELETE", path, fresh=True)
    require(deleted.status == 200 and deleted.is_json and isinstance(deleted.json, dict)
            and deleted.json.get("deleted") is True and deleted.json.get("id") == body["id"],
            "DELETE does not answer {id, deleted: true}", deleted.evidence())
    gone = ctx.send("GET", path, fresh=True)
    require(gone.status == 404, f"a deleted response still answers {gone.status}", gone.evidence())
    error_body(gone)


@check(CATEGORY, "SHOULD", "previous_response_id",
       "previous_response_id continues a stored response: its conversation is part of the new input")
def previous_response_id(ctx):
    available(ctx)
    first = ok_response(create(ctx, store=True, fresh=True))
    follow_up = "And now count backwards."
    alone = ok_response(create(ctx, follow_up))
    exchange = create(ctx, follow_up, previous_response_id=first.get("id"), fresh=True)
    continued = ok_response(exchange)
    before, after = ((alone.get("usage") or {}).get("input_tokens"), (continued.get("usage") or {}).get(
        "input_tokens"))
    require(isinstance(before, int) and isinstance(after, int) and after > before,
            f"input_tokens {after} with the previous response, {before} without: the history was not used",
            exchange.evidence({"usage": continued.get("usage"), "previous_response_id": first.get("id")}))


def bad_request(ctx) -> Exchange:
    return ctx.send("POST", "responses", response_body(ctx, max_output_tokens="many"))


@check(CATEGORY, "MUST", "invalid_request", "an invalid request is a 400 with OpenAI's error envelope")
def invalid_request(ctx):
    available(ctx)
    exchange = bad_request(ctx)
    require(exchange.status == 400, f"max_output_tokens \"many\" answered {exchange.status}", exchange.evidence())
    error_body(exchange)


@check(CATEGORY, "SHOULD", "error_param", "the 400 of an invalid field names it in `param`")
def error_param(ctx):
    available(ctx)
    exchange = bad_request(ctx)
    if exchange.status != 400:
        raise Skip("the invalid request was not refused")
    error = error_body(exchange)
    require(error.get("param") == "max_output_tokens", f"param is {error.get('param')!r}",
            exchange.evidence(error))


CHECKS = (responses_available, response_schema, response_output_text, response_usage, max_output_tokens,
          stream_events, stream_item_order, stream_matches_final, json_schema, function_call, function_call_stream,
          function_call_output, store_retrieve, previous_response_id, invalid_request, error_param)
