"""Request validation: JSON bodies → checked, typed calls for the engine, or a 400 naming the field.

Each endpoint's body is described by a JSON Schema written from OpenAI's (CreateChatCompletionRequest,
CreateCompletionRequest) plus the extension fields of the common "OpenAI + samplers" request (top_k,
min_p, repetition_penalty, DRY, grammar, thinking, truncate_sequence, ignore_eos, min_tokens). Roles,
content parts and tool kinds are discriminated with if/then, so an error points at the one field that is
wrong (`messages[1].tool_call_id`) instead of at every branch of a oneOf. What a schema cannot say
(cross-field rules, token ids in the vocabulary) is checked in code right after.

Fields accepted without effect, because they only concern OpenAI's platform and change nothing in the
output: metadata, service_tier, user, safety_identifier, prompt_cache_key, prompt_cache_retention,
prompt_cache_options, verbosity, stream_options.include_obfuscation, parallel_tool_calls (without tools).
Fields for features this server does not have are a 400 when set (`_refuse_unoffered`). The legacy
`functions` / `function_call` become tools (legacy_functions.py), vLLM's fields are read by vllm_fields.py.
Output constraints (`response_format`, `grammar`, vLLM's guided_*) become an `OutputConstraint` the engine
compiles; `tools` / `tool_choice` /
`parallel_tool_calls` become a `ToolSet` (function tools only), and `enable_thinking` /
`reasoning_effort` the chat template's kwargs (`_tools_and_reasoning`). The agent runtime's fields
(session_id, enable_code_execution and code_interpreter tools, permissions, files, max_tool_rounds) and
`web_search_options` (the web-search tools) are validated here and read by agentic.py.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import jsonschema
from jsonschema import Draft202012Validator

from refengine.reasoning import ReasoningParamError, reasoning_template_kwargs
from refengine.request import (DEFAULT_DRY_SEQUENCE_BREAKERS, ConstraintSpec, GenerationRequest,
                               SamplingParams, StoppingParams)
from refengine.agent.code_tool import EXECUTE_PYTHON
from refengine.agent.search_tool import CONTEXT_SIZES, SEARCH_TOOL_NAMES
from refengine.agent.files import MAX_REQUESTED_FILES
from refengine.constrain import JSON_SCHEMA_MODES
from refengine.tools import ToolRequestError, ToolSet
from refengine.trace import DEFAULT_TOP_K as DEFAULT_TRACE_TOP_K, MAX_TOP_K as MAX_TRACE_TOP_K

from .errors import invalid_request, model_not_found, not_supported
from .legacy_functions import as_tools
from .vllm_fields import VLLM_CHAT_FIELDS, VLLM_SAMPLING_FIELDS, chat_rendering, guided, stopping_fields

logger = logging.getLogger(__name__)

INT64 = {"minimum": -2 ** 63, "maximum": 2 ** 63 - 1}
TOOL_NAME = {"type": "string", "pattern": "^[a-zA-Z0-9_-]{1,64}$"}


def when(key: str, value: str, then: dict) -> dict:
    """Apply `then` to objects whose `key` is `value` (a discriminated union, one branch at a time)."""
    return {"if": {"properties": {key: {"const": value}}, "required": [key]}, "then": then}


def tagged(key: str, branches: dict[str, dict], types=("object",)) -> dict:
    """An object whose `key` names one of `branches`, each validated by its own schema."""
    return {"type": list(types), "required": [key], "properties": {key: {"enum": list(branches)}},
            "allOf": [when(key, value, then) for value, then in branches.items()]}


# ---- messages ----

PART_SCHEMAS = {
    "text": {"required": ["text"], "properties": {"text": {"type": "string"}}},
    "refusal": {"required": ["refusal"], "properties": {"refusal": {"type": "string"}}},
    "image_url": {"required": ["image_url"], "properties": {"image_url": {
        "type": "object", "required": ["url"],
        "properties": {"url": {"type": "string"}, "detail": {"enum": ["auto", "low", "high"]}}}}},
    "input_audio": {"required": ["input_audio"], "properties": {"input_audio": {
        "type": "object", "required": ["data", "format"],
        "properties": {"data": {"type": "string"}, "format": {"enum": ["wav", "mp3"]}}}}},
    "file": {"required": ["file"], "properties": {"file": {"type": "object"}}},
}


def content(*part_types: str, nullable: bool = False) -> dict:
    """A message's content: a string, or a non-empty list of parts of the given types."""
    return {"type": ["string", "array"] + (["null"] if nullable else []), "minItems": 1,
            "items": tagged("type", {t: PART_SCHEMAS[t] for t in part_types})}


MESSAGE_TOOL_CALL = tagged("type", {
    "function": {"required": ["id", "function"], "properties": {
        "id": {"type": "string"},
        "function": {"type": "object", "required": ["name", "arguments"],
                     "properties": {"name": {"type": "string"}, "arguments": {"type": "string"}}}}},
    "custom": {"required": ["id", "custom"], "properties": {
        "id": {"type": "string"},
        "custom": {"type": "object", "required": ["name", "input"],
                   "properties": {"name": {"type": "string"}, "input": {"type": "string"}}}}},
})

