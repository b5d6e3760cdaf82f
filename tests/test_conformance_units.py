"""Unit tests of the conformance suite's parts: SSE parsing, schema generation, validation, reports."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conformance.check import Evidence, Result
from conformance.checks.errors import param_matches
from conformance.checks.semantics import reassembled, stop_candidate
from conformance.client import shorten
from conformance.context import context_length_of
from conformance.fake_server import decode, minimal_instance, rotate, shortest_match
from conformance.report import render_html, render_table, summary
from conformance.schemas import load, validate
from conformance.schemas.build import DEFAULT_SPEC, DEFS_TARGETS, TARGETS, build, to_json_schema
from conformance.sse import parse_sse


# -- SSE -------------------------------------------------------------------------------------------

def test_sse_events_comments_and_line_endings():
    stream = parse_sse(b': keep-alive\r\n\r\ndata: {"a": 1}\r\n\r\ndata:{"b":2}\n\ndata: x\ndata: y\r\rdata: [DONE]\n\n')
    assert [e.data for e in stream.events] == ['{"a": 1}', '{"b":2}', "x\ny", "[DONE]"]
    assert stream.comments == ("keep-alive",)
    assert stream.problems == ()


def test_sse_reports_unterminated_last_event_and_unknown_fields():
    stream = parse_sse(b'data: {"a": 1}\n\nfoo: bar\n\ndata: [DONE]\n')
    assert [e.data for e in stream.events] == ['{"a": 1}', "[DONE]"]
    assert len(stream.problems) == 2
    assert "not an SSE field" in stream.problems[0] and "not terminated" in stream.problems[1]


def test_sse_event_name_and_invalid_utf8():
    stream = parse_sse(b"event: error\ndata: {}\n\ndata: \xff\n\n")
    assert stream.events[0].event == "error" and stream.events[1].event is None
    assert "UTF-8" in stream.problems[0]


# -- schema generation -----------------------------------------------------------------------------

def test_nullable_becomes_or_null_and_refs_are_inlined():
    components = {
        "Usage": {"type": "object", "description": "doc", "properties": {"n": {"type": "integer"}}},
        "Chunk": {"type": "object", "x-oaiMeta": {}, "properties": {
            "usage": {"$ref": "#/components/schemas/Usage", "nullable": True},
            "reason": {"type": "string", "enum": ["stop"], "nullable": True},
            "description": {"type": "string"}}},       # a property *named* description survives
    }
    schema = to_json_schema(components["Chunk"], components)
    assert schema == {"type": "object", "properties": {
        "usage": {"anyOf": [{"type": "object", "properties": {"n": {"type": "integer"}}}, {"type": "null"}]},
        "reason": {"anyOf": [{"type": "string", "enum": ["stop"]}, {"type": "null"}]},
        "description": {"type": "string"}}}


def test_reference_cycles_are_refused():
    components = {"A": {"properties": {"b": {"$ref": "#/components/schemas/B"}}},
                  "B": {"items": {"$ref": "#/components/schemas/A"}}}
    with pytest.raises(ValueError, match="A -> B -> A"):
        to_json_schema(components["A"], components, ("A",))


@pytest.mark.skipif(not DEFAULT_SPEC.exists(), reason="the OpenAPI spec is not available here")
def test_committed_schemas_are_what_build_generates():
    generated = build(json.loads(DEFAULT_SPEC.read_text()))
    for name in TARGETS:
        assert load(name) == json.loads(json.dumps(generated[name])), name


def test_committed_schemas_have_no_openapi_leftovers():
    for name in TARGETS:
        text = (Path(__file__).parent.parent / "conformance" / "schemas" / f"{name}.json").read_text()
        assert '"nullable"' not in text and '"$ref"' not in text and '"x-' not in text


@pytest.mark.skipif(not DEFAULT_SPEC.exists(), reason="the OpenAPI spec is not available here")
def test_the_responses_schemas_keep_their_components_in_defs():
    """The Responses API's objects refer to hundreds of components: each file keeps them once, in `$defs`,
    every reference resolves there, and nothing of OpenAPI's own is left."""
    generated = build(json.loads(DEFAULT_SPEC.read_text()))
    for name in DEFS_TARGETS:
        schema = load(name)
        assert schema == json.loads(json.dumps(generated[name])), name
        text = json.dumps(schema)
        refs = set(re.findall(r'"\$ref": "([^"]+)"', text))
        assert refs and all(ref.startswith("#/$defs/") and ref[len("#/$defs/"):] in schema["$defs"] for ref in refs)
        assert '"nullable"' not in text and '"x-' not in text


# -- validation ------------------------------------------------------------------------------------

CHUNK = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
         "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]}


def test_valid_chunk_and_null_usage_pass():
    assert validate("CreateChatCompletionStreamResponse", {**CHUNK, "usage": None}) == []


