"""A `generate_round` for the tool loop, built on the engine: messages and tools → one generated round.

    generate_round = engine_round(model, compile_tool_constraint(vocab))              # alone, `generate`
    generate_round = engine_round(engine.model, engine.tool_constraint,
                                  run=engine.scheduler.submit, sampling=..., stopping=...)   # the server

Each round is prepared exactly as a chat request with those tools is (`prepare_chat`, the template's own
tool rendering or the fallback prompt; the call grammar from the first token for a forcing tool_choice,
from the call's opening for auto; nothing offered or parsed for "none"), so a built-in call is held to its
strict schema by the constrainer like a client's. The output is read token by token: a `<think>` block (for
templates that think) as reasoning deltas, then content deltas until a call opens, then the calls.

`run(request)` returns the request's TokenEvents: `generate` on its own, or a scheduler handle. However
the round ends (the loop's reader went away included) an unfinished request is cancelled or closed.
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator

from ..constrain import Constraint, Vocab
from ..constrain.automaton import Automaton
from ..generate import generate
from ..prompt import chat_prompt_ids
from ..reasoning import ReasoningStreamParser, model_supports_thinking, prompt_opens_thinking
from ..request import ConstraintSpec, GenerationRequest, SamplingParams, StoppingParams, TokenEvent
from ..tools import (ContentDelta, ToolCallDelta, ToolCallStreamParser, ToolFormat, ToolSet, collect_tool_calls,
                     prepare_chat, tool_call_grammar, tool_constraint_spec, tool_finish_reason)
from .loop import GenerateRound, RoundDelta, RoundResult

ToolConstraint = Callable[[ToolSet, ToolFormat], "ConstraintSpec | None"]


def compile_tool_constraint(vocab: Vocab) -> ToolConstraint:
    """The call grammar compiled for `vocab`, uncached (the server passes `Engine.tool_constraint`, which
    caches it and turns a schema error into a 400)."""
    def compile_for(tools: ToolSet, fmt: ToolFormat) -> ConstraintSpec | None:
        spec = tool_constraint_spec(tools, fmt)
        if spec is None:
            return None
        return ConstraintSpec(Constraint(Automaton(tool_call_grammar(spec)), vocab), trigger=spec.trigger)
    return compile_for


def engine_round(model, tool_constraint: ToolConstraint,
                 run: Callable[[GenerationRequest], Iterable[TokenEvent]] | None = None, *,
                 sampling: SamplingParams = SamplingParams(), stopping: StoppingParams = StoppingParams(),
                 template_kwargs: dict | None = None, parallel_tool_calls: bool | None = None,
                 truncate: bool = False, allow_special_in_content: bool = False) -> GenerateRound:
    """`generate_round` for `run_rounds`: one choice per round, the same sampling and stopping each round.
    Raises what prompt building raises (ContextLengthError when the grown conversation no longer fits,
    ChatTemplateError) and what `run` raises."""
    run = run or (lambda request: generate(model, request))

    def generate_round(messages: list[dict], tools: list[dict], tool_choice, final: bool):
        toolset = ToolSet.read(tools or None, "none" if final else tool_choice, parallel_tool_calls)
        chat = prepare_chat(model, messages, toolset)
        ids = chat_prompt_ids(model, chat.messages, tools=chat.tools, template_kwargs=template_kwargs,
                              max_tokens=stopping.max_tokens, truncate=truncate,
                              allow_special_in_content=allow_special_in_content)
        constraint = tool_constraint(toolset, chat.format) if toolset.callable else None
        request = GenerationRequest(tuple(ids), sampling, stopping, constraint=constraint)
        reader = RoundReader(model, toolset, chat.format, ids, stopping.ignore_eos)
        events = run(request)
        try:
            for event in events:
                yield from reader.add(event)
        finally:
            _stop(events, reader.finished)
        yield reader.result(len(ids), getattr(events, "cached_tokens", 0))

    return generate_round


def _stop(events, finished: bool) -> None:
    """Free an engine request nobody reads any more: a scheduler handle is cancelled, a generator closed."""
    if not finished and hasattr(events, "cancel"):
        events.cancel()
    close = getattr(events, "close", None)
    if close is not None:
        close()


class RoundReader:
    """One round's TokenEvents → RoundDeltas as they come, then its RoundResult."""

    def __init__(self, model, tools: ToolSet, fmt: ToolFormat, prompt_ids: list[int], ignore_eos: bool = False):
        thinks = model_supports_thinking(model)
        self._reasoning = ReasoningStreamParser(starts_inside=prompt_opens_thinking(model, prompt_ids)) \
            if thinks else None
        self._calls = ToolCallStreamParser(fmt, max_calls=tools.max_calls) if tools.callable else None
        self._choice = tools.choice if tools.callable else None
        self._ends = frozenset() if ignore_eos else frozenset(model.eos_ids)
        self._parts: list = []
        self._reasoning_text: list[str] = []
        self.completion_tokens = 0
        self.finish_reason: str | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def add(self, event: TokenEvent) -> Iterator[RoundDelta]:
        if event.token_id is not None and not (event.finish_reason == "stop" and event.token_id in self._ends):
            self.completion_tokens += 1
        reasoning, answer = self._split(event.text)
        if event.finish_reason is not None:
            self.finish_reason = event.finish_reason
            if self._reasoning is not None:
                more_reasoning, more_answer = self._reasoning.finish()
                reasoning, answer = reasoning + more_reasoning, answer + more_answer
        if reasoning:
            self._reasoning_text.append(reasoning)
            yield RoundDelta(reasoning, reasoning=True)
        parts = self._answer(answer)
        if event.finish_reason is not None and self._calls is not None:
            parts += self._calls.finish()
        self._parts += parts
        for part in parts:
            if isinstance(part, ContentDelta) and part.text:
                yield RoundDelta(part.text)

    def _split(self, text: str) -> tuple[str, str]:
        return self._reasoning.push(text) if self._reasoning is not None else ("", text)

    def _answer(self, text: str) -> list:
        if not text:
            return []
        return [ContentDelta(text)] if self._calls is None else self._calls.push(text)

    def result(self, prompt_tokens: int, cached_tokens: int = 0) -> RoundResult:
        content, calls = collect_tool_calls([p for p in self._parts if isinstance(p, (ContentDelta, ToolCallDelta))])
        finish = self.finish_reason or "stop"
        if self._choice is not None:
            finish = tool_finish_reason(self._choice, bool(calls), finish)
        return RoundResult(content=content, tool_calls=tuple(calls), finish_reason=finish,
                           prompt_tokens=prompt_tokens, completion_tokens=self.completion_tokens,
                           cached_tokens=cached_tokens, reasoning_content="".join(self._reasoning_text) or None)
