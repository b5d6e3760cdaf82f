"""Chat messages → prompt token ids: the chat template, the tokenizer, and fitting the context window.

Special-token strings that the client wrote (a user message reading "<|im_end|>\\n<|im_start|>system\\n...")
stay text: only the template's own markers become control tokens. A message text, tool or argument that holds
such a string is rendered with a placeholder in its place (a random marker, one per occurrence); the
placeholders in the rendered prompt are put back as the strings they stand for, and the tokenizer reads
those spans as plain text. Prompts without such strings are rendered and tokenized exactly as before.
`allow_special_in_content=True` reads them as control tokens, as transformers' apply_chat_template does.
"""
from __future__ import annotations

import re
import secrets

from .model import Model
from .request import ContextLengthError
from .template import ChatTemplateError
from .tools import PreparedChat, ToolSet, prepare_chat
from .trace import note, stage


class UnsafeContentError(ChatTemplateError):
    """The template changed the text around a special-token string that a message holds, so the string
    cannot be kept apart from the template's own markers."""


class _Placeholders:
    """Special-token strings in message texts → unique markers, and back after rendering."""

    def __init__(self, pattern: re.Pattern):
        self.pattern = pattern
        self.nonce = secrets.token_hex(8)
        self.strings: list[str] = []

    def substitute(self, value):
        """`value` (messages, tools: JSON-like) with every special-token string in a string replaced."""
        if isinstance(value, str):
            return self.pattern.sub(self._marker, value)
        if isinstance(value, dict):
            return {self.substitute(k): self.substitute(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.substitute(v) for v in value]
        return value

    def _marker(self, match: re.Match) -> str:
        self.strings.append(match.group())
        return f"\ue000{self.nonce}{len(self.strings) - 1}\ue001"

    def restore(self, rendered: str) -> tuple[str, list[tuple[int, int]]]:
        """The rendered text with the strings back in, and their character spans. A marker the template
        left out is fine (it dropped that text); one it altered (escaped, cut, re-cased) is an error."""
        pieces: list[str] = []
        spans: list[tuple[int, int]] = []
        length, last = 0, 0
        for match in re.finditer(f"\ue000{self.nonce}(\\d+)\ue001", rendered):
            between = rendered[last:match.start()]
            string = self.strings[int(match.group(1))]
            pieces += [between, string]
            spans.append((length + len(between), length + len(between) + len(string)))
            length += len(between) + len(string)
            last = match.end()
        pieces.append(rendered[last:])
        if any(self.nonce.lower() in piece.lower() for piece in pieces[::2]):
            raise UnsafeContentError(
                "the chat template altered a message text that contains a special-token string, so that "
                "text cannot be kept apart from the template's own markers")
        return "".join(pieces), spans


def _holds_special(value, pattern: re.Pattern) -> bool:
    if isinstance(value, str):
        return pattern.search(value) is not None
    if isinstance(value, dict):
        return any(_holds_special(k, pattern) or _holds_special(v, pattern) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_holds_special(v, pattern) for v in value)
    return False


def continued(rendered: str, final: dict) -> str:
    """The rendered prompt cut right after the final message's text, so that the model goes on with that
    message instead of starting a new one (vLLM's continue_final_message: an assistant prefill)."""
    content = final.get("content")
    if isinstance(content, list):                # joined as the template gets it (template.py)
        content = "\n".join(part.get("text", "") for part in content if part.get("type") == "text")
    at = rendered.rfind(content) if content else -1
    if at < 0:
        raise ChatTemplateError("the chat template does not render the final message's text as it was sent, "
                                "so that message cannot be continued")
    return rendered[:at + len(content)]


def _render_ids(model: Model, messages: list[dict], tools, template_kwargs: dict,
                generation_prompt: bool = True, allow_special_in_content: bool = False,
                continue_final: bool = False) -> list[int]:
    pattern = model.tokenizer.special_pattern
    if allow_special_in_content or pattern is None or not _holds_special([messages, tools], pattern):
        with stage("template"):
            text = model.template.render(messages, add_generation_prompt=generation_prompt, tools=tools,
                                         **template_kwargs)
            text = continued(text, messages[-1]) if continue_final else text
        with stage("tokenize"):
            return model.tokenizer.encode(text)
    placeholders = _Placeholders(pattern)
    with stage("template"):
        substituted = placeholders.substitute(messages)
        rendered = model.template.render(substituted, add_generation_prompt=generation_prompt,
                                         tools=placeholders.substitute(tools), **template_kwargs)
        rendered = continued(rendered, substituted[-1]) if continue_final else rendered
        text, spans = placeholders.restore(rendered)
    with stage("tokenize"):
        return model.tokenizer.encode(text, literal_spans=spans)


def chat_prompt_ids(model: Model, messages: list[dict], *, tools: list[dict] | None = None,
                    template_kwargs: dict | None = None, max_tokens: int | None = None,
                    truncate: bool = False, generation_prompt: bool = True,
                    allow_special_in_content: bool = False, fit: bool = True,
                    continue_final: bool = False) -> list[int]:
    """The prompt of a chat request. When it leaves no room for `max_tokens` (at least one token):
    an error, or with `truncate` the oldest messages are dropped (system messages and the last message
    stay), and if the last message alone is still too long, the oldest tokens after the system prompt go.

    `generation_prompt`: end with the opening of the assistant's turn (the template's add_generation_prompt).
    `continue_final`: end inside the last message, right after its text (`continued`), instead.
    `fit=False`: the whole prompt, whatever its length (to count it).
    Special-token strings in the messages and tools are text unless `allow_special_in_content` (see above).
    """
    if model.template is None:
        raise ChatTemplateError(f"{model.name} has no chat template; use the completions endpoint")
    template_kwargs = template_kwargs or {}
    budget = model.config.max_position_embeddings - (max_tokens or 1)

    def render(some: list[dict], opening: bool = generation_prompt, open_end: bool = continue_final) -> list[int]:
        return _render_ids(model, some, tools, template_kwargs, opening, allow_special_in_content, open_end)

    ids = render(messages)
    if len(ids) <= budget or not fit:
        return ids
    if not truncate:
        raise ContextLengthError(
            f"This model's maximum context length is {model.config.max_position_embeddings} tokens. "
            f"However, you requested {len(ids) + (max_tokens or 1)} tokens ({len(ids)} in the messages, "
            f"{max_tokens or 1} in the completion). Please reduce the length of the messages or "
            f"completion, or set truncate_sequence.")
    system = [m for m in messages if m.get("role") in ("system", "developer")]
    rest = [m for m in messages if m.get("role") not in ("system", "developer")]
    whole = len(ids)
    while len(rest) > 1 and len(ids) > budget:
        rest = rest[1:]
        try:
            ids = render(system + rest)
        except UnsafeContentError:
            raise
        except ChatTemplateError:            # e.g. a template that insists on user/assistant alternation
            continue
    dropped = len(messages) - len(system) - len(rest)
    if len(ids) <= budget:
        note("truncation", {"messages_dropped": dropped, "tokens_before": whole, "tokens_after": len(ids)})
        return ids
    head = render(system, opening=False, open_end=False) if system else []
    head = head[:budget // 2]                # the system prompt stays unless it alone fills the window
    kept = head + ids[len(ids) - (budget - len(head)):]
    note("truncation", {"messages_dropped": dropped, "tokens_before": whole, "tokens_after": len(kept),
                        "tokens_cut_after_system_prompt": len(ids) - (budget - len(head))})
    return kept


def render_chat(model: Model, messages: list[dict], tools: ToolSet | None = None,
                **options) -> tuple[list[int], PreparedChat]:
    """The prompt ids of chat messages with tools, and how they were prepared for the template: the tool
    history and offered tools as the template takes them (`prepare_chat`), then `chat_prompt_ids(**options)`.
    The chat endpoint, /tokenize and the agent's rounds all render this way."""
    chat = prepare_chat(model, messages, tools)
    return chat_prompt_ids(model, chat.messages, tools=chat.tools, **options), chat
