"""A toy OpenAI-compatible server, correct by construction or broken on purpose, to test the suite itself.

The "model" is a character-level echo: every character is one token, and greedy decoding always
produces `TOY_TEXT`. Sampling at temperature > 0 rotates that text by an amount derived from the seed,
so seeds, n, max_tokens, stop strings, logprobs, usage and streaming all have exact, predictable
answers. Structured output and tool calls are produced from the schema (a minimal valid instance).

Each name in `VIOLATIONS` switches on one specific departure from the contract; the tests start the
server with one violation at a time and assert that exactly the checks aimed at it fail.

    python -m conformance.fake_server [--port 8123] [--violate NAME ...]
"""
from __future__ import annotations

import argparse
import itertools
import json
import threading
import time
import uuid
from contextlib import contextmanager
from types import MappingProxyType
from wsgiref.simple_server import WSGIRequestHandler, make_server

import falcon
import interegular

from .fake_responses import RESPONSES_VIOLATIONS, ToyResponseItem, ToyResponses

# Non-ASCII early on, so that even short generations exercise multi-byte logprob bytes.
TOY_TEXT = "Héllo, wörld! Café au lait: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10."
TOY_MODEL = "toy-echo"
CONTEXT_LENGTH = 2048
CREATED = 1_700_000_000

VIOLATIONS = MappingProxyType({
    # semantics
    "usage_total_wrong": "usage.total_tokens is one more than prompt + completion",
    "max_tokens_ignored": "max_tokens and max_completion_tokens are ignored",
    "max_completion_tokens_ignored": "only the max_completion_tokens spelling is ignored",
    "finish_reason_wrong": 'a generation cut by max_tokens reports "stop" instead of "length"',
    "eos_reported_as_length": 'a generation that ends by itself reports "length"',
    "stop_included": "the stop string is left in the output",
    "n_ignored": "n > 1 returns a single choice",
    "greedy_nondeterministic": "temperature 0 gives a different text on every request",
    "seed_ignored": "seed is ignored when sampling",
    "logprob_bytes_wrong": "logprob bytes are one byte per character (wrong for non-ASCII)",
    "top_logprobs_unsorted": "top_logprobs are sorted ascending",
    "model_renamed": 'responses name the model "gpt-3.5-turbo"',
    "model_not_listed": "/models lists another model",
    "content_parts_rejected": "content given as a list of text parts is refused",
    "multi_turn_rejected": "assistant turns in the history are refused",
    "developer_role_rejected": 'the "developer" role is refused',
    "created_millis": "created is in milliseconds",
    "fixed_id": "every completion has the same id",
    "no_legacy_completions": "/completions does not exist",
    # streaming
    "stream_wrong_content_type": "streams are labelled application/json",
    "sse_bad_framing": "the final [DONE] event is not terminated by a blank line",
    "no_done": "streams end without data: [DONE]",
    "chunk_ids_differ": "each chunk has its own id",
    "no_role": "the first delta has no role",
    "finish_reason_repeated": "the finishing chunk is sent twice",
    "usage_every_chunk": "every chunk carries usage, asked for or not",
    "include_usage_ignored": "stream_options.include_usage is ignored",
    "stream_text_differs": "the first content chunk of a stream is sent twice",
    "stream_usage_off_by_one": "streamed usage counts one more completion token",
    "stream_errors_in_band": "an invalid stream request gets a 200 stream with an error event",
    "stream_logprobs_missing": "streams never carry logprobs",
    # errors
    "lenient_validation": "bad requests are accepted (no validation, any model, any key)",
    "wrong_status": "validation errors are 422 instead of 400",
    "error_not_envelope": 'error bodies are {"detail": ...} instead of {"error": {...}}',
    "error_param_missing": "error param and code are always null",
    "error_type_wrong": 'error type is "BadRequestError"',
    # structured output
    "json_schema_ignored": "response_format json_object/json_schema are ignored",
    "json_schema_ignored_in_stream": "response_format is ignored when streaming",
    "text_format_rejected": 'response_format {"type": "text"} is refused',
    # tools
    "tool_delta_no_index": "streamed tool-call deltas lack index",
    "tool_finish_reason_stop": 'tool calls end with finish_reason "stop"',
    "named_tool_ignored": "a named tool_choice calls the first tool instead",
    "tool_choice_none_ignored": 'tool_choice "none" still calls a tool',
    "stream_tool_args_differ": "streamed tool arguments differ from non-streamed ones",
    "tool_messages_rejected": "assistant messages with tool_calls are refused",
    "parallel_calls_always": "parallel_tool_calls=false still gives two calls",
    # extensions
    "samplers_ignored": "top_k and min_p are accepted and ignored",
    "extensions_ignored": "every extension field is accepted and ignored",
    "rejection_unclear": "unknown fields are refused with a 400 that does not name them",
    # schema
    "object_wrong": 'non-stream completions say object "chat_completion"',
    "chunk_object_wrong": 'stream chunks say object "chat.completion"',
    "models_list_malformed": "model objects lack created and owned_by",
    "no_model_retrieve": "/models/{id} does not exist",
    "nullable_fields_omitted": "message.refusal and choice.logprobs are left out",
    "json_as_text_plain": "JSON responses are labelled text/plain",
    # the Responses API (fake_responses.py)
    **RESPONSES_VIOLATIONS,
})

