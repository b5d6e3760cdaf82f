"""Tool calling: tools into the prompt, tool calls out of the generated text, and the grammar a call must follow.

Three call formats, chosen by the chat template's family:

    hermes       <tool_call>{"name": "f", "arguments": {...}}</tool_call>   (Qwen, Hermes; also our fallback)
    mistral      [TOOL_CALLS][{"name": "f", "arguments": {...}}, ...]
    llama3_json  {"name": "f", "parameters": {...}}; {...}                  (optionally after <|python_tag|>)

A llama3 call is recognised by its compact opening `{"name"` (as its prompt shows it); a mistral list of calls
also when it opens the output without [TOOL_CALLS] (a special token, whose text the detokenizer drops).

A template that reads `tools` gets them as they are. A template that does not (the default SmolLM2's) gets
the documented fallback: a system message (merged into the first system message, else prepended) that lists
each tool's name, description and JSON-schema parameters and asks for the hermes call format. Assistant
`tool_calls` and `tool` results that such a template cannot render become text in the same format:

    assistant:  <content, if any>\\n<tool_call>{"name": "f", "arguments": {...}}</tool_call>   (one line a call)
    user:       <tool_response>\\n<result>\\n</tool_response>                  (consecutive results: one message)

tool_choice `none` is honoured by leaving the tools out of the prompt and not parsing calls (the history
still renders); no constraint is needed, since nothing in the output is ever read as a call.

Call ids are "call_" + 24 random letters and digits. A call's `arguments` is the JSON text the model wrote
(a JSON string value is unwrapped), so streamed fragments concatenate to exactly the non-streamed string.
"""
from __future__ import annotations

import copy
import json
import secrets
import string
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import jinja2
import jinja2.ext
import jinja2.nodes

from .constrain import build_grammar
from .constrain.expr import Call, Grammar, chars_of, lit, repeat, seq

HERMES, MISTRAL, LLAMA3_JSON = "hermes", "mistral", "llama3_json"
CALL_ID_ALPHABET = string.ascii_letters + string.digits
BODY_RULE = "tool_call_body"
MAX_GAP_WS = 2                       # whitespace allowed around a call's JSON by the call grammar


class ToolRequestError(ValueError):
    """The request's tools or tool_choice cannot be honoured (a 400 naming `param`)."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


# --- the template: does it take tools, and in which call format ---------------------------------------------

@dataclass(frozen=True)
class ToolFormat:
    family: str                      # HERMES | MISTRAL | LLAMA3_JSON: how calls are written and parsed
    native: bool                     # the chat template renders `tools` itself
    renders_tool_history: bool       # the chat template renders assistant `tool_calls` and `tool` messages


@dataclass(frozen=True)
class TemplateReads:
    """What a Jinja template reads: variable names, attribute names, and its string constants."""
    variables: frozenset[str]
    attributes: frozenset[str]
    strings: frozenset[str]


def template_reads(source: str) -> TemplateReads:
    """Walk the template's syntax tree (not its text, so `tools` in a comment or a string does not count)."""
    environment = jinja2.Environment(extensions=[jinja2.ext.loopcontrols])
    tree = environment.parse(source)
    return TemplateReads(
        variables=frozenset(n.name for n in tree.find_all(jinja2.nodes.Name) if n.ctx == "load"),
        attributes=frozenset(n.attr for n in tree.find_all(jinja2.nodes.Getattr)),
        strings=frozenset(n.value for n in tree.find_all(jinja2.nodes.Const) if isinstance(n.value, str)))


def detect_tool_format(source: str | None, vocabulary_has: Callable[[str], bool] = lambda token: False) \
        -> ToolFormat:
    """The call format a chat template (and its vocabulary's special tokens) implies.

    Native only when the template reads a `tools` variable; the family then comes from the markers in the
    template text or the vocabulary: [TOOL_CALLS] → mistral, <tool_call> → hermes, Llama 3 headers or
    <|python_tag|> → llama3_json, anything else → hermes. A template without `tools` gets our fallback prompt,
    which asks for the hermes format.
    """
    if not source:
        return ToolFormat(HERMES, native=False, renders_tool_history=False)
    reads = template_reads(source)
    native = "tools" in reads.variables
    history = "tool_calls" in reads.attributes or "tool_calls" in reads.strings
    if not native:
        return ToolFormat(HERMES, native=False, renders_tool_history=False)
    if "[TOOL_CALLS]" in source or vocabulary_has("[TOOL_CALLS]"):
        family = MISTRAL
    elif "<tool_call>" in source or vocabulary_has("<tool_call>"):
        family = HERMES
    elif "<|python_tag|>" in source or "<|start_header_id|>" in source:
        family = LLAMA3_JSON
    else:
        family = HERMES
    return ToolFormat(family, native=True, renders_tool_history=history)


