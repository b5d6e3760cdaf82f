"""Chat messages → prompt text, rendering the model's own Jinja chat template as transformers does.

transformers' `apply_chat_template` uses a sandboxed Jinja environment with trim_blocks and lstrip_blocks,
the `loopcontrols` extension, a `tojson` filter that keeps non-ASCII text, and the globals
`raise_exception` and `strftime_now`; the special-token strings are passed in as variables. We do the same,
so a template renders here exactly as it does there.
"""
from __future__ import annotations

import json
from datetime import datetime

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment


class ChatTemplateError(ValueError):
    """The messages cannot be rendered: the template refused them (raise_exception) or failed on them."""


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(format):
    return datetime.now().strftime(format)


def _joined_content(message: dict) -> dict:
    """OpenAI allows content as a list of parts; templates of text models expect one string."""
    content = message.get("content")
    if isinstance(content, list):
        text = "\n".join(part.get("text", "") for part in content if part.get("type") == "text")
        return {**message, "content": text}
    return message


class ChatTemplate:
    def __init__(self, source: str, special_tokens: dict[str, str | None]):
        environment = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
        environment.filters["tojson"] = _tojson
        environment.globals["raise_exception"] = _raise_exception
        environment.globals["strftime_now"] = _strftime_now
        self.source = source
        self._compiled = environment.from_string(source)
        self._special_tokens = {k: v for k, v in special_tokens.items() if v is not None}

    def render(self, messages: list[dict], *, add_generation_prompt: bool = True,
               tools: list[dict] | None = None, **template_kwargs) -> str:
        try:
            return self._compiled.render(
                messages=[_joined_content(m) for m in messages], tools=tools,
                add_generation_prompt=add_generation_prompt,
                **self._special_tokens, **template_kwargs)
        except jinja2.exceptions.TemplateError as error:
            raise ChatTemplateError(f"chat template: {error}") from None
        except (TypeError, KeyError, AttributeError) as error:
            raise ChatTemplateError(f"chat template could not render these messages: {error}") from None
