"""Defects found by reading the code, each pinned by a test: unlocked caches shared by request threads,
recursion outside a guard, an abandoned answer decoding for nobody, one hard schema stalling every stream,
work that grew with the output or the prompt on every step."""
from __future__ import annotations

import threading
import time

from falcon import testing

import web.chat
from refengine.constrain import ConstraintCompiler, ConstraintError, Vocab, compile_constraint
from refengine.constrain.index import Constraint
from refengine.generate import Generation
from refengine.lru import LRUCache
from refengine.model import load_model
from refengine.request import ConstraintSpec, GenerationRequest, StoppingParams
from refengine.scheduler import Scheduler
from tiny_model import GatedModel, write_tiny_llama
from web.app import create_app
from web.engine import start_engine
from web.errors import as_api_error

USER = [{"role": "user", "content": "The quick brown fox"}]


def vocab_of(model) -> Vocab:
    return Vocab(tuple(model.tokenizer.token_bytes[:model.vocab_size]), model.eos_ids, model.tokenizer.special_ids)


def request(model, text: str, max_tokens: int = 6, **fields) -> GenerationRequest:
    return GenerationRequest(tuple(model.tokenizer.encode(text)),
                             stopping=StoppingParams(max_tokens=max_tokens, ignore_eos=True), **fields)


# ---- one thread-safe LRU ----

def test_lru_keeps_its_budget_by_entries_or_bytes_least_recently_used_out():
    by_count = LRUCache(2)
    for key in "abc":
        by_count.put(key, key.upper())
    assert "a" not in by_count and by_count.get("b") == "B"
    by_count.put("d", "D")                          # "c" is now the least recently used
    assert [k for k, _ in by_count.items()] == ["b", "d"]
    by_size = LRUCache(10, size_of=len)
    assert by_size.put("x", "12345678") and not by_size.put("huge", "x" * 11)   # too big alone: not kept
    by_size.put("y", "123")
    assert "x" not in by_size and by_size.size == 3