def model_tool_format(model) -> ToolFormat:
    """`detect_tool_format` for a loaded model, computed once per tokenizer."""
    tokenizer = model.tokenizer
    source = model.template.source if model.template is not None else None
    return tokenizer.derived(
        ("tool_format", source),
        lambda: detect_tool_format(source, lambda token: tokenizer.token_id(token) is not None))


# --- tools and tool_choice ------------------------------------------------------------------------------------

def function_specs(tools: list[dict] | None) -> list[dict]:
    """The `function` objects of OpenAI `tools` ({"type": "function", "function": {...}})."""
    functions = []
    for i, tool in enumerate(tools or []):
        if tool.get("type", "function") != "function" or not isinstance(tool.get("function"), dict):
            raise ToolRequestError(f"tools[{i}]: only tools of type 'function' are supported", f"tools[{i}]")
        functions.append(tool["function"])
    return functions


@dataclass(frozen=True)
class ToolChoice:
    mode: str                        # "none" | "auto" | "required"
    names: tuple[str, ...]           # the functions a call may name
    named: bool = False              # a specific function was asked for (finish_reason stays "stop")


def resolve_tool_choice(tools: list[dict] | None, tool_choice) -> ToolChoice:
    """OpenAI's tool_choice: None (auto with tools, none without), "none" | "auto" | "required",
    {"type": "function", "function": {"name"}}, or {"type": "allowed_tools", "allowed_tools": {"mode", "tools"}}.
    """
    names = tuple(f["name"] for f in function_specs(tools))
    if tool_choice is None:
        return ToolChoice("auto" if names else "none", names)
    if tool_choice in ("none", "auto", "required"):
        if tool_choice == "required" and not names:
            raise ToolRequestError("tool_choice 'required' needs at least one tool in 'tools'", "tool_choice")
        return ToolChoice(tool_choice if names else "none", names)
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        name = (tool_choice.get("function") or {}).get("name")
        return ToolChoice("required", _known(names, [name]), named=True)
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "allowed_tools":
        allowed = tool_choice.get("allowed_tools") or {}
        mode = allowed.get("mode", "auto")
        if mode not in ("auto", "required"):
            raise ToolRequestError(f"allowed_tools mode must be 'auto' or 'required', not {mode!r}", "tool_choice")
        listed = [(t.get("function") or {}).get("name", t.get("name")) for t in allowed.get("tools", [])]
        return ToolChoice(mode, _known(names, listed))
    raise ToolRequestError(f"unsupported tool_choice {tool_choice!r}", "tool_choice")


def _known(names: tuple[str, ...], wanted: list) -> tuple[str, ...]:
    for name in wanted:
        if name not in names:
            raise ToolRequestError(f"tool_choice names {name!r}, which is not in 'tools'", "tool_choice")
    if not wanted:
        raise ToolRequestError("tool_choice allows no tool", "tool_choice")
    return tuple(dict.fromkeys(wanted))


def tool_finish_reason(tool_choice: ToolChoice, has_calls: bool, finish_reason: str) -> str:
    """OpenAI's finish_reason: "tool_calls" when calls come back for auto / required, but "stop" for a named
    function (vllm-project/vllm#25054); a cut-off output ("length") stays "length"."""
    if has_calls and finish_reason == "stop" and not tool_choice.named:
        return "tool_calls"
    return finish_reason


# --- prompting ------------------------------------------------------------------------------------------------

class PreparedChat(NamedTuple):
    messages: list[dict]             # for ChatTemplate.render / chat_prompt_ids
    tools: list[dict] | None         # for the template's `tools` (None: the template is not given tools)
    format: ToolFormat


