"""The agent tool loop (refengine/agent/loop.py) and its parts: the registry, permissions and the approval
broker, the execute_python tool, and a real round on the engine.

Most loop tests drive `run_rounds` with `ScriptedModel`, a test double of the *model* only: a plain function
that returns predetermined rounds, so each rule of the loop is checked exactly (which calls run, in which
order, which messages are added, what the next round is asked). The tools are real functions, the broker
is the real one, decided from another thread with Event handshakes (no sleeps, no timing). Real rounds:
the tiny random model under the real tool-call constraint (alone and through the scheduler, as the server
will run it), and the default model SmolLM2 writing code that really runs.
"""
from __future__ import annotations

import contextlib
import io
import json
import queue
import threading
import traceback

import pytest

from refengine.agent.code_tool import (CODE_ONLY, EXECUTE_PYTHON, EXECUTE_PYTHON_TOOL, description_for,
                                       execute_python_tool, parameters_for, produced)
from refengine.agent.loop import (AgentDone, ApprovalRequired, ContentEvent, RoundDelta, RoundResult, ToolProgress,
                                  Usage, relaxed, run_rounds)
from refengine.agent.permissions import ApprovalBroker, effective_permission
from refengine.agent.registry import BuiltinTool, ToolContext, ToolRegistry
from refengine.agent.rounds import RoundReader, compile_tool_constraint, engine_round
from refengine.constrain import GENERATION_STYLE, Vocab, build_grammar
from refengine.constrain.automaton import DEAD, Automaton
from refengine.model import load_model
from refengine.prompt import chat_prompt_ids
from refengine.request import ContextLengthError, SamplingParams, StoppingParams, TokenEvent
from refengine.scheduler import Scheduler
from refengine.tools import ToolCall, ToolSet, prepare_chat
from tiny_model import write_tiny_llama
from tool_templates import QWEN_TEMPLATE, write_template_model

USER = [{"role": "user", "content": "What is 2 + 3?"}]
NAMED = {"type": "function", "function": {"name": EXECUTE_PYTHON}}


# ---- stand-ins: the model (scripted rounds) and the runtime's sandbox service (plain exec) ----

class ScriptedModel:
    """A test double of the model: round i returns `script[i]` (a RoundResult, or a function of the round's
    arguments returning one), its content streamed in two pieces. Records what each round was asked."""

    def __init__(self, *script):
        self.script = list(script)
        self.asked: list[dict] = []

    def __call__(self, messages, tools, tool_choice, final):
        self.asked.append({"messages": messages, "tools": tools, "tool_choice": tool_choice, "final": final})
        step = self.script[len(self.asked) - 1]
        result = step(messages, tools, tool_choice, final) if callable(step) else step
        text = result.content or ""
        half = len(text) // 2
        yield from (RoundDelta(piece) for piece in (text[:half], text[half:]) if piece)
        yield result


def calls(*specs) -> tuple[ToolCall, ...]:
    """ToolCalls from (name, arguments) pairs, ids call_1, call_2, ... in order."""
    return tuple(ToolCall(f"call_{i}", name, json.dumps(arguments)) for i, (name, arguments) in enumerate(specs, 1))


def answer(text="The answer is 5.", prompt=10, completion=4) -> RoundResult:
    return RoundResult(text, (), "stop", prompt, completion)


def calling(*specs, content=None, prompt=10, completion=6) -> RoundResult:
    return RoundResult(content, calls(*specs), "tool_calls", prompt, completion)


class InProcessPython:
    """A stand-in for the runtime's sandbox service (`run(code) -> dict`): one persistent namespace, `exec`,
    stdout captured. No isolation at all: it only runs the trusted snippets of these tests."""

    def __init__(self):
        self.namespace: dict = {}
        self.ran: list[str] = []

    def run(self, code: str) -> dict:
        self.ran.append(code)
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                exec(compile(code, "<session>", "exec"), self.namespace)
        except Exception as error:              # noqa: BLE001 - the result reports it
            return {"status": "error", "stdout": out.getvalue(), "stderr": "",
                    "exception": "".join(traceback.format_exception_only(type(error), error)).strip()}
        return {"status": "success", "stdout": out.getvalue(), "stderr": "", "exception": None}


def recording_tool(name: str, log: list, result=None, fail: Exception | None = None) -> BuiltinTool:
    """A real built-in tool that logs (name, arguments, round) and returns `result` (or raises `fail`)."""
    def run(arguments: dict, context: ToolContext) -> dict:
        log.append((name, arguments, context.round))
        if fail is not None:
            raise fail
        return result if result is not None else {"status": "success", "echo": arguments}
    return BuiltinTool(name, f"The {name} tool.",
                       {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"],
                        "additionalProperties": False}, run)