ROLE_SCHEMAS = {
    "developer": {"required": ["content"], "properties": {"content": content("text"), "name": {"type": "string"}}},
    "system": {"required": ["content"], "properties": {"content": content("text"), "name": {"type": "string"}}},
    "user": {"required": ["content"], "properties": {
        "content": content("text", "image_url", "input_audio", "file"), "name": {"type": "string"}}},
    "assistant": {"properties": {
        "content": content("text", "refusal", nullable=True), "name": {"type": "string"},
        "refusal": {"type": ["string", "null"]},
        "tool_calls": {"type": "array", "items": MESSAGE_TOOL_CALL},
        "function_call": {"type": ["object", "null"], "required": ["name", "arguments"],
                          "properties": {"name": {"type": "string"}, "arguments": {"type": "string"}}},
        "audio": {"type": ["object", "null"], "required": ["id"]}}},
    "tool": {"required": ["content", "tool_call_id"], "properties": {
        "content": content("text"), "tool_call_id": {"type": "string"}}},
    "function": {"required": ["content", "name"], "properties": {
        "content": {"type": ["string", "null"]}, "name": {"type": "string"}}},
}
MESSAGES = {"type": "array", "minItems": 1, "items": tagged("role", ROLE_SCHEMAS)}

# ---- tools and output formats ----

FUNCTION = {"type": "object", "required": ["name"], "properties": {
    "name": TOOL_NAME, "description": {"type": "string"}, "parameters": {"type": "object"},
    "strict": {"type": ["boolean", "null"]}}}
TOOLS = {"type": ["array", "null"], "items": tagged("type", {
    "function": {"required": ["function"], "properties": {"function": FUNCTION}},
    "custom": {"required": ["custom"], "properties": {"custom": {
        "type": "object", "required": ["name"], "properties": {"name": TOOL_NAME, "format": {"type": "object"}}}}},
    "code_interpreter": {"properties": {"container": {"type": ["object", "string", "null"]}}},   # mistral.rs's form
})}
NAMED = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}
PERMISSION = {"type": ["string", "null"], "enum": ["auto", "deny", "ask", None]}
FILE_NAME = {"type": "string", "minLength": 1, "maxLength": 255}
REQUESTED_FILE = {"type": ["string", "object"], "minLength": 1, "maxLength": 255,     # a name, or an object
                  "required": ["name"], "properties": {
                      "name": FILE_NAME, "format": {"type": "string"}, "description": {"type": "string"}}}
TOOL_CHOICE = {
    "type": ["string", "object", "null"],
    "if": {"type": "string"}, "then": {"enum": ["none", "auto", "required"]},
    "else": tagged("type", {
        "function": {"required": ["function"], "properties": {"function": NAMED}},
        "custom": {"required": ["custom"], "properties": {"custom": NAMED}},
        "allowed_tools": {"required": ["allowed_tools"], "properties": {"allowed_tools": {
            "type": "object", "required": ["mode", "tools"],
            "properties": {"mode": {"enum": ["auto", "required"]}, "tools": {"type": "array", "items": {
                "type": "object", "required": ["type"], "properties": {
                    "type": {"type": "string"}, "function": NAMED, "name": {"type": "string"}}}}}}}},
    }, types=("object", "null")),
}
RESPONSE_FORMAT = tagged("type", {
    "text": {},
    "json_object": {},
    "json_schema": {"required": ["json_schema"], "properties": {"json_schema": {
        "type": "object", "required": ["name"], "properties": {
            "name": TOOL_NAME, "description": {"type": "string"}, "schema": {"type": "object"},
            "strict": {"type": ["boolean", "null"]}}}}},
}, types=("object", "null"))
GRAMMAR = tagged("type", {                       # mistral.rs's names; llguidance is its raw grammar object
    "regex": {"required": ["value"], "properties": {"value": {"type": "string"}}},
    "lark": {"required": ["value"], "properties": {"value": {"type": "string"}}},
    "json_schema": {"required": ["value"], "properties": {"value": {"type": ["object", "boolean"]}}},
    "llguidance": {"required": ["value"], "properties": {"value": {"type": "object"}}},
}, types=("object", "null"))
# refengine's: how a JSON schema is read (refengine/constrain/json_style.py); default: the server's flag
JSON_SCHEMA_MODE = {"type": ["string", "null"], "enum": [*JSON_SCHEMA_MODES, None]}

# ---- sampling and stopping, shared by chat and completions ----

