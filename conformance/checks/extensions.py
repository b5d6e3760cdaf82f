"""Extensions: the non-OpenAI request fields many servers accept (see the seed request in the docs).

Each field must either be accepted *with an observable effect* or be rejected with a clear 400 (an error
envelope whose param or message names the field). Silently ignoring a field is the failure: the user
believes a sampler or constraint is active when it is not. An effect is observed differentially, by
comparing against the same request without the field; when the model makes the difference invisible
(e.g. it is so confident that sampling equals greedy), the check skips rather than guesses.
"""
from __future__ import annotations

import re

from ..check import Skip, check, require
from ..expect import error_body, first_choice, message_text, ok_completion, usage_of
from .errors import too_long_prompt
from .structured_output import PET_PROMPT, PET_SCHEMA, verify_json_output

CATEGORY = "extensions"
HOT_TEMPERATURE = 1.5
SEEDS = (1, 2, 3)
REPEAT_PROMPT = "Write the word 'hello' ten times."
EXT_MAX_TOKENS = 16


class Rejected(Exception):
    """The server refused the field with a clear 400: a legitimate way to not support it."""


def send_with(ctx, field: str, prompt: str | None = None, **fields):
    """The request with the extension `fields`; raises Rejected on a clear 400 naming `field`."""
    exchange = ctx.chat(prompt, **fields) if prompt else ctx.chat(**fields)
    if exchange.status == 200:
        return exchange
    require(exchange.status == 400,
            f"{field} was neither accepted (200) nor rejected with a 400 (got {exchange.status})",
            exchange.evidence())
    error = error_body(exchange)
    names_field = field in str(error.get("param") or "") or field in error["message"]
    require(names_field, f"the 400 for {field} does not name {field!r} in param or message",
            exchange.evidence(error))
    raise Rejected(field)


def extension_check(name: str, description: str):
    """Like `check`, at level EXT, turning a clear rejection into a pass."""
    def wrap(fn):
        def run(ctx):
            try:
                fn(ctx)
            except Rejected:
                return
        return check(CATEGORY, "EXT", name, description)(run)
    return wrap


def greedy(ctx, prompt: str | None = None, **fields) -> str:
    exchange = ctx.chat(prompt, **fields) if prompt else ctx.chat(**fields)
    return message_text(first_choice(ok_completion(exchange)))


def _truncation_to_greedy(ctx, field: str, value) -> None:
    """`field=value` reduces hot sampling to greedy: every seed gives the greedy text."""
    baseline = greedy(ctx)
    for seed in SEEDS:
        exchange = send_with(ctx, field, **{field: value}, temperature=HOT_TEMPERATURE, seed=seed)
        text = message_text(first_choice(ok_completion(exchange)))
        require(text == baseline, f"{field}={value} at temperature {HOT_TEMPERATURE} must decode greedily",
                exchange.evidence({"content": text}, f"greedy text: {baseline!r}"))
    unconstrained = [greedy(ctx, temperature=HOT_TEMPERATURE, seed=seed) for seed in SEEDS]
    if all(text == baseline for text in unconstrained):
        raise Skip(f"sampling at temperature {HOT_TEMPERATURE} already equals greedy; {field} is unobservable")


@extension_check("top_k", "top_k=1 turns hot sampling into greedy decoding (or is rejected with a 400)")
def top_k(ctx):
    _truncation_to_greedy(ctx, "top_k", 1)


@extension_check("min_p", "min_p=1.0 turns hot sampling into greedy decoding (or is rejected with a 400)")
def min_p(ctx):
    _truncation_to_greedy(ctx, "min_p", 1.0)


def _changes_greedy_text(ctx, field: str, **fields) -> None:
    baseline = greedy(ctx, REPEAT_PROMPT, max_tokens=EXT_MAX_TOKENS)
    exchange = send_with(ctx, field, REPEAT_PROMPT, max_tokens=EXT_MAX_TOKENS, **fields)
    text = message_text(first_choice(ok_completion(exchange)))
    require(text != baseline, f"{field} was accepted but changed nothing on a repetitive prompt",
            exchange.evidence({"content": text}, "identical to the text without it"))


@extension_check("repetition_penalty",
                 "repetition_penalty=1.5 changes the greedy text of a repetitive prompt (or a 400)")