def run_all(**kwargs) -> list:
    settings = {"client_tools": [], "permission": "auto", "broker": None, "max_rounds": 8,
                "context": ToolContext(session_id="s1"), **kwargs}
    return list(run_rounds(USER, **settings))


def done_of(events: list) -> AgentDone:
    assert isinstance(events[-1], AgentDone)
    assert not any(isinstance(e, AgentDone) for e in events[:-1])
    return events[-1]


def progress(events: list) -> list[tuple]:
    return [(e.round, e.tool_name, e.phase, e.call_id) for e in events if isinstance(e, ToolProgress)]


# ---- the loop ----

def test_every_builtin_call_of_a_round_runs_in_order_and_the_history_has_openai_shapes():
    log: list = []
    tools = [recording_tool("alpha", log), recording_tool("beta", log)]
    model = ScriptedModel(calling(("alpha", {"x": 1}), ("beta", {"x": 2}), ("alpha", {"x": 3}), content="Let me see."),
                          answer())
    events = run_all(builtin=tools, generate_round=model)
    done = done_of(events)

    assert log == [("alpha", {"x": 1}, 1), ("beta", {"x": 2}, 1), ("alpha", {"x": 3}, 1)]
    assert progress(events) == [(1, "alpha", "calling", "call_1"), (1, "alpha", "complete", "call_1"),
                                (1, "beta", "calling", "call_2"), (1, "beta", "complete", "call_2"),
                                (1, "alpha", "calling", "call_3"), (1, "alpha", "complete", "call_3")]
    assert [e.result for e in events if isinstance(e, ToolProgress) and e.phase == "complete"] == \
        [{"status": "success", "echo": {"x": n}} for n in (1, 2, 3)]
    assert "".join(e.text for e in events if isinstance(e, ContentEvent) and e.round == 1) == "Let me see."
    assert "".join(e.text for e in events if isinstance(e, ContentEvent) and e.round == 2) == "The answer is 5."

    assistant, *results, final = done.messages_added
    assert assistant == {"role": "assistant", "content": "Let me see.", "tool_calls": [
        {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": json.dumps({"x": i})}}
        for i, name in ((1, "alpha"), (2, "beta"), (3, "alpha"))]}
    assert results == [{"role": "tool", "tool_call_id": f"call_{i}",
                        "content": json.dumps({"status": "success", "echo": {"x": i}})} for i in (1, 2, 3)]
    assert final == {"role": "assistant", "content": "The answer is 5."}
    assert model.asked[1]["messages"] == USER + [assistant, *results]       # round 2 sees the results
    assert done.tool_calls_executed == [
        {"round": 1, "name": name, "arguments": json.dumps({"x": i}), "result": {"status": "success", "echo": {"x": i}}}
        for i, name in ((1, "alpha"), (2, "beta"), (3, "alpha"))]
    assert (done.finish_reason, done.rounds, done.client_tool_calls, done.content) == \
        ("stop", 2, [], "The answer is 5.")
    assert done.reply_message() == {"role": "assistant", "content": "The answer is 5."}


def test_builtin_tools_are_offered_as_strict_functions_beside_the_client_tools():
    weather = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
    model = ScriptedModel(answer())
    run_all(builtin=[EXECUTE_PYTHON_TOOL], client_tools=[weather], generate_round=model, tool_choice="required")
    offered = model.asked[0]["tools"]
    assert offered == [EXECUTE_PYTHON_TOOL.as_openai(), weather]
    assert offered[0]["function"]["strict"] is True and offered[0]["function"]["parameters"] == CODE_ONLY
    assert (model.asked[0]["tool_choice"], model.asked[0]["final"]) == ("required", False)


def test_a_client_tool_call_ends_the_loop_and_goes_back_to_the_client():
    log: list = []
    weather = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
    model = ScriptedModel(calling(("weather", {"city": "Oslo"})))
    events = run_all(builtin=[recording_tool("alpha", log)], client_tools=[weather], generate_round=model)
    done = done_of(events)
    assert log == [] and progress(events) == [] and len(model.asked) == 1
    assert done.client_tool_calls == list(calls(("weather", {"city": "Oslo"})))
    assert done.finish_reason == "tool_calls" and done.tool_calls_executed == []
    assert done.reply_message() == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}]}
    assert done.messages_added == [done.reply_message()]


def test_a_mixed_round_runs_the_builtin_calls_then_returns_the_client_calls():
    log: list = []
    weather = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
    model = ScriptedModel(calling(("alpha", {"x": 7}), ("weather", {"city": "Oslo"})))
    events = run_all(builtin=[recording_tool("alpha", log)], client_tools=[weather], generate_round=model)
    done = done_of(events)
    assert log == [("alpha", {"x": 7}, 1)] and len(model.asked) == 1
    assert [c.name for c in done.client_tool_calls] == ["weather"] and done.finish_reason == "tool_calls"
    assistant, result = done.messages_added                  # the history keeps both calls and our result
    assert [c["function"]["name"] for c in assistant["tool_calls"]] == ["alpha", "weather"]
    assert result["tool_call_id"] == "call_1"
    assert [c["function"]["name"] for c in done.reply_message()["tool_calls"]] == ["weather"]