# The violations the brief names as the usual real-world breakages, for a combined "broken" run.
COMMON_BREAKAGES = ("tool_delta_no_index", "usage_every_chunk", "error_not_envelope", "wrong_status",
                    "finish_reason_wrong", "no_done", "max_tokens_ignored", "stop_included",
                    "json_schema_ignored", "n_ignored")

OPENAI_FIELDS = frozenset({"model", "messages", "temperature", "top_p", "max_tokens", "max_completion_tokens", "n",
                 "stream", "stream_options", "stop", "seed", "logprobs", "top_logprobs", "presence_penalty",
                 "frequency_penalty", "logit_bias", "tools", "tool_choice", "parallel_tool_calls",
                 "response_format", "user"})
IMPLEMENTED_EXTENSIONS = frozenset({"top_k", "min_p", "grammar", "enable_thinking", "truncate_sequence"})
UNIMPLEMENTED_EXTENSIONS = frozenset({"repetition_penalty", "dry_multiplier", "dry_base", "dry_allowed_length",
                            "dry_sequence_breakers", "reasoning_effort", "session_id", "enable_code_execution",
                            "agent_permission", "code_execution_permission", "files", "max_tool_rounds",
                            "web_search_options"})
ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


# -- the toy model ---------------------------------------------------------------------------------

def rotate(text: str, amount: int) -> str:
    """`text` rotated left by 1..len-1 characters: never equal to `text` itself."""
    shift = 1 + amount % (len(text) - 1)
    return text[shift:] + text[:shift]


def minimal_instance(schema: dict):
    """The simplest value valid against a (small) JSON schema: first enum, minimum, required keys only."""
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        return {key: minimal_instance(schema["properties"][key]) for key in schema.get("required", [])}
    if kind == "array":
        return [minimal_instance(schema.get("items", {})) for _ in range(schema.get("minItems", 0))]
    if kind == "integer":
        return int(schema.get("minimum", 0))
    if kind == "number":
        return float(schema.get("minimum", 0))
    if kind == "boolean":
        return True
    return "Paris"


def shortest_match(pattern: str) -> str:
    """The shortest (then smallest) string a regex fully matches, by breadth-first search of its DFA."""
    fsm = interegular.parse_pattern(pattern).to_fsm()
    chars = {symbol: min(c for c in group if isinstance(c, str))
             for symbol, group in fsm.alphabet.by_transition.items() if any(isinstance(c, str) for c in group)}
    frontier, seen = [(fsm.initial, "")], {fsm.initial}
    while frontier:
        state, text = frontier.pop(0)
        if state in fsm.finals:
            return text
        for symbol, target in sorted(fsm.map.get(state, {}).items()):
            if symbol in chars and target not in seen:
                seen.add(target)
                frontier.append((target, text + chars[symbol]))
    raise ApiError(400, f"grammar regex {pattern!r} matches nothing", "grammar")


