"""Server-sent events parsing that keeps what a lenient client would hide.

Follows the WHATWG event-stream rules (lines end in CRLF, LF or CR; a blank line dispatches an event;
lines starting with ":" are comments, e.g. keep-alives) and additionally reports anything a strict reader
would complain about: unknown field names, a final event not terminated by a blank line, bytes that are
not UTF-8.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

LINE_BREAK = re.compile(r"\r\n|\n|\r")
KNOWN_FIELDS = ("data", "event", "id", "retry")


@dataclass(frozen=True)
class SseEvent:
    data: str                  # the data lines joined with "\n"
    event: str | None          # the `event:` field, if any
    raw: str                   # the lines of this event as received


@dataclass(frozen=True)
class SseStream:
    events: tuple[SseEvent, ...]
    comments: tuple[str, ...]
    problems: tuple[str, ...]  # framing defects, empty when the stream is well formed


def parse_sse(payload: bytes) -> SseStream:
    try:
        text = payload.decode("utf-8")
        problems: list[str] = []
    except UnicodeDecodeError as exc:
        text = payload.decode("utf-8", errors="replace")
        problems = [f"stream is not valid UTF-8: {exc}"]
    events: list[SseEvent] = []
    comments: list[str] = []
    data_lines: list[str] = []
    raw_lines: list[str] = []
    event_name: str | None = None
    lines = LINE_BREAK.split(text)
    # A complete stream ends with a line break, so the split leaves a final "" that is not a line.
    terminated = lines[-1] == ""
    if terminated:
        lines = lines[:-1]
    for line in lines:
        if line == "":
            if data_lines:
                events.append(SseEvent("\n".join(data_lines), event_name, "\n".join(raw_lines)))
            data_lines, raw_lines, event_name = [], [], None
            continue
        if line.startswith(":"):
            comments.append(line[1:].strip())
            continue
        raw_lines.append(line)
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data_lines.append(value)
        elif name == "event":
            event_name = value
        elif name not in KNOWN_FIELDS:
            problems.append(f"line is not an SSE field or comment: {line[:200]!r}")
    if data_lines:
        problems.append("the last event is not terminated by a blank line: "
                        f"{chr(10).join(raw_lines)[:200]!r}")
        events.append(SseEvent("\n".join(data_lines), event_name, "\n".join(raw_lines)))
    elif not terminated and lines:
        problems.append("the stream does not end with a line break")
    return SseStream(tuple(events), tuple(comments), tuple(problems))
