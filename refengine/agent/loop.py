"""The server-side tool loop: generate, run the built-in tools the model called, generate again.

`run_rounds` is a generator of plain event objects. It knows neither HTTP nor how a round is generated:
the caller hands it `generate_round(messages, tools, tool_choice, final)`, which yields `RoundDelta`s (text
as it comes) and ends with one `RoundResult` (`rounds.engine_round` builds one on the engine; a test can
script one). The SSE writer and the JSON body are both just readers of the events:

    round r ─► ContentEvent* ─► (built-in calls, in order) ToolProgress(calling) [ApprovalRequired]
               ToolProgress(complete) ─► round r+1 ... ─► AgentDone

Rules (issue 12, item 1; where mistral.rs falls short we do not copy it):
- Every built-in call of a round runs, in the order the model wrote them (mistral.rs runs only the first).
  The round adds one assistant message carrying its calls and one `role: "tool"` message per built-in call,
  whose content is the result as JSON.
- A round without calls ends the loop with its answer. A round that calls a client tool (any name that is
  not built in) ends the loop and returns those calls, as plain OpenAI does.
- A mixed round (built-in and client calls together): the built-in calls run (their results join the
  history, so a session that continues has them), then the client calls go back to the client. The model
  asked for both; running ours first loses nothing and the client still answers its own.
- A round cut off by max_tokens ("length") ends the loop: its built-in calls are incomplete JSON and are
  not run; client calls go back as they are (as plain chat returns a cut-off call), finish "length". So
  does a later round whose prompt no longer fits the context (the tools' results filled it).
- After `max_rounds` rounds that ran built-in tools, one last round runs with tools disabled (`final`,
  tool_choice "none"), so the client always gets an answer and a normal finish (mistral.rs returns an
  unexecuted call and never ends its stream). `max_rounds == 0` runs no built-in tool: the first round is
  already that final one.
- The request's tool_choice holds for the first round. Later rounds relax a forcing choice ("required",
  a named function) to "auto": kept, it would force a call every round until the limit.
- Permission per call: "auto" runs, "deny" gives the model `{"status": "denied", ...}`, "ask" emits
  `ApprovalRequired` and blocks on the broker (a decision remembered for the session's tool is used without
  asking). Arguments that are not a JSON object valid for the tool's schema are an error result, never run
  and never put to a person (the constrainer makes that rare, but `generate_round` is anyone's).
- A tool's exception becomes `{"status": "error", "exception": "Type: message"}`: the model may recover, the
  request goes on. Results are normalised to plain JSON data (what cannot be encoded becomes its str).
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Union

import jsonschema

from ..request import ContextLengthError
from ..tools import ToolCall
from .permissions import ASK, AUTO, DENY, ApprovalBroker, check_permission
from .registry import BuiltinTool, ToolContext

logger = logging.getLogger(__name__)

DEFAULT_APPROVAL_TIMEOUT_S = 300.0


# ---- what generate_round yields ----

@dataclass(frozen=True)
class RoundDelta:
    """A piece of the round's text as it is generated (`reasoning`: of the <think> block)."""
    text: str
    reasoning: bool = False


@dataclass(frozen=True)
class RoundResult:
    """The round once generated: its answer text, the calls it made, and what it cost."""
    content: str | None
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str = "stop"              # "stop" | "length" | "tool_calls"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_content: str | None = None


GenerateRound = Callable[[list, list, object, bool], Iterable[Union[RoundDelta, RoundResult]]]


# ---- what run_rounds yields ----

@dataclass(frozen=True)
class ContentEvent:
    round: int
    text: str
    reasoning: bool = False


@dataclass(frozen=True)
class ToolProgress:
    """A built-in call starting ("calling") or done ("complete", with its result)."""
    round: int
    tool_name: str
    phase: str                               # "calling" | "complete"
    arguments: str                           # the call's JSON text, as the model wrote it
    call_id: str
    result: dict | None = None


@dataclass(frozen=True)
class ApprovalRequired:
    """The loop waits for `broker.decide(approval_id, ...)` (or the approval timeout) after this event."""
    approval_id: str
    session_id: str | None
    round: int
    tool: str
    arguments: str


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def plus(self, result: RoundResult) -> Usage:
        return Usage(self.prompt_tokens + result.prompt_tokens, self.completion_tokens + result.completion_tokens,
                     self.cached_tokens + result.cached_tokens)