def decode(text: str, max_tokens: int | None, stops: list[str], include_stop: bool) -> tuple[int, str, str]:
    """Emit `text` one character-token at a time: (tokens generated, content, finish_reason)."""
    out = ""
    for position, char in enumerate(text):
        if max_tokens is not None and position >= max_tokens:
            return position, out, "length"
        out += char
        hits = [out.index(stop) for stop in stops if stop in out]
        if hits:
            cut = min(hits)
            matched = next(stop for stop in stops if out.find(stop) == cut)
            return position + 1, out[:cut + len(matched)] if include_stop else out[:cut], "stop"
    return len(text), out, "stop"


# -- the server --------------------------------------------------------------------------------------

class ToyServer:
    """Request handling for one app instance; `violations` picks which rules it breaks."""

    def __init__(self, violations=(), model_id: str = TOY_MODEL, api_key: str | None = None):
        unknown = set(violations) - set(VIOLATIONS)
        assert not unknown, f"unknown violations {unknown}"
        self.violations = frozenset(violations)
        self.model_id = model_id
        self.api_key = api_key
        self.counter = itertools.count(1)     # fresh "randomness" per request, deterministic per run

    def broken(self, name: str) -> bool:
        return name in self.violations

    # -- errors ------------------------------------------------------------------------------------
    def error_body(self, error: ApiError) -> dict:
        if self.broken("error_not_envelope"):
            return {"detail": error.message}
        hide = self.broken("error_param_missing")
        return {"error": {"message": error.message,
                          "type": "BadRequestError" if self.broken("error_type_wrong") else "invalid_request_error",
                          "param": None if hide else error.param, "code": None if hide else error.code}}

    def send_error(self, resp, error: ApiError) -> None:
        resp.status = 422 if self.broken("wrong_status") and error.status == 400 else error.status
        self.send_json(resp, self.error_body(error), status=resp.status)

    def send_json(self, resp, body: dict, status: int = 200) -> None:
        resp.status = status
        resp.content_type = "text/plain" if self.broken("json_as_text_plain") else "application/json"
        resp.text = json.dumps(body)

    def handle_falcon_error(self, req, resp, ex, params) -> None:
        self.send_error(resp, ApiError(ex.status_code if hasattr(ex, "status_code") else 500,
                                       f"{ex.title}: {req.method} {req.path}"))

    def handle_crash(self, req, resp, ex, params) -> None:
        self.send_error(resp, ApiError(500, f"internal error: {type(ex).__name__}: {ex}"))

    # -- validation --------------------------------------------------------------------------------
    def parse(self, req) -> dict:
        if self.api_key and not self.broken("lenient_validation"):
            if req.get_header("Authorization") != f"Bearer {self.api_key}":
                raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")
        raw = req.bounded_stream.read()
        try:
            body = json.loads(raw)
        except ValueError:
            if self.broken("lenient_validation"):
                return {}
            raise ApiError(400, "We could not parse the JSON body of your request.")
        if not isinstance(body, dict):
            raise ApiError(400, "The request body must be a JSON object.")
        return body

    def known_fields(self) -> set[str]:
        fields = OPENAI_FIELDS | IMPLEMENTED_EXTENSIONS
        if self.broken("extensions_ignored"):
            fields |= UNIMPLEMENTED_EXTENSIONS
        return fields

    def validate_chat(self, body: dict) -> None:
        if self.broken("lenient_validation"):
            return
        for name in body:
            if name not in self.known_fields():
                if self.broken("rejection_unclear"):
                    raise ApiError(400, "Invalid request.")
                raise ApiError(400, f"Unrecognized request argument supplied: {name}", name)
        self.validate_model(body)
        messages = body.get("messages")
        if "messages" not in body:
            raise ApiError(400, "Missing required parameter: 'messages'.", "messages", "missing_required_parameter")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "'messages' must be a non-empty array.", "messages")
        for i, message in enumerate(messages):
            self.validate_message(i, message)
        self.validate_sampling(body)
        self.validate_tools(body)
        self.validate_formats(body)
        if len(self.prompt_text(body)) > CONTEXT_LENGTH and not self.extension(body, "truncate_sequence"):
            raise ApiError(400, f"This model's maximum context length is {CONTEXT_LENGTH} tokens.",
                           "messages", "context_length_exceeded")

    def validate_model(self, body: dict) -> None:
        if not isinstance(body.get("model"), str):
            raise ApiError(400, "Missing required parameter: 'model'.", "model", "missing_required_parameter")
        if body["model"] != self.model_id:
            raise ApiError(404, f"The model '{body['model']}' does not exist.", "model", "model_not_found")

    def validate_message(self, i: int, message) -> None:
        where = f"messages[{i}]"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise ApiError(400, f"Invalid role in {where}.", f"{where}.role")
        role, content = message["role"], message.get("content")
        if role == "developer" and self.broken("developer_role_rejected"):
            raise ApiError(400, f"Invalid role in {where}.", f"{where}.role")
        if role == "assistant" and self.broken("multi_turn_rejected"):
            raise ApiError(400, "assistant messages are not supported", f"{where}.role")
        if role == "assistant" and message.get("tool_calls"):
            if self.broken("tool_messages_rejected"):
                raise ApiError(400, "tool_calls are not supported", f"{where}.tool_calls")
            if content is None:
                return
        if role == "tool" and not isinstance(message.get("tool_call_id"), str):
            raise ApiError(400, f"Missing tool_call_id in {where}.", f"{where}.tool_call_id")
        if isinstance(content, list):
            if self.broken("content_parts_rejected"):
                raise ApiError(400, "content must be a string", f"{where}.content")
            if all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                   for p in content):
                return
        if not isinstance(content, str):
            raise ApiError(400, f"Invalid content in {where}.", f"{where}.content")

    def validate_sampling(self, body: dict) -> None:
        def number(name, low, high, integer=False):
            value = body.get(name)
            if value is None:
                return
            kinds = (int,) if integer else (int, float)
            if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
                raise ApiError(400, f"Invalid value for '{name}': expected {low}..{high}.", name)
        number("temperature", 0, 2)
        number("top_p", 0, 1)
        number("max_tokens", 1, 10**6, integer=True)
        number("max_completion_tokens", 1, 10**6, integer=True)
        number("n", 1, 8, integer=True)
        number("presence_penalty", -2, 2)
        number("frequency_penalty", -2, 2)
        number("top_logprobs", 0, 20, integer=True)
        number("seed", -2**63, 2**63, integer=True)
        number("top_k", -1, 10**6, integer=True)
        number("min_p", 0, 1)
        if "stream" in body and not isinstance(body["stream"], bool):
            raise ApiError(400, "'stream' must be a boolean.", "stream")
        bias = body.get("logit_bias") or {}
        if not isinstance(bias, dict) or any(not isinstance(v, (int, float)) or abs(v) > 100 for v in bias.values()):
            raise ApiError(400, "logit_bias values must be within -100..100.", "logit_bias")
        stop = body.get("stop")
        if stop is not None and not isinstance(stop, str) and not (
                isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
            raise ApiError(400, "'stop' must be a string or a list of strings.", "stop")

    def validate_tools(self, body: dict) -> None:
        tools, choice = body.get("tools"), body.get("tool_choice")
        if choice is not None and not tools:
            raise ApiError(400, "tool_choice is only allowed when tools are specified.", "tool_choice")
        if isinstance(choice, dict):
            name = (choice.get("function") or {}).get("name")
            if name not in [t["function"]["name"] for t in tools]:
                raise ApiError(400, f"tool_choice names an unknown function {name!r}.", "tool_choice")
        elif choice is not None and choice not in ("none", "auto", "required"):
            raise ApiError(400, "Invalid tool_choice.", "tool_choice")

    def validate_formats(self, body: dict) -> None:
        fmt = body.get("response_format")
        if fmt is not None:
            kind = fmt.get("type") if isinstance(fmt, dict) else None
            if kind not in ("text", "json_object", "json_schema"):
                raise ApiError(400, f"Invalid response_format type {kind!r}.", "response_format.type")
            if kind == "text" and self.broken("text_format_rejected"):
                raise ApiError(400, "response_format text is not supported.", "response_format")
            if kind == "json_schema" and not isinstance((fmt.get("json_schema") or {}).get("schema"), dict):
                raise ApiError(400, "response_format json_schema needs json_schema.schema.", "response_format")
        grammar = body.get("grammar")
        if grammar is not None and not self.broken("extensions_ignored"):
            if not isinstance(grammar, dict) or grammar.get("type") not in ("regex", "json_schema"):
                raise ApiError(400, "grammar type must be regex or json_schema (lark is not supported).",
                               "grammar")

    # -- generation --------------------------------------------------------------------------------
    def extension(self, body: dict, name: str):
        """The value of an extension field, or None when this server ignores extensions."""
        return None if self.broken("extensions_ignored") else body.get(name)

    def prompt_text(self, body: dict) -> str:
        parts = []
        for message in body.get("messages") or []:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, list):
                content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
            parts.append(f"<{message.get('role') if isinstance(message, dict) else '?'}>{content or ''}")
        if body.get("tools"):
            parts.append(json.dumps(body["tools"]))
        if self.extension(body, "enable_thinking"):
            parts.append("<think>")
        return "".join(parts)

    def prompt_tokens(self, body: dict) -> int:
        return min(len(self.prompt_text(body)), CONTEXT_LENGTH)

    def greedy(self, body: dict) -> bool:
        top_k = None if self.broken("samplers_ignored") else self.extension(body, "top_k")
        min_p = None if self.broken("samplers_ignored") else self.extension(body, "min_p")
        return body.get("temperature", 1.0) == 0 or top_k == 1 or (min_p or 0) >= 1

    def free_text(self, body: dict, index: int) -> str:
        """What the toy model says without constraints for choice `index`."""
        if self.greedy(body):
            return rotate(TOY_TEXT, next(self.counter)) if self.broken("greedy_nondeterministic") else TOY_TEXT
        seed = body.get("seed")
        if seed is None or self.broken("seed_ignored"):
            return rotate(TOY_TEXT, next(self.counter) * 7 + index)
        return rotate(TOY_TEXT, seed * 7919 + index * 104729)

    def constrained_text(self, body: dict, stream: bool) -> str | None:
        """The output a response_format or grammar forces, if any."""
        grammar = self.extension(body, "grammar")
        if isinstance(grammar, dict) and grammar.get("type") == "regex" and isinstance(grammar.get("value"), str):
            return shortest_match(grammar["value"])
        if isinstance(grammar, dict) and isinstance(grammar.get("value"), dict):
            return json.dumps(minimal_instance(grammar["value"]))
        fmt = body.get("response_format")
        if not isinstance(fmt, dict) or self.broken("json_schema_ignored") or (
                stream and self.broken("json_schema_ignored_in_stream")):
            return None
        schema = (fmt.get("json_schema") or {}).get("schema")
        if fmt.get("type") == "json_object":
            return '{"answer": "Hello"}'
        if fmt.get("type") == "json_schema" and isinstance(schema, dict):
            return json.dumps(minimal_instance(schema))
        return None

    def tool_calls(self, body: dict, stream: bool) -> list[dict]:
        tools, choice = body.get("tools") or [], body.get("tool_choice", "auto" if body.get("tools") else "none")
        if not tools or (choice == "none" and not self.broken("tool_choice_none_ignored")):
            return []
        prompt = self.prompt_text({"messages": body.get("messages")})
        if choice == "auto" and "weather" not in prompt:
            return []
        chosen = [tools[0]]
        if isinstance(choice, dict) and not self.broken("named_tool_ignored"):
            chosen = [t for t in tools if t["function"]["name"] == choice["function"]["name"]]
        if self.broken("parallel_calls_always") and not isinstance(choice, dict) and len(tools) > 1:
            chosen = tools[:2]
        calls = []
        for tool in chosen:
            arguments = minimal_instance(tool["function"].get("parameters") or {"type": "object"})
            if stream and self.broken("stream_tool_args_differ"):
                arguments = {key: "Lyon" for key in arguments}
            calls.append({"id": f"call_{uuid.uuid4().hex[:12]}", "type": "function",
                          "function": {"name": tool["function"]["name"], "arguments": json.dumps(arguments)}})
        return calls

    def generate(self, body: dict, stream: bool = False) -> list[dict]:
        """One dict per choice: content, tokens generated, finish_reason, tool_calls."""
        n = 1 if self.broken("n_ignored") else body.get("n") or 1
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        if self.broken("max_completion_tokens_ignored"):
            max_tokens = body.get("max_tokens")
        if self.broken("max_tokens_ignored"):
            max_tokens = None
        stop = body.get("stop") or []
        stops = [stop] if isinstance(stop, str) else list(stop)
        choices = []
        for index in range(n):
            calls = self.tool_calls(body, stream)
            if calls:
                tokens = sum(len(call["function"]["arguments"]) for call in calls)
                finish = "stop" if self.broken("tool_finish_reason_stop") else "tool_calls"
                choices.append({"index": index, "content": None, "tokens": tokens, "finish_reason": finish,
                                "tool_calls": calls})
                continue
            text = self.constrained_text(body, stream) or self.free_text(body, index)
            tokens, content, finish = decode(text, max_tokens, stops, self.broken("stop_included"))
            if finish == "length" and self.broken("finish_reason_wrong"):
                finish = "stop"
            elif finish == "stop" and tokens == len(text) and self.broken("eos_reported_as_length"):
                finish = "length"
            choices.append({"index": index, "content": content, "tokens": tokens, "finish_reason": finish,
                            "tool_calls": []})
        return choices

    def usage(self, body: dict, choices: list[dict], extra: int = 0) -> dict:
        prompt = self.prompt_tokens(body)
        completion = sum(choice["tokens"] for choice in choices) + extra
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion + (1 if self.broken("usage_total_wrong") else 0)}

    def logprob(self, char: str, top: int) -> dict:
        def entry(token, value):
            data = [ord(token) % 256] if self.broken("logprob_bytes_wrong") else list(token.encode("utf-8"))
            return {"token": token, "logprob": value, "bytes": data}
        alternatives = [entry(char, -0.25), entry("#" if char == "~" else "~", -2.0)][:top]
        if self.broken("top_logprobs_unsorted"):
            alternatives.reverse()
        return {**entry(char, -0.25), "top_logprobs": alternatives}

    # -- responses ---------------------------------------------------------------------------------
    def common(self, kind: str) -> dict:
        created = int(time.time())
        return {"id": "chatcmpl-fixed" if self.broken("fixed_id") else f"chatcmpl-{uuid.uuid4().hex}",
                "object": kind, "created": created * 1000 if self.broken("created_millis") else created,
                "model": "gpt-3.5-turbo" if self.broken("model_renamed") else self.model_id}

    def chat_completion(self, body: dict) -> dict:
        choices = self.generate(body)
        out = []
        for choice in choices:
            message = {"role": "assistant", "content": choice["content"], "refusal": None}
            if choice["tool_calls"]:
                message["tool_calls"] = choice["tool_calls"]
            logprobs = ({"content": [self.logprob(c, body.get("top_logprobs") or 0) for c in choice["content"]],
                         "refusal": None} if body.get("logprobs") and choice["content"] is not None else None)
            item = {"index": choice["index"], "message": message, "logprobs": logprobs,
                    "finish_reason": choice["finish_reason"]}
            if self.broken("nullable_fields_omitted"):
                del message["refusal"]
                if logprobs is None:
                    del item["logprobs"]
            out.append(item)
        kind = "chat_completion" if self.broken("object_wrong") else "chat.completion"
        return {**self.common(kind), "choices": out, "usage": self.usage(body, choices)}

    def chat_chunks(self, body: dict):
        """The JSON chunks of a streamed chat completion, in order."""
        choices = self.generate(body, stream=True)
        base = self.common("chat.completion" if self.broken("chunk_object_wrong") else "chat.completion.chunk")
        usage = self.usage(body, choices, extra=1 if self.broken("stream_usage_off_by_one") else 0)
        include_usage = ((body.get("stream_options") or {}).get("include_usage")
                         and not self.broken("include_usage_ignored"))

        def chunk(index: int, delta: dict, finish=None, logprobs=None) -> dict:
            data = {**base, "choices": [{"index": index, "delta": delta, "logprobs": logprobs,
                                         "finish_reason": finish}]}
            if self.broken("chunk_ids_differ"):
                data["id"] = f"chatcmpl-{uuid.uuid4().hex}"
            if self.broken("usage_every_chunk"):
                data["usage"] = usage
            return data

        for choice in choices:
            index = choice["index"]
            yield chunk(index, {"content": ""} if self.broken("no_role") else {"role": "assistant", "content": ""})
            for number, call in enumerate(choice["tool_calls"]):
                head = {"index": number, "id": call["id"], "type": "function",
                        "function": {"name": call["function"]["name"], "arguments": ""}}
                pieces = [call["function"]["arguments"][i:i + 5]
                          for i in range(0, len(call["function"]["arguments"]), 5)]
                deltas = [head] + [{"index": number, "function": {"arguments": piece}} for piece in pieces]
                for delta in deltas:
                    if self.broken("tool_delta_no_index"):
                        delta = {key: value for key, value in delta.items() if key != "index"}
                    yield chunk(index, {"tool_calls": [delta]})
            content = choice["content"] or ""
            for position, char in enumerate(content):
                logprobs = None
                if body.get("logprobs") and not self.broken("stream_logprobs_missing"):
                    logprobs = {"content": [self.logprob(char, body.get("top_logprobs") or 0)], "refusal": None}
                repeats = 2 if position == 0 and self.broken("stream_text_differs") else 1
                for _ in range(repeats):
                    yield chunk(index, {"content": char}, logprobs=logprobs)
            for _ in range(2 if self.broken("finish_reason_repeated") else 1):
                yield chunk(index, {}, finish=choice["finish_reason"])
        if include_usage:
            yield {**base, "choices": [], "usage": usage}

    def sse(self, chunks):
        yield b": keep-alive\n\n"               # a comment: clients must tolerate it
        for data in chunks:
            yield f"data: {json.dumps(data)}\n\n".encode()
        if not self.broken("no_done"):
            yield b"data: [DONE]\n" if self.broken("sse_bad_framing") else b"data: [DONE]\n\n"

    def start_stream(self, resp, chunks) -> None:
        resp.status = 200
        resp.content_type = "application/json" if self.broken("stream_wrong_content_type") else "text/event-stream"
        resp.stream = self.sse(chunks)

    # -- routes ------------------------------------------------------------------------------------
    def on_post_chat(self, req, resp) -> None:
        body = {}
        try:
            body = self.parse(req)
            self.validate_chat(body)
        except ApiError as error:
            if body.get("stream") is True and self.broken("stream_errors_in_band"):
                return self.start_stream(resp, iter([self.error_body(error)]))
            return self.send_error(resp, error)
        if body.get("stream") is True:
            return self.start_stream(resp, self.chat_chunks(body))
        self.send_json(resp, self.chat_completion(body))

    def on_post_completions(self, req, resp) -> None:
        if self.broken("no_legacy_completions"):
            raise falcon.HTTPNotFound()
        try:
            body = self.parse(req)
            if not isinstance(body.get("prompt"), str):
                raise ApiError(400, "'prompt' must be a string.", "prompt")
            self.validate_model(body)
            chat_like = {key: value for key, value in body.items() if key != "prompt"}
            chat_like["messages"] = [{"role": "user", "content": body["prompt"]}]
            self.validate_sampling(chat_like)
        except ApiError as error:
            return self.send_error(resp, error)
        choices = self.generate(chat_like)
        self.send_json(resp, {**self.common("text_completion"),
                              "choices": [{"index": c["index"], "text": c["content"], "logprobs": None,
                                           "finish_reason": c["finish_reason"]} for c in choices],
                              "usage": self.usage(chat_like, choices)})

    def model_object(self, model_id: str) -> dict:
        if self.broken("models_list_malformed"):
            return {"id": model_id, "object": "model"}
        return {"id": model_id, "object": "model", "created": CREATED, "owned_by": "conformance",
                "context_length": CONTEXT_LENGTH}

    def on_get_models(self, req, resp) -> None:
        listed = "some-other-model" if self.broken("model_not_listed") else self.model_id
        self.send_json(resp, {"object": "list", "data": [self.model_object(listed)]})

    def on_get_model(self, req, resp, model_id: str) -> None:
        if model_id != self.model_id or self.broken("no_model_retrieve"):
            return self.send_error(resp, ApiError(404, f"The model '{model_id}' does not exist.", "model",
                                                  "model_not_found"))
        self.send_json(resp, self.model_object(model_id))