SAMPLING_FIELDS = {
    "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2},
    "top_p": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
    "n": {"type": ["integer", "null"], "minimum": 1, "maximum": 128},
    "presence_penalty": {"type": ["number", "null"], "minimum": -2, "maximum": 2},
    "frequency_penalty": {"type": ["number", "null"], "minimum": -2, "maximum": 2},
    "logit_bias": {"type": ["object", "null"], "propertyNames": {"pattern": "^-?[0-9]{1,10}$"},
                   "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100}},
    "seed": {"type": ["integer", "null"], **INT64},
    "stop": {"type": ["string", "array", "null"], "minLength": 1, "minItems": 1, "maxItems": 4,
             "items": {"type": "string", "minLength": 1}},
    "max_tokens": {"type": ["integer", "null"], "minimum": 1},
    "stream": {"type": ["boolean", "null"]},
    "stream_options": {"type": ["object", "null"], "properties": {
        "include_usage": {"type": ["boolean", "null"]}, "include_obfuscation": {"type": ["boolean", "null"]},
        "continuous_usage_stats": {"type": ["boolean", "null"]}}},          # vLLM's: usage on every chunk
    "user": {"type": ["string", "null"]},
    # extensions (vLLM / llama.cpp / mistral.rs names)
    "top_k": {"type": ["integer", "null"], "minimum": -1},
    "min_p": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
    "repetition_penalty": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 2},
    "dry_multiplier": {"type": ["number", "null"], "minimum": 0},
    "dry_base": {"type": ["number", "null"], "minimum": 1},
    "dry_allowed_length": {"type": ["integer", "null"], "minimum": 0},
    "dry_sequence_breakers": {"type": ["array", "null"], "maxItems": 64,
                              "items": {"type": "string", "minLength": 1}},
    "ignore_eos": {"type": ["boolean", "null"]},
    "min_tokens": {"type": ["integer", "null"], "minimum": 0},
    # refengine's: the request's pipeline, stage by stage (refengine/trace.py)
    "trace": {"type": ["boolean", "null"]},
    "trace_top_k": {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_TRACE_TOP_K},
    # vLLM's (vllm_fields.py)
    **VLLM_SAMPLING_FIELDS,
}

CHAT_FIELDS = {
    **SAMPLING_FIELDS,
    "model": {"type": "string"},
    "messages": MESSAGES,
    "max_completion_tokens": {"type": ["integer", "null"], "minimum": 1},
    "logprobs": {"type": ["boolean", "null"]},
    "top_logprobs": {"type": ["integer", "null"], "minimum": 0, "maximum": 20},
    "response_format": RESPONSE_FORMAT,
    "tools": TOOLS,
    "tool_choice": TOOL_CHOICE,
    "parallel_tool_calls": {"type": ["boolean", "null"]},
    "functions": {"type": ["array", "null"], "minItems": 1, "maxItems": 128, "items": FUNCTION},
    "function_call": {"type": ["string", "object", "null"], "if": {"type": "string"},
                      "then": {"enum": ["none", "auto"]}, "else": NAMED | {"type": ["object", "null"]}},
    "reasoning_effort": {"type": ["string", "null"],
                         "enum": ["none", "minimal", "low", "medium", "high", "xhigh", "max", None]},
    "verbosity": {"type": ["string", "null"], "enum": ["low", "medium", "high", None]},
    "modalities": {"type": ["array", "null"], "items": {"enum": ["text", "audio"]}},
    "audio": {"type": ["object", "null"], "required": ["voice", "format"], "properties": {
        "voice": {"type": ["string", "object"]},
        "format": {"enum": ["wav", "aac", "mp3", "flac", "opus", "pcm16"]}}},
    "prediction": {"type": ["object", "null"], "required": ["type", "content"], "properties": {
        "type": {"const": "content"}, "content": content("text")}},
    "store": {"type": ["boolean", "null"]},
    "metadata": {"type": ["object", "null"], "maxProperties": 16, "propertyNames": {"maxLength": 64},
                 "additionalProperties": {"type": "string", "maxLength": 512}},
    "service_tier": {"type": ["string", "null"],
                     "enum": ["auto", "default", "flex", "scale", "priority", "fast", None]},
    "moderation": {"type": ["object", "null"], "required": ["model"], "properties": {"model": {"type": "string"}}},
    "safety_identifier": {"type": ["string", "null"], "maxLength": 64},
    "prompt_cache_key": {"type": ["string", "null"]},
    "prompt_cache_retention": {"type": ["string", "null"], "enum": ["in_memory", "24h", None]},
    "prompt_cache_options": {"type": ["object", "null"], "properties": {
        "ttl": {"enum": ["30m"]}, "mode": {"enum": ["implicit", "explicit"]}}},
    "web_search_options": {"type": ["object", "null"], "properties": {
        "search_context_size": {"enum": list(CONTEXT_SIZES)},
        "user_location": {"type": ["object", "null"], "required": ["type", "approximate"], "properties": {
            "type": {"const": "approximate"}, "approximate": {"type": "object", "properties": {
                key: {"type": ["string", "null"], "maxLength": 200}
                for key in ("city", "region", "country", "timezone")}}}},
        "extract_description": {"type": ["string", "null"]},
        "search_description": {"type": ["string", "null"]}}},
    # extensions from the seed request (mistral.rs)
    "grammar": GRAMMAR,
    "json_schema_mode": JSON_SCHEMA_MODE,
    "enable_thinking": {"type": ["boolean", "null"]},
    "truncate_sequence": {"type": ["boolean", "null"]},
    "enable_code_execution": {"type": ["boolean", "null"]},
    "files": {"type": ["array", "null"], "maxItems": MAX_REQUESTED_FILES, "items": REQUESTED_FILE},
    "agent_permission": PERMISSION,
    "code_execution_permission": PERMISSION,
    "max_tool_rounds": {"type": ["integer", "null"], "minimum": 0, "maximum": 64},
    "session_id": {"type": ["string", "null"], "minLength": 1, "maxLength": 128},
    **VLLM_CHAT_FIELDS,
}
CHAT_REQUEST = Draft202012Validator({"type": "object", "required": ["model", "messages"], "properties": CHAT_FIELDS})

