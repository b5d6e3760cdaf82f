"""How the JSON text of a schema's instances may be written, and whether a schema is read by its letter.

Two styles matter:

- `SPEC_STYLE`, the letter of JSON Schema, for validating (MaskBench, `json_schema_mode: "plain"`):
  objects take undeclared properties unless `additionalProperties` says otherwise, their members in any
  order, and up to `max_ws` whitespace characters may come around every separator and bracket.
- `GENERATION_STYLE`, the server's default: an object that declares `properties` and says nothing of
  `additionalProperties` is closed (OpenAI's strict mode requires exactly that schema, XGrammar's strict
  mode reads it so too): a small model left free to invent keys invents them forever instead of writing the
  declared ones. Declared properties come in schema order (as OpenAI and llguidance write them: the order
  guides a small model, and the automaton stays small). Whitespace is compact, one space, or one newline
  plus indentation: no runs of blank lines for a model to loop on.

A schema may adjust the text shape with llguidance's top-level `"x-guidance"` object (`whitespace_flexible`,
`whitespace_pattern`, `item_separator`, `key_separator`, `coerce_one_of`); an option we cannot honour is a
`ConstraintError` naming it.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from . import regex
from .expr import EMPTY, ConstraintError, alt, chars_of, lit, opt, repeat, seq

MAX_INDENT = 16                  # spaces or tabs after a newline (indent=2 nested 8 deep)
WHITESPACE = ("flexible", "pretty", "compact")


@dataclass(frozen=True)
class JsonStyle:
    whitespace: str = "flexible"     # flexible: runs of up to max_ws; pretty: "", " " or newline + indent
    max_ws: int = 8                  # longest whitespace run in the flexible style
    close_objects: bool = False      # objects declaring properties, silent on additionalProperties: closed
    any_order: bool = False          # declared properties in any order (default: schema order)
    item_separator: str | None = None    # x-guidance regexes replacing "," / ":" and the whitespace around
    key_separator: str | None = None
    whitespace_pattern: str | None = None    # x-guidance: one match of it wherever whitespace may come
    coerce_one_of: bool = False      # x-guidance: oneOf read as anyOf


SPEC_STYLE = JsonStyle(any_order=True)
GENERATION_STYLE = JsonStyle(whitespace="pretty", close_objects=True)
# the request field `json_schema_mode` and the server flag `--json-schema-mode`
JSON_SCHEMA_MODES = {"generate": GENERATION_STYLE, "plain": SPEC_STYLE}

def with_x_guidance(style: JsonStyle, options) -> JsonStyle:
    """`style` adjusted by a schema's top-level `x-guidance` object (llguidance's JSON options)."""
    if not isinstance(options, dict):
        raise ConstraintError("x-guidance must be an object", keyword="x-guidance")
    changes: dict = {}
    for key, value in options.items():
        if key == "whitespace_flexible":
            _check(key, value, bool)
            changes["whitespace"] = "flexible" if value else "compact"
        elif key in ("item_separator", "key_separator", "whitespace_pattern"):
            _check(key, value, str)
            try:
                regex.full_match(value)             # a bad pattern is this option's error, found now
            except ConstraintError as e:
                raise ConstraintError(f"x-guidance {key}: {e.message}", keyword="x-guidance") from None
            changes[key] = value
        elif key == "coerce_one_of":
            _check(key, value, bool)
            changes[key] = value
        else:
            raise ConstraintError(f"x-guidance option {key!r} is not supported (supported: whitespace_flexible, "
                                  "whitespace_pattern, item_separator, key_separator, coerce_one_of)",
                                  keyword="x-guidance")
    return replace(style, **changes)


def _check(key: str, value, kind: type) -> None:
    if not isinstance(value, kind):
        raise ConstraintError(f"x-guidance {key} must be a {kind.__name__}", keyword="x-guidance")


@dataclass(frozen=True)
class JsonText:
    """The separators of one style, as expressions: after an opening bracket, before a closing one,
    between items (the comma with its whitespace) and between a key and its value."""
    open: object
    close: object
    item_sep: object
    key_sep: object


def json_text(style: JsonStyle) -> JsonText:
    if style.whitespace_pattern is not None:
        gap = opt(regex.full_match(style.whitespace_pattern))
        inner = gap
    elif style.whitespace == "flexible":
        gap = inner = repeat(chars_of(" \t\n\r"), 0, style.max_ws)
    elif style.whitespace == "pretty":
        gap = alt(EMPTY, lit(" "), seq(lit("\n"), repeat(chars_of(" \t"), 0, MAX_INDENT)))
        inner = EMPTY                            # nothing before a comma or a colon
    elif style.whitespace == "compact":
        gap = inner = EMPTY
    else:
        raise ValueError(f"unknown whitespace style {style.whitespace!r} (one of {', '.join(WHITESPACE)})")
    after_colon = opt(lit(" ")) if style.whitespace == "pretty" and style.whitespace_pattern is None else gap
    item_sep = regex.full_match(style.item_separator) if style.item_separator is not None \
        else seq(inner, lit(","), gap)
    key_sep = regex.full_match(style.key_separator) if style.key_separator is not None \
        else seq(inner, lit(":"), after_colon)
    return JsonText(open=gap, close=gap, item_sep=item_sep, key_sep=key_sep)