class _Route:
    """Adapts one ToyServer method to a Falcon resource."""

    def __init__(self, get=None, post=None):
        if get:
            self.on_get = get
        if post:
            self.on_post = post


def create_app(violations=(), model_id: str = TOY_MODEL, api_key: str | None = None) -> falcon.App:
    server = ToyServer(violations, model_id, api_key)
    app = falcon.App()
    app.add_route("/v1/chat/completions", _Route(post=server.on_post_chat))
    app.add_route("/v1/completions", _Route(post=server.on_post_completions))
    app.add_route("/v1/models", _Route(get=server.on_get_models))
    app.add_route("/v1/models/{model_id}", _Route(get=server.on_get_model))
    responses = ToyResponses(server)
    app.add_route("/v1/responses", _Route(post=responses.on_post))
    app.add_route("/v1/responses/{response_id}", ToyResponseItem(responses))
    app.add_error_handler(Exception, server.handle_crash)
    app.add_error_handler(falcon.HTTPError, server.handle_falcon_error)
    return app


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args) -> None:
        pass


@contextmanager
def serving(app, host: str = "127.0.0.1", port: int = 0):
    """Serve `app` in a background thread; yields the base URL (with /v1)."""
    server = make_server(host, port, app, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_port}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="conformance.fake_server", description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=8123)
    p.add_argument("--violate", nargs="*", default=[], choices=sorted(VIOLATIONS), metavar="NAME",
                   help="violations to switch on: " + ", ".join(sorted(VIOLATIONS)))
    p.add_argument("--common-breakages", action="store_true", help="switch on the usual real-world breakages")
    args = p.parse_args(argv)
    violations = set(args.violate) | (set(COMMON_BREAKAGES) if args.common_breakages else set())
    with serving(create_app(violations), port=args.port) as url:
        print(f"toy server at {url} (model {TOY_MODEL!r}), violating: {sorted(violations) or 'nothing'}")
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
