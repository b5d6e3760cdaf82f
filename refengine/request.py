"""Plain data objects that flow one way through the pipeline.

A `GenerationRequest` (token ids + sampling + stopping settings) goes into the generation loop; a stream
of `TokenEvent`s comes out. The server translates HTTP into the former and the latter into OpenAI JSON.
"""
from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_DRY_SEQUENCE_BREAKERS = ("\n", ":", '"', "*")


class RequestError(ValueError):
    """A request the engine cannot run as asked: the client's mistake, which the server answers with a 400
    naming the request field. `field` is the engine's name for it ("prompt", "max_tokens", "n",
    "logit_bias"); the web layer maps it to the API's parameter."""

    def __init__(self, message: str, field: str = "prompt"):
        super().__init__(message)
        self.field = field


class ContextLengthError(RequestError):
    """The prompt plus the requested tokens do not fit in the model's context window."""


@dataclass(frozen=True)
class SamplingParams:
    """Everything that turns logits into one chosen token. Defaults disable each processor."""
    temperature: float = 1.0                 # 0 means greedy
    top_k: int = 0                           # 0 (or -1) disables
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0          # HF multiplicative rule, prompt + output tokens
    presence_penalty: float = 0.0            # OpenAI additive rule, output tokens
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    dry_multiplier: float = 0.0              # 0 disables DRY
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_sequence_breakers: tuple[str, ...] = DEFAULT_DRY_SEQUENCE_BREAKERS
    seed: int | None = None


@dataclass(frozen=True)
class StoppingParams:
    max_tokens: int | None = None            # None: up to the context length
    stop: tuple[str, ...] = ()
    min_tokens: int = 0                      # EOS, stop strings and stop tokens are ignored before this many
    ignore_eos: bool = False
    stop_token_ids: tuple[int, ...] = ()     # tokens that also end a choice (their text, if any, is kept)
    include_stop_str: bool = False           # the stop string that ended a choice stays in its text
    skip_special_tokens: bool = True         # False: a special token's text is its name ("<|im_end|>")


@dataclass(frozen=True)
class ConstraintSpec:
    """The output must follow `constraint`, a compiled `refengine.constrain.Constraint`."""
    constraint: object
    trigger: str | None = None               # None: from the first token; else free text until the output
                                             # shows `trigger`, then the text from the trigger on (the
                                             # trigger included) must follow the constraint
    max_tokens: int | None = None            # the constraint's own cap on the output (llguidance's max_tokens)


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: tuple[int, ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stopping: StoppingParams = field(default_factory=StoppingParams)
    n: int = 1
    logprobs: bool = False
    top_logprobs: int = 0
    constraint: ConstraintSpec | None = None
    prompt_logprobs: int | None = None       # score the prompt too: each token's logprob given those before
                                             # it, with this many top alternatives (None: do not)
    priority: int = 0                        # the scheduler's queue order: lower first (vLLM's), then arrival
    trace: object | None = field(default=None, compare=False, repr=False)   # a trace.RequestTrace the engine
                                             # records into, when the request asked for one


@dataclass(frozen=True)
class TopLogprob:
    token_id: int
    token: str
    bytes: list[int]
    logprob: float


@dataclass(frozen=True)
class PromptTokenScore:
    """A prompt token as the model saw it coming: its logprob given the tokens before it (None for the
    first, which nothing predicts) and the top alternatives there."""
    token_id: int
    token: str
    bytes: list[int]
    logprob: float | None
    top_logprobs: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True)
class TokenEvent:
    """One generated token of one choice, or the final event of that choice.

    `text` is the UTF-8-safe text this token releases (may be "" while a multi-byte character or a
    possible stop string is held back); the pieces of one choice concatenate to its full text.
    """
    index: int                               # which of the n choices
    token_id: int | None                     # None on a final event that carries no new token
    text: str
    logprob: TopLogprob | None = None        # the chosen token, when logprobs were asked for
    top_logprobs: tuple[TopLogprob, ...] = ()
    finish_reason: str | None = None         # "stop" | "length" on the last event of a choice
