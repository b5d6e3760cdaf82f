"""The conformance suite tests itself against the toy server: correct, then broken one rule at a time.

Each violation of the toy server must make exactly the checks aimed at it fail (no more, no fewer), and
every check must be made to fail by at least one violation: a check that cannot fail is a defect.
"""
from __future__ import annotations

import json

import pytest

from conformance.checks import ALL_CHECKS
from conformance.cli import main
from conformance.client import Client
from conformance.context import Context, discover_model
from conformance.fake_server import COMMON_BREAKAGES, TOY_MODEL, VIOLATIONS, create_app, serving
from conformance.runner import run_checks

API_KEY = "sk-conformance-test"

# Every 400-type case of the error battery (unknown_model is a 404, wrong_api_key a 401, unknown_route GET).
BAD_REQUEST_CASES = {f"errors.{name}" for name in (
    "malformed_json", "empty_body", "missing_messages", "empty_messages", "messages_not_a_list",
    "unknown_role", "content_wrong_type", "tool_message_without_id", "temperature_out_of_range",
    "temperature_wrong_type", "top_p_out_of_range", "max_tokens_negative", "n_zero",
    "presence_penalty_out_of_range", "frequency_penalty_out_of_range", "logit_bias_out_of_range",
    "top_logprobs_out_of_range", "stream_wrong_type", "unknown_tool_in_tool_choice",
    "tool_choice_without_tools", "unknown_response_format", "json_schema_missing", "prompt_too_long",
    "unknown_parameter")}
# Extensions the toy server does not implement and refuses with a 400 naming the field.
AGENT_CHECKS = {f"extensions.{name}" for name in (
    "session_id", "enable_code_execution", "max_tool_rounds", "agent_permission", "files", "web_search_options")}
REFUSED_EXTENSIONS = {"extensions.repetition_penalty", "extensions.dry", "extensions.reasoning_effort",
                      "extensions.grammar_lark"} | AGENT_CHECKS