def test_at_max_rounds_one_final_round_runs_with_tools_disabled_and_finishes_normally():
    log: list = []

    def keeps_calling(messages, tools, tool_choice, final):
        return answer("Done: 5.") if final else calling(("alpha", {"x": len(messages)}))

    model = ScriptedModel(keeps_calling, keeps_calling, keeps_calling)
    events = run_all(builtin=[recording_tool("alpha", log)], generate_round=model, max_rounds=2,
                     tool_choice={"type": "function", "function": {"name": "alpha"}})
    done = done_of(events)
    assert [(a["tool_choice"], a["final"]) for a in model.asked] == \
        [({"type": "function", "function": {"name": "alpha"}}, False), ("auto", False), ("none", True)]
    assert [round_ for _, _, round_ in log] == [1, 2]
    assert (done.finish_reason, done.content, done.rounds, done.client_tool_calls) == ("stop", "Done: 5.", 3, [])
    assert [m["role"] for m in done.messages_added] == ["assistant", "tool", "assistant", "tool", "assistant"]
    assert done.messages_added[-1] == {"role": "assistant", "content": "Done: 5."}


def test_a_final_round_that_still_writes_a_call_runs_nothing_and_answers_stop():
    log: list = []
    model = ScriptedModel(calling(("alpha", {"x": 1})), calling(("alpha", {"x": 2}), content="I would call."))
    done = done_of(run_all(builtin=[recording_tool("alpha", log)], generate_round=model, max_rounds=1))
    assert log == [("alpha", {"x": 1}, 1)]
    assert (done.finish_reason, done.content, done.client_tool_calls) == ("stop", "I would call.", [])
    assert done.messages_added[-1] == {"role": "assistant", "content": "I would call."}


def test_max_rounds_zero_runs_no_builtin_tool():
    log: list = []
    model = ScriptedModel(answer("No tools."))
    done = done_of(run_all(builtin=[recording_tool("alpha", log)], generate_round=model, max_rounds=0,
                           tool_choice="required"))
    assert [(a["tool_choice"], a["final"]) for a in model.asked] == [("none", True)]
    assert log == [] and done.tool_calls_executed == [] and done.content == "No tools."


def test_a_round_cut_off_by_length_ends_the_loop_without_running_its_calls():
    log: list = []
    cut = RoundResult(None, (ToolCall("call_1", "alpha", '{"x": 1'),), "length", 10, 16)
    done = done_of(run_all(builtin=[recording_tool("alpha", log)], generate_round=ScriptedModel(cut)))
    assert log == [] and done.finish_reason == "length" and done.client_tool_calls == []
    assert done.messages_added == [{"role": "assistant", "content": ""}]


def test_usage_is_summed_over_rounds():
    model = ScriptedModel(RoundResult(None, calls(("alpha", {"x": 1})), "tool_calls", 100, 20, 64),
                          RoundResult(None, calls(("alpha", {"x": 2})), "tool_calls", 150, 30, 100),
                          RoundResult("ok", (), "stop", 200, 5, 150))
    done = done_of(run_all(builtin=[recording_tool("alpha", [])], generate_round=model))
    assert done.usage == Usage(prompt_tokens=450, completion_tokens=55, cached_tokens=314)
    assert done.usage.total_tokens == 505


def test_deny_gives_the_model_a_denied_result_and_runs_nothing():
    log: list = []
    model = ScriptedModel(calling(("alpha", {"x": 1})), answer())
    events = run_all(builtin=[recording_tool("alpha", log)], generate_round=model, permission="deny")
    done = done_of(events)
    assert log == [] and not any(isinstance(e, ApprovalRequired) for e in events)
    [executed] = done.tool_calls_executed
    assert executed["result"]["status"] == "denied" and "deny" in executed["result"]["message"]
    assert json.loads(done.messages_added[1]["content"]) == executed["result"]


def decide_from_another_thread(broker: ApprovalBroker, decision: str, remember: bool = False):
    """A thread standing in for the client's POST: it waits (Event) for the approval id the stream showed,
    decides it, and reports whether `decide` accepted it."""
    shown: queue.Queue = queue.Queue()
    accepted: queue.Queue = queue.Queue()

    def client():
        approval_id = shown.get(timeout=30)
        accepted.put(broker.decide(approval_id, decision, remember_for_session=remember))

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    return shown, accepted, thread


