"""POST /v1/embeddings: OpenAI's shape, from the served model's final hidden states (refengine/embed.py).

    {"input": "text" | ["text", ...] | [token ids] | [[token ids], ...], "model", "encoding_format"?:
     "float" | "base64", "dimensions"?, "user"?}
    → {"object": "list", "data": [{"object": "embedding", "index", "embedding"}], "model",
       "usage": {"prompt_tokens", "total_tokens"}}

Texts are tokenized as legacy completions tokenize prompts (a BOS where the model wants one). The forward
passes run on the scheduler's thread between its steps (`Scheduler.between_steps`), all inputs of a request
batched together as a prefill is, so they never race the generation batch for the backend. `dimensions`
other than the model's hidden size is a 400: truncating the vector of a model not trained for it (as
OpenAI's text-embedding-3 models are) gives a worse vector, not a smaller one.
"""
from __future__ import annotations

import base64

import falcon
import numpy as np
from jsonschema import Draft202012Validator

from refengine.embed import embed

from .body import Settings, read_json, tell_ignored
from .engine import Engine, EngineSlot
from .errors import as_api_error, context_length_exceeded, invalid_request
from .metrics import Metrics
from .schema import check_fields, check_model, validate

MAX_INPUTS = 2048                            # OpenAI's limit on the items of one request
TOKEN_ID = {"type": "integer", "minimum": 0}
EMBEDDING_FIELDS = {
    "model": {"type": "string"},
    "input": {"type": ["string", "array"], "minItems": 1, "maxItems": MAX_INPUTS,
              "items": {"type": ["string", "integer", "array"], "minimum": 0, "minItems": 1, "items": TOKEN_ID}},
    "encoding_format": {"enum": ["float", "base64"]},
    "dimensions": {"type": ["integer", "null"], "minimum": 1},
    "user": {"type": ["string", "null"]},
}
EMBEDDING_REQUEST = Draft202012Validator({"type": "object", "required": ["model", "input"],
                                          "properties": EMBEDDING_FIELDS})


def inputs_of(value) -> list:
    """`input` as a list of inputs: strings, or lists of token ids."""
    if isinstance(value, str):
        return [value]
    kinds = {type(item) for item in value}
    if kinds == {int}:
        return [value]
    if kinds in ({str}, {list}):
        return value
    raise invalid_request("Invalid value for 'input': expected a string, a list of strings, a list of token ids "
                          "or a list of token id lists.", "input")


def token_ids(engine: Engine, inputs: list) -> list[list[int]]:
    """Each input's token ids, checked against the vocabulary and the context."""
    tokenizer, sequences = engine.model.tokenizer, []
    for i, item in enumerate(inputs):
        param = "input" if len(inputs) == 1 else f"input[{i}]"
        if isinstance(item, str):
            if not item:
                raise invalid_request(f"Invalid value for '{param}': an empty string has no embedding.", param)
            item = tokenizer.encode(item, add_bos=tokenizer.special.add_bos)
        elif any(token >= engine.model.vocab_size for token in item):
            raise invalid_request(f"Invalid value for '{param}': token ids must be below "
                                  f"{engine.model.vocab_size}.", param)
        if len(item) > engine.context_length:
            raise context_length_exceeded(f"This model's maximum context length is {engine.context_length} tokens, "
                                          f"however '{param}' has {len(item)} tokens.", param)
        sequences.append(list(item))
    return sequences


def encoded(vector: np.ndarray, encoding_format: str):
    """A vector as OpenAI sends it: a list of floats, or base64 of its float32 little-endian bytes."""
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


class Embeddings:
    def __init__(self, slot: EngineSlot, metrics: Metrics, settings: Settings):
        self.slot, self.metrics, self.settings = slot, metrics, settings

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        engine = self.slot.get()
        body = read_json(req, self.settings.max_body_bytes)
        tell_ignored(resp, check_fields(body, EMBEDDING_FIELDS, strict=self.settings.strict_params))
        validate(body, EMBEDDING_REQUEST)
        check_model(body, engine.serves)
        size = engine.model.config.hidden_size
        if body.get("dimensions") not in (None, size):
            raise invalid_request(f"'dimensions' {body['dimensions']} cannot be honoured: this model's embeddings "
                                  f"have {size} dimensions, and it was not trained for shorter ones.", "dimensions",
                                  "unsupported_parameter")
        sequences = token_ids(engine, inputs_of(body["input"]))
        try:
            vectors = engine.scheduler.between_steps(lambda: embed(engine.model, sequences)).result()
        except Exception as error:
            raise as_api_error(error, {"prompt": "input"}) from None
        tokens = sum(len(s) for s in sequences)
        self.metrics.count_tokens(tokens, 0)
        encoding = body.get("encoding_format") or "float"
        resp.media = {"object": "list", "model": engine.model_id,
                      "data": [{"object": "embedding", "index": i, "embedding": encoded(v, encoding)}
                               for i, v in enumerate(vectors)],
                      "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