COMPLETION_FIELDS = {
    **SAMPLING_FIELDS,
    "model": {"type": "string"},
    "prompt": {"type": ["string", "array"], "minItems": 1,
               "items": {"type": ["string", "integer", "array"], "minimum": 0, "minItems": 1,
                         "items": {"type": "integer", "minimum": 0}}},
    "best_of": {"type": ["integer", "null"], "minimum": 1, "maximum": 20},
    "echo": {"type": ["boolean", "null"]},
    "logprobs": {"type": ["integer", "null"], "minimum": 0, "maximum": 5},
    "suffix": {"type": ["string", "null"]},
    "max_tokens": {"type": ["integer", "null"], "minimum": 0},     # 0: nothing generated (scoring an echo)
}
COMPLETION_REQUEST = Draft202012Validator(
    {"type": "object", "required": ["model", "prompt"], "properties": COMPLETION_FIELDS})

TOKENIZE_FIELDS = {
    "model": {"type": ["string", "null"]},
    "prompt": {"type": "string"},
    "messages": MESSAGES,
    "add_special_tokens": {"type": ["boolean", "null"]},
    "add_generation_prompt": {"type": ["boolean", "null"]},
    "return_token_strs": {"type": ["boolean", "null"]},
    # rendered exactly as chat renders them
    "tools": TOOLS,
    "tool_choice": TOOL_CHOICE,
    "parallel_tool_calls": {"type": ["boolean", "null"]},
    "enable_thinking": {"type": ["boolean", "null"]},
    "reasoning_effort": CHAT_FIELDS["reasoning_effort"],
}
TOKENIZE_REQUEST = Draft202012Validator({"type": "object", "properties": TOKENIZE_FIELDS,
                                         "oneOf": [{"required": ["prompt"]}, {"required": ["messages"]}]})
DETOKENIZE_FIELDS = {
    "model": {"type": ["string", "null"]},
    "tokens": {"type": "array", "items": {"type": "integer", "minimum": 0}},
}
DETOKENIZE_REQUEST = Draft202012Validator({"type": "object", "required": ["tokens"], "properties": DETOKENIZE_FIELDS})


# ---- parsing and error reporting ----

def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def parse_json_object(raw: bytes) -> dict:
    """The body as a JSON object, or a 400 that says what is wrong with it."""
    if not raw.strip():
        raise invalid_request("The request body is empty; expected a JSON object.")
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)   # no NaN / Infinity
    except UnicodeDecodeError:
        raise invalid_request("The request body is not valid UTF-8.") from None
    except (ValueError, RecursionError) as error:
        raise invalid_request(f"We could not parse the JSON body of your request: {error}") from None
    if not isinstance(body, dict):
        raise invalid_request(f"The request body must be a JSON object, not {json_type(body)}.")
    try:                                      # a "\\ud800" escape decodes to a lone surrogate: not text
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise invalid_request("The request body contains a lone UTF-16 surrogate escape, which is not valid "
                              "Unicode text.") from None
    return body