def repetition_penalty(ctx):
    _changes_greedy_text(ctx, "repetition_penalty", repetition_penalty=1.5)


@extension_check("dry", "DRY (dry_multiplier, dry_base, dry_allowed_length) changes a repetitive text (or a 400)")
def dry(ctx):
    _changes_greedy_text(ctx, "dry_multiplier", dry_multiplier=2.0, dry_base=1.75, dry_allowed_length=1)


def _grammar(ctx, grammar: dict, prompt: str):
    exchange = send_with(ctx, "grammar", prompt, max_tokens=EXT_MAX_TOKENS, grammar=grammar)
    choice = first_choice(ok_completion(exchange))
    return exchange, message_text(choice), choice.get("finish_reason")


@extension_check("grammar_regex", 'grammar {"type": "regex", "value": "[0-9]{3}"} output matches it (or a 400)')
def grammar_regex(ctx):
    exchange, text, finish_reason = _grammar(ctx, {"type": "regex", "value": "[0-9]{3}"}, "Say hello.")
    require(re.fullmatch("[0-9]{3}", text) is not None, "the output does not match [0-9]{3}",
            exchange.evidence({"content": text, "finish_reason": finish_reason}))


@extension_check("grammar_lark", 'grammar {"type": "lark"} restricting output to yes|no is enforced (or a 400)')
def grammar_lark(ctx):
    exchange, text, finish_reason = _grammar(ctx, {"type": "lark", "value": 'start: "yes" | "no"'},
                                             "Describe the sea.")
    require(text in ("yes", "no"), 'the output is not "yes" or "no"',
            exchange.evidence({"content": text, "finish_reason": finish_reason}))


@extension_check("grammar_json_schema", 'grammar {"type": "json_schema"} output is valid for the schema (or a 400)')
def grammar_json_schema(ctx):
    exchange = send_with(ctx, "grammar", PET_PROMPT, max_tokens=64,
                         grammar={"type": "json_schema", "value": PET_SCHEMA})
    choice = first_choice(ok_completion(exchange))
    verify_json_output(exchange, message_text(choice), choice.get("finish_reason"), PET_SCHEMA)


def _observable(exchange) -> dict:
    body = ok_completion(exchange)
    message = first_choice(body).get("message") or {}
    return {"prompt_tokens": (body.get("usage") or {}).get("prompt_tokens"),
            "content": message.get("content"),
            "reasoning": message.get("reasoning_content") or message.get("reasoning")}


def _switch_changes_something(ctx, field: str, off, on) -> None:
    """Two values of a switch must differ in the prompt (template), the text, or the reasoning."""
    first = send_with(ctx, field, "What is 2 + 3?", **{field: off})
    second = send_with(ctx, field, "What is 2 + 3?", **{field: on})
    require(_observable(first) != _observable(second),
            f"{field}={off!r} and {field}={on!r} give identical prompts, texts and reasoning",
            second.evidence(_observable(second), f"same as with {field}={off!r}"))


@extension_check("enable_thinking",
                 "enable_thinking true/false changes the prompt, the text or the reasoning (or a 400)")
def enable_thinking(ctx):
    _switch_changes_something(ctx, "enable_thinking", False, True)


@extension_check("reasoning_effort",
                 'reasoning_effort "low"/"high" changes the prompt, the text or the reasoning (or a 400)')
def reasoning_effort(ctx):
    _switch_changes_something(ctx, "reasoning_effort", "low", "high")


@extension_check("truncate_sequence",
                 "truncate_sequence=true turns a too-long prompt into a truncated one instead of a 400")
def truncate_sequence(ctx):
    if not ctx.context_length:
        raise Skip("the context length is unknown (pass --context-length)")
    exchange = send_with(ctx, "truncate_sequence", too_long_prompt(ctx), max_tokens=1, truncate_sequence=True)
    body = ok_completion(exchange)
    usage = usage_of(exchange, body)
    require(isinstance(usage.get("prompt_tokens"), int) and usage["prompt_tokens"] <= ctx.context_length,
            f"prompt_tokens exceed the context length {ctx.context_length}", exchange.evidence(usage))


CHECKS = (top_k, min_p, repetition_penalty, dry, grammar_regex, grammar_lark, grammar_json_schema,
          enable_thinking, reasoning_effort, truncate_sequence)
