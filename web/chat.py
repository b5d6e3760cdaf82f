"""POST /v1/chat/completions: messages → prompt → scheduler → a chat.completion, or its SSE chunks."""
from __future__ import annotations

import time
from typing import Iterator

import falcon

from refengine.generate import ContextLengthError
from refengine.prompt import chat_prompt_ids
from refengine.scheduler import RequestHandle
from refengine.template import ChatTemplateError

from . import sse
from .body import Settings, read_json
from .choices import (ChoiceResult, ResponseHead, chat_logprob, collect, end_ids, is_completion_token,
                      usage)
from .engine import Engine, EngineSlot, as_api_error
from .errors import context_length_exceeded, invalid_request
from .metrics import Metrics
from .schema import ChatCall, parse_chat

PROMPT_PARAM = "messages"


def prompt_ids(engine: Engine, call: ChatCall) -> list[int]:
    try:
        return chat_prompt_ids(engine.model, call.messages, tools=call.tools, template_kwargs=call.template_kwargs,
                               max_tokens=call.options.stopping.max_tokens, truncate=call.truncate)
    except ContextLengthError as error:
        raise context_length_exceeded(str(error), PROMPT_PARAM) from None
    except ChatTemplateError as error:
        raise invalid_request(f"The messages cannot be rendered for this model: {error}", PROMPT_PARAM) from None


def message_choice(choice: ChoiceResult, logprobs: bool) -> dict:
    return {"index": choice.index,
            "message": {"role": "assistant", "content": choice.text, "refusal": None},
            "logprobs": {"content": [chat_logprob(e) for e in choice.scored], "refusal": None} if logprobs else None,
            "finish_reason": choice.finish_reason}


def chat_body(head: ResponseHead, choices: list[ChoiceResult], prompt_tokens: int, logprobs: bool) -> dict:
    return {**head.fields("chat.completion"),
            "choices": [message_choice(c, logprobs) for c in choices],
            "usage": usage(prompt_tokens, sum(c.tokens for c in choices))}


def chat_stream(handle: RequestHandle, events, call: ChatCall, head: ResponseHead, ends: frozenset[int],
                prompt_tokens: int, metrics: Metrics, keepalive_s: float) -> Iterator[bytes]:
    """The SSE body: per choice a role delta, content deltas, then one finish_reason; usage last if asked.

    A failure after the stream started is sent as one error event, and the stream ends there. A client
    that goes away closes this generator (at its next write): the sequence is cancelled, its cache freed.
    """
    def chunk(choices: list[dict], **extra) -> bytes:
        fields = {**head.fields("chat.completion.chunk"), "choices": choices, **extra}
        if call.include_usage:
            fields.setdefault("usage", None)
        return sse.event(fields)

    def delta(index: int, delta: dict, logprobs=None, finish_reason=None) -> bytes:
        return chunk([{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}])

    completion_tokens = 0
    ended = False
    try:
        for index in range(call.options.n):
            yield delta(index, {"role": "assistant", "content": "", "refusal": None})
        for item in sse.interleave([events], keepalive_s):
            if item is None:
                yield sse.KEEPALIVE
                continue
            event = item[1]
            counted = is_completion_token(event, ends)
            completion_tokens += counted
            entry = chat_logprob(event) if counted and event.logprob is not None else None
            if event.text or entry:
                logprobs = {"content": [entry], "refusal": None} if entry else None
                yield delta(event.index, {"content": event.text}, logprobs)
            if event.finish_reason is not None:
                yield delta(event.index, {}, finish_reason=event.finish_reason)
        if call.include_usage:
            yield chunk([], usage=usage(prompt_tokens, completion_tokens))
        ended = True
        yield sse.DONE
    except Exception as error:                   # the response has started: report in-band, then stop
        ended = True
        handle.cancel()                          # (a no-op when the engine already dropped the request)
        yield sse.event(as_api_error(error, PROMPT_PARAM).envelope())
    finally:
        if not ended:
            handle.cancel()
            metrics.count_disconnect()
        metrics.count_tokens(prompt_tokens, completion_tokens)


class ChatCompletions:
    def __init__(self, slot: EngineSlot, metrics: Metrics, settings: Settings):
        self.slot, self.metrics, self.settings = slot, metrics, settings

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        started = time.monotonic()
        engine = self.slot.get()
        body = read_json(req, self.settings.max_body_bytes)
        call = parse_chat(body, serves=engine.serves, vocab_size=engine.model.config.vocab_size,
                          context_length=engine.context_length, strict=self.settings.strict_params)
        prompt = prompt_ids(engine, call)
        request = call.options.request(prompt, engine.constraint_spec(call.constraint))
        handle = engine.submit(request, prompt_param=PROMPT_PARAM)
        head = ResponseHead.new("chatcmpl", engine.model_id, engine.fingerprint)
        ends = end_ids(engine.model.eos_ids, request.stopping.ignore_eos)
        events = self.metrics.timed(handle, started)
        if call.stream:
            resp.content_type = sse.CONTENT_TYPE
            resp.set_headers(sse.HEADERS)
            resp.stream = chat_stream(handle, events, call, head, ends, len(prompt), self.metrics,
                                      self.settings.keepalive_s)
            return
        try:
            choices = collect(events, call.options.n, ends)
        except Exception as error:
            raise as_api_error(error, PROMPT_PARAM) from None
        self.metrics.count_tokens(len(prompt), sum(c.tokens for c in choices))
        resp.media = chat_body(head, choices, len(prompt), call.options.logprobs)