EXPECTED_FAILURES = {
    "usage_total_wrong": {"semantics.usage_arithmetic", "semantics.legacy_completions", "streaming.include_usage"},
    "max_tokens_ignored": {"semantics.max_tokens", "semantics.max_completion_tokens",
                           "semantics.legacy_completions", "streaming.length_finish"},
    "max_completion_tokens_ignored": {"semantics.max_completion_tokens"},
    "finish_reason_wrong": {"semantics.max_tokens", "semantics.max_completion_tokens", "streaming.length_finish"},
    "eos_reported_as_length": {"semantics.finish_reason_stop"},
    "stop_included": {"semantics.stop_excluded", "semantics.stop_single_string"},
    "n_ignored": {"semantics.n_choices", "streaming.n_choices"},
    # top_k=1 / min_p=1 must reproduce greedy decoding, which no longer reproduces itself.
    "greedy_nondeterministic": {"semantics.temperature0_deterministic", "extensions.top_k", "extensions.min_p"},
    "seed_ignored": {"semantics.seed_deterministic"},
    "logprob_bytes_wrong": {"semantics.logprobs_bytes_reassemble", "streaming.logprobs"},
    "top_logprobs_unsorted": {"semantics.logprobs_consistent"},
    "model_renamed": {"semantics.model_echo"},
    "model_not_listed": {"semantics.models_list"},
    "content_parts_rejected": {"semantics.content_parts"},
    "multi_turn_rejected": {"semantics.system_and_multi_turn", "tools.result_round_trip"},
    "developer_role_rejected": {"semantics.developer_role"},
    "created_millis": {"semantics.created_is_unix_seconds"},
    "fixed_id": {"semantics.ids_unique"},
    "no_legacy_completions": {"semantics.legacy_completions", "schema.completion"},
    "stream_wrong_content_type": {"streaming.content_type"},
    "sse_bad_framing": {"streaming.sse_framing"},
    "no_done": {"streaming.done_sentinel"},
    "chunk_ids_differ": {"streaming.one_id"},
    "no_role": {"streaming.role_first"},
    "finish_reason_repeated": {"streaming.one_finish_reason", "streaming.n_choices", "tools.stream_deltas"},
    "usage_every_chunk": {"streaming.include_usage", "streaming.no_usage_unless_asked"},
    "include_usage_ignored": {"streaming.include_usage"},
    "stream_text_differs": {"streaming.matches_non_stream", "structured-output.json_schema_stream"},
    "stream_usage_off_by_one": {"streaming.usage_matches_non_stream", "streaming.length_finish"},
    "stream_errors_in_band": {"streaming.invalid_request_not_streamed", "schema.chat_completion_chunk"},
    "stream_logprobs_missing": {"streaming.logprobs"},
    "lenient_validation": BAD_REQUEST_CASES | REFUSED_EXTENSIONS | {
        "errors.unknown_model", "errors.wrong_api_key", "streaming.invalid_request_not_streamed"},
    "wrong_status": BAD_REQUEST_CASES | REFUSED_EXTENSIONS | {"streaming.invalid_request_not_streamed"},
    "error_not_envelope": BAD_REQUEST_CASES | REFUSED_EXTENSIONS | {
        "errors.unknown_model", "errors.wrong_api_key", "errors.unknown_route",
        "streaming.invalid_request_not_streamed", "schema.error_response"},
    "error_param_missing": {"errors.param_and_code"},
    "error_type_wrong": {"errors.error_type"},
    "json_schema_ignored": {"structured-output.json_object", "structured-output.json_schema_strict",
                            "structured-output.json_schema_stream"},
    "json_schema_ignored_in_stream": {"structured-output.json_schema_stream"},
    "text_format_rejected": {"structured-output.response_format_text"},
    "tool_delta_no_index": {"tools.stream_deltas", "tools.stream_matches_non_stream", "schema.chat_completion_chunk"},
    "tool_finish_reason_stop": {"tools.required", "tools.auto", "tools.stream_deltas"},
    "named_tool_ignored": {"tools.named"},
    "tool_choice_none_ignored": {"tools.none"},
    "stream_tool_args_differ": {"tools.stream_matches_non_stream"},
    "tool_messages_rejected": {"tools.result_round_trip"},
    "parallel_calls_always": {"tools.parallel_tool_calls_false"},
    "samplers_ignored": {"extensions.top_k", "extensions.min_p"},
    "extensions_ignored": {f"extensions.{name}" for name in (
        "top_k", "min_p", "repetition_penalty", "dry", "grammar_regex", "grammar_lark", "grammar_json_schema",
        "enable_thinking", "reasoning_effort", "truncate_sequence")} | AGENT_CHECKS,
    "rejection_unclear": {"extensions.repetition_penalty", "extensions.dry", "extensions.reasoning_effort",
                          "errors.param_and_code"} | AGENT_CHECKS,
    "object_wrong": {"schema.chat_completion"},
    "chunk_object_wrong": {"schema.chat_completion_chunk"},
    "models_list_malformed": {"schema.models", "schema.model_retrieve"},
    "no_model_retrieve": {"schema.model_retrieve"},
    "nullable_fields_omitted": {"schema.nullable_fields_present"},
    "json_as_text_plain": {"schema.json_content_type"},
    # the Responses API
    "responses_missing": {"responses.available"},         # the other responses checks skip
    "response_object_wrong": {"responses.response_schema", "responses.stream_events"},
    "response_usage_wrong": {"responses.usage"},
    "response_role_wrong": {"responses.response_schema", "responses.output_text", "responses.stream_events"},
    "max_output_tokens_ignored": {"responses.max_output_tokens"},
    "response_no_created": {"responses.stream_events"},
    "response_sequence_gaps": {"responses.stream_events"},
    "response_delta_before_part": {"responses.stream_item_order"},
    "response_stream_text_differs": {"responses.stream_matches_final"},
    "response_text_format_ignored": {"responses.json_schema"},
    "response_tools_ignored": {"responses.function_call", "responses.function_call_stream"},
    "function_call_output_rejected": {"responses.function_call_output"},
    "response_not_stored": {"responses.store_retrieve", "responses.previous_response_id"},
    "previous_response_ignored": {"responses.previous_response_id"},
    "responses_lenient": {"responses.invalid_request"},
    "response_error_param_missing": {"responses.error_param"},
}


def run_suite(violations=(), checks=ALL_CHECKS):
    with serving(create_app(violations, api_key=API_KEY)) as url:
        client = Client(url, API_KEY, timeout=10)
        _, context_length = discover_model(client)
        return run_checks(Context(client, TOY_MODEL, context_length), checks)


