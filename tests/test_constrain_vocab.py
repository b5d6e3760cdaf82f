"""The constrainer with the default model's real vocabulary (SmolLM2, 49,152 byte-level BPE tokens)."""
from __future__ import annotations

import json
import random

import jsonschema
import numpy as np
import pytest

from refengine.constrain import ConstraintCompiler, Vocab
from refengine.constrain.automaton import DEAD
from refengine.tokenizer import Tokenizer

PERSON = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 6},
    "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "tags": {"type": "array", "items": {"enum": ["a", "bc"]}, "maxItems": 3}},
    "required": ["name", "age"], "additionalProperties": False}


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    return Tokenizer.from_dir(smollm2_dir)


@pytest.fixture(scope="module")
def compiler(tokenizer):
    return ConstraintCompiler(Vocab.from_tokenizer(tokenizer))


def walk(constraint, ids):
    """States before each token, and whether every token was allowed."""
    state = constraint.initial_state
    for token_id in ids:
        if not constraint.allowed(state)[token_id]:
            return state, False
        state = constraint.advance(state, token_id)
    return state, True


def test_tokenized_valid_instance_walks_through_and_ends_accepting(tokenizer, compiler):
    constraint = compiler.compile("json_schema", PERSON)
    eos = tokenizer.token_id(tokenizer.special.eos)
    text = json.dumps({"name": "Ada é", "age": 36, "tags": ["a", "bc"]}, ensure_ascii=False)
    state, ok = walk(constraint, tokenizer.encode(text))
    assert ok and constraint.is_accepting(state)
    assert constraint.allowed(state)[eos]


@pytest.mark.parametrize("instance", [{"name": "Ada", "age": 121}, {"name": "toolong!", "age": 1},
                                      {"age": 3, "name": "x"}, {"name": "x", "age": 1, "extra": 1}])
def test_tokenized_invalid_instance_is_refused(tokenizer, compiler, instance):
    constraint = compiler.compile("json_schema", PERSON)
    state, ok = walk(constraint, tokenizer.encode(json.dumps(instance)))
    assert not (ok and constraint.is_accepting(state))


def test_masks_match_a_brute_force_walk_over_the_vocabulary(tokenizer, compiler):
    constraint = compiler.compile("json_schema", PERSON)
    automaton = constraint.automaton
    vocab = constraint.vocab
    prefix = tokenizer.encode('{"name": "A')
    state = constraint.initial_state
    for step in range(len(prefix) + 1):
        expected = {i for i, data in enumerate(vocab.token_bytes)
                    if data and i not in vocab.special_ids and automaton.walk(state, data) != DEAD}
        assert set(np.nonzero(constraint.allowed(state))[0].tolist()) == expected
        if step < len(prefix):
            state = constraint.advance(state, prefix[step])


def test_special_tokens_are_never_allowed(tokenizer, compiler):
    constraint = compiler.compile("regex", r"(.|\n)*")
    mask = constraint.allowed(constraint.initial_state)
    for token_id in tokenizer.special_ids:
        assert not mask[token_id] or token_id in constraint.vocab.eos_ids


def random_walk(constraint, eos: int, rng: random.Random, max_tokens: int, closing=None) -> tuple[list[int], int]:
    """Allowed tokens sampled at random until EOS is allowed (or `max_tokens`): the ids and the state reached.
    With `closing` ([V] bool), half the steps sample among the allowed tokens it marks, and an allowed EOS
    is taken only after 20 tokens or by a coin toss (so that texts with several members come too)."""
    state, ids = constraint.initial_state, []
    for _ in range(max_tokens):
        mask = constraint.allowed(state)
        assert mask.any()
        if mask[eos] and (closing is None or len(ids) > 20 or rng.random() < 0.3):
            break
        mask[eos] = False
        if closing is not None and rng.random() < 0.5 and (mask & closing).any():
            mask &= closing
        choices = np.nonzero(mask)[0]
        if not len(choices):
            break
        token = int(choices[rng.randrange(len(choices))])
        ids.append(token)
        state = constraint.advance(state, token)
    return ids, state


@pytest.mark.parametrize("kind, value", [("json_schema", PERSON), ("json_object", None)])
def test_random_constrained_walks_produce_valid_json(tokenizer, compiler, kind, value):
    """Sample allowed tokens at random (taking EOS once allowed): every finished text must validate."""
    constraint = compiler.compile(kind, value)
    eos = tokenizer.token_id(tokenizer.special.eos)
    rng = random.Random(0)
    finished = 0
    for _ in range(8):
        ids, state = random_walk(constraint, eos, rng, 300)
        if constraint.allowed(state)[eos]:
            assert constraint.is_accepting(state)       # never a dead end with EOS forced
            finished += 1
            instance = json.loads(tokenizer.decode(ids))
            if kind == "json_schema":
                jsonschema.validate(instance, value)
            else:
                assert isinstance(instance, dict)
    assert finished >= 4