@pytest.mark.parametrize("decision", ["approve", "deny"])
def test_ask_blocks_until_a_decision_from_another_thread(decision):
    log: list = []
    broker = ApprovalBroker()
    shown, accepted, thread = decide_from_another_thread(broker, decision)
    model = ScriptedModel(calling(("alpha", {"x": 4})), answer())
    stream = run_rounds(USER, builtin=[recording_tool("alpha", log)], client_tools=[], generate_round=model,
                        permission="ask", broker=broker, max_rounds=8, context=ToolContext(session_id="s1"),
                        approval_timeout_s=60)
    events = []
    for event in stream:
        events.append(event)
        if isinstance(event, ApprovalRequired):
            assert (event.session_id, event.round, event.tool, event.arguments) == ("s1", 1, "alpha", '{"x": 4}')
            assert log == []                          # nothing runs before the decision
            shown.put(event.approval_id)              # the stream showed it; the client decides meanwhile
    thread.join(timeout=30)
    assert accepted.get_nowait() is True
    done = done_of(events)
    phases = [type(e).__name__ + ":" + getattr(e, "phase", "") for e in events if not isinstance(e, ContentEvent)]
    assert phases == ["ToolProgress:calling", "ApprovalRequired:", "ToolProgress:complete", "AgentDone:"]
    if decision == "approve":
        assert log == [("alpha", {"x": 4}, 1)] and done.tool_calls_executed[0]["result"]["status"] == "success"
    else:
        assert log == [] and done.tool_calls_executed[0]["result"]["status"] == "denied"


def test_ask_remembered_for_the_session_is_not_asked_again():
    log: list = []
    broker = ApprovalBroker()
    shown, accepted, thread = decide_from_another_thread(broker, "approve", remember=True)
    model = ScriptedModel(calling(("alpha", {"x": 1})), calling(("alpha", {"x": 2})), answer())
    events = []
    for event in run_rounds(USER, builtin=[recording_tool("alpha", log)], client_tools=[], generate_round=model,
                            permission="ask", broker=broker, max_rounds=8, context=ToolContext(session_id="s1"),
                            approval_timeout_s=60):
        events.append(event)
        if isinstance(event, ApprovalRequired):
            shown.put(event.approval_id)
    thread.join(timeout=30)
    assert [e.round for e in events if isinstance(e, ApprovalRequired)] == [1]
    assert [r for _, _, r in log] == [1, 2]
    assert broker.remembered("s1", "alpha") == "approve" and broker.remembered("s2", "alpha") is None


def test_ask_without_a_decision_in_time_denies():
    log: list = []
    broker = ApprovalBroker()
    model = ScriptedModel(calling(("alpha", {"x": 1})), answer())
    events = run_all(builtin=[recording_tool("alpha", log)], generate_round=model, permission="ask", broker=broker,
                     approval_timeout_s=0)
    [asked] = [e for e in events if isinstance(e, ApprovalRequired)]
    assert log == [] and done_of(events).tool_calls_executed[0]["result"]["status"] == "denied"
    assert broker.decide(asked.approval_id, "approve") is False       # too late: nothing to decide any more


def test_an_approval_shown_to_a_client_that_leaves_is_withdrawn():
    log: list = []
    broker = ApprovalBroker()
    stream = run_rounds(USER, builtin=[recording_tool("alpha", log)], client_tools=[],
                        generate_round=ScriptedModel(calling(("alpha", {"x": 1}))), permission="ask", broker=broker,
                        max_rounds=8, context=ToolContext(session_id="s1"))
    asked = next(e for e in stream if isinstance(e, ApprovalRequired))
    assert broker.describe(asked.approval_id)["tool"] == "alpha"
    stream.close()                                     # the client went away before deciding
    assert broker.describe(asked.approval_id) is None and broker.decide(asked.approval_id, "approve") is False
    assert log == []


def test_invalid_arguments_and_failing_tools_become_error_results_and_the_loop_goes_on():
    log: list = []
    broken = recording_tool("broken", log, fail=RuntimeError("disk on fire"))
    model = ScriptedModel(RoundResult(None, (ToolCall("call_1", "alpha", '{"x": "not a number"}'),
                                             ToolCall("call_2", "alpha", "[1, 2]"),
                                             ToolCall("call_3", "broken", '{"x": 1}')), "tool_calls"),
                          answer())
    done = done_of(run_all(builtin=[recording_tool("alpha", log), broken], generate_round=model,
                           permission="ask", broker=ApprovalBroker(), approval_timeout_s=0))
    first, second, third = (c["result"] for c in done.tool_calls_executed)
    assert first["status"] == "error" and "invalid arguments" in first["exception"]
    assert second == {"status": "error", "exception": "invalid arguments: not a JSON object"}
    assert third["status"] == "denied"                  # valid arguments are put to the policy (ask, no answer)
    done = done_of(run_all(builtin=[broken], generate_round=ScriptedModel(calling(("broken", {"x": 1})), answer())))
    assert done.tool_calls_executed[0]["result"] == {"status": "error", "exception": "RuntimeError: disk on fire"}
    assert done.content == "The answer is 5."