def failing(results) -> set[str]:
    return {r.name for r in results if r.outcome in ("failed", "error")}


def test_correct_toy_server_passes_every_check():
    results = run_suite()
    assert {(r.name, r.message) for r in results if r.outcome != "passed"} == set()


@pytest.mark.parametrize("violation", sorted(VIOLATIONS))
def test_each_violation_fails_exactly_its_checks(violation):
    results = run_suite([violation])
    assert failing(results) == EXPECTED_FAILURES[violation]
    errors = [(r.name, r.message) for r in results if r.outcome == "error"]
    assert errors == []                                  # a violation is a failure, never a crash
    for result in results:
        if result.outcome == "failed":                   # every failure shows its evidence
            assert result.message and result.evidence, result.name
            assert all(e.request.get("url") for e in result.evidence), result.name


def test_every_check_can_fail():
    demonstrated = set().union(*EXPECTED_FAILURES.values())
    assert {c.name for c in ALL_CHECKS} - demonstrated == set()
    assert set(EXPECTED_FAILURES) == set(VIOLATIONS)


def test_common_breakages_together_fail_the_union_of_their_checks():
    results = run_suite(COMMON_BREAKAGES)
    assert failing(results) == set().union(*(EXPECTED_FAILURES[v] for v in COMMON_BREAKAGES))


def test_evidence_names_the_request_and_the_offending_part():
    results = run_suite(["tool_delta_no_index"])
    result = next(r for r in results if r.name == "tools.stream_deltas")
    evidence = result.evidence[0]
    assert evidence.request["method"] == "POST" and evidence.request["url"].endswith("/chat/completions")
    assert evidence.request["body"]["tool_choice"] == "required" and evidence.request["body"]["stream"] is True
    assert evidence.status == 200
    assert "index" not in evidence.excerpt and evidence.excerpt["type"] == "function"   # the bad delta


def test_cli_exit_status_and_reports(tmp_path):
    with serving(create_app()) as url:
        assert main(["--base-url", url, "--quiet", "--timeout", "10", "--json", str(tmp_path / "ok.json")]) == 0
    report = json.loads((tmp_path / "ok.json").read_text())
    assert report["meta"]["model"] == TOY_MODEL
    assert report["summary"]["total"]["must_failed"] == 0
    assert len(report["results"]) == len(ALL_CHECKS)

    with serving(create_app(["no_done", "fixed_id"])) as url:
        argv = ["--base-url", url, "--quiet", "--timeout", "10", "--json", str(tmp_path / "bad.json"),
                "--html", str(tmp_path / "bad.html")]
        assert main(argv) == 1                           # streaming.done_sentinel is a MUST
    report = json.loads((tmp_path / "bad.json").read_text())
    failed = {r["name"]: r for r in report["results"] if r["outcome"] == "failed"}
    assert set(failed) == {"streaming.done_sentinel", "semantics.ids_unique"}
    assert report["summary"]["streaming"]["must_failed"] == 1
    assert failed["streaming.done_sentinel"]["evidence"][0]["request"]["body"]["stream"] is True
    page = (tmp_path / "bad.html").read_text()
    assert page.startswith("<!doctype html>") and "streaming.done_sentinel" in page
    assert not any(tag in page for tag in ("<script", "<link", " src="))   # self-contained


def test_cli_only_a_category_and_should_failures_keep_exit_zero(tmp_path):
    with serving(create_app(["fixed_id"])) as url:
        assert main(["--base-url", url, "--quiet", "--only", "semantics",
                     "--json", str(tmp_path / "r.json")]) == 0   # ids_unique is only a SHOULD
    results = json.loads((tmp_path / "r.json").read_text())["results"]
    assert {r["category"] for r in results} == {"semantics"}


def test_cli_usage_errors():
    assert main(["--only", "nonsense", "--base-url", "http://127.0.0.1:9/v1"]) == 2
    assert main([]) == 2
    assert main(["--list"]) == 0


def test_unreachable_server_is_an_error_not_a_pass():
    client = Client("http://127.0.0.1:9/v1", timeout=2)        # port 9 (discard) is closed on loopback
    results = run_checks(Context(client, "m"), [c for c in ALL_CHECKS if c.name == "semantics.max_tokens"])
    assert [r.outcome for r in results] == ["error"]
