"""POST /v1/chat/completions: messages → prompt → scheduler → a chat.completion, or its SSE chunks.

With `tools` the messages and tools go through `prepare_chat` (the template's own tool rendering, or our
fallback system prompt), the output is held to the call grammar (from the first token for tool_choice
required / named, from the call's opening for auto) and read back by a `ToolCallStreamParser`. For a template
that thinks, a `<think>` block is split off as `reasoning_content`. Both readers run token by token for
streamed and non-streamed answers alike, so the two always agree:

    text deltas ─► ReasoningStreamParser ─► reasoning_content
                                  └─ answer ─► ToolCallStreamParser ─► content | tool_calls
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

import falcon

from refengine.agent.runtime import AgentRuntime
from refengine.output import ChoiceOutput, OutputReading, ReasoningDelta, end_ids, is_completion_token, output_reading
from refengine.prompt import render_chat
from refengine.request import ContextLengthError, GenerationRequest
from refengine.template import ChatTemplateError
from refengine.tools import PreparedChat, ToolCallDelta, ToolSet
from refengine.trace import tracing

from . import sse
from .agentic import agent_call, respond_agentic
from .body import Settings, read_json, tell_ignored
from .choices import ChoiceResult, ResponseHead, chat_logprob, usage
from .engine import Engine, EngineSlot
from .legacy_functions import legacy_delta, legacy_finish, legacy_message
from .errors import context_length_exceeded, invalid_request, not_supported
from .metrics import Metrics
from .respond import ResponsePlan, Tally, respond
from .traces import trace_event, traced_input, with_trace
from .schema import ChatCall, parse_chat

PARAMS = {"prompt": "messages", "max_tokens": "max_tokens", "n": "n", "logit_bias": "logit_bias"}
PREFILL_FIELDS = ("add_generation_prompt", "continue_final_message", "echo")    # vLLM's (vllm_fields.py)
SERVICE_TIER = "default"                     # the one way this server serves a request, whatever tier was asked


# ---- the plan: prompt, constraint, reading ----

def chat_prompt(engine: Engine, messages: list[dict], tools: ToolSet | None, *, template_kwargs: dict | None,
                settings: Settings, max_tokens: int | None = None, truncate: bool = False,
                generation_prompt: bool = True, fit: bool = True, continue_final: bool = False,
                param: str = "messages") -> tuple[list[int], PreparedChat]:
    """The prompt ids of chat messages (tool history included) and tools, as the chat endpoint renders them
    (and /tokenize, which must agree); tool_choice "none" leaves the tools out of the prompt. `fit`: a
    prompt that leaves no room for `max_tokens` is a 400 (/tokenize counts it all the same) naming `param`,
    the field the messages came from."""
    try:
        ids, chat = render_chat(engine.model, messages, tools, template_kwargs=template_kwargs, max_tokens=max_tokens,
                                truncate=truncate, generation_prompt=generation_prompt, continue_final=continue_final,
                                allow_special_in_content=settings.allow_special_in_content, fit=fit)
    except ContextLengthError as error:
        raise context_length_exceeded(str(error), param) from None
    except ChatTemplateError as error:
        raise invalid_request(f"The messages cannot be rendered for this model: {error}", param) from None
    except RecursionError:                   # e.g. tool-call arguments nested thousands deep
        raise invalid_request("The messages or tools are nested too deeply to render.", param) from None
    return ids, chat


@dataclass(frozen=True)
class ChatGeneration:
    """A chat call decided for the engine: its request, how its output is read, and the field that asked
    for the output's constraint (what a refusal names)."""
    request: GenerationRequest
    reading: OutputReading
    ends: frozenset[int]                     # token ids that only mark the end of a choice
    constraint_param: str | None


