"""One response's output items, built from its choice's parts as they come, with the `response.*` events
that announce them: the same builder serves streamed and non-streamed answers, so the two always agree.

    ReasoningDelta ─► a reasoning item:     output_item.added, content_part.added (reasoning_text),
                                            reasoning_text.delta..., reasoning_text.done, content_part.done,
                                            output_item.done
    ContentDelta   ─► a message item:       output_item.added, content_part.added (output_text),
                                            output_text.delta..., output_text.done, content_part.done,
                                            output_item.done
    ToolCallDelta  ─► a function_call item: output_item.added, function_call_arguments.delta...,
                                            function_call_arguments.done, output_item.done

An item is closed when a part of another item arrives, or at the end (`finish`). An output with no message
and no call gets an empty message, so every response has something to show. Events come without their
`sequence_number`, which the stream numbers as it sends them.
"""
from __future__ import annotations

import uuid

from refengine.output import ReasoningDelta
from refengine.tools import ToolCallDelta

STARTED = "in_progress"


def item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _text_part(text: str = "") -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _reasoning_part(text: str = "") -> dict:
    return {"type": "reasoning_text", "text": text}


class ResponseOutput:
    def __init__(self):
        self.items: list[dict] = []          # the output so far; the last may still be open
        self._open: dict | None = None

    def add(self, part) -> list[dict]:
        """The events one part of the output causes."""
        if isinstance(part, ReasoningDelta):
            return self._delta("reasoning", part.text)
        if isinstance(part, ToolCallDelta):
            return self._call(part)
        return self._delta("message", part.text)

    def finish(self, status: str = "completed") -> list[dict]:
        """Close the open item with `status` (completed, or incomplete when the output was cut off)."""
        events = []
        if not any(item["type"] in ("message", "function_call") for item in self.items):
            events += self._close(status) + self._open_item("message")
        return events + self._close(status)

    # ---- items ----

    def _delta(self, kind: str, text: str) -> list[dict]:
        events = [] if self._open is not None and self._open["type"] == kind else self._close() + self._open_item(kind)
        self._open["content"][0]["text"] += text
        if kind == "reasoning":
            return events + [{"type": "response.reasoning_text.delta", **self._where(), "content_index": 0,
                              "delta": text}]
        return events + [{"type": "response.output_text.delta", **self._where(), "content_index": 0, "delta": text,
                          "logprobs": []}]

    def _call(self, part: ToolCallDelta) -> list[dict]:
        events = []
        if part.id is not None:              # a call's first delta: a new item (later deltas continue it)
            events = self._close() + self._open_item("function_call", call_id=part.id, name=part.name)
        self._open["arguments"] += part.arguments
        if part.arguments:
            events.append({"type": "response.function_call_arguments.delta", **self._where(),
                           "delta": part.arguments})
        return events

    def _open_item(self, kind: str, **fields) -> list[dict]:
        if kind == "message":
            item = {"id": item_id("msg"), "type": "message", "status": STARTED, "role": "assistant", "content": []}
        elif kind == "reasoning":
            item = {"id": item_id("rs"), "type": "reasoning", "summary": [], "content": [], "status": STARTED}
        else:
            item = {"id": item_id("fc"), "type": "function_call", "status": STARTED, "arguments": "", **fields}
        self.items.append(item)
        self._open = item
        events = [{"type": "response.output_item.added", "output_index": len(self.items) - 1, "item": _copy(item)}]
        if kind != "function_call":
            part = _text_part() if kind == "message" else _reasoning_part()
            events.append({"type": "response.content_part.added", **self._where(), "content_index": 0, "part": part})
            item["content"].append(_copy(part))
        return events

    def _close(self, status: str = "completed") -> list[dict]:
        item = self._open
        if item is None:
            return []
        self._open = None
        item["status"] = status
        where = {"item_id": item["id"], "output_index": self.items.index(item)}
        if item["type"] == "function_call":
            events = [{"type": "response.function_call_arguments.done", **where, "name": item["name"],
                       "arguments": item["arguments"]}]
        else:
            part = item["content"][0]
            done = ({"type": "response.output_text.done", **where, "content_index": 0, "text": part["text"],
                     "logprobs": []} if item["type"] == "message" else
                    {"type": "response.reasoning_text.done", **where, "content_index": 0, "text": part["text"]})
            events = [done, {"type": "response.content_part.done", **where, "content_index": 0, "part": _copy(part)}]
        return events + [{"type": "response.output_item.done", "output_index": where["output_index"],
                          "item": _copy(item)}]

    def _where(self) -> dict:
        return {"item_id": self._open["id"], "output_index": len(self.items) - 1}


def _copy(item: dict) -> dict:
    """A snapshot of an item (its content parts are written further after an event announces them)."""
    return {key: [dict(part) for part in value] if key == "content" else value for key, value in item.items()}