def test_closing_the_loop_mid_round_closes_the_round_so_its_engine_request_stops():
    closed = threading.Event()

    def endless_round(messages, tools, tool_choice, final):
        try:
            while True:
                yield RoundDelta("more ")
        finally:
            closed.set()

    stream = run_rounds(USER, builtin=[], client_tools=[], generate_round=endless_round, permission="auto",
                        broker=None, max_rounds=8, context=ToolContext())
    assert next(stream) == ContentEvent(1, "more ")
    stream.close()                                     # the client went away
    assert closed.is_set()


def test_settings_that_cannot_work_are_refused_before_any_round():
    model = ScriptedModel()
    with pytest.raises(ValueError, match="ApprovalBroker"):
        run_all(builtin=[EXECUTE_PYTHON_TOOL], generate_round=model, permission="ask")
    with pytest.raises(ValueError, match="max_rounds"):
        run_all(builtin=[EXECUTE_PYTHON_TOOL], generate_round=model, max_rounds=-1)
    with pytest.raises(ValueError, match="built-in"):
        run_all(builtin=[EXECUTE_PYTHON_TOOL], generate_round=model,
                client_tools=[{"type": "function", "function": {"name": EXECUTE_PYTHON}}])
    with pytest.raises(ValueError, match="permission"):
        run_all(builtin=[], generate_round=model, permission="sometimes")
    assert model.asked == []


def test_later_rounds_relax_only_forcing_tool_choices():
    assert relaxed("required") == "auto" and relaxed(NAMED) == "auto"
    assert relaxed(None) is None and relaxed("auto") == "auto" and relaxed("none") == "none"
    allowed = {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [{"name": "a"}]}}
    assert relaxed(allowed) == {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [{"name": "a"}]}}


# ---- permissions ----

@pytest.mark.parametrize("floor, requested, expected", [
    ("auto", None, "auto"), ("auto", "ask", "ask"), ("auto", "deny", "deny"), ("ask", "auto", "ask"),
    ("ask", "deny", "deny"), ("deny", "auto", "deny"), ("deny", "ask", "deny"), ("ask", None, "ask")])
def test_a_request_may_only_tighten_the_server_floor(floor, requested, expected):
    assert effective_permission(floor, requested) == expected


def test_broker_decisions_count_once_and_only_for_open_approvals():
    broker = ApprovalBroker()
    assert broker.decide("appr_unknown", "approve") is False
    with pytest.raises(ValueError):
        effective_permission("auto", "maybe")
    approval = broker.open(None, 1, "alpha", "{}")
    with pytest.raises(ValueError):
        broker.decide(approval, "yes")
    assert broker.decide(approval, "deny", remember_for_session=True) is True
    assert broker.decide(approval, "approve") is False                # the first decision stands
    assert broker.wait(approval, 0) == "deny"                         # decided before anyone waited
    assert broker.describe(approval) is None and broker.remembered(None, "alpha") is None   # no session: nothing kept
    assert broker.wait("appr_unknown", 0) == "deny"
    remembered = broker.open("s9", 1, "alpha", "{}")
    assert broker.decide(remembered, "approve", remember_for_session=True) and broker.wait(remembered, 0) == "approve"
    broker.forget_session("s9")
    assert broker.remembered("s9", "alpha") is None


# ---- registry ----

def test_registry_offers_tools_as_strict_openai_functions_and_refuses_what_cannot_be_constrained():
    registry = ToolRegistry([EXECUTE_PYTHON_TOOL])
    search = BuiltinTool("web_search", "Search the web.", {"type": "object", "properties": {"q": {"type": "string"}},
                                                           "required": ["q"], "additionalProperties": False},
                         lambda arguments, context: {"results": []})
    registry.register(search)                                       # a later issue plugs in like this
    assert registry.names() == (EXECUTE_PYTHON, "web_search") and "web_search" in registry
    assert registry.as_openai_tools(["web_search"]) == [{"type": "function", "function": {
        "name": "web_search", "description": "Search the web.", "parameters": search.parameters, "strict": True}}]
    with pytest.raises(ValueError, match="already"):
        registry.register(search)
    registry.register(search, replace=True)
    with pytest.raises(KeyError):
        registry.get("nope")
    for bad in [BuiltinTool("bad name", "", CODE_ONLY, search.run),
                BuiltinTool("loose", "", {"type": "object", "properties": {}}, search.run),
                BuiltinTool("uncompilable", "", {"type": "object", "additionalProperties": False,
                                                 "properties": {"a": {"type": "array", "contains": {}}}},
                            search.run)]:
        with pytest.raises(ValueError):
            registry.register(bad)
    assert registry.names() == (EXECUTE_PYTHON, "web_search")


# ---- execute_python ----