def json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def param_path(path) -> str | None:
    """["messages", 1, "role"] → "messages[1].role" (OpenAI's `param`)."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or None


def _short(value) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(error: jsonschema.ValidationError) -> str:
    """What is wrong, in words that name no schema internals and never echo a huge value."""
    kind, expected, value = error.validator, error.validator_value, error.instance
    if kind == "type":
        names = [expected] if isinstance(expected, str) else expected
        return f"expected {' or '.join(names)}, but got {json_type(value)} instead."
    bounds = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}
    if kind in bounds:
        return f"expected a value {bounds[kind]} {expected}, but got {_short(value)} instead."
    if kind in ("enum", "const"):
        options = [expected] if kind == "const" else [e for e in expected if e is not None]
        return f"expected one of {', '.join(map(_short, options))}, but got {_short(value)} instead."
    if kind in ("minItems", "maxItems"):
        bound = "at least" if kind == "minItems" else "at most"
        return f"expected {bound} {expected} item(s), but got {len(value)}."
    if kind in ("minLength", "maxLength"):
        bound = "at least" if kind == "minLength" else "at most"
        return f"expected a string of {bound} {expected} character(s), but got {len(value)}."
    if kind == "maxProperties":
        return f"expected at most {expected} entries, but got {len(value)}."
    if kind == "pattern":
        return f"{_short(value)} does not match the pattern {expected}."
    return error.message if len(error.message) <= 200 else error.message[:197] + "..."


def validate(body: dict, validator: Draft202012Validator) -> None:
    """Raise a 400 for the most relevant schema violation, with `param` naming the field."""
    error = jsonschema.exceptions.best_match(validator.iter_errors(body))
    if error is None:
        return
    path = list(error.absolute_path)
    if error.validator == "required":
        missing = next(name for name in error.validator_value if name not in error.instance)
        param = param_path(path + [missing])
        raise invalid_request(f"Missing required parameter: '{param}'.", param)
    if error.validator == "oneOf" and not path:            # tokenize: prompt xor messages
        raise invalid_request("Give exactly one of 'prompt' or 'messages'.", "prompt")
    if "propertyNames" in error.absolute_schema_path:       # a bad key: name it, and say it is a key
        param = param_path(path + [error.instance])
        raise invalid_request(f"Invalid key in '{param_path(path)}': {_describe(error)}", param)
    param = param_path(path)
    raise invalid_request(f"Invalid value for '{param}': {_describe(error)}", param)


def check_fields(body: dict, known: dict, *, strict: bool) -> tuple[str, ...]:
    """Unknown top-level fields: a 400 with --strict-params (as OpenAI does), else logged and ignored; the
    names ignored (which the response names in a header, body.py's `tell_ignored`)."""
    unknown = tuple(name for name in body if name not in known)
    if not unknown:
        return ()
    if strict:
        raise invalid_request(f"Unrecognized request argument supplied: {unknown[0]}", unknown[0],
                              "unknown_parameter")
    logger.warning("ignoring unknown request field(s): %s", ", ".join(unknown))
    return unknown


def check_model(body: dict, serves) -> None:
    model = body.get("model")
    if model is not None and not serves(model):
        raise model_not_found(model)


# ---- the calls handed to the engine ----

@dataclass(frozen=True)
class GenerationOptions:
    """Everything of a GenerationRequest but its prompt, which the endpoint builds."""
    sampling: SamplingParams
    stopping: StoppingParams
    n: int = 1
    logprobs: bool = False
    top_logprobs: int = 0
    prompt_logprobs: int | None = None       # legacy completions' echo with logprobs: score the prompt
    priority: int = 0                        # vLLM's: the scheduler's order, lower first
    trace_top_k: int | None = None           # "trace": the candidates a trace shows per stage (None: no trace)

    def request(self, prompt_ids, constraint: ConstraintSpec | None = None, trace=None) -> GenerationRequest:
        return GenerationRequest(prompt_ids=tuple(prompt_ids), sampling=self.sampling, stopping=self.stopping,
                                 n=self.n, logprobs=self.logprobs, top_logprobs=self.top_logprobs,
                                 constraint=constraint, prompt_logprobs=self.prompt_logprobs, trace=trace,
                                 priority=self.priority)


@dataclass(frozen=True)
class OutputConstraint:
    """What the output must follow, as asked: compiled by the engine (which knows the vocabulary)."""
    kind: str                                # "regex" | "json_schema" | "json_object" | "lark" | "llguidance"
    value: object
    param: str                               # the request field to name when it cannot be compiled
    json_schema_mode: str | None = None      # "generate" | "plain"; None: the server's


@dataclass(frozen=True)
class ChatCall:
    messages: list[dict]
    options: GenerationOptions
    tools: ToolSet | None = None             # None: no tools in the request
    template_kwargs: dict | None = None
    truncate: bool = False
    stream: bool = False
    include_usage: bool = False
    constraint: OutputConstraint | None = None
    max_tokens_param: str = "max_tokens"     # the spelling the client used (max_completion_tokens is newer)
    generation_prompt: bool = True           # vLLM's add_generation_prompt
    continue_final: bool = False             # vLLM's continue_final_message: the last message is continued
    echo: str = ""                           # vLLM's chat echo: the text the answer starts with
    ignored: tuple[str, ...] = ()            # unknown fields, logged and named in a response header
    continuous_usage: bool = False           # vLLM's: usage so far on every chunk
    legacy_functions: bool = False           # asked with `functions`: answered with `function_call`


@dataclass(frozen=True)
class CompletionCall:
    prompts: list                           # each a string or a list of token ids
    options: GenerationOptions              # options.n is best_of: the choices generated per prompt
    n: int = 1                              # the choices returned per prompt (the best n of best_of)
    echo: bool = False
    logprobs: int | None = None             # the legacy API's integer: how many alternatives per token
    generates: bool = True                  # False for max_tokens 0: the prompt alone (echoed, scored)
    stream: bool = False
    include_usage: bool = False
    constraint: OutputConstraint | None = None   # vLLM's guided_* fields
    ignored: tuple[str, ...] = ()
    continuous_usage: bool = False


def _given(body: dict, name: str, default=None):
    value = body.get(name)
    return default if value is None else value


def _seed(value: int | None) -> int | None:
    """OpenAI accepts any int64; numpy's seed sequences want a non-negative int: same bits, unsigned."""
    return None if value is None else int(value) & (2 ** 64 - 1)


def _stop(value) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def sampling_params(body: dict, vocab_size: int) -> SamplingParams:
    bias = {}
    for key, value in (body.get("logit_bias") or {}).items():
        token = int(key)
        if not 0 <= token < vocab_size:
            raise invalid_request(f"Invalid key in 'logit_bias': {key} is not a token id of this model "
                                  f"(0..{vocab_size - 1}).", "logit_bias")
        bias[token] = float(value)
    breakers = body.get("dry_sequence_breakers")
    return SamplingParams(
        temperature=float(_given(body, "temperature", 1.0)),
        top_k=max(int(_given(body, "top_k", 0)), 0),
        top_p=float(_given(body, "top_p", 1.0)),
        min_p=float(_given(body, "min_p", 0.0)),
        repetition_penalty=float(_given(body, "repetition_penalty", 1.0)),
        presence_penalty=float(_given(body, "presence_penalty", 0.0)),
        frequency_penalty=float(_given(body, "frequency_penalty", 0.0)),
        logit_bias=bias,
        dry_multiplier=float(_given(body, "dry_multiplier", 0.0)),
        dry_base=float(_given(body, "dry_base", 1.75)),
        dry_allowed_length=int(_given(body, "dry_allowed_length", 2)),
        dry_sequence_breakers=DEFAULT_DRY_SEQUENCE_BREAKERS if breakers is None else tuple(breakers),
        seed=_seed(body.get("seed")))


def stopping_params(body: dict, max_tokens: int | None, max_tokens_param: str, context_length: int,
                    vocab_size: int) -> StoppingParams:
    if max_tokens is not None and max_tokens >= context_length:
        raise invalid_request(f"'{max_tokens_param}' is too large: {max_tokens}. This model's context is "
                              f"{context_length} tokens, prompt included.", max_tokens_param)
    min_tokens = int(_given(body, "min_tokens", 0))
    if max_tokens is not None and min_tokens > max_tokens:
        raise invalid_request(f"'min_tokens' ({min_tokens}) must not exceed '{max_tokens_param}' ({max_tokens}).",
                              "min_tokens")
    return StoppingParams(max_tokens=max_tokens, stop=_stop(body.get("stop")), min_tokens=min_tokens,
                          ignore_eos=bool(body.get("ignore_eos")), **stopping_fields(body, vocab_size))


def _stream_options(body: dict) -> tuple[bool, bool]:
    stream = bool(body.get("stream"))
    options = body.get("stream_options")
    if options is not None and not stream:
        raise invalid_request("'stream_options' is only allowed when 'stream' is true.", "stream_options")
    return stream, bool((options or {}).get("include_usage"))


def _continuous_usage(body: dict) -> bool:
    """vLLM's stream_options.continuous_usage_stats: usage (so far) on every chunk, which include_usage turns on."""
    options = body.get("stream_options") or {}
    if options.get("continuous_usage_stats") and not options.get("include_usage"):
        raise invalid_request("'stream_options.continuous_usage_stats' needs 'stream_options.include_usage' true.",
                              "stream_options.continuous_usage_stats")
    return bool(options.get("continuous_usage_stats"))


def check_messages(messages: list[dict]) -> None:
    for i, message in enumerate(messages):
        role = message["role"]
        if role == "assistant" and message.get("content") is None \
                and not message.get("tool_calls") and not message.get("function_call"):
            raise invalid_request(f"Missing required parameter: 'messages[{i}].content' (an assistant message "
                                  "needs content or tool_calls).", f"messages[{i}].content")
        if role != "assistant" and message.get("tool_calls"):    # the schema checks them on assistant messages
            raise invalid_request(f"Invalid parameter: 'messages[{i}].tool_calls' is only allowed on assistant "
                                  "messages.", f"messages[{i}].tool_calls")
        for j, tool_call in enumerate(message.get("tool_calls") or ()):
            if tool_call["type"] != "function":
                param = f"messages[{i}].tool_calls[{j}].type"
                raise invalid_request(f"Invalid value for '{param}': tool calls of type '{tool_call['type']}' are "
                                      "not supported by this server (function tools only).", param,
                                      "unsupported_parameter")
        parts = message.get("content")
        for j, part in enumerate(parts if isinstance(parts, list) else ()):
            if part["type"] not in ("text", "refusal"):
                raise invalid_request(f"Content parts of type '{part['type']}' are not supported: this server "
                                      "serves text-only models, so only text parts can be given.",
                                      f"messages[{i}].content[{j}]", "unsupported_parameter")


def asks_code_interpreter(body: dict) -> bool:
    """mistral.rs's way to turn code execution on: a `{"type": "code_interpreter"}` tool."""
    return any(isinstance(t, dict) and t.get("type") == "code_interpreter" for t in body.get("tools") or ())


def builtin_tool_names(body: dict) -> tuple[str, ...]:
    """The server's own tools a chat request turns on (agentic.py runs them): execute_python with code
    execution (`enable_code_execution`, or a code_interpreter tool), the search tools with
    `web_search_options`."""
    code = (EXECUTE_PYTHON,) if body.get("enable_code_execution") or asks_code_interpreter(body) else ()
    return code + (SEARCH_TOOL_NAMES if body.get("web_search_options") is not None else ())


def check_tool_choice(body: dict) -> None:
    """tool_choice must agree with tools (OpenAI's rules and messages); it may name a built-in tool."""
    choice = body.get("tool_choice")
    tools = [t for t in body.get("tools") or () if t["type"] in ("function", "custom")]
    builtin = builtin_tool_names(body)
    if choice is None or choice in ("none", "auto"):
        return
    if not tools and not builtin:
        raise invalid_request("Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' "
                              "are specified.", "tool_choice")
    if isinstance(choice, dict) and choice["type"] in ("function", "custom"):
        name = choice[choice["type"]]["name"]
        names = {tool[tool["type"]]["name"] for tool in tools} | set(builtin)
        if name not in names:
            raise invalid_request(f"Invalid value for 'tool_choice': no tool named '{name}' is in 'tools' "
                                  f"({', '.join(sorted(names))}).", "tool_choice")


def _refuse_unoffered(body: dict) -> None:
    """Features this server does not offer at all: a 400 when a request turns one on."""
    offered_when = {
        "audio": lambda v: v is None,
        "modalities": lambda v: v is None or "audio" not in v,
        "prediction": lambda v: v is None,
        "moderation": lambda v: v is None,
        "store": lambda v: not v,
    }
    for name, fine in offered_when.items():
        if not fine(body.get(name)):
            raise not_supported(name)


def guided_constraint(body: dict, json_schema_mode: str | None = None) -> OutputConstraint | None:
    """vLLM's guided_json / guided_regex / guided_choice / guided_grammar as the output constraint."""
    asked = guided(body)
    return None if asked is None else OutputConstraint(asked[1], asked[2], asked[0], json_schema_mode)


def output_constraint(body: dict) -> OutputConstraint | None:
    """`response_format` (json_object, json_schema), the `grammar` extension or vLLM's guided_* fields, only
    one of them."""
    response_format = body.get("response_format") or {"type": "text"}
    grammar = body.get("grammar")
    vllm = guided_constraint(body, body.get("json_schema_mode"))
    if vllm is not None:
        if grammar is not None or response_format["type"] != "text":
            raise invalid_request(f"'{vllm.param}' cannot be combined with 'grammar' or a JSON 'response_format'; "
                                  "use one of them.", vllm.param)
        return vllm
    if grammar is not None and response_format["type"] != "text":
        raise invalid_request("'grammar' cannot be combined with a JSON 'response_format'; use one of them.",
                              "grammar")
    mode = body.get("json_schema_mode")
    if response_format["type"] == "json_object":
        return OutputConstraint("json_object", None, "response_format", mode)
    if response_format["type"] == "json_schema":
        schema = response_format["json_schema"].get("schema")
        if schema is None:                   # a named format without a schema: any JSON object
            return OutputConstraint("json_object", None, "response_format.json_schema", mode)
        return OutputConstraint("json_schema", schema, "response_format.json_schema.schema", mode)
    if grammar is None:
        return None
    return OutputConstraint(grammar["type"], grammar["value"], "grammar.value", mode)


def tool_request(body: dict) -> ToolSet | None:
    """The function tools and tool_choice (checked against each other by `check_tool_choice` first); custom
    tools are a 400 naming the field."""
    tools = [t for t in body.get("tools") or () if t.get("type") != "code_interpreter"]   # the agent's (agentic.py)
    if not tools:
        return None
    # beside built-in tools, the tool loop reads tool_choice over all of them (agentic.py)
    choice = None if builtin_tool_names(body) else body.get("tool_choice")
    try:
        return ToolSet.read(tools, choice, body.get("parallel_tool_calls"))
    except ToolRequestError as error:
        reason = str(error).removeprefix(f"{error.param}: ")
        raise invalid_request(f"Invalid value for '{error.param}': {reason}.", error.param,
                              "unsupported_parameter" if error.param.startswith("tools") else None) from None


def reasoning_kwargs(body: dict) -> dict:
    """`enable_thinking` / `reasoning_effort` as chat template kwargs (a model that ignores them behaves as
    usual); contradicting values are a 400 naming the field."""
    try:
        return reasoning_template_kwargs(body.get("enable_thinking"), body.get("reasoning_effort"))
    except ReasoningParamError as error:
        raise invalid_request(str(error), error.param) from None


def _tools_and_reasoning(body: dict) -> tuple[ToolSet | None, dict, OutputConstraint | None]:
    """Tools, thinking kwargs and output constraint, checked together: a call grammar and a response format
    cannot both hold the output, so JSON formats and grammars are refused while a tool call may be made."""
    tools = tool_request(body)
    constraint = output_constraint(body)
    if tools is not None and tools.callable and constraint is not None:
        param = constraint.param.split(".")[0]   # response_format, grammar or a guided_* field
        raise invalid_request(f"'{param}' cannot be combined with 'tools' (tool calls follow their own grammar); "
                              "use tool_choice 'none' or drop one of them.", param)
    return tools, reasoning_kwargs(body), constraint


def template_messages(messages: list[dict]) -> list[dict]:
    """`developer` is OpenAI's new name for `system`; chat templates only know the latter."""
    return [{**m, "role": "system"} if m["role"] == "developer" else m for m in messages]


def parse_chat(body: dict, *, serves, vocab_size: int, context_length: int, strict: bool = False) -> ChatCall:
    ignored = check_fields(body, CHAT_FIELDS, strict=strict)
    validate(body, CHAT_REQUEST)
    check_model(body, serves)
    body, legacy_functions = as_tools(body)
    check_messages(body["messages"])
    check_tool_choice(body)
    logprobs = bool(body.get("logprobs"))
    if body.get("top_logprobs") is not None and not logprobs:
        raise invalid_request("'top_logprobs' requires 'logprobs' to be true.", "top_logprobs")
    stream, include_usage = _stream_options(body)
    _refuse_unoffered(body)
    tools, template_kwargs, constraint = _tools_and_reasoning(body)
    rendering = chat_rendering(body, body["messages"], template_kwargs)
    max_tokens_param = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = body.get(max_tokens_param)
    options = GenerationOptions(
        sampling=sampling_params(body, vocab_size),
        stopping=stopping_params(body, None if max_tokens is None else int(max_tokens), max_tokens_param,
                                 context_length, vocab_size),
        n=int(_given(body, "n", 1)), logprobs=logprobs, top_logprobs=int(_given(body, "top_logprobs", 0)),
        trace_top_k=_trace_top_k(body), priority=int(_given(body, "priority", 0)))
    return ChatCall(messages=template_messages(body["messages"]), options=options, tools=tools,
                    template_kwargs=rendering.template_kwargs, truncate=bool(body.get("truncate_sequence")),
                    stream=stream, include_usage=include_usage, constraint=constraint,
                    max_tokens_param=max_tokens_param, generation_prompt=rendering.generation_prompt,
                    continue_final=rendering.continue_final, echo=rendering.echo, ignored=ignored,
                    continuous_usage=_continuous_usage(body), legacy_functions=legacy_functions)


def _trace_top_k(body: dict) -> int | None:
    """The candidates per stage of an asked-for trace; None when no trace is asked."""
    if not body.get("trace"):
        if body.get("trace_top_k") is not None:
            raise invalid_request("'trace_top_k' requires 'trace' to be true.", "trace_top_k")
        return None
    return int(_given(body, "trace_top_k", DEFAULT_TRACE_TOP_K))


LEGACY_MAX_TOKENS = 16                       # the completions API's default


def _is_token_id(value) -> bool:
    """An integer as JSON Schema counts them, so as the schema let it through: 1.0 is one, true is not."""
    return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, float) and value.is_integer())


