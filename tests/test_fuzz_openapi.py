"""Schema fuzzing with schemathesis: bodies generated from the server's own /openapi.json are sent to the app
on the tiny seeded model; no answer may be a 5xx, and every answer must follow the document (a documented
status, its content type, its body schema; a stream event by event, ending with [DONE]).

In-process WSGI (schemathesis' werkzeug client on `create_app(engine)`), not a `refengine serve` subprocess:
no port, no process lifecycle, no socket timeouts, so only the example counts bound it; each request is
answered before the next is sent (nothing depends on how fast the machine is); and a 500's traceback is
logged in this process, next to the request that caused it. gunicorn's own part (workers, sockets) is
covered by tests/test_web_server.py and tests/test_worker_death.py.

Bounded by counts: `max_examples` per operation and mode, derandomized (the same examples on every run),
no deadline, no shrinking (every example runs; each distinct failure is recorded with its request and
response, and all of them are printed at the end). Positive bodies come from a copy of the document with
small maxima on what sizes a generation (max_tokens 4, n 2, ...), `model` drawn from the served names, token
ids mostly inside the vocabulary and `stream` always present, so about half are streamed. Negative bodies
(each breaking the real schema somewhere) come from the served document itself: the server must refuse
every one of them (4xx) before generating anything.
"""
from __future__ import annotations

import collections
import copy
import json
import logging
from dataclasses import dataclass, field

import jsonschema
import pytest
import schemathesis
from falcon import testing
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup

from refengine.model import load_model
from tiny_model import write_tiny_llama
from web.app import create_app
from web.engine import start_engine

from schemathesis.specs.openapi.checks import (content_type_conformance, negative_data_rejection,  # noqa: E402
                                               response_schema_conformance, status_code_conformance)

POSITIVE_CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
NEGATIVE_CHECKS = POSITIVE_CHECKS + [negative_data_rejection]
GENERATING = ("/v1/chat/completions", "/v1/completions", "/v1/responses")
EXAMPLES = {                                  # per operation: (positive, negative)
    "/v1/chat/completions": (150, 60), "/v1/completions": (150, 60), "/v1/responses": (80, 40), "/v1/embeddings": (30, 20),
    "/tokenize": (60, 40),
    "/detokenize": (40, 30), "/v1/models/{model_id}": (10, 0),     # (any string is a valid path id)
}
OTHER_EXAMPLES = (5, 0)                       # GETs without parameters: nothing to vary
SMALL = {"max_tokens": 4, "max_completion_tokens": 4, "max_output_tokens": 4, "min_tokens": 4, "n": 2, "best_of": 2,
         "top_logprobs": 3}
# whole streams are read (schemathesis stops after 20 events by default); the timeout is only a hang guard
CONFIG = {"max-stream-events": 100_000, "request-timeout": 300}


@dataclass
class Tally:
    examples: collections.Counter = field(default_factory=collections.Counter)    # label → examples
    statuses: collections.Counter = field(default_factory=collections.Counter)    # (label, status) → answers
    streamed: collections.Counter = field(default_factory=collections.Counter)    # label → event streams
    refused: collections.Counter = field(default_factory=collections.Counter)     # positive 400s by param
    findings: dict = field(default_factory=dict)          # (label, kind, ...) → (request, response, why)

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    def by_status(self) -> collections.Counter:
        total = collections.Counter()
        for (_, status), count in self.statuses.items():
            total[status] += count
        return total


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """The tiny seeded llama with a 1024-token context (room for the tool prompt)."""
    folder = write_tiny_llama(tmp_path_factory.mktemp("tiny-fuzz"), extra_config={"max_position_embeddings": 1024})
    engine = start_engine(load_model(folder), max_batch=8, max_queue=64)
    yield engine
    engine.stop()


@pytest.fixture
def quiet_schema_log():
    """Random bodies carry random unknown fields: one warning each would bury the log of a real failure."""
    logger = logging.getLogger("web.schema")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


def body_schema(document: dict, path: str) -> dict:
    return document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]


