"""Chat messages → prompt token ids: the chat template, the tokenizer, and fitting the context window."""
from __future__ import annotations

from .generate import ContextLengthError
from .model import Model
from .template import ChatTemplateError


def _render_ids(model: Model, messages: list[dict], tools, template_kwargs: dict,
                generation_prompt: bool = True) -> list[int]:
    text = model.template.render(messages, add_generation_prompt=generation_prompt, tools=tools,
                                 **template_kwargs)
    return model.tokenizer.encode(text)


def chat_prompt_ids(model: Model, messages: list[dict], *, tools: list[dict] | None = None,
                    template_kwargs: dict | None = None, max_tokens: int | None = None,
                    truncate: bool = False) -> list[int]:
    """The prompt of a chat request. When it leaves no room for `max_tokens` (at least one token):
    an error, or with `truncate` the oldest messages are dropped (system messages and the last message
    stay), and if the last message alone is still too long, the oldest tokens after the system prompt go.
    """
    if model.template is None:
        raise ChatTemplateError(f"{model.name} has no chat template; use the completions endpoint")
    template_kwargs = template_kwargs or {}
    budget = model.config.max_position_embeddings - (max_tokens or 1)
    ids = _render_ids(model, messages, tools, template_kwargs)
    if len(ids) <= budget:
        return ids
    if not truncate:
        raise ContextLengthError(
            f"This model's maximum context length is {model.config.max_position_embeddings} tokens. "
            f"However, you requested {len(ids) + (max_tokens or 1)} tokens ({len(ids)} in the messages, "
            f"{max_tokens or 1} in the completion). Please reduce the length of the messages or "
            f"completion, or set truncate_sequence.")
    system = [m for m in messages if m.get("role") in ("system", "developer")]
    rest = [m for m in messages if m.get("role") not in ("system", "developer")]
    while len(rest) > 1 and len(ids) > budget:
        rest = rest[1:]
        try:
            ids = _render_ids(model, system + rest, tools, template_kwargs)
        except ChatTemplateError:            # e.g. a template that insists on user/assistant alternation
            continue
    if len(ids) <= budget:
        return ids
    head = _render_ids(model, system, tools, template_kwargs, generation_prompt=False) if system else []
    head = head[:budget // 2]                # the system prompt stays unless it alone fills the window
    return head + ids[len(ids) - (budget - len(head)):]