def _prompts(prompt) -> list:
    """The prompt field as a list of prompts: strings, or lists of token ids."""
    if isinstance(prompt, str):
        return [prompt]
    kinds = {"an integer" if _is_token_id(item) else json_type(item) for item in prompt}
    if kinds == {"an integer"}:
        return [[int(t) for t in prompt]]
    if kinds in ({"a string"}, {"an array"}):
        if kinds == {"an array"} and any(not _is_token_id(t) for item in prompt for t in item):
            raise invalid_request("Invalid value for 'prompt': a list of token lists must hold integers.", "prompt")
        return [p if isinstance(p, str) else [int(t) for t in p] for p in prompt]
    raise invalid_request("Invalid value for 'prompt': expected a string, a list of strings, a list of token "
                          "ids or a list of token id lists.", "prompt")


def parse_completion(body: dict, *, serves, vocab_size: int, context_length: int,
                     strict: bool = False) -> CompletionCall:
    ignored = check_fields(body, COMPLETION_FIELDS, strict=strict)
    validate(body, COMPLETION_REQUEST)
    check_model(body, serves)
    prompts = _prompts(body["prompt"])
    for prompt in prompts:
        if isinstance(prompt, list) and any(t >= vocab_size for t in prompt):
            raise invalid_request(f"Invalid value for 'prompt': token ids must be below {vocab_size}.", "prompt")
    stream, include_usage = _stream_options(body)
    if body.get("suffix"):
        raise not_supported("suffix")
    logprobs = body.get("logprobs")
    echo = bool(body.get("echo"))
    n = int(_given(body, "n", 1))
    best_of = int(_given(body, "best_of", n))
    if best_of < n:
        raise invalid_request(f"'best_of' ({best_of}) must be at least 'n' ({n}).", "best_of")
    if best_of > n and stream:
        raise invalid_request("'best_of' greater than 'n' cannot be streamed.", "best_of")
    max_tokens = int(_given(body, "max_tokens", LEGACY_MAX_TOKENS))
    options = GenerationOptions(           # with max_tokens 0 the engine still picks one token, never shown
        sampling=sampling_params(body, vocab_size),
        stopping=stopping_params(body, max(max_tokens, 1), "max_tokens", context_length, vocab_size),
        n=best_of, logprobs=logprobs is not None or best_of > n, top_logprobs=int(logprobs or 0),
        prompt_logprobs=int(logprobs) if echo and logprobs is not None else None, trace_top_k=_trace_top_k(body),
        priority=int(_given(body, "priority", 0)))
    if options.trace_top_k is not None and len(prompts) > 1:
        raise invalid_request("'trace' takes one prompt: a trace follows one prompt through the pipeline.", "trace")
    return CompletionCall(prompts=prompts, options=options, n=n, echo=echo, logprobs=logprobs,
                          generates=max_tokens > 0, stream=stream, include_usage=include_usage,
                          constraint=guided_constraint(body), ignored=ignored,
                          continuous_usage=_continuous_usage(body))
