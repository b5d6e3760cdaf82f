"""POST /v1/responses, GET and DELETE /v1/responses/{response_id}: OpenAI's Responses API on the chat path.

A request is read into a `ResponsesCall` (response_request.py), continued from its stored predecessor when
it names `previous_response_id`, decided as chat decides a call (`chat_generation`: prompt, constraint, how
the output is read) and answered through the shared response path (respond.py) by a `ResponsesReply`:

    JSON  the Response object: status completed, or incomplete (incomplete_details.reason
          max_output_tokens) when the output was cut off
    SSE   `event: <type>` / `data: {...}` per event, numbered by `sequence_number`: response.created,
          response.in_progress, the output items' events (response_output.py), then response.completed or
          response.incomplete. A failure once the stream has started is an `error` event (message, code,
          param) and response.failed. No `data: [DONE]`: OpenAI's Responses streams end with their last event.

With `store` (OpenAI's default) and a state folder (the agent runtime's), the finished response and its
conversation are kept (refengine/agent/stored_responses.py) for GET, DELETE and `previous_response_id`;
without a state folder responses say `"store": false`, and asking for `store` or a previous response is a 400.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

import falcon

from refengine.agent.stored_responses import ResponseStore
from refengine.output import ChoiceOutput, is_completion_token
from refengine.request import TokenEvent

from . import sse
from .body import Settings, read_json, tell_ignored
from .chat import ChatGeneration, chat_generation
from .engine import EngineSlot
from .errors import APIError, invalid_request, not_supported
from .metrics import Metrics
from .respond import ResponsePlan, Tally, respond
from .response_output import ResponseOutput, item_id
from .response_request import ResponsesCall, parse_responses

CUT_OFF = "length"                           # the finish_reason of an output that hit its token limit


def response_not_found(response_id: str, param: str = "response_id") -> APIError:
    return APIError(404 if param == "response_id" else 400, f"Response with id '{response_id}' not found.",
                    param=param, code="not_found" if param == "response_id" else "previous_response_not_found")


def failure_code(error: APIError) -> str:
    """A Response's `error.code` (OpenAI's enum) for an error envelope."""
    if error.status_code == 429:
        return "rate_limit_exceeded"
    return "server_error" if error.status_code >= 500 else "invalid_prompt"


@dataclass
class Answer:
    """A response's output as far as it has come."""
    choice: ChoiceOutput                     # the text read as reasoning, content and calls (as chat reads it)
    output: ResponseOutput                   # the same as output items
    tokens: int = 0
    finish_reason: str | None = None


class ResponsesReply:
    """The Responses API's shapes (respond.py's `Reply`): the Response object, or its stream of events."""

    def __init__(self, call: ResponsesCall, generation: ChatGeneration, model: str, conversation: list[dict],
                 store: ResponseStore | None):
        """`conversation`: the history and this input as chat messages, which a stored response keeps with its
        output; `store`: where it is kept (None: not stored)."""
        self.call, self.generation, self.model, self.conversation, self.store = (
            call, generation, model, conversation, store)
        self.id = item_id("resp")
        self.created_at = int(time.time())
        self.sequence = 0
        self.answer = self._new_answer()

    # ---- the Reply protocol ----

    def collect(self, handles: list, events: list) -> Answer:
        for event in events[0]:
            self._take(event)
        return self.answer

    def completion_tokens(self, answer: Answer) -> int:
        return answer.tokens

    def body(self, handles: list, answer: Answer) -> dict:
        return self._finished(handles[0])

    def stream(self, handles: list, items, tally: Tally) -> Iterator[bytes]:
        yield self._event({"type": "response.created", "response": self._object("in_progress")})
        yield self._event({"type": "response.in_progress", "response": self._object("in_progress")})
        for item in items:
            if item is None:
                yield sse.KEEPALIVE
                continue
            before = self.answer.tokens
            events = self._take(item[1])
            tally.completion_tokens += self.answer.tokens - before
            for event in events:
                yield self._event(event)
        response = self._finished(handles[0])
        yield self._event({"type": f"response.{response['status']}", "response": response})

    def failed(self, error: APIError) -> bytes:
        """A failure after the stream started (respond.py's `stream_failure`): `error`, then response.failed."""
        told = self._event({"type": "error", "code": error.code, "message": error.message, "param": error.param})
        return told + self._event({"type": "response.failed", "response": self._object(
            "failed", error={"code": failure_code(error), "message": error.message})})

    # ---- the answer ----

    def _new_answer(self) -> Answer:
        return Answer(ChoiceOutput(self.generation.reading), ResponseOutput())

    def _take(self, event: TokenEvent) -> list[dict]:
        """One token event into the answer; the response events it causes."""
        answer = self.answer
        counted = is_completion_token(event, self.generation.ends)
        answer.tokens += counted
        events = [e for part in answer.choice.add(event, counted) for e in answer.output.add(part)]
        if event.finish_reason is not None:
            answer.finish_reason = event.finish_reason
            events += answer.output.finish("incomplete" if event.finish_reason == CUT_OFF else "completed")
        return events

    def _finished(self, handle) -> dict:
        """The final Response object, kept when it is stored."""
        answer = self.answer
        cut_off = answer.finish_reason == CUT_OFF
        reasoning = answer.choice.reasoning_tokens
        usage = {"input_tokens": handle.prompt_tokens,
                 "input_tokens_details": {"cached_tokens": handle.cached_tokens,
                                          "cache_write_tokens": 0},     # not counted by this server
                 "output_tokens": answer.tokens, "output_tokens_details": {"reasoning_tokens": reasoning},
                 "total_tokens": handle.prompt_tokens + answer.tokens}
        response = self._object("incomplete" if cut_off else "completed", usage=usage,
                                incomplete={"reason": "max_output_tokens"} if cut_off else None)
        if self.store is not None:
            message = {key: value for key, value in answer.choice.message().items() if key != "refusal"}
            self.store.put(self.id, response, self.conversation + [message])
        return response

    def _object(self, status: str, *, usage: dict | None = None, error: dict | None = None,
                incomplete: dict | None = None) -> dict:
        finished = status in ("completed", "incomplete", "failed")
        response = {"id": self.id, "object": "response", "created_at": self.created_at, "status": status,
                    "completed_at": int(time.time()) if status == "completed" else None, "error": error,
                    "incomplete_details": incomplete, "model": self.model,
                    "output": [dict(item) for item in self.answer.output.items] if finished else [],
                    "store": self.store is not None, **self.call.echo}
        return response if usage is None else {**response, "usage": usage}    # no usage until the end

    def _event(self, event: dict) -> bytes:
        event["sequence_number"] = self.sequence
        self.sequence += 1
        return f"event: {event['type']}\n".encode() + sse.event(event)