def accepts(schema: dict, instance_text: str) -> bool:
    """As the server reads a tool's schema: for generation (declared properties in schema order)."""
    automaton = Automaton(build_grammar("json_schema", schema, GENERATION_STYLE))
    state = automaton.walk(automaton.initial, instance_text.encode())
    return state != DEAD and automaton.is_accepting(state)


def test_the_code_tool_schemas_compile_with_outputs_optional_and_limited_to_requested_files():
    assert accepts(CODE_ONLY, '{"code": "print(1)"}')
    assert not accepts(CODE_ONLY, '{"code": "x", "outputs": []}') and not accepts(CODE_ONLY, "{}")
    with_files = parameters_for(["report.csv", {"name": "plot.png", "format": "png"}])
    assert accepts(with_files, '{"code": "x"}')                     # outputs is optional
    assert accepts(with_files, '{"code": "x", "outputs": [{"name": "report.csv", "format": "csv"}, '
                               '{"name": "plot.png"}]}')
    assert not accepts(with_files, '{"code": "x", "outputs": [{"name": "other.txt"}]}')
    assert not accepts(with_files, '{"outputs": [], "code": "x"}') and not accepts(with_files, '{"code": "x", "y": 1}')
    ToolRegistry([execute_python_tool(["report.csv"])])               # check_tool compiles it too


def test_the_description_tells_the_model_about_the_sandbox_and_the_files_it_must_produce():
    plain = description_for([])
    assert "persistent" in plain and "no network" in plain
    with_files = description_for(["report.csv", {"name": "plot.png", "format": "png", "description": "a chart"}])
    assert with_files.startswith(plain) and "- report.csv" in with_files
    assert "- plot.png (format: png): a chart" in with_files
    assert execute_python_tool(["report.csv"]).description == description_for(["report.csv"])


def test_execute_python_runs_in_the_session_service_and_keeps_state(tmp_path):
    sandbox = InProcessPython()
    context = ToolContext(session_id="s1", folder=tmp_path, round=1, services={"sandbox": sandbox})
    first = EXECUTE_PYTHON_TOOL.run({"code": "total = 2 + 3\nprint(total)"}, context)
    second = EXECUTE_PYTHON_TOOL.run({"code": "print(total * 10)"}, context)
    assert (first["status"], first["stdout"], second["stdout"]) == ("success", "5\n", "50\n")
    failed = EXECUTE_PYTHON_TOOL.run({"code": "1 / 0"}, context)
    assert failed["status"] == "error" and "ZeroDivisionError" in failed["exception"]
    assert EXECUTE_PYTHON_TOOL.run({"code": "1"}, ToolContext())["status"] == "error"    # no sandbox service


def test_execute_python_says_which_requested_files_exist_without_looking_outside_the_folder(tmp_path):
    folder = tmp_path / "session"
    folder.mkdir()
    (tmp_path / "secret.txt").write_text("host file")
    (folder / "link.csv").symlink_to(tmp_path / "secret.txt")
    tool = execute_python_tool(["report.csv", "missing.csv", "link.csv"])
    context = ToolContext(folder=folder, services={"sandbox": InProcessPython()})
    result = tool.run({"code": f"open({str(folder / 'report.csv')!r}, 'w').write('a,b')"}, context)
    assert result["files"] == [{"name": "report.csv", "produced": True}, {"name": "missing.csv", "produced": False},
                               {"name": "link.csv", "produced": False}]
    assert not produced(folder, "../secret.txt") and not produced(folder, str(tmp_path / "secret.txt"))


def test_execute_python_in_the_real_sandbox(tmp_path):
    """The same tool over the server's sandbox (PythonSandbox under bubblewrap): state kept between runs, the
    trailing expression's value as `result`, and a file written in the sandbox's working folder seen as
    produced in the session folder."""
    from refengine.agent.sandbox import PythonSandbox, bwrap_problem
    problem = bwrap_problem()
    if problem is not None:
        pytest.skip(problem)
    tool = execute_python_tool(["report.csv"])
    with PythonSandbox(tmp_path) as sandbox:
        context = ToolContext(session_id="s1", folder=tmp_path, services={"sandbox": sandbox})
        first = tool.run({"code": "kept = 41"}, context)
        assert first["status"] == "success" and first["files"] == [{"name": "report.csv", "produced": False}]
        second = tool.run({"code": "open('report.csv', 'w').write('a,b\\n')\nkept + 1"}, context)
    assert (second["status"], second["result"]) == ("success", "42"), second
    assert second["files"] == [{"name": "report.csv", "produced": True}]
    assert (tmp_path / "report.csv").read_text() == "a,b\n"


# ---- real rounds on the engine ----