def test_a_compiled_schema_is_warm_and_its_masks_are_kept_for_the_next_request(compiler):
    schema = {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}}, "required": ["city"]}
    first = compiler.compile("json_schema", schema)
    assert first.ready(first.initial_state) and first.n_states_indexed > 1    # warmed at compile time
    state = first.advance(first.initial_state, int(first.allowed_ids(first.initial_state)[0]))
    first.allowed(state)
    again = compiler.compile("json_schema", json.loads(json.dumps(schema)))
    assert again is first and again.ready(state)


def test_depth_first_trie_lays_out_every_token_under_its_prefixes(tokenizer):
    vocab = Vocab.from_tokenizer(tokenizer)
    trie = vocab.depth_first_trie
    rng = random.Random(0)
    for node in rng.sample(range(len(trie.byte)), 300):
        prefix = bytes(_spelling(trie, node))
        below = [bytes(_spelling(trie, i)) for i in range(node, int(trie.skip[node]))]
        assert all(b.startswith(prefix) for b in below)                        # the subtree is contiguous
        after = int(trie.skip[node])
        assert after == len(trie.byte) or not bytes(_spelling(trie, after)).startswith(prefix)
        bits = np.unpackbits(trie.subtree_bytes[node].view(np.uint8), bitorder="little")
        assert set(np.flatnonzero(bits).tolist()) == {b[-1] for b in below}
        for token in trie.token_ids[trie.token_start[node]:trie.token_start[node + 1]].tolist():
            assert vocab.token_bytes[token] == prefix
    assert sorted(trie.token_ids.tolist()) == sorted(
        i for i, b in enumerate(vocab.token_bytes) if b and i not in vocab.special_ids | vocab.eos_ids)


def _spelling(trie, node: int) -> list[int]:
    """The bytes leading to `node`: walk back to each shallower ancestor."""
    out = [int(trie.byte[node])]
    depth = int(trie.depth[node])
    for i in range(node - 1, -1, -1):
        if trie.depth[i] < depth:
            out.append(int(trie.byte[i]))
            depth = int(trie.depth[i])
            if depth == 1:
                break
    return out[::-1]