def _responses_param(error: APIError) -> APIError:
    """A 400 of the chat path names a function's schema as chat spells it (`tools[0].function.parameters`);
    the Responses API's function tools are flat (`tools[0].parameters`)."""
    if not (error.param or "").startswith("tools[") or ".function." not in error.param:
        return error
    param = error.param.replace(".function.", ".", 1)
    return APIError(error.status_code, error.message.replace(error.param, param), type=error.type, param=param,
                    code=error.code)


class Responses:
    """POST /v1/responses."""

    def __init__(self, slot: EngineSlot, metrics: Metrics, settings: Settings, store: ResponseStore | None):
        self.slot, self.metrics, self.settings, self.store = slot, metrics, settings, store

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        started = time.monotonic()
        engine = self.slot.get()
        body = read_json(req, self.settings.max_body_bytes)
        call = parse_responses(body, serves=engine.serves, vocab_size=engine.model.vocab_size,
                               context_length=engine.context_length, strict=self.settings.strict_params)
        tell_ignored(resp, call.chat.ignored)
        if call.store and self.store is None:
            raise invalid_request("'store' needs a state folder, which this server runs without.", "store",
                                  "unsupported_parameter")
        history = self._history(call.previous_response_id)
        try:
            generation = chat_generation(engine, call.with_history(history), self.settings, param="input")
        except APIError as error:
            raise _responses_param(error) from None
        reply = ResponsesReply(call, generation, engine.model_id, history + call.input_messages,
                               None if call.store is False else self.store)
        plan = ResponsePlan(requests=(generation.request,), reply=reply, stream=call.stream,
                            params={"prompt": "input", "max_tokens": "max_output_tokens", "n": "max_output_tokens",
                                    "logit_bias": "logit_bias", "constraint": generation.constraint_param},
                            stream_end=b"", stream_failure=reply.failed)
        respond(req, resp, engine, self.metrics, plan, started=started, keepalive_s=self.settings.keepalive_s)

    def _history(self, previous_response_id: str | None) -> list[dict]:
        """The conversation a stored response ended, which this one continues."""
        if previous_response_id is None:
            return []
        if self.store is None:
            raise invalid_request("'previous_response_id' needs stored responses, which this server keeps only "
                                  "with a state folder.", "previous_response_id", "unsupported_parameter")
        stored = self.store.get(previous_response_id)
        if stored is None:
            raise response_not_found(previous_response_id, "previous_response_id")
        return stored.messages


class ResponseItem:
    """GET and DELETE /v1/responses/{response_id}."""

    def __init__(self, store: ResponseStore):
        self.store = store

    def on_get(self, req: falcon.Request, resp: falcon.Response, response_id: str) -> None:
        if req.get_param_as_bool("stream"):
            raise not_supported("stream")
        stored = self.store.get(response_id)
        if stored is None:
            raise response_not_found(response_id)
        resp.media = stored.response

    def on_delete(self, req: falcon.Request, resp: falcon.Response, response_id: str) -> None:
        if not self.store.delete(response_id):
            raise response_not_found(response_id)
        resp.media = {"id": response_id, "object": "response", "deleted": True}