def prepare_chat(model, messages: list[dict], tools: list[dict] | None = None, tool_choice=None) -> PreparedChat:
    """Messages and tools as the model's template should see them:

        chat = prepare_chat(model, messages, tools, tool_choice)
        ids = chat_prompt_ids(model, chat.messages, tools=chat.tools, template_kwargs=...)
    """
    fmt = model_tool_format(model)
    offered = tools if tools and resolve_tool_choice(tools, tool_choice).mode != "none" else None
    messages = _with_tool_names(messages)
    if fmt.renders_tool_history:
        messages = [_arguments_as_objects(m) for m in messages]
    else:
        messages = history_as_text(messages)
    if fmt.native:
        return PreparedChat(messages, offered, fmt)
    if offered:
        messages = with_system_text(messages, fallback_tool_prompt(function_specs(offered)))
    return PreparedChat(messages, None, fmt)


def fallback_tool_prompt(functions: list[dict]) -> str:
    """The system text that offers tools to a template that cannot render them."""
    lines = ["# Tools", "", "You may call one or more of these functions to answer the user.", ""]
    for function in functions:
        lines.append(f"## {function['name']}")
        if function.get("description"):
            lines.append(function["description"])
        parameters = function.get("parameters") or {"type": "object", "properties": {}}
        lines.append("Parameters (JSON Schema): " + json.dumps(parameters, ensure_ascii=False))
        lines.append("")
    lines += ["To call a function, answer with one line per call, exactly in this format:",
              '<tool_call>{"name": "<function name>", "arguments": {<arguments as a JSON object>}}</tool_call>',
              "Results come back in <tool_response></tool_response> tags, in the order of the calls."]
    return "\n".join(lines)


