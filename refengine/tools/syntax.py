"""How each call format opens, closes and separates calls: shared by the parser and the call grammar.

A llama3 call is recognised by its compact opening `{"name"` (as its prompt shows it); a mistral list of calls
also when it opens the output without [TOOL_CALLS] (a special token, whose text the detokenizer drops).
"""
from __future__ import annotations

from dataclasses import dataclass

from .format import HERMES, LLAMA3_JSON, MISTRAL


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
