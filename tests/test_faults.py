"""Fault injection: an exception in a scheduler step, a forward pass, a detokenizer or a constraint fails the
requests it concerns and no others; the scheduler goes on; a dead scheduler thread is reported at once (the
waiting clients, /health, new submissions), never a hang. Schedulers are driven step by step where the
order of events matters, so nothing here depends on timing."""
from __future__ import annotations

import json
import logging
import re

import pytest
from falcon import testing

from refengine.constrain import Constraint, Vocab, compile_constraint
from refengine.detokenize import IncrementalDetokenizer
from refengine.request import ConstraintSpec, GenerationRequest, StoppingParams
from refengine.handle import RequestFailed
from refengine.scheduler import Scheduler, SchedulerStopped
from web.app import create_app
from web.engine import start_engine

USER = [{"role": "user", "content": "The quick brown fox"}]


class InjectedFault(Exception):
    """The exception the tests inject."""


class FaultyModel:
    """The model, with a forward pass that fails on chosen calls (1-based) and is otherwise the real one."""

    def __init__(self, model, failing_calls: set[int]):
        self._model, self.failing_calls, self.calls = model, failing_calls, 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        if self.calls in self.failing_calls:
            raise InjectedFault(f"forward pass {self.calls}")
        return self._model.forward(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._model, name)


def request(model, text: str, max_tokens: int = 6, **fields) -> GenerationRequest:
    return GenerationRequest(tuple(model.tokenizer.encode(text)),
                             stopping=StoppingParams(max_tokens=max_tokens, ignore_eos=True), **fields)


def outcome(scheduler: Scheduler, handles: list, steps: int = 200) -> list:
    """Step until every handle ended; each handle's events, or the exception that failed it."""
    for _ in range(steps):
        scheduler.step()
        if scheduler.stats()["running_requests"] == 0 and scheduler.stats()["queue_depth"] == 0:
            break
    else:
        raise AssertionError(f"the requests did not end in {steps} steps")
    results = []
    for handle in handles:
        try:
            results.append(list(handle))
        except Exception as error:           # noqa: BLE001 - the injected fault, as the client sees it
            results.append(error)
    return results


def test_a_failed_forward_pass_fails_its_batch_and_the_scheduler_goes_on(tiny_model):
    model = FaultyModel(tiny_model, failing_calls={3})
    scheduler = Scheduler(model)
    first, second = (scheduler.submit(request(tiny_model, t)) for t in ("Hello", "def add"))
    failures = outcome(scheduler, [first, second])
    assert [type(f) for f in failures] == [RequestFailed, RequestFailed]          # one exception each
    assert failures[0] is not failures[1] and all(type(f.__cause__) is InjectedFault for f in failures)
    later = scheduler.submit(request(tiny_model, "The quick brown fox"))
    events = outcome(scheduler, [later])[0]
    assert len(events) == 6 and events[-1].finish_reason == "length"
    assert scheduler.alive


def test_a_failing_detokenizer_fails_only_its_request(tiny_model, monkeypatch):
    real_push = IncrementalDetokenizer.push
    victim = tiny_model.tokenizer.encode("def add")

    def push(self, token_id):                 # fails for the request whose prompt is "def add" only
        if getattr(self, "victim", False):
            raise InjectedFault("detokenizer")
        return real_push(self, token_id)
    scheduler = Scheduler(tiny_model)
    healthy = scheduler.submit(request(tiny_model, "Hello"))
    failing = scheduler.submit(request(tiny_model, "def add"))
    scheduler.step()                          # both prompts go in together; their choices now exist
    for running in scheduler._running:        # mark the victim's detokenizer
        if list(running.handle.request.prompt_ids) == victim:
            running.generation.choices[0].detokenizer.victim = True
    monkeypatch.setattr(IncrementalDetokenizer, "push", push)
    good, bad = outcome(scheduler, [healthy, failing])
    assert isinstance(bad, InjectedFault)
    assert len(good) == 6 and good[-1].finish_reason == "length"


def test_a_failing_constraint_fails_only_its_request(tiny_model, monkeypatch):
    vocab = Vocab(tuple(tiny_model.tokenizer.token_bytes), tiny_model.eos_ids, tiny_model.tokenizer.special_ids)
    fresh = compile_constraint("regex", "[a-z]+ [a-z]+ [a-z]+", vocab)
    calls = {"n": 0}
    real_index = Constraint._index

    def index(self, state):                   # the first state (indexed at submit) works; the next ones fail
        calls["n"] += 1
        if self is fresh and calls["n"] > 1:
            raise InjectedFault("constraint")
        return real_index(self, state)
    monkeypatch.setattr(Constraint, "_index", index)
    scheduler = Scheduler(tiny_model)
    constrained = scheduler.submit(request(tiny_model, "Hello", constraint=ConstraintSpec(fresh)))
    free = scheduler.submit(request(tiny_model, "def add"))
    bad, good = outcome(scheduler, [constrained, free])
    assert isinstance(bad, InjectedFault)
    assert len(good) == 6 and good[-1].finish_reason == "length"
    scheduler.stop()


