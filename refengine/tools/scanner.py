"""Reading a call's JSON one character at a time, so that its name and arguments can stream out as they come."""
from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass
class PartialCall:
    """A call object as far as it has been read."""
    name: str | None = None
    has_arguments: bool = False
    arguments_raw: list[str] = field(default_factory=list)
    arguments_is_string: bool = False
    arguments_done: bool = False
    closed: bool = False

    def arguments_text(self) -> str:
        """The arguments JSON known so far; grows only by appending (streamable)."""
        if not self.has_arguments:
            return "{}" if self.closed else ""
        raw = "".join(self.arguments_raw)
        if not self.arguments_is_string:
            return raw
        if not self.arguments_done:
            return ""                             # a JSON string holding the JSON: wait for all of it
        try:
            value = json.loads(raw)
        except ValueError:
            return raw
        return value if isinstance(value, str) else raw

    def arguments_after(self, sent: int) -> str:
        """`arguments_text()[sent:]`, without joining all of it again on every token."""
        if self.has_arguments and not self.arguments_is_string:
            return "".join(self.arguments_raw[sent:])            # one character per item
        return self.arguments_text()[sent:]


class CallJsonScanner:
    """Reads one JSON value — a call object, or a list of call objects — one character at a time, tracking
    only what it must: nesting, strings, and the `name` and `arguments` (or `parameters`) members."""

    def __init__(self):
        self.calls: list[PartialCall] = []
        self.done = False                         # the value is complete, or the text is not JSON after all
        self._stack: list[str] = []
        self._started = False
        self._in_string = self._escape = False
        self._call: PartialCall | None = None
        self._call_depth = 0
        self._expect = "key"                      # at the call's own level: key | colon | value | comma
        self._key: list[str] | None = None        # raw characters of the key being read
        self._member: str | None = None           # which member's value comes: name | arguments | other
        self._name: list[str] | None = None       # raw characters of the name string
        self._arguments_depth: int | None = None  # the nesting depth the arguments value started at
        self._arguments_scalar = False

    def feed(self, text: str) -> int:
        """Consume characters of `text` until the value is complete; returns how many were consumed."""
        for i, char in enumerate(text):
            if self.done:
                return i
            if not self._started:
                if char.isspace():
                    continue
                if char not in "{[":
                    self.done = True              # not a JSON value: nothing to read here
                    return i
                self._started = True
            self._step(char)
        return len(text)

    def _step(self, char: str) -> None:
        call = self._call
        capturing = self._arguments_depth is not None
        if capturing and not (self._arguments_scalar and (char.isspace() or char in ",}")):
            call.arguments_raw.append(char)
        if self._in_string:
            if self._key is not None:
                self._key.append(char)
            if self._name is not None:
                self._name.append(char)
            if self._escape:
                self._escape = False
            elif char == "\\":
                self._escape = True
            elif char == '"':
                self._in_string = False
                self._string_ended()
            return
        at_call_level = call is not None and len(self._stack) == self._call_depth
        if at_call_level and self._expect == "value" and not char.isspace():
            self._value_starts(char)
        if char == '"':
            self._in_string = True
            if at_call_level and self._expect == "key":
                self._key = ['"']
        elif char in "{[":
            if char == "{" and call is None and (not self._stack or self._stack == ["["]):
                self._call = PartialCall()
                self.calls.append(self._call)
                self._call_depth = len(self._stack) + 1
                self._expect = "key"
            self._stack.append(char)
        elif char in "}]":
            if self._stack:
                self._stack.pop()
            if call is not None and len(self._stack) < self._call_depth:
                self._end_scalar_arguments()
                call.closed = True
                self._call = None
            elif capturing and not self._arguments_scalar and len(self._stack) == self._arguments_depth:
                self._arguments_end()
            if not self._stack:
                self.done = True
        elif at_call_level and char == ":" and self._expect == "colon":
            self._expect = "value"
        elif at_call_level and char == ",":
            self._end_scalar_arguments()
            self._expect = "key"

    def _value_starts(self, char: str) -> None:
        self._expect = "comma"
        call = self._call
        if self._member == "name" and char == '"':
            self._name = ['"']
        elif self._member == "arguments":
            call.has_arguments = True
            call.arguments_raw = [char]
            call.arguments_is_string = char == '"'
            self._arguments_scalar = char not in '{["'
            self._arguments_depth = len(self._stack)

    def _string_ended(self) -> None:
        if self._key is not None:
            key = _json_string("".join(self._key))
            self._key = None
            self._expect = "colon"
            has_arguments = self._call.has_arguments
            self._member = "name" if key == "name" else \
                "arguments" if key in ("arguments", "parameters") and not has_arguments else None
        elif self._name is not None:
            self._call.name = _json_string("".join(self._name))
            self._name = None
        elif self._arguments_depth is not None and self._call.arguments_is_string \
                and len(self._stack) == self._arguments_depth:
            self._arguments_end()

    def _end_scalar_arguments(self) -> None:
        if self._arguments_depth is not None and self._arguments_scalar:
            self._arguments_end()

    def _arguments_end(self) -> None:
        self._call.arguments_done = True
        self._arguments_depth = None
        self._arguments_scalar = False


def _json_string(raw: str) -> str | None:
    """The value of a JSON string literal; None for a malformed one (a model's bad escape)."""
    try:
        return json.loads(raw)
    except ValueError:
        return None