@dataclass(frozen=True)
class AgentDone:
    """The loop's end. `messages_added` is what the conversation gained (for a session's history): per
    tool round the assistant message with its calls and the tool results, then the last round's assistant
    message (after a mixed round: that round's assistant message with all its calls, then our results, the
    client's results to follow in its next request). `reply_message()` is what the client gets as
    `choices[0].message`: the last round's text and the client's calls only."""
    messages_added: list[dict]
    usage: Usage
    finish_reason: str
    tool_calls_executed: list[dict]          # [{round, name, arguments, result}], in execution order
    client_tool_calls: list[ToolCall]
    content: str | None                      # the last round's answer text
    rounds: int
    reasoning_content: str | None = None

    def reply_message(self) -> dict:
        calls = self.client_tool_calls
        message = {"role": "assistant", "content": self.content if calls else self.content or ""}
        if calls:
            message["tool_calls"] = [c.as_openai() for c in calls]
        return message


AgentEvent = Union[ContentEvent, ToolProgress, ApprovalRequired, AgentDone]


# ---- the loop ----

def run_rounds(messages: list[dict], *, builtin: list[BuiltinTool], client_tools: list[dict],
               generate_round: GenerateRound, permission: str, broker: ApprovalBroker | None, max_rounds: int,
               context: ToolContext, tool_choice=None,
               approval_timeout_s: float = DEFAULT_APPROVAL_TIMEOUT_S) -> Iterator[AgentEvent]:
    """Run the conversation `messages` to an answer (see the module docstring for the rules); the last
    event is an `AgentDone`. ValueError before the first round for a setting that cannot work: an unknown
    permission, "ask" without a broker, a negative `max_rounds`, a client tool named like a built-in one."""
    check_permission(permission)
    if permission == ASK and broker is None:
        raise ValueError("permission 'ask' needs an ApprovalBroker")
    if max_rounds < 0:
        raise ValueError("max_rounds must be >= 0")
    ours = {tool.name: tool for tool in builtin}
    for tool in client_tools:
        name = (tool.get("function") or {}).get("name")
        if name in ours:
            raise ValueError(f"a client tool is named {name!r}, like a built-in tool")
    return _rounds(list(messages), ours, [t.as_openai() for t in builtin] + list(client_tools), generate_round,
                   permission, broker, max_rounds, context, tool_choice, approval_timeout_s)


def _rounds(history: list[dict], ours: dict[str, BuiltinTool], offered: list[dict], generate_round: GenerateRound,
            permission: str, broker: ApprovalBroker | None, max_rounds: int, context: ToolContext, tool_choice,
            approval_timeout_s: float) -> Iterator[AgentEvent]:
    added: list[dict] = []
    executed: list[dict] = []
    usage = Usage()
    tool_rounds = 0
    number = 0
    while True:
        number += 1
        final = bool(ours) and tool_rounds >= max_rounds
        choice = "none" if final else tool_choice if number == 1 else relaxed(tool_choice)
        try:
            result = yield from _generate(generate_round, history, offered, choice, final, number)
        except ContextLengthError:
            if number == 1:
                raise                         # the client's own conversation does not fit: its 400
            # the tools' results filled the context: the answer ends here, cut short as by max_tokens
            yield _done(added, usage, RoundResult(None, finish_reason="length"), executed, [], number)
            return
        usage = usage.plus(result)
        calls = [] if final else list(result.tool_calls)     # a final round's calls are never run
        theirs = [call for call in calls if call.name not in ours]
        if result.finish_reason == "length" or len(theirs) == len(calls):
            added.append(assistant_message(result.content, theirs))
            yield _done(added, usage, result, executed, theirs, number)
            return
        results = []
        for call in calls:
            if call.name in ours:
                outcome = yield from _run_call(call, ours[call.name], number, permission, broker, context,
                                               approval_timeout_s)
                results.append((call, outcome))
                executed.append({"round": number, "name": call.name, "arguments": call.arguments,
                                 "result": outcome})
        round_messages = [assistant_message(result.content, calls)] + [tool_message(c, r) for c, r in results]
        added += round_messages
        history += round_messages
        tool_rounds += 1
        if theirs:                            # a mixed round: ours ran, the client answers its own
            yield _done(added, usage, result, executed, theirs, number)
            return


