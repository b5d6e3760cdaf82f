"""The toy server's Responses API (`POST /v1/responses`, `GET | DELETE /v1/responses/{id}`), correct by
construction or broken on purpose by the violations in `RESPONSES_VIOLATIONS`.

It answers with the toy model of fake_server.py (greedy text `TOY_TEXT`, one character a token; JSON and
function arguments as the schema's minimal instance), and keeps its own error envelopes and content types,
so that the Chat Completions violations never touch it and each violation here breaks one rule of this API.
"""
from __future__ import annotations

import json
import time
import uuid
from types import MappingProxyType

RESPONSES_VIOLATIONS = MappingProxyType({
    "responses_missing": "/responses does not exist",
    "response_object_wrong": 'Response objects say object "chat.completion"',
    "response_usage_wrong": "Response usage.total_tokens is one more than input + output",
    "response_role_wrong": 'message items have the role "model"',
    "max_output_tokens_ignored": "max_output_tokens is ignored",
    "response_no_created": "streams start without response.created",
    "response_sequence_gaps": "sequence_number skips every other number",
    "response_delta_before_part": "output_text deltas come before their content_part.added",
    "response_stream_text_differs": "the first text delta of a stream is sent twice",
    "response_text_format_ignored": "text.format is ignored",
    "response_tools_ignored": "function tools are ignored",
    "function_call_output_rejected": "function_call_output input items are refused",
    "response_not_stored": "responses are never stored (GET answers 404)",
    "previous_response_ignored": "previous_response_id is accepted and ignored",
    "responses_lenient": "invalid Responses requests are accepted",
    "response_error_param_missing": "Responses errors have a null param",
})