def fuzzing_copy(document: dict, model_ids: list[str], vocab_size: int) -> dict:
    document = copy.deepcopy(document)
    token = {"type": "integer", "minimum": 0, "maximum": vocab_size}       # (vocab_size itself: a 400)
    body_schema(document, "/detokenize")["properties"]["tokens"]["items"] = token
    for path in GENERATING:
        schema = body_schema(document, path)
        properties = schema["properties"]
        for name, maximum in SMALL.items():
            if name in properties:
                properties[name] = {**properties[name], "maximum": min(maximum, properties[name].get("maximum",
                                                                                                   maximum))}
        properties["model"] = {"enum": model_ids}
        properties["stream"] = {"type": "boolean"}
        schema["required"] = schema["required"] + ["stream"]
        if "tools" in properties:
            properties["tools"] = {**properties["tools"], "maxItems": 2}
    prompt = body_schema(document, "/v1/completions")["properties"]["prompt"]
    prompt["items"] = {**prompt["items"], "maximum": vocab_size, "items": token}
    embedding = body_schema(document, "/v1/embeddings")["properties"]
    embedding["model"] = {"enum": model_ids}
    embedding["input"] = {**embedding["input"], "maxItems": 4,
                          "items": {**embedding["input"]["items"], "maximum": vocab_size, "maxItems": 32, "items": token}}
    for parameter in document["paths"]["/v1/models/{model_id}"]["get"]["parameters"]:
        parameter["schema"] = {"enum": model_ids + ["not-a-model"]}
    return document


def sse_events(text: str) -> list[str]:
    data = []
    for block in text.split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if lines:
            assert len(lines) == 1 and lines[0].startswith("data: "), block
            data.append(lines[0][len("data: "):])
    return data


def responses_stream_problem(text: str) -> str | None:
    """The Responses API's stream: `event: <type>` / `data: <event>` pairs numbered from 0, ending with
    response.completed or response.incomplete, and no `error` (the engine failed mid-stream)."""
    events = []
    for block in text.split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if lines:
            assert len(lines) == 2 and lines[0].startswith("event: ") and lines[1].startswith("data: "), block
            events.append(json.loads(lines[1][len("data: "):]))
            if lines[0] != f"event: {events[-1]['type']}":
                return f"the event name {lines[0]!r} is not its type"
    if [e["sequence_number"] for e in events] != list(range(len(events))):
        return "sequence numbers do not count from 0"
    if any(e["type"] in ("error", "response.failed") for e in events):
        return "the response failed in the stream: " + text[-600:]
    ending = events[-1]["type"] if events else None
    return None if ending in ("response.completed", "response.incomplete") else f"the stream ends with {ending}"


def stream_problem(document: dict, path: str, text: str) -> str | None:
    """What is wrong with a streamed answer, beyond each event's schema (which schemathesis checks): it ends
    with `[DONE]` and nothing after it, and carries no error event (the engine failed mid-stream)."""
    if not text.endswith("\n\n"):
        return "the stream does not end with a blank line"
    if path == "/v1/responses":
        return responses_stream_problem(text)
    events = sse_events(text)
    named = document["paths"][path]["post"]["responses"]["200"]["content"]["text/event-stream"]["x-sse-events"]
    chunk, error = (jsonschema.Draft202012Validator({"$ref": ref, "components": document["components"]})
                    for ref in named)
    for i, data in enumerate(events):
        if data == "[DONE]":
            return None if i == len(events) - 1 else "events after [DONE]"
        payload = json.loads(data)
        if error.is_valid(payload):
            return "an error event in the stream: " + data
        problems = list(chunk.iter_errors(payload))
        if problems:
            return f"event {i} does not follow {named[0]}: {problems[0].message}"
    return "no [DONE] at the end"


def describe(case, response) -> tuple[str, str]:
    request = f"{case.method} {case.formatted_path} " + json.dumps(case.body, ensure_ascii=False)[:2000]
    return request, f"{response.status_code} {response.text[:1000]}"


def fuzz(schema, document: dict, mode: GenerationMode, path: str, method: str, examples: int, tally: Tally) -> None:
    operation = schema[path][method.upper()]
    checks = NEGATIVE_CHECKS if mode == GenerationMode.NEGATIVE else POSITIVE_CHECKS
    label = f"{method.upper()} {path} {mode.value}"

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case):
        tally.examples[label] += 1
        response = case.call()
        tally.statuses[(label, response.status_code)] += 1
        if response.stream_cut_short:
            tally.findings.setdefault((label, "stream cut short"), describe(case, response) + ("hang guard",))
        try:
            case.validate_response(response, checks=checks)
        except FailureGroup as failures:               # recorded, so that every example runs
            for failure in failures.exceptions:
                key = (label, type(failure).__name__, response.status_code)
                tally.findings.setdefault(key, describe(case, response) + (f"{failure.title}: {failure.message}",))
        if mode == GenerationMode.POSITIVE and response.status_code == 400:
            tally.refused[response.json()["error"]["param"]] += 1
        if response.headers.get("content-type", [""])[0].startswith("text/event-stream"):
            tally.streamed[label] += 1
            problem = stream_problem(document, path, response.text)
            if problem is not None:
                tally.findings.setdefault((label, "stream", problem[:40]), describe(case, response) + (problem,))

    run()