def with_system_text(messages: list[dict], text: str) -> list[dict]:
    """`text` appended to the first message when it is a system message, else a new system message first."""
    if messages and messages[0].get("role") in ("system", "developer"):
        first = messages[0]
        content = first.get("content")
        if isinstance(content, list):
            content = [*content, {"type": "text", "text": text}]
        else:
            content = f"{content}\n\n{text}" if content else text
        return [{**first, "content": content}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def history_as_text(messages: list[dict]) -> list[dict]:
    """Assistant tool calls and tool results as plain text in the hermes format (consecutive tool results
    become one user message), for templates that know neither."""
    out: list[dict] = []
    for message in messages:
        role = message.get("role")
        if role == "assistant" and message.get("tool_calls"):
            calls = "\n".join(_call_text(call) for call in message["tool_calls"])
            content = _text_of(message.get("content"))
            rest = {k: v for k, v in message.items() if k != "tool_calls"}
            out.append({**rest, "content": f"{content}\n{calls}" if content else calls})
        elif role == "tool":
            response = f"<tool_response>\n{_text_of(message.get('content'))}\n</tool_response>"
            if out and out[-1].get("role") == "user" and out[-1].get("_tool_results"):
                out[-1] = {**out[-1], "content": out[-1]["content"] + "\n" + response}
            else:
                out.append({"role": "user", "content": response, "_tool_results": True})
        else:
            out.append(message)
    return [{k: v for k, v in m.items() if k != "_tool_results"} for m in out]


def _call_text(call: dict) -> str:
    function = call.get("function", call)
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            pass                                  # kept as the string the client sent
    body = {"name": function.get("name"), "arguments": arguments if arguments is not None else {}}
    return f"<tool_call>{json.dumps(body, ensure_ascii=False)}</tool_call>"


def _text_of(content) -> str:
    if content is None:
        return ""
    if isinstance(content, list):
        return "\n".join(part.get("text", "") for part in content if part.get("type") == "text")
    return str(content)


def _with_tool_names(messages: list[dict]) -> list[dict]:
    """Tool results get the `name` of the call they answer (looked up by tool_call_id): several templates
    render it, and one (vLLM's hermes) refuses a tool message without it."""
    names: dict[str, str] = {}
    out = []
    for message in messages:
        for call in message.get("tool_calls") or ():
            if call.get("id") is not None:
                names[call["id"]] = call.get("function", {}).get("name")
        if message.get("role") == "tool" and "name" not in message and message.get("tool_call_id") in names:
            message = {**message, "name": names[message["tool_call_id"]]}
        out.append(message)
    return out


def _arguments_as_objects(message: dict) -> dict:
    """OpenAI sends arguments as a JSON string; templates expect the object (they `tojson` it)."""
    if not message.get("tool_calls"):
        return message
    calls = []
    for call in message["tool_calls"]:
        function = call.get("function") or {}
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            try:
                function = {**function, "arguments": json.loads(arguments)}
            except ValueError:
                pass
        calls.append({**call, "function": function})
    return {**message, "tool_calls": calls}


# --- parsing: batch and streaming ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Trigger:
    text: str
    in_body: bool = False            # the trigger is the first text of the call's JSON itself
    at_start: bool = False           # recognised only at the start of the output (after whitespace)


@dataclass(frozen=True)
class CallSyntax:
    triggers: tuple[Trigger, ...]    # what opens a call in the text
    opening: str                     # what our call grammar writes before a call's JSON
    closing: str                     # after a call's JSON ("" when the JSON's end closes it)
    separator: str                   # between two calls (besides whitespace)
    arguments_key: str               # the key our call grammar writes the arguments under
    list_body: bool                  # all calls in one JSON list


def call_syntax(family: str) -> CallSyntax:
    if family == HERMES:
        return CallSyntax((Trigger("<tool_call>"),), "<tool_call>", "</tool_call>", "", "arguments", False)
    if family == MISTRAL:
        # [TOOL_CALLS] is a special token in Mistral's vocabularies; its text vanishes from the decoded output,
        # so a list of calls that opens the output counts too
        return CallSyntax((Trigger("[TOOL_CALLS]"), Trigger("[{", in_body=True, at_start=True)),
                          "[TOOL_CALLS]", "", "", "arguments", True)
    if family == LLAMA3_JSON:
        return CallSyntax((Trigger("<|python_tag|>"), Trigger('{"name"', in_body=True)),
                          "", "", ";", "parameters", False)
    raise ValueError(f"unknown tool call family {family!r}")


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


@dataclass
class _PartialCall:
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


class _CallJsonScanner:
    """Reads one JSON value — a call object, or a list of call objects — one character at a time, tracking
    only what it must: nesting, strings, and the `name` and `arguments` (or `parameters`) members."""

    def __init__(self):
        self.calls: list[_PartialCall] = []
        self.done = False                         # the value is complete, or the text is not JSON after all
        self._stack: list[str] = []
        self._started = False
        self._in_string = self._escape = False
        self._call: _PartialCall | None = None
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
                self._call = _PartialCall()
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
        self._scanner: _CallJsonScanner | None = None
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
            self._mode, self._scanner, self._sent = "call", _CallJsonScanner(), []
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


# --- the constraint a call must follow -----------------------------------------------------------------------

@dataclass(frozen=True)
class ToolConstraintSpec:
    """What the generated tool calls must look like, as plain data.

    The grammar (see `tool_call_grammar`) covers the whole call section, from the first character of its
    opening to the end of the output: `opening`, the JSON (`schema`), `end`, then up to `max_calls - 1` more
    such units after `separator` (whitespace allowed around each part), then EOS.

    `trigger` None: the output follows the grammar from its first token (tool_choice required / named).
    Otherwise (auto) the output is free until its text contains `trigger`; from there the grammar applies,
    started at the trigger's first character: walk its initial state over the trigger text (and any bytes
    of the triggering token past it) with `automaton.walk`, then constrain every following token.
    """
    trigger: str | None
    schema: dict                     # one call object, or (mistral) the list of calls
    end: str
    opening: str = ""
    separator: str = ""
    max_calls: int | None = None     # units of opening + JSON + end; None: any number


def tool_constraint_spec(tools: list[dict] | None, tool_choice, parallel_tool_calls: bool | None,
                         fmt: ToolFormat) -> ToolConstraintSpec | None:
    """The constraint for a request's tool calls; None when no call may be made (tool_choice none)."""
    choice = resolve_tool_choice(tools, tool_choice)
    if choice.mode == "none":
        return None
    syntax = call_syntax(fmt.family)
    functions = {f["name"]: f for f in function_specs(tools)}
    one_call = parallel_tool_calls is False or choice.named
    calls = [call_object_schema(functions[name], syntax.arguments_key) for name in choice.names]
    call = calls[0] if len(calls) == 1 else {"anyOf": calls}
    call = _lift_definitions(call)
    trigger = None if choice.mode == "required" else _lazy_trigger(syntax)
    if syntax.list_body:
        schema = {**{k: v for k, v in call.items() if k == "$defs"}, "type": "array",
                  "items": {k: v for k, v in call.items() if k != "$defs"}, "minItems": 1,
                  **({"maxItems": 1} if one_call else {})}
        return ToolConstraintSpec(trigger, schema, syntax.closing, syntax.opening, syntax.separator, 1)
    return ToolConstraintSpec(trigger, call, syntax.closing, syntax.opening, syntax.separator,
                              1 if one_call else None)


def _lazy_trigger(syntax: CallSyntax) -> str:
    return next(t.text for t in syntax.triggers if not t.at_start and (t.in_body or t.text == syntax.opening))


def call_object_schema(function: dict, arguments_key: str) -> dict:
    """{"name": <this function>, <arguments_key>: <its arguments>}: the `parameters` schema when the function
    is `strict`. Otherwise the arguments are guided by `parameters` with undeclared properties closed (so a
    small model fills in the declared ones instead of echoing the schema), as vLLM guides them; when that
    schema cannot be compiled, any JSON object."""
    parameters = function.get("parameters")
    if function.get("strict"):
        arguments = parameters if parameters is not None else \
            {"type": "object", "properties": {}, "additionalProperties": False}
    else:
        arguments = _guidance_schema(parameters)
    return {"type": "object", "properties": {"name": {"const": function["name"]}, arguments_key: arguments},
            "required": ["name", arguments_key], "additionalProperties": False}


def _guidance_schema(parameters: dict | None) -> dict:
    if not isinstance(parameters, dict) or parameters.get("type") != "object" or not parameters.get("properties"):
        return {"type": "object"}
    guided = {"additionalProperties": False, **parameters}
    try:
        build_grammar("json_schema", _lift_definitions(call_shell(guided)))
    except ValueError:                   # ConstraintError included
        return {"type": "object"}
    return guided


def call_shell(arguments: dict) -> dict:
    """A call object around `arguments`, to compile them exactly as they will be used."""
    return {"type": "object", "properties": {"name": {"const": "f"}, "arguments": arguments},
            "required": ["name", "arguments"], "additionalProperties": False}


def _lift_definitions(schema: dict) -> dict:
    """Parameters schemas use `$ref`s relative to their own root ("#/$defs/X", "#"). Nested under a call
    object they would point elsewhere, so each arguments schema that has a `$ref` moves into the root's
    `$defs` and its local refs are rewritten to its new place."""
    schema = copy.deepcopy(schema)
    definitions: dict = {}
    calls = schema["anyOf"] if "anyOf" in schema else [schema]
    for i, call in enumerate(calls):
        properties = call["properties"]
        key = next(k for k in properties if k != "name")
        arguments = properties[key]
        if not _has_ref(arguments):
            continue
        name = f"tool_arguments_{i}"
        definitions[name] = _rebase_refs(arguments, f"#/$defs/{name}")
        properties[key] = {"$ref": f"#/$defs/{name}"}
    if definitions:
        schema["$defs"] = definitions
    return schema


def _has_ref(value) -> bool:
    if isinstance(value, dict):
        return "$ref" in value or any(_has_ref(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_ref(v) for v in value)
    return False


def _rebase_refs(value, base: str):
    if isinstance(value, dict):
        out = {k: _rebase_refs(v, base) for k, v in value.items()}
        ref = value.get("$ref")
        if isinstance(ref, str) and ref.startswith("#"):
            out["$ref"] = base + ref[1:]
        return out
    if isinstance(value, list):
        return [_rebase_refs(v, base) for v in value]
    return value


def tool_call_grammar(spec: ToolConstraintSpec) -> Grammar:
    """The spec as a constrainer grammar (compile it with `Constraint(Automaton(grammar), vocab)`)."""
    body = build_grammar("json_schema", spec.schema)
    if BODY_RULE in body.rules:
        raise ValueError(f"rule name {BODY_RULE!r} already used by the schema grammar")
    rules = {**body.rules, BODY_RULE: body.start}
    ws = repeat(chars_of(" \n"), 0, MAX_GAP_WS)
    call = seq(lit(spec.opening), ws, Call(BODY_RULE), ws, lit(spec.end))
    # calls follow each other with no free whitespace before the next one, so that after a complete call a
    # model that likes a newline (SmolLM2 does) ends the output rather than being forced into another call
    more = seq(lit(spec.separator), ws, call) if spec.separator else call
    extra = None if spec.max_calls is None else spec.max_calls - 1
    return Grammar(seq(call, repeat(more, 0, extra)), rules)