def test_an_unexpected_error_in_a_step_fails_the_requests_in_flight_and_is_logged(tiny_model, monkeypatch, caplog):
    scheduler = Scheduler(tiny_model)
    doomed = scheduler.submit(request(tiny_model, "Hello"))
    scheduler.step()
    real_step = Scheduler._step
    monkeypatch.setattr(Scheduler, "_step", lambda self: (_ for _ in ()).throw(InjectedFault("bookkeeping")))
    with caplog.at_level(logging.ERROR, logger="refengine.scheduler"):
        scheduler.step()
    assert "a scheduler step failed" in caplog.text and "InjectedFault: bookkeeping" in caplog.text
    monkeypatch.setattr(Scheduler, "_step", real_step)
    with pytest.raises(RequestFailed) as failed:
        list(doomed)
    assert type(failed.value.__cause__) is InjectedFault
    later = scheduler.submit(request(tiny_model, "def add"))
    assert len(outcome(scheduler, [later])[0]) == 6
    assert scheduler.stats()["failed_steps"] == 1 and scheduler.alive


class ThreadKiller(BaseException):
    """Escapes every `except Exception`: the scheduler thread dies of it."""


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")     # the death we cause
def test_a_dead_scheduler_thread_fails_waiting_clients_and_refuses_new_ones(tiny_model, monkeypatch):
    engine = start_engine(tiny_model, max_batch=1)
    client = testing.TestClient(create_app(engine))
    try:
        assert client.simulate_get("/health").status_code == 200
        monkeypatch.setattr(Scheduler, "step", lambda self: (_ for _ in ()).throw(ThreadKiller()))
        handle = engine.scheduler.submit(request(tiny_model, "Hello"))
        with pytest.raises(SchedulerStopped):
            list(handle)                      # told at once (the thread's last act), not after a timeout
        engine.scheduler._thread.join(timeout=30)
        assert not engine.scheduler.alive
        health = client.simulate_get("/health")
        assert health.status_code == 503 and health.json["status"] == "stopped"
        refused = client.simulate_post("/v1/chat/completions", json={"model": "default", "messages": USER})
        assert refused.status_code == 503 and refused.json["error"]["code"] == "engine_unavailable"
        with pytest.raises(SchedulerStopped):
            engine.scheduler.submit(request(tiny_model, "Hello"))
    finally:
        engine.stop()


def test_a_handle_never_waits_for_a_scheduler_that_is_gone(tiny_model):
    scheduler = Scheduler(tiny_model)
    handle = scheduler.submit(request(tiny_model, "Hello"))
    scheduler._stopping = True                # as if the thread had vanished without a word
    with pytest.raises(SchedulerStopped):
        list(handle)


def test_submit_after_stop_raises(tiny_model):
    scheduler = Scheduler(tiny_model).start()
    scheduler.stop()
    with pytest.raises(SchedulerStopped):
        scheduler.submit(request(tiny_model, "Hello"))


def test_engine_faults_are_a_500_with_a_log_id_and_no_internals(tiny_model, caplog):
    engine = start_engine(tiny_model)
    engine.scheduler.model = FaultyModel(tiny_model, failing_calls={1, 2})
    client = testing.TestClient(create_app(engine))
    try:
        with caplog.at_level(logging.ERROR):
            plain = client.simulate_post("/v1/chat/completions",
                                         json={"model": "default", "messages": USER, "max_tokens": 4})
            streamed = client.simulate_post("/v1/chat/completions", json={
                "model": "default", "messages": USER, "max_tokens": 4, "stream": True})
        assert plain.status_code == 500
        error = plain.json["error"]
        assert error["type"] == "server_error" and "InjectedFault" not in error["message"]
        log_id = re.search(r"log id ([0-9a-f]+)", error["message"]).group(1)
        assert log_id in caplog.text and "InjectedFault: forward pass 1" in caplog.text
        events = [line[len("data: "):] for line in streamed.text.split("\n") if line.startswith("data: ")]
        assert json.loads(events[-1])["error"]["type"] == "server_error" and "[DONE]" not in events
        assert client.simulate_get("/health").status_code == 200
        fine = client.simulate_post("/v1/chat/completions",
                                    json={"model": "default", "messages": USER, "max_tokens": 4})
        assert fine.status_code == 200 and fine.json["usage"]["completion_tokens"] == 4
    finally:
        engine.stop()


def test_the_kv_budget_refusal_names_max_tokens_or_n(tiny_model):
    engine = start_engine(tiny_model, max_kv_bytes=2**20)
    client = testing.TestClient(create_app(engine))
    try:
        many = client.simulate_post("/v1/chat/completions", json={
            "model": "default", "messages": USER, "max_tokens": 200, "n": 100})
        assert many.status_code == 400 and many.json["error"]["param"] == "n"
        tiny = start_engine(tiny_model, max_kv_bytes=2**12)
        try:
            long = testing.TestClient(create_app(tiny)).simulate_post(
                "/v1/completions", json={"model": "default", "prompt": "Hi", "max_tokens": 250})
        finally:
            tiny.stop()
        assert long.status_code == 400 and long.json["error"]["param"] == "max_tokens"
    finally:
        engine.stop()
