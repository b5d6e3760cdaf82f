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
from ..output import ChoiceOutput, ReasoningDelta, end_ids, is_completion_token, output_reading
from ..prompt import render_chat
from ..request import ConstraintSpec, GenerationRequest, SamplingParams, StoppingParams, TokenEvent
from ..tools import ContentDelta, ToolFormat, ToolSet, collect_tool_calls, tool_call_grammar, tool_constraint_spec
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
        ids, chat = render_chat(model, messages, toolset, template_kwargs=template_kwargs,
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
    """One round's TokenEvents → RoundDeltas as they come (read by `ChoiceOutput`, as the chat endpoint reads
    a choice), then its RoundResult."""

    def __init__(self, model, tools: ToolSet, fmt: ToolFormat, prompt_ids: list[int], ignore_eos: bool = False):
        self.output = ChoiceOutput(output_reading(model, tools, fmt, prompt_ids))
        self._ends = end_ids(model.eos_ids, ignore_eos)
        self.completion_tokens = 0
        self.finish_reason: str | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def add(self, event: TokenEvent) -> Iterator[RoundDelta]:
        counted = is_completion_token(event, self._ends)
        self.completion_tokens += counted
        if event.finish_reason is not None:
            self.finish_reason = event.finish_reason
        for part in self.output.add(event, counted):
            if isinstance(part, ReasoningDelta):
                yield RoundDelta(part.text, reasoning=True)
            elif isinstance(part, ContentDelta) and part.text:
                yield RoundDelta(part.text)

    def result(self, prompt_tokens: int, cached_tokens: int = 0) -> RoundResult:
        parts = self.output.parts
        reasoning = "".join(p.text for p in parts if isinstance(p, ReasoningDelta))
        content, calls = collect_tool_calls([p for p in parts if not isinstance(p, ReasoningDelta)])
        finish = self.output.reading.finish_reason(bool(calls), self.finish_reason or "stop")
        return RoundResult(content=content, tool_calls=tuple(calls), finish_reason=finish,
                           prompt_tokens=prompt_tokens, completion_tokens=self.completion_tokens,
                           cached_tokens=cached_tokens, reasoning_content=reasoning or None)