def chat_generation(engine: Engine, call: ChatCall, settings: Settings, param: str = "messages") -> ChatGeneration:
    """Its prompt, the constraint on its output (the tool-call grammar when a call may be made — schema.py
    refuses a response format beside it — else the response format or grammar), and how its output is read.
    Chat and the Responses API (responses.py, whose messages come from `input`: `param`) decide a call this
    way."""
    tools = call.tools
    trace = traced_input(call.options.trace_top_k, messages=call.messages,
                         tools=tools.tools if tools is not None else None)
    with tracing(trace):
        prompt, chat = chat_prompt(engine, call.messages, tools, template_kwargs=call.template_kwargs,
                                   settings=settings, max_tokens=call.options.stopping.max_tokens,
                                   truncate=call.truncate, generation_prompt=call.generation_prompt,
                                   continue_final=call.continue_final, param=param)
    calls = tools is not None and tools.callable
    constraint = engine.tool_constraint(tools, chat.format) if calls else engine.constraint_spec(call.constraint)
    request = call.options.request(prompt, constraint, trace)
    return ChatGeneration(request, output_reading(engine.model, tools, chat.format, prompt),
                          end_ids(engine.model.eos_ids, request.stopping.ignore_eos),
                          "tools" if calls else call.constraint and call.constraint.param)


def chat_plan(engine: Engine, call: ChatCall, settings: Settings) -> ResponsePlan:
    """The request decided once (`chat_generation`), answered as chat."""
    generation = chat_generation(engine, call, settings)
    reply = ChatReply(call, ResponseHead.new("chatcmpl", engine.model_id, engine.fingerprint), generation.ends,
                      generation.reading)
    return ResponsePlan(requests=(generation.request,), reply=reply, stream=call.stream,
                        params={**PARAMS, "max_tokens": call.max_tokens_param,
                                "constraint": generation.constraint_param})


def delta_of(part) -> dict:
    if isinstance(part, ReasoningDelta):
        return {"reasoning_content": part.text}
    if isinstance(part, ToolCallDelta):
        return {"tool_calls": [part.as_openai()]}
    return {"content": part.text}


# ---- responses ----

@dataclass
class ChatChoice:
    result: ChoiceResult
    output: ChoiceOutput


def collect_chat(events, n: int, ends: frozenset[int], reading: OutputReading) -> list[ChatChoice]:
    choices = [ChatChoice(ChoiceResult(i), ChoiceOutput(reading)) for i in range(n)]
    for event in events:
        choice = choices[event.index]
        choice.output.add(event, choice.result.add(event, ends))
    return choices


def message_choice(choice: ChatChoice, call: ChatCall) -> dict:
    """One choice of the body; with vLLM's `echo`, its content starts with that text; asked with legacy
    `functions`, its call is a `function_call`."""
    result, output = choice.result, choice.output
    message = output.message()
    if call.echo:
        message["content"] = call.echo + (message["content"] or "")
    finish_reason = output.reading.finish_reason(output.has_calls, result.finish_reason)
    if call.legacy_functions:
        message, finish_reason = legacy_message(message), legacy_finish(finish_reason)
    logprobs = {"content": [chat_logprob(e) for e in result.scored], "refusal": None}
    return {"index": result.index, "message": message, "logprobs": logprobs if call.options.logprobs else None,
            "finish_reason": finish_reason}


def chat_body(head: ResponseHead, choices: list[ChatChoice], prompt_tokens: int, cached_tokens: int,
              call: ChatCall, reading: OutputReading) -> dict:
    reasoning = sum(c.output.reasoning_tokens for c in choices) if reading.thinks else None
    return {**head.fields("chat.completion"), "service_tier": SERVICE_TIER,
            "choices": [message_choice(c, call) for c in choices],
            "usage": usage(prompt_tokens, sum(c.result.tokens for c in choices), reasoning, cached_tokens)}