def test_the_constraint_compiler_is_safe_across_request_threads(tiny_model):
    """It was an unlocked OrderedDict: concurrent compiles evicting each other raised KeyError (a 500)."""
    compiler = ConstraintCompiler(vocab_of(tiny_model), max_entries=2)
    patterns = [f"[a-z]{{{i}}}" for i in range(1, 7)]
    errors = []

    def compile_many(offset: int) -> None:
        try:
            for i in range(60):
                compiler.compile("regex", patterns[(i + offset) % len(patterns)])
        except Exception as error:                  # noqa: BLE001 - collected for the assertion
            errors.append(error)
    threads = [threading.Thread(target=compile_many, args=(k,)) for k in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_a_constraint_keeps_a_bounded_number_of_state_masks(tiny_model):
    constraint = compile_constraint("regex", "[a-z ]{0,60}", vocab_of(tiny_model))
    small = Constraint(constraint.automaton, constraint.vocab, max_index_bytes=4 * 1024)
    state = small.initial_state
    for _ in range(30):                              # walk through many distinct states
        mask = small.allowed(state)
        token = int(mask[:small.vocab.size].nonzero()[0][0])
        if token in small.vocab.eos_ids:
            break
        state = small.advance(state, token)
    assert small._states.size <= 4 * 1024 and small.n_states_indexed < 30


def test_tokenizer_derived_tables_are_bounded(tiny_model):
    tokenizer = tiny_model.tokenizer
    for i in range(500):                             # e.g. a client sending new dry_sequence_breakers each time
        tokenizer.derived(("test", i), lambda: [0] * 10)
    assert len(tokenizer._derived) <= 64 and tokenizer.derived(("test", 499), list) == [0] * 10


# ---- recursion ----

def test_a_deeply_nested_tool_schema_is_a_400_naming_it(tmp_path):
    roomy = load_model(write_tiny_llama(tmp_path, extra_config={"max_position_embeddings": 32768}))
    engine = start_engine(roomy)                     # the fallback tool prompt shows the whole schema
    client = testing.TestClient(create_app(engine))
    nested = {"type": "string"}
    for _ in range(400):
        nested = {"type": "object", "properties": {"a": nested}, "required": ["a"]}
    tool = {"type": "function", "function": {"name": "deep", "parameters": nested, "strict": True}}
    try:
        reply = client.simulate_post("/v1/chat/completions", json={
            "model": "default", "messages": USER, "tools": [tool], "tool_choice": "required", "max_tokens": 4})
        assert reply.status_code == 400, reply.text
        assert reply.json["error"]["param"] == "tools[0].function.parameters"
    finally:
        engine.stop()


# ---- an answer nobody reads stops decoding ----

def test_a_failed_non_streamed_chat_stops_its_generation(tiny_model, monkeypatch):
    engine = start_engine(tiny_model)
    gated = GatedModel(tiny_model, free=2)          # the prompt, then the pass after the first token
    engine.scheduler.model = gated
    client = testing.TestClient(create_app(engine))

    def broken_reader(self, event, counted):
        raise RuntimeError("the reader failed")
    monkeypatch.setattr(web.chat.ChoiceOutput, "add", broken_reader)
    try:
        reply = client.simulate_post("/v1/chat/completions", json={
            "model": "default", "messages": USER, "max_tokens": 200, "ignore_eos": True})
        assert reply.status_code == 500              # read the first token, failed, cancelled: all while
        gated.gate.set()                             # the scheduler waited at its third pass
        for _ in range(1000):                        # a hang guard, not a timing assumption
            if engine.scheduler.stats()["running_requests"] == 0:
                break
            time.sleep(0.01)
        stats = engine.scheduler.stats()
        assert stats["running_requests"] == 0 and stats["requests_finished"] == 0
        assert stats["completion_tokens"] <= 3       # cancelled, not decoded to the 200th token for nobody
    finally:
        gated.gate.set()
        engine.stop()


# ---- one hard schema cannot stall the other streams ----

def test_a_constrained_state_being_indexed_does_not_stall_other_streams(tiny_model, monkeypatch):
    """The constrained request's second state takes 'forever' to index (it waits on an event): the scheduler
    indexes it on another thread and keeps decoding the free request meanwhile."""
    constraint = compile_constraint("regex", "[a-z]+ [a-z]+", vocab_of(tiny_model))
    release, indexing = threading.Event(), threading.Event()
    real_index = Constraint._index

    def slow_index(self, state):
        if self is constraint and state != constraint.initial_state:
            indexing.set()
            assert release.wait(60), "never released"
        return real_index(self, state)
    monkeypatch.setattr(Constraint, "_index", slow_index)
    scheduler = Scheduler(tiny_model)
    try:
        slow = scheduler.submit(request(tiny_model, "Hello", max_tokens=4, constraint=ConstraintSpec(constraint)))
        free = scheduler.submit(request(tiny_model, "def add", max_tokens=30))
        scheduler.step()                             # both prompts in
        scheduler.step()                             # first tokens; the slow one's next state is now fresh
        assert len(free.ready_events()) == 1
        produced_while_blocked = 0
        for _ in range(20):
            scheduler.step()
            produced_while_blocked += len(free.ready_events())
        assert indexing.wait(60) and len(slow.ready_events()) == 1      # its first token only
        assert produced_while_blocked == 20          # one token per step, whatever the slow state does
        release.set()
        for _ in range(2000):
            scheduler.step()
            if scheduler.stats()["running_requests"] == 0:
                break
        assert len(list(slow)) == 3                  # its first token came before the block: 4 in all
    finally:
        release.set()
        scheduler.stop()


def test_a_trigger_is_searched_in_the_new_bytes_only(tiny_model):
    """The lazy (tool_choice auto) trigger was searched over the whole output every token: O(output²)."""
    constraint = compile_constraint("regex", "<call>[a-z]+", vocab_of(tiny_model))
    generation = Generation(tiny_model, request(tiny_model, "Hello", max_tokens=200,
                                                constraint=ConstraintSpec(constraint, trigger="<call>")))
    generation.prefill()
    choice = generation.choices[0]
    longest = 0
    logits = generation.first_logits
    for _ in range(150):
        generation.choose(choice, logits)
        longest = max(longest, len(choice.output_bytes))
    assert choice.constraint_state is None           # no trigger in 150 random tokens of the tiny model
    longest_token = max(len(b) for b in tiny_model.tokenizer.token_bytes)
    assert longest <= len("<call>") - 1 + longest_token


def test_admission_does_not_revalidate_prompts_every_step(tiny_model, monkeypatch):
    calls = {"n": 0}
    real = Scheduler._kv_bytes

    def counted(self, request):
        calls["n"] += 1
        return real(self, request)
    monkeypatch.setattr(Scheduler, "_kv_bytes", counted)
    scheduler = Scheduler(tiny_model, max_batch=1)
    handles = [scheduler.submit(request(tiny_model, t, max_tokens=10)) for t in ("Hello", "def add", "The fox")]
    for _ in range(40):
        scheduler.step()
    assert all(len(list(h)) == 10 for h in handles)
    assert calls["n"] == len(handles)                 # once each, at submit


# ---- prompts: nesting, counting what does not fit ----

def test_deeply_nested_tool_call_arguments_are_answered_never_a_500(tiny_model):
    engine = start_engine(tiny_model)
    client = testing.TestClient(create_app(engine))
    try:
        for depth in (600, 5000):                    # decodes (then recurses when rendered) / does not decode
            arguments = "[" * depth + "]" * depth
            messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": arguments}}]}]
            reply = client.simulate_post("/tokenize", json={"messages": messages})
            assert reply.status_code in (200, 400), reply.text
            if reply.status_code == 400:
                assert reply.json["error"]["param"] == "messages"
    finally:
        engine.stop()


def test_tokenize_counts_a_conversation_longer_than_the_context(tiny_model):
    engine = start_engine(tiny_model)
    client = testing.TestClient(create_app(engine))
    long = [{"role": "user", "content": "The quick brown fox jumps over the lazy dog. " * 60}]
    try:
        counted = client.simulate_post("/tokenize", json={"messages": long})
        assert counted.status_code == 200 and counted.json["count"] > engine.context_length
        refused = client.simulate_post("/v1/chat/completions", json={"model": "default", "messages": long})
        assert refused.status_code == 400 and refused.json["error"]["code"] == "context_length_exceeded"
    finally:
        engine.stop()


def test_a_constraint_that_fails_as_it_grows_is_the_clients_400():
    """The automaton is built lazily: "too many states" can surface only while generating."""
    error = as_api_error(ConstraintError("constraint too large (over 200000 automaton states)", keyword="size"),
                         {"prompt": "messages", "constraint": "response_format.json_schema.schema"})
    assert error.status_code == 400 and error.param == "response_format.json_schema.schema"
