"""Agent fields (mistral.rs's): sessions, server-side code execution, permissions, round limits, files; and
OpenAI's `web_search_options`, whose answers carry `message.annotations` (url_citation).

Like every extension, each must be honoured with an observable effect or refused with a clear 400 naming
it; silently ignoring one fails. What the model writes is not judged: a check that needs the model to make
a call skips when it made none.
"""
from __future__ import annotations

import uuid
from urllib.parse import urlsplit

from ..check import Skip, require
from ..expect import error_body, first_choice, ok_completion
from .extensions import Rejected, extension_check, send_with

FORCED = {"type": "function", "function": {"name": "execute_python"}}
CODE_PROMPT = "Compute 12345*6789 with Python and print it."
SEARCH_PROMPT = "Search the web for: OpenAI chat completions API"
AGENT_MAX_TOKENS = 100
AGENT_FIELDS = frozenset({"session_id", "enable_code_execution", "agent_permission", "code_execution_permission",
                          "files", "max_tool_rounds"})


def _agentic(ctx, field: str, **fields):
    """The answer body of an agentic request, or Rejected: a clear 400 naming one of the agent fields sent
    (a server without the runtime may name the first it meets rather than `field`)."""
    exchange = ctx.chat(CODE_PROMPT, max_tokens=AGENT_MAX_TOKENS, **fields)
    if exchange.status != 200:
        require(exchange.status == 400, f"{field} was neither accepted (200) nor rejected with a 400 (got "
                f"{exchange.status})", exchange.evidence())
        error = error_body(exchange)
        named = [f for f in fields if f in AGENT_FIELDS and (f in str(error.get("param") or "")
                                                              or f in error["message"])]
        require(named, f"the 400 for {field} names none of the agent fields sent",
                exchange.evidence(error))
        raise Rejected(field)
    body = exchange.json
    require(isinstance(body, dict) and body.get("choices"), "no chat.completion body", exchange.evidence())
    return exchange, body


@extension_check("session_id", "session_id is echoed as the response's top-level session_id (or a 400)")
def session_id(ctx):
    wanted = f"conformance-{uuid.uuid4().hex[:12]}"
    exchange, body = _agentic(ctx, "session_id", session_id=wanted)
    require(body.get("session_id") == wanted, f"session_id {body.get('session_id')!r} instead of {wanted!r}",
            exchange.evidence({"session_id": body.get("session_id")}))


@extension_check("enable_code_execution",
                 "a call forced to execute_python runs on the server: agentic_tool_calls carries its result")
def enable_code_execution(ctx):
    exchange, body = _agentic(ctx, "enable_code_execution", enable_code_execution=True, tool_choice=FORCED)
    calls = body.get("agentic_tool_calls")
    require(isinstance(calls, list), "no agentic_tool_calls list beside choices",
            exchange.evidence({"keys": sorted(body)}))
    if not calls:
        raise Skip("the model made no complete call within the token limit")
    require(isinstance(calls[0].get("result"), dict) and "status" in calls[0]["result"],
            "the executed call carries no result with a status", exchange.evidence({"call": calls[0]}))


@extension_check("max_tool_rounds", "max_tool_rounds=0 runs no server-side tool and still answers")
def max_tool_rounds(ctx):
    exchange, body = _agentic(ctx, "max_tool_rounds", enable_code_execution=True, tool_choice=FORCED,
                              max_tool_rounds=0)
    require(body.get("agentic_tool_calls") == [], "no empty agentic_tool_calls: a tool ran, or the field "
            "was ignored", exchange.evidence({"agentic_tool_calls": body.get("agentic_tool_calls")}))
    require(body["choices"][0].get("finish_reason") in ("stop", "length"), "no normal finish",
            exchange.evidence({"finish_reason": body["choices"][0].get("finish_reason")}))


@extension_check("agent_permission", 'agent_permission "deny" gives the model a denied result, never a run')
def agent_permission(ctx):
    exchange, body = _agentic(ctx, "agent_permission", enable_code_execution=True, tool_choice=FORCED,
                              agent_permission="deny", max_tool_rounds=1)
    calls = body.get("agentic_tool_calls")
    require(isinstance(calls, list), "no agentic_tool_calls list beside choices",
            exchange.evidence({"keys": sorted(body)}))
    if not calls:
        raise Skip("the model made no complete call within the token limit")
    statuses = [(c.get("result") or {}).get("status") for c in calls]
    require(all(s == "denied" for s in statuses), f"tool results {statuses} under agent_permission deny",
            exchange.evidence({"agentic_tool_calls": calls}))


@extension_check("files", "every requested file comes back, produced or as a not_produced placeholder")
def files(ctx):
    exchange, body = _agentic(ctx, "files", enable_code_execution=True, files=["conformance-never.txt"],
                              max_tool_rounds=1)
    produced = body.get("files")
    require(isinstance(produced, list) and [f.get("name") for f in produced] == ["conformance-never.txt"],
            "files does not list the one requested file", exchange.evidence({"files": produced}))
    require(any(key in produced[0] for key in ("error", "text", "data_base64", "content_url")),
            "the file has neither content nor an error", exchange.evidence({"file": produced[0]}))


@extension_check("web_search_options",
                 "web_search_options answers with message.annotations, each a url_citation spanning part of the "
                 "content (or a 400)")
def web_search_options(ctx):
    exchange = send_with(ctx, "web_search_options", SEARCH_PROMPT, web_search_options={}, max_tokens=AGENT_MAX_TOKENS)
    message = first_choice(ok_completion(exchange)).get("message") or {}
    annotations = message.get("annotations")
    require(isinstance(annotations, list), "no message.annotations list: web_search_options was accepted but "
            "answered as plain chat", exchange.evidence({"message": message}))
    content = message.get("content") if isinstance(message.get("content"), str) else ""
    for annotation in annotations:
        citation = annotation.get("url_citation") if isinstance(annotation, dict) else None
        require(isinstance(citation, dict) and annotation.get("type") == "url_citation",
                "an annotation is not a url_citation", exchange.evidence({"annotation": annotation}))
        start, end = citation.get("start_index"), citation.get("end_index")
        require(all(isinstance(i, int) and not isinstance(i, bool) for i in (start, end))
                and 0 <= start < end <= len(content), f"url_citation indices {start}..{end} are not a span of the "
                f"{len(content)}-character content", exchange.evidence({"annotation": annotation, "content": content}))
        url, title = citation.get("url"), citation.get("title")
        require(isinstance(url, str) and bool(urlsplit(url).scheme) and isinstance(title, str),
                "a url_citation lacks an absolute url or a title", exchange.evidence({"annotation": annotation}))


CHECKS = (session_id, enable_code_execution, max_tool_rounds, agent_permission, files, web_search_options)