class ChatReply:
    """Chat's shapes: `chat.completion.chunk` deltas and the `chat.completion` body, read by `ChoiceOutput`."""

    def __init__(self, call: ChatCall, head: ResponseHead, ends: frozenset[int], reading: OutputReading):
        self.call, self.head, self.ends, self.reading = call, head, ends, reading

    def collect(self, handles: list, events: list) -> list[ChatChoice]:
        return collect_chat(events[0], self.call.options.n, self.ends, self.reading)

    def completion_tokens(self, choices: list[ChatChoice]) -> int:
        return sum(c.result.tokens for c in choices)

    def body(self, handles: list, choices: list[ChatChoice]) -> dict:
        handle = handles[0]
        return with_trace(chat_body(self.head, choices, handle.prompt_tokens, handle.cached_tokens, self.call,
                                    self.reading), handles)

    def stream(self, handles: list, items, tally: Tally) -> Iterator[bytes]:
        """Per choice a role delta (and the echo, when asked), reasoning / content / tool-call deltas, then one
        finish_reason; usage last if asked."""
        call, reading = self.call, self.reading

        def chunk(choices: list[dict], **extra) -> bytes:
            if call.continuous_usage and "usage" not in extra:        # vLLM's: the usage so far on each chunk
                extra["usage"] = usage(handles[0].prompt_tokens, tally.completion_tokens)
            return self.head.chunk("chat.completion.chunk", choices, call.include_usage, service_tier=SERVICE_TIER,
                                   **extra)

        def delta(index: int, delta: dict, logprobs=None, finish_reason=None) -> bytes:
            if call.legacy_functions:                                # asked with `functions`: answered so
                delta, finish_reason = legacy_delta(delta), legacy_finish(finish_reason)
            return chunk([{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}])

        outputs = [ChoiceOutput(reading) for _ in range(call.options.n)]
        for index in range(call.options.n):
            yield delta(index, {"role": "assistant", "content": "", "refusal": None})
            if call.echo:
                yield delta(index, {"content": call.echo})
        for item in items:
            if item is None:
                yield sse.KEEPALIVE
                continue
            event = item[1]
            output = outputs[event.index]
            counted = is_completion_token(event, self.ends)
            tally.completion_tokens += counted
            deltas = [delta_of(part) for part in output.add(event, counted)]
            entry = chat_logprob(event) if counted and event.logprob is not None else None
            if entry and not deltas:
                deltas = [{"content": ""}]
            for i, body in enumerate(deltas):
                yield delta(event.index, body, {"content": [entry], "refusal": None} if entry and i == 0 else None)
            if event.finish_reason is not None:
                yield delta(event.index, {}, finish_reason=reading.finish_reason(output.has_calls, event.finish_reason))
        if call.include_usage:
            handle = handles[0]
            reasoning = sum(o.reasoning_tokens for o in outputs) if reading.thinks else None
            yield chunk([], usage=usage(handle.prompt_tokens, tally.completion_tokens, reasoning, handle.cached_tokens))
        yield from trace_event(handles)


class ChatCompletions:
    def __init__(self, slot: EngineSlot, metrics: Metrics, settings: Settings, agent: AgentRuntime | None = None):
        self.slot, self.metrics, self.settings, self.agent = slot, metrics, settings, agent

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        started = time.monotonic()
        engine = self.slot.get()
        body = read_json(req, self.settings.max_body_bytes)
        call = parse_chat(body, serves=engine.serves, vocab_size=engine.model.vocab_size,
                          context_length=engine.context_length, strict=self.settings.strict_params)
        tell_ignored(resp, call.ignored)
        agentic = agent_call(body, call)
        if agentic is not None:               # server-side tools or a session: the agent runtime answers
            if self.agent is None:
                raise not_supported(agentic.first_field)
            prefill = [name for name in PREFILL_FIELDS if body.get(name) is not None]
            if prefill:                       # the tool loop renders each round's prompt its own way
                raise invalid_request(f"'{prefill[0]}' is not supported with server-side tools or a session.",
                                      prefill[0], "unsupported_parameter")
            if call.options.trace_top_k is not None:
                raise invalid_request("'trace' follows one generation; a request with server-side tools or a "
                                      "session runs several, which cannot be traced yet.", "trace")
            respond_agentic(req, resp, engine, self.agent, self.metrics, self.settings, call, agentic, started)
            return
        respond(req, resp, engine, self.metrics, chat_plan(engine, call, self.settings), started=started,
                keepalive_s=self.settings.keepalive_s)
