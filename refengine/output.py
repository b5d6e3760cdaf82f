"""One choice's output, read token by token: `<think>` reasoning, content, and tool calls.

    text deltas ─► ReasoningStreamParser ─► reasoning
                                  └─ answer ─► ToolCallStreamParser ─► content | tool-call deltas

The chat endpoint (web/chat.py) and the agent's rounds (agent/rounds.py) read outputs with the same
`ChoiceOutput`, streamed or not, so the two always agree. The end-of-sequence token that ends a choice is
not a completion token (it adds no text): `is_completion_token`.
"""
from __future__ import annotations

from dataclasses import dataclass

from .reasoning import ReasoningStreamParser, model_supports_thinking, prompt_opens_thinking
from .request import TokenEvent
from .tools import (ContentDelta, ToolCallStreamParser, ToolChoice, ToolFormat, ToolSet, collect_tool_calls,
                    tool_finish_reason)


def end_ids(eos_ids: frozenset[int], ignore_eos: bool) -> frozenset[int]:
    """The token ids whose appearance as a choice's last token only marks its end."""
    return frozenset() if ignore_eos else eos_ids


def is_completion_token(event: TokenEvent, ends: frozenset[int]) -> bool:
    return event.token_id is not None and not (event.finish_reason == "stop" and event.token_id in ends)


@dataclass(frozen=True)
class ReasoningDelta:
    text: str


@dataclass(frozen=True)
class OutputReading:
    """How one request's output is read."""
    thinks: bool                             # the template thinks: reasoning is split off and counted
    starts_inside: bool                      # the prompt opened the <think> block
    tool_format: ToolFormat | None           # None: no tool calls are parsed
    tool_choice: ToolChoice | None
    max_calls: int | None

    def finish_reason(self, has_calls: bool, finish_reason: str) -> str:
        if self.tool_choice is None:
            return finish_reason
        return tool_finish_reason(self.tool_choice, has_calls, finish_reason)


def output_reading(model, tools: ToolSet | None, fmt: ToolFormat, prompt: list[int]) -> OutputReading:
    """How the output of `prompt` (rendered with `tools` in format `fmt`) is read."""
    thinks = model_supports_thinking(model)
    calls = tools is not None and tools.callable
    return OutputReading(thinks=thinks, starts_inside=thinks and prompt_opens_thinking(model, prompt),
                         tool_format=fmt if calls else None, tool_choice=tools.choice if calls else None,
                         max_calls=tools.max_calls if calls else None)


class ChoiceOutput:
    """One choice's text, token by token → reasoning, content and tool-call deltas (and reasoning tokens)."""

    def __init__(self, reading: OutputReading):
        self.reading = reading
        self._reasoning = ReasoningStreamParser(starts_inside=reading.starts_inside) if reading.thinks else None
        self._calls = None if reading.tool_format is None else \
            ToolCallStreamParser(reading.tool_format, max_calls=reading.max_calls)
        self.reasoning_tokens = 0
        self._undecided_tokens = 0           # tokens before the block is known to open (<think> itself)
        self.parts: list = []                # everything pushed out so far, for the non-streamed message

    def add(self, event: TokenEvent, counted: bool) -> list:
        """The deltas `event` releases; `counted`: it is a completion token (for the reasoning count)."""
        parts = self._push(event.text) if self._reasoning is None else self._count_reasoning(event.text, counted)
        if event.finish_reason is not None:
            parts += self._finish()
        self.parts += parts
        return parts

    def _count_reasoning(self, text: str, counted: bool) -> list:
        """Push `text`, counting its token as reasoning when it is inside the block, opens it or closes it."""
        parser = self._reasoning
        was_thinking, had_opened = parser.in_thinking, parser.saw_thinking
        parts = self._push(text)
        if counted and (was_thinking or parser.in_thinking):
            self.reasoning_tokens += 1
        elif counted and not had_opened:
            self._undecided_tokens += 1
        if parser.saw_thinking and not had_opened:
            self.reasoning_tokens += self._undecided_tokens
        return parts

    def _push(self, text: str) -> list:
        if self._reasoning is None:
            return self._answer(text)
        reasoning, answer = self._reasoning.push(text)
        return ([ReasoningDelta(reasoning)] if reasoning else []) + self._answer(answer)

    def _answer(self, text: str) -> list:
        if not text:
            return []
        return [ContentDelta(text)] if self._calls is None else self._calls.push(text)

    def _finish(self) -> list:
        parts = []
        if self._reasoning is not None:
            reasoning, answer = self._reasoning.finish()
            parts += ([ReasoningDelta(reasoning)] if reasoning else []) + self._answer(answer)
        if self._calls is not None:
            parts += self._calls.finish()
        return parts

    @property
    def has_calls(self) -> bool:
        return self._calls is not None and self._calls.calls_found > 0

    def message(self) -> dict:
        reasoning = "".join(p.text for p in self.parts if isinstance(p, ReasoningDelta))
        content, calls = collect_tool_calls([p for p in self.parts if not isinstance(p, ReasoningDelta)])
        message = {"role": "assistant", "content": content if calls else content or "", "refusal": None}
        if calls:
            message["tool_calls"] = [c.as_openai() for c in calls]
        if self.reading.thinks:
            message["reasoning_content"] = reasoning or None
        return message
