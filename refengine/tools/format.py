"""Which call format a chat template implies, and whether it renders tools itself.

Three call formats, chosen by the chat template's family:

    hermes       <tool_call>{"name": "f", "arguments": {...}}</tool_call>   (Qwen, Hermes; also our fallback)
    mistral      [TOOL_CALLS][{"name": "f", "arguments": {...}}, ...]
    llama3_json  {"name": "f", "parameters": {...}}; {...}                  (optionally after <|python_tag|>)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import jinja2
import jinja2.ext
import jinja2.nodes

HERMES, MISTRAL, LLAMA3_JSON = "hermes", "mistral", "llama3_json"


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
