"""Tool calls out of the generated text: OpenAI-shaped deltas while streaming, whole calls at the end.

Call ids are "call_" + 24 random letters and digits. A call's `arguments` is the JSON text the model wrote
(a JSON string value is unwrapped), so streamed fragments concatenate to exactly the non-streamed string.
"""
from __future__ import annotations

import secrets
import string
from dataclasses import dataclass
from typing import Callable

from .format import ToolFormat
from .scanner import CallJsonScanner
from .syntax import Trigger, call_syntax

CALL_ID_ALPHABET = string.ascii_letters + string.digits


def new_tool_call_id() -> str:
    return "call_" + "".join(secrets.choice(CALL_ID_ALPHABET) for _ in range(24))


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str                   # JSON text

    def as_openai(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True)
class ContentDelta:
    text: str


@dataclass(frozen=True)
class ToolCallDelta:
    """One streamed piece of a call, as OpenAI's `delta.tool_calls[0]`: the first carries id, type and name."""
    index: int
    arguments: str = ""
    id: str | None = None
    type: str | None = None
    name: str | None = None

    def as_openai(self) -> dict:
        function = {"arguments": self.arguments} if self.name is None else \
            {"name": self.name, "arguments": self.arguments}
        head = {"id": self.id, "type": self.type} if self.id is not None else {}
        return {"index": self.index, **head, "function": function}


class ToolCallStreamParser:
    """Generated text in, OpenAI-shaped deltas out: content until a call opens (holding back only what may
    still become a trigger, and the whitespace just before it), then per call a first delta with index, id,
    type and name, then `arguments` fragments. Text between and after calls is not content."""

    def __init__(self, fmt: ToolFormat, *, max_calls: int | None = None,
                 new_id: Callable[[], str] = new_tool_call_id):
        self.syntax = call_syntax(fmt.family)
        self.max_calls = max_calls
        self._new_id = new_id
        self._mode = "text"                       # text | call | between
        self._pending = ""                        # text not decided yet
        self._seen_content = False                # some non-whitespace content went out
        self._scanner: CallJsonScanner | None = None
        self._sent: list[tuple[int, int] | None] = []   # per call of the scanner: (index, arguments sent)
        self._count = 0

    @property
    def calls_found(self) -> int:
        return self._count

    def push(self, text: str) -> list[ContentDelta | ToolCallDelta]:
        out: list = []
        self._pending += text
        while self._pending:
            if self._mode == "call":
                used = self._scanner.feed(self._pending)
                self._pending = self._pending[used:]
                self._call_deltas(out)
                if not self._scanner.done:
                    break
                self._mode = "between"
                continue
            found = self._find_trigger()
            if found is None:
                keep = self._holdback()
                if self._mode == "text" and len(self._pending) > keep:
                    self._content(out, self._pending[:len(self._pending) - keep])
                self._pending = self._pending[len(self._pending) - keep:]
                break
            start, trigger = found
            if self._mode == "text":
                self._content(out, self._pending[:start].rstrip())
            if self.max_calls is not None and self._count >= self.max_calls:
                self._mode, self._pending = "between", ""
                break
            self._pending = self._pending[start if trigger.in_body else start + len(trigger.text):]
            self._mode, self._scanner, self._sent = "call", CallJsonScanner(), []
        return out

    def finish(self) -> list[ContentDelta | ToolCallDelta]:
        """What is still held back, at the end of the output."""
        out: list = []
        if self._mode == "text" and self._pending:
            self._content(out, self._pending)
        self._pending = ""
        return out

    def _content(self, out: list, text: str) -> None:
        if text:
            out.append(ContentDelta(text))
            self._seen_content = self._seen_content or not text.isspace()

    def _find_trigger(self) -> tuple[int, Trigger] | None:
        text = self._pending
        best = None
        for trigger in self.syntax.triggers:
            if trigger.at_start:
                stripped = text.lstrip()
                at = len(text) - len(stripped) \
                    if self._at_start() and stripped.startswith(trigger.text) else -1
            else:
                at = text.find(trigger.text)
            if at >= 0 and (best is None or at < best[0]):
                best = (at, trigger)
        return best

    def _at_start(self) -> bool:
        return self._mode == "text" and not self._seen_content

    def _holdback(self) -> int:
        """How much of the end of the pending text may still become a trigger (with the whitespace before)."""
        text = self._pending
        keep = 0
        for trigger in self.syntax.triggers:
            if trigger.at_start:
                if self._at_start() and trigger.text.startswith(text.lstrip()):
                    keep = len(text)
                continue
            for k in range(min(len(text), len(trigger.text) - 1), 0, -1):
                if text.endswith(trigger.text[:k]):
                    keep = max(keep, k)
                    break
        if self._mode == "text":
            before = text[:len(text) - keep]
            keep += len(before) - len(before.rstrip())
        return keep

    def _call_deltas(self, out: list) -> None:
        calls = self._scanner.calls
        self._sent += [None] * (len(calls) - len(self._sent))
        for i, call in enumerate(calls):
            if self._sent[i] is None:
                if call.name is None or (self.max_calls is not None and self._count >= self.max_calls):
                    continue
                self._sent[i] = (self._count, 0)
                out.append(ToolCallDelta(self._count, "", id=self._new_id(), type="function", name=call.name))
                self._count += 1
            index, sent = self._sent[i]
            fragment = call.arguments_after(sent)
            if fragment:
                out.append(ToolCallDelta(index, fragment))
                self._sent[i] = (index, sent + len(fragment))


def collect_tool_calls(deltas: list) -> tuple[str | None, list[ToolCall]]:
    """Stream deltas → the content text (None when empty) and the complete calls."""
    content = "".join(d.text for d in deltas if isinstance(d, ContentDelta))
    calls: dict[int, dict] = {}
    for d in deltas:
        if isinstance(d, ToolCallDelta):
            call = calls.setdefault(d.index, {"id": d.id, "name": d.name, "arguments": ""})
            call["arguments"] += d.arguments
    return content or None, [ToolCall(c["id"], c["name"], c["arguments"]) for _, c in sorted(calls.items())]


def parse_tool_calls(text: str, fmt: ToolFormat, *, max_calls: int | None = None,
                     new_id: Callable[[], str] = new_tool_call_id) -> tuple[str | None, list[ToolCall]]:
    """The calls in a complete output, and the content: the text before the first call (None when there is
    none), or the whole text when there is no call."""
    parser = ToolCallStreamParser(fmt, max_calls=max_calls, new_id=new_id)
    deltas = parser.push(text) + parser.finish()
    return collect_tool_calls(deltas)