class ToyResponses:
    """The routes of one toy app; `server` is its ToyServer (violations, API key)."""

    def __init__(self, server):
        self.server = server
        self.stored: dict[str, tuple[dict, str]] = {}     # id → (response, its conversation's text)

    def broken(self, name: str) -> bool:
        return self.server.broken(name)

    # -- answers -----------------------------------------------------------------------------------
    def send(self, resp, body: dict, status: int = 200) -> None:
        resp.status = status
        resp.content_type = "application/json"
        resp.text = json.dumps(body)

    def fail(self, resp, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        param = None if self.broken("response_error_param_missing") else param
        self.send(resp, {"error": {"message": message, "type": "invalid_request_error", "param": param,
                                   "code": code}}, status)

    # -- the request -------------------------------------------------------------------------------
    def problem(self, req, body) -> tuple[int, str, str | None] | None:
        """What is wrong with a request, as (status, message, param); None when nothing is."""
        if self.server.api_key and req.get_header("Authorization") != f"Bearer {self.server.api_key}":
            return 401, "Incorrect API key provided.", None
        if not isinstance(body, dict):
            return 400, "The request body must be a JSON object.", None
        if body.get("model") != self.server.model_id:
            return 404, f"The model '{body.get('model')}' does not exist.", "model"
        limit = body.get("max_output_tokens")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
            if not self.broken("responses_lenient"):
                return 400, "Invalid value for 'max_output_tokens': expected an integer >= 1.", "max_output_tokens"
        for i, item in enumerate(body.get("input") if isinstance(body.get("input"), list) else ()):
            if item.get("type") == "function_call_output" and self.broken("function_call_output_rejected"):
                return 400, "function_call_output items are not supported.", f"input[{i}]"
        previous = body.get("previous_response_id")
        if previous is not None and previous not in self.stored:
            return 400, f"Previous response with id '{previous}' not found.", "previous_response_id"
        return None

    def conversation(self, body: dict) -> str:
        """The input as text (the toy's prompt), with the stored conversation it continues first."""
        items = body["input"] if isinstance(body["input"], list) else [{"role": "user", "content": body["input"]}]
        text = "".join(json.dumps(item) for item in items) + json.dumps(body.get("tools") or [])
        previous = body.get("previous_response_id")
        if previous is not None and not self.broken("previous_response_ignored"):
            text = self.stored[previous][1] + text
        return text

    # -- generation --------------------------------------------------------------------------------
    def output(self, body: dict) -> tuple[list[dict], int, bool]:
        """(output items, output tokens, cut off by max_output_tokens)."""
        from .fake_server import TOY_TEXT, minimal_instance       # the toy model (imported late: no cycle)
        tools = [] if self.broken("response_tools_ignored") else body.get("tools") or []
        choice = body.get("tool_choice")
        if tools and choice not in (None, "none", "auto"):
            name = choice.get("name") if isinstance(choice, dict) else tools[0]["name"]
            tool = next(t for t in tools if t["name"] == name)
            arguments = json.dumps(minimal_instance(tool.get("parameters") or {"type": "object"}))
            call = {"id": f"fc_{uuid.uuid4().hex}", "type": "function_call", "status": "completed",
                    "call_id": f"call_{uuid.uuid4().hex[:12]}", "name": tool["name"], "arguments": arguments}
            return [call], len(arguments), False
        fmt = (body.get("text") or {}).get("format") or {}
        text = TOY_TEXT
        if fmt.get("type") == "json_schema" and not self.broken("response_text_format_ignored"):
            text = json.dumps(minimal_instance(fmt["schema"]))
        limit = body.get("max_output_tokens")
        if self.broken("max_output_tokens_ignored") or not isinstance(limit, int):    # (lenient: any value)
            limit = None
        cut = limit is not None and len(text) > limit
        text = text[:limit] if cut else text
        message = {"id": f"msg_{uuid.uuid4().hex}", "type": "message",
                   "role": "model" if self.broken("response_role_wrong") else "assistant",
                   "status": "incomplete" if cut else "completed",
                   "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}
        return [message], len(text), cut

    def response(self, body: dict) -> dict:
        items, tokens, cut = self.output(body)
        prompt = len(self.conversation(body))
        return {"id": f"resp_{uuid.uuid4().hex}", "object": "chat.completion" if self.broken(
                    "response_object_wrong") else "response", "created_at": int(time.time()),
                "status": "incomplete" if cut else "completed", "completed_at": None if cut else int(time.time()),
                "error": None, "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
                "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
                "model": self.server.model_id, "output": items, "parallel_tool_calls": True,
                "previous_response_id": body.get("previous_response_id"), "store": body.get("store", True),
                "temperature": body.get("temperature", 1), "top_p": body.get("top_p", 1),
                "text": body.get("text") or {"format": {"type": "text"}},
                "tool_choice": body.get("tool_choice", "auto"), "tools": body.get("tools") or [], "metadata": {},
                "usage": {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                          "output_tokens": tokens, "output_tokens_details": {"reasoning_tokens": 0},
                          "total_tokens": prompt + tokens + (1 if self.broken("response_usage_wrong") else 0)}}

    def events(self, response: dict):
        """The stream of `response` (its data objects, numbered)."""
        start = {**response, "status": "in_progress", "output": [], "completed_at": None, "incomplete_details": None}
        del start["usage"]
        events = [] if self.broken("response_no_created") else [{"type": "response.created", "response": start}]
        events.append({"type": "response.in_progress", "response": start})
        for index, item in enumerate(response["output"]):
            events += self.item_events(index, item)
        events.append({"type": f"response.{response['status']}", "response": response})
        step = 2 if self.broken("response_sequence_gaps") else 1
        return [{**event, "sequence_number": number * step} for number, event in enumerate(events)]

    def item_events(self, index: int, item: dict) -> list[dict]:
        where = {"item_id": item["id"], "output_index": index}
        if item["type"] == "function_call":
            arguments = item["arguments"]
            return [{"type": "response.output_item.added", "output_index": index,
                     "item": {**item, "status": "in_progress", "arguments": ""}},
                    *({"type": "response.function_call_arguments.delta", **where, "delta": arguments[i:i + 4]}
                      for i in range(0, len(arguments), 4)),
                    {"type": "response.function_call_arguments.done", **where, "name": item["name"],
                     "arguments": arguments},
                    {"type": "response.output_item.done", "output_index": index, "item": item}]
        part = item["content"][0]
        text = part["text"]
        deltas = [{"type": "response.output_text.delta", **where, "content_index": 0, "delta": char, "logprobs": []}
                  for char in text]
        if self.broken("response_stream_text_differs"):
            deltas.insert(0, deltas[0])
            text = text[0] + text
            part = {**part, "text": text}
            item = {**item, "content": [part]}
        added = {"type": "response.content_part.added", **where, "content_index": 0, "part": {**part, "text": ""}}
        opening = deltas[:1] + [added] + deltas[1:] if self.broken("response_delta_before_part") else [added] + deltas
        return [{"type": "response.output_item.added", "output_index": index,
                 "item": {**item, "status": "in_progress", "content": []}}, *opening,
                {"type": "response.output_text.done", **where, "content_index": 0, "text": text, "logprobs": []},
                {"type": "response.content_part.done", **where, "content_index": 0, "part": part},
                {"type": "response.output_item.done", "output_index": index, "item": item}]

    # -- routes ------------------------------------------------------------------------------------
    def on_post(self, req, resp) -> None:
        if self.broken("responses_missing"):
            return self.fail(resp, 404, f"Invalid URL (POST {req.path})")
        try:
            body = json.loads(req.bounded_stream.read())
        except ValueError:
            return self.fail(resp, 400, "We could not parse the JSON body of your request.")
        problem = self.problem(req, body)
        if problem is not None:
            return self.fail(resp, *problem)
        response = self.response(body)
        if body.get("store", True) and not self.broken("response_not_stored"):
            conversation = self.conversation(body) + json.dumps(response["output"])
            self.stored[response["id"]] = (response, conversation)
        if body.get("stream") is not True:
            return self.send(resp, response)
        resp.status = 200
        resp.content_type = "text/event-stream"
        resp.stream = (f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in self.events(response))

    def on_get(self, req, resp, response_id: str) -> None:
        if response_id not in self.stored:
            return self.fail(resp, 404, f"Response with id '{response_id}' not found.", "response_id")
        self.send(resp, self.stored[response_id][0])

    def on_delete(self, req, resp, response_id: str) -> None:
        if self.stored.pop(response_id, None) is None:
            return self.fail(resp, 404, f"Response with id '{response_id}' not found.", "response_id")
        self.send(resp, {"id": response_id, "object": "response", "deleted": True})


class ToyResponseItem:
    def __init__(self, responses: ToyResponses):
        self.on_get, self.on_delete = responses.on_get, responses.on_delete