def test_tool_call_delta_without_index_is_a_hard_error():
    chunk = json.loads(json.dumps(CHUNK))
    chunk["choices"][0]["delta"] = {"tool_calls": [{"function": {"arguments": "{"}}]}
    errors = validate("CreateChatCompletionStreamResponse", chunk)
    assert [(e.path, e.soft) for e in errors] == [("/choices/0/delta/tool_calls/0", False)]
    assert "'index' is a required property" in errors[0].message


def test_missing_nullable_fields_are_soft_errors_once_each():
    errors = validate("ErrorResponse", {"error": {"message": "bad", "type": "invalid_request_error"}})
    assert [(e.message, e.soft) for e in errors] == [("'param' is a required property", True),
                                                      ("'code' is a required property", True)]
    assert [e.soft for e in validate("ErrorResponse", {"detail": "bad"})] == [False]


def test_wrong_finish_reason_is_a_hard_error():
    body = {"id": "x", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "finish_reason": "eos", "logprobs": None,
                         "message": {"role": "assistant", "content": "hi", "refusal": None}}]}
    errors = validate("CreateChatCompletionResponse", body)
    assert [(e.path, e.soft) for e in errors] == [("/choices/0/finish_reason", False)]


# -- helpers of the checks -------------------------------------------------------------------------

def test_stop_candidate_is_a_first_occurrence_from_the_second_half():
    text = "1, 2, 3, 4, 5, 6"
    start, stop = stop_candidate(text)
    assert start >= len(text) // 2 and text.find(stop) == start and len(stop) == 3
    assert stop_candidate("ab") is None


def test_param_matches_field_or_path_inside_it():
    assert param_matches("messages", "messages") and param_matches("messages[0].role", "messages")
    assert param_matches("response_format.type", "response_format")
    assert not param_matches("messages_x", "messages") and not param_matches(None, "n")


def test_logprob_bytes_reassemble_multibyte_text():
    entries = [{"bytes": list("é".encode())[:1]}, {"bytes": list("é".encode())[1:]}, {"bytes": [33]}]
    assert reassembled(entries) == "é!".encode()
    assert reassembled([{"bytes": None}]) is None


def test_context_length_discovery_and_evidence_shortening():
    assert context_length_of({"id": "m", "max_model_len": 4096}) == 4096
    assert context_length_of({"id": "m", "meta": {"n_ctx_train": 2048}}) == 2048
    assert context_length_of({"id": "m"}) is None
    short = shorten({"messages": [{"content": "x" * 5000}]}, limit=10)
    assert short["messages"][0]["content"].startswith("x" * 10 + "…")


# -- the toy model ---------------------------------------------------------------------------------

def test_toy_decode_honours_max_tokens_and_stop():
    assert decode("abcdef", 3, [], False) == (3, "abc", "length")
    assert decode("abcdef", None, ["cd"], False) == (4, "ab", "stop")
    assert decode("abcdef", None, ["cd"], True) == (4, "abcd", "stop")
    assert decode("abc", 10, [], False) == (3, "abc", "stop")


def test_toy_constraints():
    assert shortest_match("[0-9]{3}") == "000"
    assert minimal_instance({"type": "object", "required": ["a", "b"], "properties": {
        "a": {"enum": ["x", "y"]}, "b": {"type": "integer", "minimum": 3}}}) == {"a": "x", "b": 3}
    assert all(rotate("abcd", k) != "abcd" for k in range(10))


# -- reports ---------------------------------------------------------------------------------------

RESULTS = [
    Result("semantics.a", "semantics", "MUST", "rule a", "passed"),
    Result("semantics.b", "semantics", "SHOULD", "rule b", "failed", "b broke",
           (Evidence({"method": "POST", "url": "http://h/v1/x", "body": {"k": "<v>"}}, 200, {"bad": 1}, "why"),)),
    Result("streaming.c", "streaming", "MUST", "rule c", "error", "no HTTP response"),
    Result("streaming.d", "streaming", "EXT", "rule d", "skipped", "n/a"),
]


def test_summary_counts_per_category_and_must_failures():
    counts = summary(RESULTS)
    assert counts["semantics"] == {"passed": 1, "failed": 1, "skipped": 0, "error": 0, "must_failed": 0}
    assert counts["streaming"] == {"passed": 0, "failed": 0, "skipped": 1, "error": 1, "must_failed": 1}
    assert counts["total"]["must_failed"] == 1 and set(counts) == {"semantics", "streaming", "total"}


def test_table_and_html_show_failures_with_escaped_evidence():
    table = render_table(RESULTS)
    assert "FAIL  SHOULD semantics.b" in table and "ERR   MUST   streaming.c" in table
    page = render_html(RESULTS, {"base_url": "http://h/v1"})
    assert "id='semantics.b'" in page and "&lt;v&gt;" in page and "<v>" not in page
    assert "id='semantics.a'" not in page                    # passed checks have no evidence section
