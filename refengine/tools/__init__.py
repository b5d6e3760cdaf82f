"""Tool calling: tools into the prompt, tool calls out of the generated text, and the grammar a call must follow.

One module per stage of a request:

    format.py     which call format the chat template implies (hermes, mistral, llama3_json), and whether it
                  renders tools and tool history itself
    choice.py     the request's tools and tool_choice: the functions a call may name, and the finish_reason
    prompting.py  the messages and tools the template sees (the fallback tool prompt for templates without)
    syntax.py     how each format opens, closes and separates calls (shared by parsing and the grammar)
    scanner.py    a call's JSON read one character at a time
    parsing.py    the calls out of the output: streamed deltas and whole calls
    grammar.py    the constraint the calls must follow, as data and as a grammar
"""
from .choice import ToolChoice, ToolRequestError, ToolSet, function_specs, resolve_tool_choice, tool_finish_reason
from .format import HERMES, LLAMA3_JSON, MISTRAL, ToolFormat, detect_tool_format, template_reads
from .grammar import ToolConstraintSpec, tool_call_grammar, tool_constraint_spec
from .parsing import ContentDelta, ToolCall, ToolCallDelta, ToolCallStreamParser, collect_tool_calls, parse_tool_calls
from .prompting import PreparedChat, prepare_chat

__all__ = ["HERMES", "LLAMA3_JSON", "MISTRAL", "ContentDelta", "PreparedChat", "ToolCall", "ToolCallDelta",
           "ToolCallStreamParser", "ToolChoice", "ToolConstraintSpec", "ToolFormat", "ToolRequestError", "ToolSet",
           "collect_tool_calls", "detect_tool_format", "function_specs", "parse_tool_calls", "prepare_chat",
           "resolve_tool_choice", "template_reads", "tool_call_grammar", "tool_constraint_spec",
           "tool_finish_reason"]