def _generate(generate_round: GenerateRound, history: list[dict], offered: list[dict], choice, final: bool,
              number: int):
    """One round: its deltas forwarded as ContentEvents, its RoundResult returned. The round's iterator is
    closed however this ends, so an engine request behind it is cancelled when the client goes away."""
    items = iter(generate_round(list(history), list(offered), choice, final))
    result = None
    try:
        for item in items:
            if isinstance(item, RoundDelta):
                if item.text:
                    yield ContentEvent(number, item.text, item.reasoning)
            elif isinstance(item, RoundResult):
                result = item
            else:
                raise TypeError(f"generate_round yielded {type(item).__name__}, not RoundDelta / RoundResult")
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()
    if result is None:
        raise RuntimeError("generate_round ended without a RoundResult")
    return result


def _run_call(call: ToolCall, tool: BuiltinTool, number: int, permission: str, broker: ApprovalBroker | None,
              context: ToolContext, approval_timeout_s: float):
    """One built-in call: progress events, the permission check, the run; returns its result."""
    yield ToolProgress(number, call.name, "calling", call.arguments, call.id)
    arguments, problem = read_arguments(call.arguments, tool.parameters)
    if problem is not None:
        result = {"status": "error", "exception": f"invalid arguments: {problem}"}
    else:
        decision = AUTO if permission == AUTO else DENY if permission == DENY else \
            broker.remembered(context.session_id, call.name)
        if decision is None:
            approval_id = broker.open(context.session_id, number, call.name, call.arguments)
            try:
                yield ApprovalRequired(approval_id, context.session_id, number, call.name, call.arguments)
                decision = broker.wait(approval_id, approval_timeout_s)
            finally:                              # closed while showing it: nobody waits for the decision
                broker.withdraw(approval_id)
        if decision == DENY:
            reason = "the server's or the request's agent_permission is 'deny'" if permission == DENY else \
                "the user did not approve this call (denied, or no decision in time)"
            result = {"status": "denied", "message": f"{call.name} was not run: {reason}"}
        else:
            result = run_tool(tool, arguments, dataclasses.replace(context, round=number))
    yield ToolProgress(number, call.name, "complete", call.arguments, call.id, result)
    return result


def read_arguments(text: str, schema: dict) -> tuple[dict | None, str | None]:
    """The call's arguments as an object valid for `schema`, or the reason they are not."""
    try:
        arguments = json.loads(text) if text.strip() else {}
    except (ValueError, RecursionError) as error:
        return None, f"not JSON ({error})"
    if not isinstance(arguments, dict):
        return None, "not a JSON object"
    try:
        jsonschema.validate(arguments, schema)
    except jsonschema.ValidationError as error:
        return None, error.message
    return arguments, None


def run_tool(tool: BuiltinTool, arguments: dict, context: ToolContext) -> dict:
    """Run a tool; its failure is the model's information, not the request's end."""
    try:
        result = tool.run(arguments, context)
    except Exception as error:                   # noqa: BLE001 - reported to the model, logged here
        logger.warning("built-in tool %s failed", tool.name, exc_info=True)
        return {"status": "error", "exception": f"{type(error).__name__}: {error}"}
    if not isinstance(result, dict):
        return {"status": "error", "exception": f"the tool returned {type(result).__name__}, not an object"}
    return json.loads(json.dumps(result, ensure_ascii=False, default=str))


def relaxed(tool_choice):
    """The tool_choice of the rounds after the first: a forcing choice becomes "auto" (an allowed_tools
    restriction keeps its tools); anything else stays."""
    if tool_choice == "required" or isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        return "auto"
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "allowed_tools":
        allowed = tool_choice.get("allowed_tools") or {}
        return {**tool_choice, "allowed_tools": {**allowed, "mode": "auto"}}
    return tool_choice


def assistant_message(content: str | None, calls: list[ToolCall]) -> dict:
    """OpenAI's assistant message: content None beside calls when there is no text."""
    message = {"role": "assistant", "content": (content or None) if calls else content or ""}
    if calls:
        message["tool_calls"] = [call.as_openai() for call in calls]
    return message


def tool_message(call: ToolCall, result: dict) -> dict:
    return {"role": "tool", "tool_call_id": call.id, "content": json.dumps(result, ensure_ascii=False)}


def _done(added: list[dict], usage: Usage, result: RoundResult, executed: list[dict], theirs: list[ToolCall],
          number: int) -> AgentDone:
    finish_reason = result.finish_reason
    if finish_reason == "tool_calls" and not theirs:     # calls that were not run (a final round's) are no calls
        finish_reason = "stop"
    return AgentDone(messages_added=list(added), usage=usage, finish_reason=finish_reason,
                     tool_calls_executed=list(executed), client_tool_calls=list(theirs), content=result.content,
                     rounds=number, reasoning_content=result.reasoning_content)