@pytest.mark.parametrize("kind,value,prefixes", [
    ("json_schema", PERSON, [b"", b"{", b'{"name": "A', b'{"name": "Ada", "age": 3', b'{"name": "Ada", "age": 36, "tags": [']),
    ("regex", r'"[^"\\]{2,300}"', [b"", b'"', b'"ab', b'"' + b"x" * 250]),
    ("regex", r'[a-z ]*(\.|!)', [b"", b"hello wor"]),
    ("json_object", None, [b"", b'{"a": [1, {"b": "c', b'{"a": [1, {"', b'{"a": [1, {"b": 2, "']),
    ("json_schema", {"type": "object", "properties": {"name": {"type": "string"}, "named": {"type": "integer"},
                                                      "é": {"type": "null"}}},
     [b'{"', b'{"na', b'{"name": "x", "', b'{"\\u00e9": null, "']),
])
def test_the_compiled_vocabulary_walk_equals_the_numpy_reference(tokenizer, kind, value, prefixes):
    from refengine.constrain import compile_constraint
    from refengine.constrain.compiled_walk import index_state as index_state_compiled
    from refengine.constrain.index import index_state
    from refengine.constrain.state_tokens import LAZY
    vocab = Vocab.from_tokenizer(tokenizer)
    reference, compiled = (compile_constraint(kind, value, vocab) for _ in range(2))
    eos = np.array(sorted(vocab.eos_ids))
    for prefix in prefixes:
        for _ in range(2):                       # a fresh state (transitions computed as walked), then a known one
            state_a = reference.automaton.walk(reference.initial_state, prefix)
            state_b = compiled.automaton.walk(compiled.initial_state, prefix)
            tokens_a = index_state(reference.automaton, vocab, state_a, eos)
            tokens_b = index_state_compiled(compiled.automaton, vocab, state_b, eos)
            np.testing.assert_array_equal(tokens_a.packed_mask, tokens_b.packed_mask)
            np.testing.assert_array_equal(tokens_a.rank, tokens_b.rank)
            ids = tokens_a.token_ids(vocab.size)
            # the automata number their states in the order reached: compare where each token leads by
            # what the next bytes do there
            for token in ids[:: max(1, len(ids) // 50)].tolist():
                a, b = tokens_a.next_state(token), tokens_b.next_state(token)
                if token in vocab.eos_ids:       # EOS leaves the state as it is
                    assert (a, b) == (state_a, state_b)
                    continue
                if b == LAZY:                    # taken without being followed: follow it
                    b = compiled.automaton.walk(state_b, vocab.token_bytes[token])
                    assert b != DEAD
                assert reference.automaton.is_accepting(a) == compiled.automaton.is_accepting(b)
                for probe in (b'"', b"}", b"a", b" ", b"1", b"."):
                    assert (reference.automaton.walk(a, probe) == DEAD) == (compiled.automaton.walk(b, probe) == DEAD)


def test_tokens_taken_at_an_open_key_lead_where_their_bytes_do_and_random_walks_stay_valid(tokenizer):
    """At a key of an object that takes undeclared keys, the walk takes every plain-text token without
    following it (LAZY); `advance` follows it when chosen, to the state its bytes lead to. Sampling at
    random among allowed tokens must then still finish only valid objects (no token into a dead end)."""
    from refengine.constrain import SPEC_STYLE, compile_constraint
    from refengine.constrain.state_tokens import LAZY
    vocab = Vocab.from_tokenizer(tokenizer)
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                                               "named": {"type": "integer"}, "note": {"type": "boolean"}},
              "additionalProperties": {"type": "integer", "minimum": 3}}
    constraint = compile_constraint("json_schema", schema, vocab, SPEC_STYLE)
    state = constraint.walk(constraint.initial_state, b'{"')
    tokens = constraint._indexed(state)
    lazy = tokens.token_ids(vocab.size)[tokens.next_states() == LAZY]
    assert len(lazy) > 1000
    for token in lazy[:: len(lazy) // 40].tolist():
        expected = constraint.walk(state, vocab.token_bytes[token])
        assert expected != DEAD and constraint.advance(state, token) == expected
    closed = compile_constraint("json_schema", dict(schema, additionalProperties=False), vocab, SPEC_STYLE)
    tokens = closed._indexed(closed.walk(closed.initial_state, b'{"'))
    assert LAZY not in tokens.targets.tolist()                 # only names may come: every token followed
    eos = tokenizer.token_id(tokenizer.special.eos)
    closing = np.array([b'"' in data or b"}" in data for data in vocab.token_bytes])       # [V]
    rng = random.Random(1)
    finished = 0
    for _ in range(12):
        ids, state = random_walk(constraint, eos, rng, 120, closing)
        if constraint.allowed(state)[eos]:
            assert constraint.is_accepting(state)
            jsonschema.validate(json.loads(tokenizer.decode(ids)), schema)
            finished += 1
    assert finished >= 4


@pytest.mark.parametrize("size,count,targets", [(49152, 0, 1), (49152, 40000, 3), (49152, 40000, 300), (13, 5, 2),
                                                (130, 64, 2)])
def test_a_state_s_tokens_are_kept_compactly_and_looked_up_exactly(size, count, targets):
    """The mask packed to bits, the set bits before each 64-token block, and a small slot number per
    token: each token's next state read back through them is the one stored, EOS included."""
    from refengine.constrain.state_tokens import state_tokens
    rng = np.random.default_rng(count + targets)
    eos = np.array([0, size - 1])
    ids = np.sort(rng.choice(np.arange(1, size - 1), min(count, size - 2), replace=False)).astype(np.int32)
    next_states = rng.integers(1, 1 + targets, len(ids)).astype(np.int32)
    tokens = state_tokens(ids, next_states, eos, 7, size)
    assert tokens.slots.dtype == (np.uint8 if len(tokens.targets) <= 256 else np.uint16)
    np.testing.assert_array_equal(tokens.token_ids(size), np.union1d(ids, eos))
    expected = dict(zip(ids.tolist(), next_states.tolist())) | {0: 7, size - 1: 7}
    for token in range(size):
        assert tokens.next_state(token) == expected.get(token)


def test_warm_up_builds_the_tries_a_first_request_would_wait_for(tokenizer):
    compiler = ConstraintCompiler(Vocab.from_tokenizer(tokenizer))
    assert "depth_first_trie" not in compiler.vocab.__dict__
    compiler.warm_up()
    assert "depth_first_trie" in compiler.vocab.__dict__                    # cached_property filled in
    constraint = compiler.compile("regex", "[0-9]+")
    assert constraint.allowed(constraint.initial_state)[tokenizer.encode("42")[0]]
