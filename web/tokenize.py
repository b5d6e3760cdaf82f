"""POST /tokenize and /detokenize, in vLLM's shapes.

    /tokenize   {"prompt": "..."} or {"messages": [...], "tools"?: [...], ...}
                                                          → {"tokens": [...], "count": N, "max_model_len": C}
    /detokenize {"tokens": [...]}                         → {"prompt": "..."}
"""
from __future__ import annotations

import falcon

from .body import Settings, read_json
from .chat import chat_prompt
from .engine import Engine, EngineSlot
from .errors import invalid_request
from .schema import (DETOKENIZE_FIELDS, DETOKENIZE_REQUEST, TOKENIZE_FIELDS, TOKENIZE_REQUEST, check_fields,
                     check_messages, check_model, check_tool_choice, reasoning_kwargs, template_messages,
                     tool_request, validate)


def tokenize(engine: Engine, body: dict, settings: Settings) -> list[int]:
    """A prompt's ids, or chat messages' ids exactly as /v1/chat/completions renders them: the same tool
    handling (tools, tool_choice), template kwargs (enable_thinking, reasoning_effort) and content safety."""
    model = engine.model
    if "prompt" in body:
        add_bos = body.get("add_special_tokens") is not False and model.tokenizer.special.add_bos
        return model.tokenizer.encode(body["prompt"], add_bos=add_bos)
    if model.template is None:
        raise invalid_request(f"{model.name} has no chat template; tokenize a prompt instead.", "messages")
    check_messages(body["messages"])
    check_tool_choice(body)
    ids, _ = chat_prompt(engine, template_messages(body["messages"]), tool_request(body),
                         template_kwargs=reasoning_kwargs(body), settings=settings,
                         generation_prompt=body.get("add_generation_prompt") is not False, fit=False)
    return ids


class Tokenize:
    def __init__(self, slot: EngineSlot, settings: Settings):
        self.slot, self.settings = slot, settings

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        engine = self.slot.get()
        body = read_json(req, self.settings.max_body_bytes)
        check_fields(body, TOKENIZE_FIELDS, strict=self.settings.strict_params)
        validate(body, TOKENIZE_REQUEST)
        check_model(body, engine.serves)
        tokens = tokenize(engine, body, self.settings)
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
