"""`refengine serve` on the default model, driven as a user would: the openai SDK over loopback."""
import json
import re
import time
import urllib.request
from pathlib import Path

import jsonschema
import openai
import pytest

from serving import free_port, refengine_serve, running_server

PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age", "city"],
          "properties": {"name": {"type": "string", "maxLength": 24},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120},
                         "city": {"enum": ["Paris", "Berlin", "Rome"]}}}


@pytest.fixture(scope="module")
def server(smollm2_dir):
    port = free_port()
    with running_server(refengine_serve("--model", str(smollm2_dir), "--port", str(port)), port):
        yield f"http://127.0.0.1:{port}/v1"


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server, api_key="unused", max_retries=0, timeout=120)


def ask(client, content, **fields):
    return client.chat.completions.create(model="default", messages=[{"role": "user", "content": content}],
                                          **fields)


def test_chat_answers_and_streams_the_same_text(client):
    reply = ask(client, "What is the capital of France?", temperature=0, max_tokens=24)
    assert "Paris" in reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop" and reply.usage.completion_tokens <= 24
    pieces = [c.choices[0].delta.content or "" for c in
              ask(client, "What is the capital of France?", temperature=0, max_tokens=24, stream=True)
              if c.choices]
    assert "".join(pieces) == reply.choices[0].message.content


@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_strict_output_validates(client, stream):
    response_format = {"type": "json_schema", "json_schema": {"name": "person", "strict": True, "schema": PERSON}}
    fields = dict(response_format=response_format, max_tokens=80, temperature=0.8, seed=7)
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in
                       ask(client, "Describe a person as JSON.", stream=True, **fields) if c.choices)
    else:
        text = ask(client, "Describe a person as JSON.", **fields).choices[0].message.content
    jsonschema.validate(json.loads(text), PERSON)


def test_json_object_output_is_an_object(client):
    reply = ask(client, "Return a JSON object with keys \"name\" and \"age\" for Alice, 30.",
                response_format={"type": "json_object"},
                max_tokens=120, temperature=0)
    assert reply.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(reply.choices[0].message.content), dict)


def test_grammar_extension_regex_and_json_schema(client):
    reply = ask(client, "Give me a phone number.", max_tokens=20, temperature=1.0, seed=3,
                extra_body={"grammar": {"type": "regex", "value": r"\(\d{3}\) \d{3}-\d{4}"}})
    assert re.fullmatch(r"\(\d{3}\) \d{3}-\d{4}", reply.choices[0].message.content)
    reply = ask(client, "A person?", max_tokens=80, temperature=0,
                extra_body={"grammar": {"type": "json_schema", "value": PERSON}})
    jsonschema.validate(json.loads(reply.choices[0].message.content), PERSON)


def test_bad_constraints_are_400s_naming_the_field(client):
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, "x", max_tokens=4, extra_body={"grammar": {"type": "regex", "value": "[0-9"}})
    assert caught.value.body["param"] == "grammar.value"
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, "x", max_tokens=4, response_format={"type": "json_object"},
            extra_body={"grammar": {"type": "regex", "value": "a"}})
    assert caught.value.body["param"] == "grammar"


EXTRACTED = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
             "required": ["name", "age"]}          # Pydantic's output: silent on additionalProperties


def test_a_schema_silent_on_additional_properties_is_answered_with_its_declared_keys(client):
    """Generating, an object that declares properties is closed, so the model writes them instead of
    inventing keys until the length limit (issue 15's request, as instructor and LangChain send it)."""
    reply = ask(client, "Extract: John is 30 years old.", max_tokens=120, temperature=0,
                response_format={"type": "json_schema", "json_schema": {"name": "Person", "schema": EXTRACTED}})
    assert reply.choices[0].finish_reason == "stop"
    assert set(json.loads(reply.choices[0].message.content)) == {"name", "age"}
    assert "\n\n" not in reply.choices[0].message.content


def test_json_schema_mode_plain_reads_the_schema_by_its_letter(client):
    schema = {"type": "object", "properties": {}, "minProperties": 1, "maxProperties": 1}
    reply = ask(client, "A JSON object with one key, please.", max_tokens=40, temperature=0,
                response_format={"type": "json_schema", "json_schema": {"name": "one", "schema": schema}},
                extra_body={"json_schema_mode": "plain"})
    if reply.choices[0].finish_reason == "stop":
        assert len(json.loads(reply.choices[0].message.content)) == 1    # a key beyond the declared (none)
    with pytest.raises(openai.BadRequestError) as caught:           # generating, nothing may be written
        ask(client, "x", max_tokens=4,
            response_format={"type": "json_schema", "json_schema": {"name": "one", "schema": schema}})
    assert caught.value.body["param"] == "response_format.json_schema.schema"
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, "x", max_tokens=4, extra_body={"json_schema_mode": "loose"})
    assert caught.value.body["param"] == "json_schema_mode"