def report(tally: Tally) -> str:
    lines = [f"schemathesis {schemathesis.__version__}: {sum(tally.examples.values())} examples, {tally.requests} "
             f"requests, {sum(tally.streamed.values())} answered as event streams; statuses "
             f"{dict(sorted(tally.by_status().items()))}"]
    for label, count in sorted(tally.examples.items()):
        statuses = {status: n for (of, status), n in sorted(tally.statuses.items()) if of == label}
        lines.append(f"  {label}: {count} examples, statuses {statuses}, streams {tally.streamed[label]}")
    lines.append("  positive bodies refused (400), by param: " + ", ".join(
        f"{param} {count}" for param, count in tally.refused.most_common(12)))
    for key, (request, response, why) in tally.findings.items():
        lines.append(f"FINDING {key}\n  request: {request}\n  response: {response}\n  {why[:600]}")
    return "\n".join(lines)


def test_fuzz_the_app_with_its_own_openapi_document(engine, quiet_schema_log, capsys):
    app = create_app(engine)
    config = schemathesis.Config.from_dict(CONFIG)
    served = schemathesis.openapi.from_wsgi("/openapi.json", app, config=config)
    document = served.raw_schema
    fuzzed = fuzzing_copy(document, ["default", engine.model_id], engine.model.config.vocab_size)
    positive = schemathesis.openapi.from_dict(fuzzed, config=config)
    positive.app = app
    tally = Tally()
    for path, operations in document["paths"].items():
        for method in operations:
            n_positive, n_negative = EXAMPLES.get(path, OTHER_EXAMPLES)
            fuzz(positive, document, GenerationMode.POSITIVE, path, method, n_positive, tally)
            if n_negative:
                fuzz(served, document, GenerationMode.NEGATIVE, path, method, n_negative, tally)
    with capsys.disabled():
        print("\n" + report(tally))
    statuses = tally.by_status()
    assert tally.requests >= 500
    assert statuses[200] >= 100 and statuses[400] >= 100        # both accepted and refused bodies were reached
    assert sum(tally.streamed.values()) >= 10
    assert [status for status in statuses if status >= 500] == [], report(tally)
    assert tally.findings == {}, report(tally)


# ---- what the fuzzer found, pinned (each one a request that once answered 500) ----

@pytest.mark.parametrize("field, value", [
    ("repetition_penalty", 5e-324),          # float32(p) == 0: logit / p is inf, inf - inf is NaN in the sampler
    ("repetition_penalty", 1e-40),
    ("temperature", 5e-324),                 # logits / t overflow float32 the same way
    ("temperature", 1e-40),
])
@pytest.mark.parametrize("path", GENERATING)
def test_tiny_positive_sampling_values_are_answered(engine, quiet_schema_log, path, field, value):
    body = {"model": "default", "max_tokens": 4, "seed": 0, field: value}
    body.update({"messages": [{"role": "user", "content": "The quick brown fox"}]} if path == GENERATING[0]
                else {"prompt": "The quick brown fox"})
    result = testing.TestClient(create_app(engine)).simulate_post(path, json=body)
    assert result.status_code < 500, result.text


@pytest.mark.parametrize("prompt", [[1.0, 2.0], [[1.0, 2.0], [3]]])
def test_integral_float_token_ids_are_token_ids(engine, prompt):
    """JSON Schema counts 1.0 as an integer, so the document (and the validator) accept it: the prompt's
    token ids must too (they were a 400, while every other integer field took 1.0)."""
    result = testing.TestClient(create_app(engine)).simulate_post("/v1/completions", json={
        "model": "default", "prompt": prompt, "max_tokens": 2})
    assert result.status_code == 200, result.text
    prompts = len(prompt) if isinstance(prompt[0], list) else 1
    assert len(result.json["choices"]) == prompts