@pytest.fixture(scope="module")
def tiny_long_model(tmp_path_factory):
    """The tiny seeded llama of `tiny_model`, with room for the fallback tool prompt (about 870 of its tokens;
    the shared fixture's context is 256)."""
    return load_model(write_tiny_llama(tmp_path_factory.mktemp("tiny-agent"),
                                       extra_config={"max_position_embeddings": 2048}))


def vocab_of(model) -> Vocab:
    return Vocab(tuple(model.tokenizer.token_bytes[:model.vocab_size]), model.eos_ids, model.tokenizer.special_ids)


def recorded(generate_round, asked: list):
    """`generate_round`, noting each round's tool_choice and final flag and its result."""
    def wrapped(messages, tools, tool_choice, final):
        for item in generate_round(messages, tools, tool_choice, final):
            if isinstance(item, RoundResult):
                asked.append((tool_choice, final, item))
            yield item
    return wrapped


def test_a_real_round_on_the_tiny_model_makes_a_constrained_call_that_the_loop_runs(tiny_long_model):
    """The random model writes whatever the call grammar lets it; a logit_bias towards `"` (and the end of
    text), and against whitespace-only tokens, makes it close its strings at once, so the call completes well
    inside max_tokens whatever the seed. The call's shape is the constraint's doing, not the bias's."""
    model = tiny_long_model
    pieces = model.tokenizer.token_bytes
    bias = {i: 30.0 for i, piece in enumerate(pieces) if piece == b'"'}
    bias.update({i: 30.0 for i in model.eos_ids})
    bias.update({i: -100.0 for i, piece in enumerate(pieces) if piece and not piece.strip()})
    asked: list = []
    generate_round = recorded(engine_round(model, compile_tool_constraint(vocab_of(model)),
                                           sampling=SamplingParams(temperature=0.0, logit_bias=bias),
                                           stopping=StoppingParams(max_tokens=160)), asked)
    sandbox = InProcessPython()
    events = list(run_rounds(USER, builtin=[EXECUTE_PYTHON_TOOL], client_tools=[], generate_round=generate_round,
                             permission="auto", broker=None, max_rounds=1, tool_choice=NAMED,
                             context=ToolContext(session_id="s1", services={"sandbox": sandbox})))
    done = done_of(events)
    (choice_1, final_1, first), (choice_2, final_2, last) = asked
    assert (choice_1, final_1, choice_2, final_2) == (NAMED, False, "none", True)
    [call] = first.tool_calls
    assert call.name == EXECUTE_PYTHON and json.loads(call.arguments) == {"code": ""}
    assert sandbox.ran == [""]
    assert progress(events) == [(1, EXECUTE_PYTHON, "calling", call.id), (1, EXECUTE_PYTHON, "complete", call.id)]
    assert done.tool_calls_executed[0]["result"]["status"] == "success"
    assert last.tool_calls == () and done.finish_reason in ("stop", "length") and done.rounds == 2
    assert done.usage.prompt_tokens == first.prompt_tokens + last.prompt_tokens > 0
    assert done.usage.completion_tokens == first.completion_tokens + last.completion_tokens
    assert [m["role"] for m in done.messages_added] == ["assistant", "tool", "assistant"]


def test_a_round_through_the_scheduler_reads_as_one_through_generate(tiny_long_model):
    """The server's form (`run=scheduler.submit`, a RequestHandle) gives the same round as `generate`; a round
    abandoned midway cancels its request."""
    model = tiny_long_model
    bias = {i: 30.0 for i, piece in enumerate(model.tokenizer.token_bytes) if piece == b'"'}
    options = {"sampling": SamplingParams(temperature=0.0, logit_bias=bias), "stopping": StoppingParams(max_tokens=160)}
    constraint = compile_tool_constraint(vocab_of(model))
    tools = [EXECUTE_PYTHON_TOOL.as_openai()]
    alone = list(engine_round(model, constraint, **options)(USER, tools, NAMED, False))
    scheduler = Scheduler(model, max_batch=2).start()
    handles = []

    def submit(request):
        handles.append(scheduler.submit(request))
        return handles[-1]
    try:
        batched = list(engine_round(model, constraint, submit, **options)(USER, tools, NAMED, False))
        abandoned = engine_round(model, constraint, submit, **options)(USER, [], None, False)
        next(abandoned)
        abandoned.close()
    finally:
        scheduler.stop()

    def strip(result: RoundResult) -> tuple:           # call ids are random
        return (result.content, [(c.name, c.arguments) for c in result.tool_calls], result.finish_reason,
                result.prompt_tokens, result.completion_tokens)
    assert strip(batched[-1]) == strip(alone[-1]) and batched[-1].tool_calls
    assert [d for d in batched if isinstance(d, RoundDelta)] == [d for d in alone if isinstance(d, RoundDelta)]
    assert not handles[0].cancelled and handles[1].cancelled


