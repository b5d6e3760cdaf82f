"""The grammar a request's tool calls must follow, as plain data (`ToolConstraintSpec`) and as a grammar."""
from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass

from ..constrain import SPEC_STYLE, ConstraintError, JsonStyle, build_grammar
from ..constrain.expr import Call, Grammar, chars_of, lit, repeat, seq
from .choice import ToolSet
from .format import ToolFormat
from .syntax import CallSyntax, call_syntax

BODY_RULE = "tool_call_body"
MAX_GAP_WS = 2                       # whitespace allowed around a call's JSON by the call grammar


@dataclass(frozen=True)
class ToolConstraintSpec:
    """What the generated tool calls must look like, as plain data.

    The grammar (see `tool_call_grammar`) covers the whole call section, from the first character of its
    opening to the end of the output: `opening`, the JSON (`schema`), `end`, then up to `max_calls - 1` more
    such units after `separator` (whitespace allowed around each part), then EOS.

    `trigger` None: the output follows the grammar from its first token (tool_choice required / named).
    Otherwise (auto) the output is free until its text contains `trigger`; from there the grammar applies,
    started at the trigger's first character: walk its initial state over the trigger text (and any bytes
    of the triggering token past it) with `Constraint.walk`, then constrain every following token.
    """
    trigger: str | None
    schema: dict                     # one call object, or (mistral) the list of calls
    end: str
    opening: str = ""
    separator: str = ""
    max_calls: int | None = None     # units of opening + JSON + end; None: any number


def tool_constraint_spec(tools: ToolSet, fmt: ToolFormat) -> ToolConstraintSpec | None:
    """The constraint for a request's tool calls; None when no call may be made (tool_choice none).
    ConstraintError when a strict function's `parameters` nest too deeply to copy."""
    choice = tools.choice
    if choice.mode == "none":
        return None
    syntax = call_syntax(fmt.family)
    functions = {f["name"]: f for f in tools.functions}
    one_call = tools.max_calls == 1
    calls = [call_object_schema(functions[name], syntax.arguments_key) for name in choice.names]
    call = calls[0] if len(calls) == 1 else {"anyOf": calls}
    with _refuse_deep_nesting():
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
    # `"properties": {}` declares a function without arguments: closed, it allows `{}` alone
    if not isinstance(parameters, dict) or parameters.get("type") != "object" or "properties" not in parameters:
        return {"type": "object"}
    guided = {"additionalProperties": False, **parameters}
    try:
        build_grammar("json_schema", _lift_definitions(call_shell(guided)))
    except (ValueError, RecursionError):   # ConstraintError included; RecursionError: nested too deeply
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


def tool_call_grammar(spec: ToolConstraintSpec, style: JsonStyle = SPEC_STYLE) -> Grammar:
    """The spec as a constrainer grammar (compile it with `Constraint(Automaton(grammar), vocab)`), its
    JSON read in `style`; a ConstraintError when its schema cannot be compiled."""
    with _refuse_deep_nesting():
        body = build_grammar("json_schema", spec.schema, style)
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


@contextmanager
def _refuse_deep_nesting():
    """A schema nested deeper than Python's stack allows is the request's error, not the server's: the
    ConstraintError that `compile_constraint` raises for it."""
    try:
        yield
    except RecursionError:
        raise ConstraintError("the constraint is nested too deeply", keyword="size") from None
