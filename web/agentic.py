"""Chat requests the server runs tools for, or keeps as a session: the agent runtime (refengine/agent) on the
engine, answered as OpenAI chat plus mistral.rs's fields.

A chat request is agentic when it sets any of `session_id`, `enable_code_execution` (or a
`{"type": "code_interpreter"}` tool), `agent_permission`, `code_execution_permission`, `files`,
`max_tool_rounds`, `web_search_options`; otherwise the plain path (chat.py) answers it, unchanged.
`web_search_options` gives the model `search_the_web` and `extract_page` (refengine/agent/search_tool.py)
on the server's search backend, and the answer OpenAI's `message.annotations`: a url_citation for every
`[n]` that names a source it was shown (citations.py). The tool loop runs rounds until the model answers
without a built-in call (refengine/agent/loop.py); the client sees

    non-stream: the chat.completion, plus `session_id`, `agentic_tool_calls: [{round, name, arguments,
                result}]` and `files: [File]` (and `message.annotations` with web search)
    stream:     a role delta, content deltas of every round, `event: agentic_tool_call_progress` around
                each built-in call, `event: agentic_tool_approval_required` when a call waits for a person
                (POST /v1/agent/approvals/{approval_id}), the finish chunk carrying `session_id` (and
                with web search `delta.annotations`, over the whole streamed content), one
                `event: file_produced` per requested file, usage if asked, then [DONE]

and the session keeps the conversation (tool calls and results included) for its next request.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Iterator

import falcon

from refengine.agent.code_tool import EXECUTE_PYTHON, execute_python_tool
from refengine.agent.files import requested_files
from refengine.agent.loop import AgentDone, ApprovalRequired, ContentEvent, ToolProgress, run_rounds
from refengine.agent.permissions import ASK, effective_permission
from refengine.agent.registry import ToolContext
from refengine.agent.rounds import engine_round
from refengine.agent.runtime import AgentRuntime
from refengine.agent.sandbox import SandboxUnavailable
from refengine.agent.search_tool import SEARCH_SERVICE, WebSearch, WebSearchOptions, make_web_search, search_tools
from refengine.agent.sessions import SessionError, check_session_id
from refengine.search.backend import NOT_CONFIGURED
from refengine.tools import ToolRequestError, ToolSet

from . import sse
from .body import Settings, read_json
from .choices import ResponseHead, usage
from .citations import url_citations
from .engine import Engine
from .client import CLIENT_CLOSED, watch_hangup
from .errors import APIError, as_api_error, invalid_request, not_supported
from .metrics import Metrics
from .respond import ResponsePlan, Tally, framed_stream
from .schema import ChatCall, asks_code_interpreter, builtin_tool_names

AGENT_FIELDS = ("session_id", "enable_code_execution", "code_execution_permission", "agent_permission", "files",
                "max_tool_rounds", "web_search_options")
PARAMS = {"prompt": "messages", "max_tokens": "max_tokens", "n": "n", "logit_bias": "logit_bias",
          "constraint": "tools"}


class ClientGone(Exception):
    """The client closed the stream: no further round is started for it."""


@dataclass(frozen=True)
class AgentCall:
    """The agentic part of a chat request, checked."""
    session_id: str | None                   # None: a new session
    code_execution: bool
    web_search: WebSearchOptions | None      # None: no web search
    permission: str | None                   # the stricter of agent_permission and code_execution_permission
    files: list[dict]                        # [{name, format, description?}]
    max_tool_rounds: int | None
    tool_choice: object                      # as sent (the loop relaxes a forcing choice after round 1)
    first_field: str                         # what a server without the runtime names in its 400
    code_param: str                          # the field that turned code execution on


def agent_call(body: dict, call: ChatCall) -> AgentCall | None:
    """None for a plain chat request; a 400 naming the field for agentic settings that cannot work together."""
    interpreter = asks_code_interpreter(body)
    present = [f for f in AGENT_FIELDS if not _unset(body.get(f))] + (["tools"] if interpreter else [])
    if not present:
        return None
    code = EXECUTE_PYTHON in builtin_tool_names(body)
    options = body.get("web_search_options")
    web_search = None if options is None else WebSearchOptions.from_request(options)
    try:
        session_id = None if body.get("session_id") is None else check_session_id(body["session_id"])
        files = requested_files(body["files"]) if body.get("files") else []
    except SessionError as error:
        raise invalid_request(error.message, error.param) from None
    if files and not code:
        raise invalid_request("'files' asks for files that code produces: set 'enable_code_execution'.", "files")
    asked = [(f, body[f]) for f in ("agent_permission", "code_execution_permission") if body.get(f) is not None]
    permission = None
    for field, value in asked:
        permission = effective_permission(permission or "auto", value)
        if value == ASK and not call.stream:
            raise invalid_request(f"'{field}': \"ask\" waits for an approval, which only a streamed request "
                                  "can show: set 'stream' to true.", field)
    if call.options.n != 1:
        raise invalid_request("Only one choice ('n': 1) can run tools.", "n")
    if call.options.logprobs:
        raise not_supported("logprobs")
    if call.constraint is not None:          # the tool loop's rounds follow the call grammar, or nothing
        raise invalid_request(f"'{call.constraint.param}' cannot be combined with sessions or server-side tools.",
                              call.constraint.param)
    builtin = [tool.as_openai() for tool in builtin_tools(code, files, web_search)]
    client = call.tools.tools if call.tools else []
    clashes = {t["function"]["name"] for t in builtin} & {t["function"]["name"] for t in client}
    if clashes:
        raise invalid_request(f"A tool in 'tools' has the name of a built-in tool ({', '.join(sorted(clashes))}).",
                              "tools")
    try:                                     # tool_choice over the built-in and the client's tools together
        ToolSet.read(builtin + client or None, body.get("tool_choice"), body.get("parallel_tool_calls"))
    except ToolRequestError as error:
        raise invalid_request(str(error).removeprefix(f"{error.param}: "), error.param) from None
    code_param = "tools" if interpreter and not body.get("enable_code_execution") else "enable_code_execution"
    return AgentCall(session_id, code, web_search, permission, files, body.get("max_tool_rounds"),
                     body.get("tool_choice"), present[0], code_param)


def builtin_tools(code: bool, files: list[dict], web_search: WebSearchOptions | None) -> list:
    """The built-in tools a request turns on, as the model is offered them."""
    return ([execute_python_tool(files)] if code else []) + (search_tools(web_search) if web_search else [])


def _unset(value) -> bool:
    """None, false or an empty list (a 0, e.g. max_tool_rounds, is set)."""
    return value is None or value is False or value == []


def respond_agentic(req: falcon.Request, resp: falcon.Response, engine: Engine, runtime: AgentRuntime,
                    metrics: Metrics, settings: Settings, call: ChatCall, agent: AgentCall, started: float) -> None:
    if agent.code_execution:
        try:
            runtime.check_code_execution()
        except SandboxUnavailable as error:
            raise invalid_request(str(error), agent.code_param) from None
    if agent.web_search is not None and runtime.search is None:
        raise invalid_request(NOT_CONFIGURED, "web_search_options")
    max_rounds = runtime.settings.max_tool_rounds if agent.max_tool_rounds is None else agent.max_tool_rounds
    permission = effective_permission(runtime.settings.permission_floor, agent.permission)
    if permission == ASK and not call.stream:            # the server's floor asks: only a stream can show it
        raise invalid_request("This server asks before running tools: set 'stream' to true to see and answer "
                              "its approvals.", "agent_permission")
    session = runtime.sessions.open(agent.session_id)
    history = [*session.messages, *call.messages]
    builtin = builtin_tools(agent.code_execution, agent.files, agent.web_search)
    services = {"sandbox": runtime.code_service(session.id)} if agent.code_execution else {}
    search = None
    if agent.web_search is not None:
        search = make_web_search(runtime.search, engine.model.tokenizer, agent.web_search, engine.context_length)
        services[SEARCH_SERVICE] = search
    context = ToolContext(session_id=session.id, folder=session.folder, services=services)
    gone = threading.Event()
    handles: list = []

    def submit(request):                     # every round's engine request, cancelled if the client leaves
        if gone.is_set():
            raise ClientGone()
        handle = engine.scheduler.submit(request)
        handles.append(handle)
        if gone.is_set():                    # it left while this was being submitted
            handle.cancel()
        return handle

    stopping = call.options.stopping
    generate_round = engine_round(engine.model, engine.tool_constraint, submit, sampling=call.options.sampling,
                                  stopping=stopping, template_kwargs=call.template_kwargs,
                                  parallel_tool_calls=call.tools.parallel_tool_calls if call.tools else None,
                                  truncate=call.truncate, allow_special_in_content=settings.allow_special_in_content)
    events = run_rounds(history, builtin=builtin, client_tools=call.tools.tools if call.tools else [],
                        generate_round=generate_round, permission=permission, broker=runtime.broker,
                        max_rounds=max_rounds if builtin else 0, context=context, tool_choice=agent.tool_choice,
                        approval_timeout_s=runtime.settings.approval_timeout_s)
    answer = AgentAnswer(runtime, agent, session.id, call, ResponseHead.new("chatcmpl", engine.model_id,
                                                                             engine.fingerprint), search)
    params = {**PARAMS, "max_tokens": call.max_tokens_param}
    plan = ResponsePlan(requests=(), reply=None, params=params, stream=call.stream)
    if call.stream:
        resp.content_type = sse.CONTENT_TYPE
        resp.set_headers(sse.HEADERS)
        tally = Tally()
        body = answer.stream(metrics.timed(events, started), tally, settings.keepalive_s, gone)
        resp.stream = framed_stream(body, handles, tally, plan, metrics)
        return
    hung_up = threading.Event()

    def stop() -> None:
        gone.set()
        for handle in handles:
            handle.cancel()

    def on_hangup() -> None:
        hung_up.set()
        stop()
        metrics.count_disconnect()
    try:
        with watch_hangup(req, on_hangup):
            content = []                     # every round's text, as a stream sends it
            for event in metrics.timed(events, started):
                if isinstance(event, ContentEvent) and not event.reasoning:
                    content.append(event.text)
                elif isinstance(event, AgentDone):
                    done = event
    except Exception as error:
        stop()
        if hung_up.is_set():                 # the loop ended because the client left: nobody to answer
            resp.status = CLIENT_CLOSED
            return
        raise as_api_error(error, params) from None
    if hung_up.is_set():
        resp.status = CLIENT_CLOSED
        return
    metrics.count_tokens(done.usage.prompt_tokens, done.usage.completion_tokens)
    resp.media = answer.body(done, answer.finish(done), "".join(content))


class AgentAnswer:
    """The answer's shapes, and what happens at the end of the loop (the session grows, files are
    collected). With web search (`search`), the answer's `[n]` marks become url_citation annotations."""

    def __init__(self, runtime: AgentRuntime, agent: AgentCall, session_id: str, call: ChatCall, head: ResponseHead,
                 search: WebSearch | None = None):
        self.runtime, self.agent, self.session_id, self.call, self.head = runtime, agent, session_id, call, head
        self.search = search

    def finish(self, done: AgentDone) -> list[dict]:
        """Keep the turn in the session (anew if the session went meanwhile: deleted, expired); the requested
        files (produced, or their placeholders)."""
        turn = [*self.call.messages, *done.messages_added]
        try:
            self.runtime.sessions.append(self.session_id, turn)
        except KeyError:
            self.runtime.sessions.replace(self.session_id, turn)
        if not self.agent.files:
            return []
        folder = self.runtime.sessions.folder(self.session_id)
        return [f.as_json() for f in self.runtime.files.collect(self.session_id, folder, self.agent.files)]

    def body(self, done: AgentDone, files: list[dict], content: str) -> dict:
        """`content`: the text of every round, the answer's last (what a stream of the same request shows)."""
        message = done.reply_message()
        if content or not done.client_tool_calls:
            message["content"] = content
        if done.reasoning_content is not None:
            message["reasoning_content"] = done.reasoning_content
        message["refusal"] = None
        if self.search is not None:
            message["annotations"] = url_citations(message["content"], self.search.sources)
        return {**self.head.fields("chat.completion"),
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": done.finish_reason}],
                "usage": usage(done.usage.prompt_tokens, done.usage.completion_tokens,
                               cached_tokens=done.usage.cached_tokens),
                "session_id": self.session_id,
                "agentic_tool_calls": done.tool_calls_executed,
                "files": files}

    def stream(self, events: Iterator, tally: Tally, keepalive_s: float, gone: threading.Event) -> Iterator[bytes]:
        def chunk(delta: dict, finish_reason=None, **extra) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return self.head.chunk("chat.completion.chunk", [choice], self.call.include_usage, **extra)

        content = []                         # the streamed text, which annotations index
        try:
            yield chunk({"role": "assistant", "content": "", "refusal": None})
            for item in sse.interleave([events], keepalive_s):     # tools and approvals can be long: keep-alives
                if item is None:
                    yield sse.KEEPALIVE
                    continue
                event = item[1]
                if isinstance(event, ContentEvent) and event.text:
                    if not event.reasoning:
                        content.append(event.text)
                    yield chunk({"reasoning_content" if event.reasoning else "content": event.text})
                elif isinstance(event, ToolProgress):
                    yield sse.event(name="agentic_tool_call_progress", payload={
                        "round": event.round, "tool_name": event.tool_name, "phase": event.phase,
                        "arguments": event.arguments, "call_id": event.call_id, "result": event.result})
                elif isinstance(event, ApprovalRequired):
                    yield sse.event(name="agentic_tool_approval_required", payload={
                        "approval_id": event.approval_id, "session_id": event.session_id, "round": event.round,
                        "tool": event.tool, "arguments": event.arguments})
                elif isinstance(event, AgentDone):
                    tally.completion_tokens += event.usage.completion_tokens
                    tally.prompt_tokens += event.usage.prompt_tokens
                    for i, tool_call in enumerate(event.client_tool_calls):
                        yield chunk({"tool_calls": [{"index": i, **tool_call.as_openai()}]})
                    files = self.finish(event)
                    last = {} if self.search is None else {
                        "annotations": url_citations("".join(content), self.search.sources)}
                    yield chunk(last, event.finish_reason, session_id=self.session_id,
                                agentic_tool_calls=event.tool_calls_executed)
                    for file in files:
                        yield sse.event(name="file_produced", payload=file)
                    if self.call.include_usage:
                        yield self.head.chunk("chat.completion.chunk", [], True, usage=usage(
                            event.usage.prompt_tokens, event.usage.completion_tokens,
                            cached_tokens=event.usage.cached_tokens))
        finally:                             # the client left (or the loop failed): start no round, deny waits
            gone.set()
            self.runtime.broker.deny_waiting(self.session_id)



class Approvals:
    """POST /v1/agent/approvals/{approval_id} {"decision": "approve" | "deny", "remember_for_session"?: bool}."""

    def __init__(self, runtime: AgentRuntime, settings: Settings):
        self.runtime, self.settings = runtime, settings

    def on_post(self, req: falcon.Request, resp: falcon.Response, approval_id: str) -> None:
        body = read_json(req, self.settings.max_body_bytes)
        decision = body.get("decision")
        if decision not in ("approve", "deny"):
            raise invalid_request("'decision' must be \"approve\" or \"deny\".", "decision")
        remember = body.get("remember_for_session", False)
        if not isinstance(remember, bool):
            raise invalid_request("'remember_for_session' must be a boolean.", "remember_for_session")
        if not self.runtime.broker.decide(approval_id, decision, remember_for_session=remember):
            raise APIError(404, f"No approval '{approval_id}' is waiting (unknown, decided, or timed out).",
                           param="approval_id", code="not_found")
        resp.media = {"id": approval_id, "object": "agent.approval", "decision": decision,
                      "created": int(time.time())}