def test_a_thinking_template_round_splits_reasoning_content_and_calls(tmp_path):
    """RoundReader on a template that thinks (Qwen 3's): the <think> block as reasoning deltas, then content,
    then the call, token events as the engine sends them."""
    model = load_model(write_template_model(tmp_path, QWEN_TEMPLATE))
    tools = ToolSet.read([EXECUTE_PYTHON_TOOL.as_openai()], "auto")
    chat = prepare_chat(model, USER, tools)
    reader = RoundReader(model, tools, chat.format, chat_prompt_ids(model, chat.messages, tools=chat.tools))
    texts = ["<think>", "add them", "</think>", "\n\nI will ", "run it.\n",
             '<tool_call>\n{"name": "execute_python", ', '"arguments": {"code": "print(2 + 3)"}}\n</tool_call>']
    deltas = []
    for i, text in enumerate(texts):
        deltas += reader.add(TokenEvent(0, 100 + i, text, finish_reason="stop" if i == len(texts) - 1 else None))
    result = reader.result(prompt_tokens=42)
    assert "".join(d.text for d in deltas if d.reasoning) == result.reasoning_content == "add them"
    assert "".join(d.text for d in deltas if not d.reasoning) == result.content == "I will run it."
    assert [(c.name, json.loads(c.arguments)) for c in result.tool_calls] == \
        [(EXECUTE_PYTHON, {"code": "print(2 + 3)"})]
    assert (result.finish_reason, result.prompt_tokens, result.completion_tokens) == ("tool_calls", 42, 7)


def test_the_default_model_writes_code_the_loop_runs_then_answers(smollm2):
    """SmolLM2 forced to call execute_python: real code, really run (in the stand-in service), then a final
    round with tools disabled that ends normally."""
    asked: list = []
    generate_round = recorded(engine_round(smollm2, compile_tool_constraint(vocab_of(smollm2)),
                                           sampling=SamplingParams(temperature=0.0),
                                           stopping=StoppingParams(max_tokens=96)), asked)
    sandbox = InProcessPython()
    events = list(run_rounds([{"role": "user", "content": "Use Python to compute 17 * 23 and print it."}],
                             builtin=[EXECUTE_PYTHON_TOOL], client_tools=[], generate_round=generate_round,
                             permission="auto", broker=None, max_rounds=1, tool_choice=NAMED,
                             context=ToolContext(session_id="s1", services={"sandbox": sandbox})))
    done = done_of(events)
    [call] = asked[0][2].tool_calls
    code = json.loads(call.arguments)["code"]
    assert code.strip() and sandbox.ran == [code]
    [executed] = done.tool_calls_executed
    assert executed["result"]["status"] in ("success", "error") and executed["arguments"] == call.arguments
    assert [(choice, final) for choice, final, _ in asked] == [(NAMED, False), ("none", True)]
    assert done.finish_reason in ("stop", "length") and done.client_tool_calls == []
    tool_message = done.messages_added[1]
    assert tool_message["role"] == "tool" and json.loads(tool_message["content"]) == executed["result"]
    assert any(isinstance(e, ContentEvent) and e.round == 2 for e in events) == bool(done.content)


def test_a_client_that_leaves_denies_its_sessions_waiting_approvals():
    broker = ApprovalBroker()
    waiting = broker.open("s", 1, "execute_python", "{}")
    other = broker.open("t", 1, "execute_python", "{}")
    answers = []
    waiter = threading.Thread(target=lambda: answers.append(broker.wait(waiting, 600)))
    waiter.start()
    broker.deny_waiting("s")
    waiter.join(120)                                   # a hang guard: the wait ends with the denial
    assert answers == ["deny"]
    assert broker.decide(waiting, "approve") is False  # closed: a late decision finds nothing
    assert broker.decide(other, "approve") is True     # another session's approval is untouched


def test_a_conversation_grown_past_the_context_by_tool_results_ends_cut_short():
    """Round 2's prompt no longer fits (the tool's output filled the window): the answer ends with
    finish_reason "length", as one cut by max_tokens, not with an error after the stream has started."""
    def generate_round(messages, tools, tool_choice, final):
        if any(m["role"] == "tool" for m in messages):
            raise ContextLengthError("the prompt no longer fits")
        yield RoundResult(None, (ToolCall("call_1", "alpha", "{}"),), "tool_calls", 10, 5)
    alpha = BuiltinTool("alpha", "a tool", {"type": "object", "properties": {}, "additionalProperties": False},
                        lambda arguments, context: {"status": "success", "stdout": "x" * 100})
    events = list(run_rounds([{"role": "user", "content": "go"}], builtin=[alpha], client_tools=[],
                             generate_round=generate_round, permission="auto", broker=None, max_rounds=4,
                             context=ToolContext()))
    done = events[-1]
    assert isinstance(done, AgentDone) and done.finish_reason == "length"
    assert [c["name"] for c in done.tool_calls_executed] == ["alpha"] and done.usage.prompt_tokens == 10
