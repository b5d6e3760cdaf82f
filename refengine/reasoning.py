"""Reasoning: the thinking switches for the chat template, and the <think>...</think> block split off the answer.

`enable_thinking` and `reasoning_effort` reach the chat template as kwargs (Qwen 3 reads the first, gpt-oss
style templates the second; a template that reads neither ignores them, so a model without thinking
behaves as usual). For a template that thinks (it reads one of them or writes <think>), the output

    <think>\\nreasoning\\n</think>\\n\\nanswer

splits into reasoning_content "reasoning" and content "answer": newlines just inside the tags and just after
the closing tag are dropped, as Qwen 3's own template drops them when it renders the history. The block
counts only at the start of the output, or from the first token when the prompt already opened it (a
generation prompt that ends with <think>, as DeepSeek-R1's does).
"""
from __future__ import annotations

from .tools import template_reads

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")


class ReasoningParamError(ValueError):
    """enable_thinking / reasoning_effort that cannot be honoured (a 400 naming `param`)."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


def reasoning_template_kwargs(enable_thinking: bool | None = None, reasoning_effort: str | None = None) -> dict:
    """The template kwargs for a request's thinking fields, after checking they agree.

    An effort without enable_thinking implies it ("none" → false, else true), so a template that only reads
    enable_thinking still follows the effort.
    """
    if enable_thinking is not None and not isinstance(enable_thinking, bool):
        raise ReasoningParamError("'enable_thinking' must be a boolean.", "enable_thinking")
    if reasoning_effort is not None and reasoning_effort not in REASONING_EFFORTS:
        raise ReasoningParamError(f"'reasoning_effort' must be one of {', '.join(REASONING_EFFORTS)}; "
                                  f"got {reasoning_effort!r}.", "reasoning_effort")
    if enable_thinking is False and reasoning_effort not in (None, "none"):
        raise ReasoningParamError(f"'reasoning_effort' {reasoning_effort!r} contradicts 'enable_thinking': false "
                                  "(use reasoning_effort 'none', or enable thinking).", "reasoning_effort")
    if enable_thinking is True and reasoning_effort == "none":
        raise ReasoningParamError("'reasoning_effort' 'none' contradicts 'enable_thinking': true.",
                                  "reasoning_effort")
    kwargs: dict = {}
    if reasoning_effort is not None:
        kwargs["reasoning_effort"] = reasoning_effort
        kwargs["enable_thinking"] = reasoning_effort != "none"
    if enable_thinking is not None:
        kwargs["enable_thinking"] = enable_thinking
    return kwargs


def template_supports_thinking(source: str | None) -> bool:
    """The template reads enable_thinking or reasoning_effort, or writes a <think> tag."""
    if not source:
        return False
    reads = template_reads(source)
    return bool({"enable_thinking", "reasoning_effort"} & reads.variables) \
        or any(THINK_OPEN in s or THINK_CLOSE in s for s in reads.strings)


def model_supports_thinking(model) -> bool:
    """`template_supports_thinking` for a loaded model, computed once per tokenizer."""
    source = model.template.source if model.template is not None else None
    return model.tokenizer.derived(("supports_thinking", source), lambda: template_supports_thinking(source))


def text_opens_thinking(prompt_text: str) -> bool:
    """The prompt ends inside an open <think> block, so the output starts in the reasoning."""
    return prompt_text.rstrip().endswith(THINK_OPEN)


def prompt_opens_thinking(model, prompt_ids: list[int], tail_tokens: int = 8) -> bool:
    """`text_opens_thinking` on the last tokens of a prompt (special tokens by their names, since a <think>
    that is a special token has no text)."""
    tokenizer = model.tokenizer
    tail = "".join(tokenizer.token_strings[i] if i in tokenizer.special_ids
                   else tokenizer.token_bytes[i].decode("utf-8", errors="replace")
                   for i in prompt_ids[-tail_tokens:])
    return text_opens_thinking(tail)


def split_reasoning(text: str, *, starts_inside: bool = False) -> tuple[str | None, str]:
    """(reasoning or None when there is no thinking block, content). An unclosed block (the output was cut
    off while thinking) is all reasoning."""
    if not starts_inside:
        stripped = text.lstrip()
        if not stripped.startswith(THINK_OPEN):
            return None, text
        text = stripped[len(THINK_OPEN):]
    reasoning, closed, content = text.partition(THINK_CLOSE)
    return reasoning.strip("\n"), content.lstrip("\n") if closed else ""


class ReasoningStreamParser:
    """`split_reasoning`, one text delta at a time: push(delta) -> (reasoning delta, content delta).

    Held back until it is decided: the start of the output while it may still be opening <think>, a tail
    that may be the start of </think> together with the newlines before it, and newlines after </think>.
    """

    def __init__(self, *, starts_inside: bool = False):
        self._state = "thinking" if starts_inside else "start"    # start | thinking | answer | plain
        self._pending = ""
        self._reasoning_sent = False
        self._content_sent = False
        self.saw_thinking = starts_inside

    @property
    def in_thinking(self) -> bool:
        """Inside the thinking block (for counting reasoning tokens)."""
        return self._state == "thinking"

    def push(self, text: str) -> tuple[str, str]:
        self._pending += text
        reasoning = ""
        if self._state == "start":
            stripped = self._pending.lstrip()
            if THINK_OPEN.startswith(stripped):
                return "", ""                     # whitespace, or a beginning of <think>
            if stripped.startswith(THINK_OPEN):
                self._state, self._pending, self.saw_thinking = "thinking", stripped[len(THINK_OPEN):], True
            else:
                self._state = "plain"
        if self._state == "thinking":
            head, closed, tail = self._pending.partition(THINK_CLOSE)
            if not closed:
                keep = _closing_holdback(self._pending)
                reasoning = self._reasoning(self._pending[:len(self._pending) - keep], last=False)
                self._pending = self._pending[len(self._pending) - keep:]
                return reasoning, ""
            reasoning = self._reasoning(head, last=True)
            self._state, self._pending = "answer", tail
        return reasoning, self._take_content()

    def finish(self) -> tuple[str, str]:
        """What is still held back, at the end of the output."""
        if self._state == "thinking":
            reasoning, self._pending = self._reasoning(self._pending, last=True), ""
            return reasoning, ""
        if self._state == "start":
            self._state = "plain"
        return "", self._take_content()

    def _reasoning(self, text: str, *, last: bool) -> str:
        if not self._reasoning_sent:
            text = text.lstrip("\n")
        if last:
            text = text.rstrip("\n")
        self._reasoning_sent = self._reasoning_sent or bool(text)
        return text

    def _take_content(self) -> str:
        content, self._pending = self._pending, ""
        if self._state == "answer" and not self._content_sent:
            content = content.lstrip("\n")
        self._content_sent = self._content_sent or bool(content)
        return content


def _closing_holdback(text: str) -> int:
    """Length of the tail that may still turn out to be (newlines before) the closing tag."""
    keep = 0
    for k in range(min(len(text), len(THINK_CLOSE) - 1), 0, -1):
        if text.endswith(THINK_CLOSE[:k]):
            keep = k
            break
    before = text[:len(text) - keep]
    return keep + len(before) - len(before.rstrip("\n"))
