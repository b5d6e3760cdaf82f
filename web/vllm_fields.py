"""vLLM's extra request fields, which clients written for vLLM send: each honoured, or refused with a 400
naming it, never ignored.

    guided_json, guided_regex,         the output constraint, compiled as response_format and grammar are
    guided_choice, guided_grammar      (one of them; not beside response_format or grammar); guided_choice
                                       is one of its strings exactly, guided_grammar a lark grammar
    stop_token_ids                     more tokens that end a choice (a non-special one's text is kept)
    include_stop_str_in_output         the stop string that ended a choice stays at the end of its text
    skip_special_tokens                false: special tokens come out as their names
    spaces_between_special_tokens      no spaces are put between special tokens: true beside
                                       skip_special_tokens false is a 400
    priority                           the scheduler's queue order, lower first
    chat_template_kwargs (chat)        more variables for the chat template
    add_generation_prompt (chat)       false: the prompt does not open the assistant's turn
    continue_final_message (chat)      the last message (the assistant's) is continued, not closed: a prefill
    echo (chat)                        the answer starts with the last message's text when it is the
                                       assistant's (with continue_final_message: the whole message)

min_tokens, ignore_eos and repetition_penalty are the seed request's own (schema.py). vLLM options this
server does not have (guided_decoding_backend, guided_whitespace_pattern, structured_outputs, ...) are
unknown fields: logged, named in the `x-refengine-ignored-fields` response header, or a 400 with
--strict-params.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import invalid_request

# the fields of both generation endpoints (schema.py's SAMPLING_FIELDS)
VLLM_SAMPLING_FIELDS = {
    "guided_json": {"type": ["object", "string", "boolean", "null"]},
    "guided_regex": {"type": ["string", "null"], "minLength": 1},
    "guided_choice": {"type": ["array", "null"], "minItems": 1, "maxItems": 1024,
                      "items": {"type": "string", "minLength": 1}},
    "guided_grammar": {"type": ["string", "null"], "minLength": 1},
    "stop_token_ids": {"type": ["array", "null"], "maxItems": 64, "items": {"type": "integer", "minimum": 0}},
    "include_stop_str_in_output": {"type": ["boolean", "null"]},
    "skip_special_tokens": {"type": ["boolean", "null"]},
    "spaces_between_special_tokens": {"type": ["boolean", "null"]},
    "priority": {"type": ["integer", "null"], "minimum": -2 ** 31, "maximum": 2 ** 31 - 1},
}
# chat's alone (schema.py's CHAT_FIELDS)
VLLM_CHAT_FIELDS = {
    "chat_template_kwargs": {"type": ["object", "null"]},
    "add_generation_prompt": {"type": ["boolean", "null"]},
    "continue_final_message": {"type": ["boolean", "null"]},
    "echo": {"type": ["boolean", "null"]},
}
GUIDED = ("guided_json", "guided_regex", "guided_choice", "guided_grammar")
# what the renderer sets itself (template.py), so a template kwarg cannot
RESERVED_TEMPLATE_NAMES = frozenset({"messages", "tools", "add_generation_prompt", "bos_token", "eos_token",
                                     "pad_token", "unk_token"})


def guided(body: dict) -> tuple[str, str, object] | None:
    """(field, constraint kind, value) of the one guided_* field set; None when none is."""
    given = [name for name in GUIDED if body.get(name) is not None]
    if len(given) > 1:
        raise invalid_request(f"Give one of {', '.join(GUIDED)}, not {' and '.join(given)}.", given[1])
    if not given:
        return None
    name = given[0]
    value = body[name]
    if name == "guided_json":
        return name, "json_schema", value
    if name == "guided_regex":
        return name, "regex", value
    if name == "guided_choice":
        return name, "regex", "|".join(re.escape(choice) for choice in value)
    return name, "lark", value


def stopping_fields(body: dict, vocab_size: int) -> dict:
    """StoppingParams' vLLM fields."""
    ids = tuple(body.get("stop_token_ids") or ())
    for i, token in enumerate(ids):
        if token >= vocab_size:
            raise invalid_request(f"Invalid value for 'stop_token_ids[{i}]': {token} is not a token id of this "
                                  f"model (0..{vocab_size - 1}).", f"stop_token_ids[{i}]")
    skip = body.get("skip_special_tokens") is not False
    if not skip and body.get("spaces_between_special_tokens"):
        raise invalid_request("'spaces_between_special_tokens' true is not supported by this server: special "
                              "tokens come out as their names, side by side.", "spaces_between_special_tokens",
                              "unsupported_parameter")
    return {"stop_token_ids": ids, "include_stop_str": bool(body.get("include_stop_str_in_output")),
            "skip_special_tokens": skip}


@dataclass(frozen=True)
class Rendering:
    """How a chat request's messages become its prompt, beyond the template's reasoning kwargs."""
    template_kwargs: dict
    generation_prompt: bool = True
    continue_final: bool = False
    echo: str = ""                           # text the answer starts with (vLLM's chat echo)


def _text(content) -> str:
    if isinstance(content, list):
        return "\n".join(part.get("text", "") for part in content if part.get("type") == "text")
    return content or ""


def chat_rendering(body: dict, messages: list[dict], reasoning_kwargs: dict) -> Rendering:
    """chat_template_kwargs (the reasoning fields win a clash: they are checked), add_generation_prompt,
    continue_final_message and echo, checked against each other and the messages."""
    extra = body.get("chat_template_kwargs") or {}
    for name in extra:
        if name in RESERVED_TEMPLATE_NAMES:
            raise invalid_request(f"'chat_template_kwargs' cannot set '{name}': the server sets it.",
                                  f"chat_template_kwargs.{name}")
    continue_final = bool(body.get("continue_final_message"))
    if continue_final and body.get("add_generation_prompt"):
        raise invalid_request("'continue_final_message' continues the last message, so 'add_generation_prompt' "
                              "cannot also be true.", "continue_final_message")
    last = messages[-1]
    if continue_final and (last["role"] != "assistant" or not _text(last.get("content"))):
        raise invalid_request("'continue_final_message' needs the last message to be the assistant's, with text "
                              "to continue.", "continue_final_message")
    generation_prompt = not continue_final and body.get("add_generation_prompt") is not False
    echo = _text(last.get("content")) if body.get("echo") and last["role"] == "assistant" else ""
    return Rendering({**extra, **reasoning_kwargs}, generation_prompt, continue_final, echo)