def test_a_function_declaring_no_arguments_is_called_with_an_empty_object(client):
    tools = [{"type": "function", "function": {"name": "get_time", "description": "The time now.",
                                               "parameters": {"type": "object", "properties": {}}}}]
    reply = ask(client, "What time is it?", tools=tools, tool_choice="required", max_tokens=40, temperature=0)
    call = reply.choices[0].message.tool_calls[0]
    assert call.function.name == "get_time" and json.loads(call.function.arguments) == {}


ANSWER = {"grammars": [{"lark_grammar": 'start: "Answer: " @person'}, {"name": "person", "json_schema": EXTRACTED}]}


def test_an_llguidance_grammar_mixing_lark_and_a_json_schema(client):
    reply = ask(client, "Extract: John is 30 years old.", max_tokens=60, temperature=0,
                extra_body={"grammar": {"type": "llguidance", "value": ANSWER}})
    content = reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop" and content.startswith("Answer: ")
    assert set(json.loads(content.removeprefix("Answer: "))) == {"name", "age"}
    capped = ask(client, "Extract: John is 30 years old.", max_tokens=60, temperature=0,
                 extra_body={"grammar": {"type": "llguidance", "value": {**ANSWER, "max_tokens": 3}}})
    assert capped.choices[0].finish_reason == "length" and capped.usage.completion_tokens == 3


def test_an_llguidance_grammar_that_cannot_compile_names_the_grammar(client):
    broken = {"grammars": [ANSWER["grammars"][0], {"name": "person", "json_schema": {"type": "strin"}}]}
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, "x", max_tokens=4, extra_body={"grammar": {"type": "llguidance", "value": broken}})
    assert caught.value.body["param"] == "grammar.value.grammars[1].json_schema"
    assert "strin" in caught.value.body["message"]


def metric_lines(server: str) -> list[str]:
    with urllib.request.urlopen(server.removesuffix("/v1") + "/metrics") as response:
        return response.read().decode().splitlines()


def has_metric(server: str, name: str) -> bool:
    return any(line.startswith(name + " ") for line in metric_lines(server))


def metric(server: str, name: str) -> float:
    return float(next(line.split()[1] for line in metric_lines(server) if line.startswith(name + " ")))


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_a_client_that_times_out_stops_its_non_streamed_generation(server, client, endpoint):
    """The sequence must stop once the SDK gives up after 1 s. It asks for the rest of the 8192-token context
    with ignore_eos: over 8000 tokens, which no machine running this engine on SmolLM2 decodes in a second
    (this 2-core CPU needs minutes), however loaded or fast the machine is within that margin."""
    before = metric(server, "refengine_client_disconnects_total")
    impatient = client.with_options(timeout=1.0)
    with pytest.raises(openai.APITimeoutError):
        if endpoint == "chat":
            ask(impatient, "Tell me a long story.", max_tokens=None, extra_body={"ignore_eos": True})
        else:
            impatient.completions.create(model="default", prompt="Once upon a time", max_tokens=8100,
                                         extra_body={"ignore_eos": True})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (metric(server, "refengine_client_disconnects_total") == before
                                           or metric(server, "refengine_running_requests") > 0):
        time.sleep(0.1)
    assert metric(server, "refengine_client_disconnects_total") == before + 1
    assert metric(server, "refengine_running_requests") == 0
    path = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
    answered = f'refengine_requests_total{{endpoint="{path}",method="POST",status="499"}}'
    deadline = time.monotonic() + 5                     # counted once the handler has returned
    while time.monotonic() < deadline and not has_metric(server, answered):
        time.sleep(0.1)
    assert metric(server, answered) == 1
    assert ask(client, "Hi", max_tokens=3).choices[0].finish_reason == "length"     # still serving


def test_the_next_turn_of_a_conversation_reuses_the_cached_prefix(client):
    history = [{"role": "user", "content": "Name three rivers in France, briefly."}]
    first = client.chat.completions.create(model="default", messages=history, temperature=0, max_tokens=40)
    history += [{"role": "assistant", "content": first.choices[0].message.content},
                {"role": "user", "content": "Which one is the longest?"}]
    second = client.chat.completions.create(model="default", messages=history, temperature=0, max_tokens=20)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert first.usage.prompt_tokens <= cached < second.usage.prompt_tokens
    assert second.choices[0].message.content.strip()


def test_echo_with_logprobs_scores_a_prompt_token_by_token(client):
    """Scoring as lm-eval does: the prompt is transformers' greedy continuation of a parity case, so every
    continuation token must be the most likely one at its position."""
    case = json.loads((Path(__file__).parent / "fixtures" / "parity_smollm2.json").read_text())["cases"][0]
    prompt, greedy = case["prompt_ids"], case["greedy_ids"][:10]
    scored = client.completions.create(model="default", prompt=prompt + greedy, echo=True, logprobs=1,
                                       max_tokens=1, temperature=0)
    logprobs = scored.choices[0].logprobs
    assert len(logprobs.tokens) == len(prompt) + len(greedy) + 1
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    assert all(value <= 0 for value in logprobs.token_logprobs[1:])
    for position in range(len(prompt), len(prompt) + len(greedy)):
        top = logprobs.top_logprobs[position]
        assert max(top, key=top.get) == logprobs.tokens[position]
