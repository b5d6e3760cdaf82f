"""POST /tokenize and /detokenize, in vLLM's shapes.

    /tokenize   {"prompt": "..."} or {"messages": [...]}  → {"tokens": [...], "count": N, "max_model_len": C}
    /detokenize {"tokens": [...]}                         → {"prompt": "..."}
"""
from __future__ import annotations

import falcon

from refengine.template import ChatTemplateError

from .body import Settings, read_json
from .engine import Engine, EngineSlot
from .errors import invalid_request
from .schema import (DETOKENIZE_FIELDS, DETOKENIZE_REQUEST, TOKENIZE_FIELDS, TOKENIZE_REQUEST, check_fields,
                     check_model, template_messages, validate)


def tokenize(engine: Engine, body: dict) -> list[int]:
    model = engine.model
    if "prompt" in body:
        add_bos = body.get("add_special_tokens") is not False and model.tokenizer.special.add_bos
        return model.tokenizer.encode(body["prompt"], add_bos=add_bos)
    if model.template is None:
        raise invalid_request(f"{model.name} has no chat template; tokenize a prompt instead.", "messages")
    generation_prompt = body.get("add_generation_prompt") is not False
    try:
        text = model.template.render(template_messages(body["messages"]), add_generation_prompt=generation_prompt)
    except ChatTemplateError as error:
        raise invalid_request(f"The messages cannot be rendered for this model: {error}", "messages") from None
    return model.tokenizer.encode(text)


class Tokenize:
    def __init__(self, slot: EngineSlot, settings: Settings):
        self.slot, self.settings = slot, settings

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        engine = self.slot.get()
        body = read_json(req, self.settings.max_body_bytes)
        check_fields(body, TOKENIZE_FIELDS, strict=self.settings.strict_params)
        validate(body, TOKENIZE_REQUEST)
        check_model(body, engine.serves)
        tokens = tokenize(engine, body)
        result = {"count": len(tokens), "max_model_len": engine.context_length, "tokens": tokens}
        if body.get("return_token_strs"):
            result["token_strs"] = [engine.model.tokenizer.token_strings[t] for t in tokens]
        resp.media = result


class Detokenize:
    def __init__(self, slot: EngineSlot, settings: Settings):
        self.slot, self.settings = slot, settings

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        engine = self.slot.get()
        body = read_json(req, self.settings.max_body_bytes)
        check_fields(body, DETOKENIZE_FIELDS, strict=self.settings.strict_params)
        validate(body, DETOKENIZE_REQUEST)
        check_model(body, engine.serves)
        vocab = engine.model.tokenizer.vocab_size
        bad = next((i for i, t in enumerate(body["tokens"]) if t >= vocab), None)
        if bad is not None:
            raise invalid_request(f"Invalid value for 'tokens[{bad}]': token ids must be below {vocab}.",
                                  f"tokens[{bad}]")
        resp.media = {"prompt": engine.model.tokenizer.decode([int(t) for t in body["tokens"]])}
