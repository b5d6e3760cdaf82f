"""The constrainer's core: regex parsing, the byte automaton, number ranges, token-level walks, EOS, errors."""
from __future__ import annotations

import random
import re
from decimal import Decimal

import numpy as np
import pytest

from refengine.constrain import ConstraintCompiler, ConstraintError, Vocab, build_grammar, compile_constraint
from refengine.constrain.automaton import DEAD, Automaton
from refengine.constrain.nfa import utf8_sequences
from refengine.constrain.expr import Grammar
from refengine.constrain.numbers import decimal_range, integer_range
from refengine.constrain.regex import full_match, search


def automaton_of(tree) -> Automaton:
    return Automaton(Grammar(tree))


def matches(automaton: Automaton, text: str) -> bool:
    state = automaton.walk(automaton.initial, text.encode("utf-8"))
    return state != DEAD and automaton.is_accepting(state)


# --- regex vs Python re -----------------------------------------------------------------------------------

REGEXES = [
    r"a|b", r"ab*c", r"(ab)+", r"(ab){2,3}c?", r"a{0,2}b{2}", r"[a-c]+\d*", r"[^abc]x", r"\w+@\w+\.com",
    r"\s?[+-]?\d{1,3}(,\d{3})*", r"(?:é|ü|日)+", r"[\u00e0-\u00ff]{2}", r".a.", r"x{2,}", r"(a|ab)(c|bcd)",
    r"[\-\]a]+", r"\x41\u0042", r"(?P<year>\d{4})-(?P<m>\d\d)", r"[^\n]*", r"a*?b+?", r"(?:)",
    r"🙂+", r"[^\u0000-\u007f]", r"\.\*\+\?", r"[.]", r"a{,2}", r"\t\n",
]
ALPHABET = "abcdx@.,+-0123 1ü日éà🙂\n\t*?AB]"


def random_strings(rng: random.Random, n: int) -> list[str]:
    out = ["", "a", "ab", "abc", "abab", "ababc", "aabb", "ababababc", "x@y.com", "1,234", "-12", "日日",
           "éü", "aa", "bb", "2024-01", "🙂🙂", "ab*+?", "AB", ".*+?", "\t\n", "xx", "xxx"]
    for _ in range(n):
        out.append("".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 6))))
    return out


@pytest.mark.parametrize("pattern", REGEXES)
def test_regex_full_match_agrees_with_python_re(pattern):
    automaton = automaton_of(full_match(pattern))
    for text in random_strings(random.Random(pattern), 300):
        assert matches(automaton, text) == bool(re.fullmatch(pattern, text)), (pattern, text)


@pytest.mark.parametrize("pattern", [r"^ab", r"cd$", r"^a|b$", r"b+", r"^(a|b)c$", r"\d{2}"])
def test_regex_search_semantics_agree_with_python_re(pattern):
    automaton = automaton_of(search(pattern))
    for text in random_strings(random.Random(pattern), 300):
        assert matches(automaton, text) == bool(re.search(pattern, text)), (pattern, text)


@pytest.mark.parametrize("pattern, keyword", [
    (r"(a)\1", "backreference"), (r"a(?=b)", "lookaround"), (r"\bword", "word boundary"),
    (r"\p{L}", "unicode property"), (r"(?i)abc", "regex flags"), (r"a(b", "regex"), (r"*a", "regex"),
    (r"a^b", "anchor"), (r"[a", "regex"), (r"a{3,1}", "regex"),
])
def test_regex_features_we_cannot_honour_are_errors(pattern, keyword):
    with pytest.raises(ConstraintError) as info:
        automaton_of(full_match(pattern))
    assert info.value.keyword == keyword


def test_utf8_sequences_cover_exactly_the_encodings():
    for lo, hi in [(0, 0x10FFFF), (0x7F, 0x800), (0xD000, 0xE100), (0x1F600, 0x1F64F), (0xE9, 0xE9)]:
        sequences = utf8_sequences(lo, hi)
        rng = random.Random(lo)
        for cp in [lo, hi, *(rng.randint(max(0, lo - 50), min(0x10FFFF, hi + 50)) for _ in range(500))]:
            if 0xD800 <= cp <= 0xDFFF:
                continue
            data = chr(cp).encode("utf-8")
            hit = any(len(s) == len(data) and all(a <= b <= c for (a, c), b in zip(s, data)) for s in sequences)
            assert hit == (lo <= cp <= hi), hex(cp)


def test_invalid_utf8_is_rejected_byte_by_byte():
    automaton = automaton_of(full_match(r".*"))
    assert automaton.walk(automaton.initial, b"\xc3") != DEAD          # a valid prefix of "é"
    assert automaton.walk(automaton.initial, b"\xc3(") == DEAD         # not a continuation byte
    assert automaton.walk(automaton.initial, b"\xed\xa0\x80") == DEAD  # an encoded surrogate
    assert automaton.walk(automaton.initial, b"\xff") == DEAD


# --- numbers ------------------------------------------------------------------------------------------

def test_integer_and_decimal_ranges_are_exact():
    rng = random.Random(7)
    plain = re.compile(r"-?(0|[1-9]\d*)(\.\d+)?")
    texts = {"0", "-0", "00", "01", "1.", "1.0", "-1", "0.0", "-0.5", "5", "10", "100", "0.05", "-0.05", "1e3"}
    for _ in range(300):
        x = Decimal(rng.randint(-300, 300)) / 10 ** rng.randint(0, 3)
        texts |= {str(x), str(x) + "0"}
    for _ in range(60):
        lo = Decimal(rng.randint(-300, 300)) / 10 ** rng.randint(0, 3) if rng.random() < 0.8 else None
        hi = Decimal(rng.randint(-300, 300)) / 10 ** rng.randint(0, 3) if rng.random() < 0.8 else None
        lo_strict, hi_strict = rng.random() < 0.5, rng.random() < 0.5
        automaton = automaton_of(decimal_range(lo, lo_strict, hi, hi_strict))
        for text in texts:
            expected = bool(plain.fullmatch(text)) and not re.fullmatch(r"-0(\.0+)?", text)
            if expected:
                x = Decimal(text)
                expected = (lo is None or (x > lo if lo_strict else x >= lo)) and \
                           (hi is None or (x < hi if hi_strict else x <= hi))
            assert matches(automaton, text) == expected, (lo, lo_strict, hi, hi_strict, text)
        ilo = int(lo) if lo is not None else None
        ihi = int(hi) if hi is not None else None
        automaton = automaton_of(integer_range(ilo, ihi))
        for text in texts:
            expected = bool(re.fullmatch(r"-?(0|[1-9]\d*)", text)) and text != "-0"
            if expected:
                expected = (ilo is None or int(text) >= ilo) and (ihi is None or int(text) <= ihi)
            assert matches(automaton, text) == expected, (ilo, ihi, text)


# --- token level ------------------------------------------------------------------------------------------

EOS = 300
IM_START = 301


def synthetic_vocab() -> Vocab:
    """All 256 single bytes, some multi-byte tokens (one splitting "é" mid-character), EOS, a special."""
    tokens = [bytes([b]) for b in range(256)]
    tokens += [b'{"', b'": ', b'", "', b'"}', b"ab", b"abc", b"12", b"\xc3", b"\xa9t", b"true", b"  ",
               b"\xc3\xa9", b"ba", b"a1", b"hello world"]
    tokens += [b""] * (EOS - len(tokens))
    tokens += [b"", b""]                                   # EOS, <|im_start|>
    return Vocab(tuple(tokens), eos_ids=frozenset({EOS}), special_ids=frozenset({EOS, IM_START}))


def token_ids(vocab: Vocab, *pieces: bytes) -> list[int]:
    return [vocab.token_bytes.index(p) for p in pieces]


def allowed_by_brute_force(automaton: Automaton, vocab: Vocab, state: int) -> set[int]:
    """Independent oracle: walk every token's bytes one by one."""
    out = set()
    for token_id, data in enumerate(vocab.token_bytes):
        if data and token_id not in vocab.special_ids and automaton.walk(state, data) != DEAD:
            out.add(token_id)
    return out


@pytest.mark.parametrize("pattern", [r"ab(c|1)*", r"[a-z ]+", r"é+t?", r"(true|false)", r"\d{1,3}"])
def test_token_masks_match_a_brute_force_walk(pattern):
    vocab = synthetic_vocab()
    constraint = compile_constraint("regex", pattern, vocab)
    automaton = constraint.automaton
    rng = random.Random(pattern)
    state = constraint.initial_state
    for _ in range(12):
        mask = constraint.allowed(state)
        expected = allowed_by_brute_force(automaton, vocab, state)
        assert set(np.nonzero(mask)[0]) - {EOS} == expected
        assert mask[EOS] == (automaton.is_accepting(state) or not expected)
        assert not mask[IM_START]
        if not expected:
            break
        token = rng.choice(sorted(expected))
        nxt = constraint.advance(state, token)
        assert nxt == automaton.walk(state, vocab.token_bytes[token])
        state = nxt


def test_token_split_inside_a_multibyte_character():
    vocab = synthetic_vocab()
    constraint = compile_constraint("regex", r"ét", vocab)
    state = constraint.initial_state
    first, second = token_ids(vocab, b"\xc3", b"\xa9t")
    assert constraint.allowed(state)[first]
    state = constraint.advance(state, first)
    assert constraint.allowed(state)[second] and not constraint.allowed(state)[EOS]
    state = constraint.advance(state, second)
    assert constraint.is_accepting(state)


def test_eos_only_in_accepting_states_and_forced_at_dead_ends():
    vocab = synthetic_vocab()
    constraint = compile_constraint("regex", r"ab|abc", vocab)
    state = constraint.initial_state
    assert not constraint.allowed(state)[EOS]
    state = constraint.advance(state, token_ids(vocab, b"ab")[0])
    mask = constraint.allowed(state)
    assert mask[EOS] and mask[ord("c")]                  # accepting, and may go on
    state = constraint.advance(state, ord("c"))
    mask = constraint.allowed(state)
    assert mask[EOS] and mask.sum() == 1                 # nothing can follow: only EOS
    assert constraint.advance(state, EOS) == state


def test_forbidden_token_raises():
    vocab = synthetic_vocab()
    constraint = compile_constraint("regex", r"a+", vocab)
    with pytest.raises(ValueError):
        constraint.advance(constraint.initial_state, ord("b"))


def test_compiler_caches_by_kind_and_text():
    vocab = synthetic_vocab()
    compiler = ConstraintCompiler(vocab, max_entries=2)
    a = compiler.compile("regex", "a+")
    assert compiler.compile("regex", "a+") is a
    b = compiler.compile("json_schema", {"type": "integer"})
    assert compiler.compile("json_schema", '{"type":"integer"}') is b
    compiler.compile("regex", "b+")
    compiler.compile("regex", "c+")
    assert compiler.compile("regex", "a+") is not a       # evicted (least recently used)


def test_unknown_kind_and_bad_values_are_constraint_errors():
    vocab = synthetic_vocab()
    with pytest.raises(ConstraintError):
        compile_constraint("xml", "<a/>", vocab)
    with pytest.raises(ConstraintError):
        compile_constraint("regex", 42, vocab)
    with pytest.raises(ConstraintError):
        compile_constraint("json_schema", "{not json", vocab)


def test_large_bounded_repeats_are_built_lazily():
    automaton = automaton_of(full_match(r"(\w{1,1000}-){1,1000}"))       # a million copies if built eagerly
    assert len(automaton.nfa.edges) < 1000
    assert matches(automaton, "ab-" * 300 + "x" * 1000 + "-")
    assert not matches(automaton, "x" * 1001 + "-")


def test_size_limit_fails_fast():
    with pytest.raises(ConstraintError) as info:
        Automaton(Grammar(full_match(r"(((a{0,30}b){0,30}c){0,30}d){0,30}")), max_nodes=100_000)
    assert info.value.keyword == "size"


def test_tokens_leading_into_dead_ends_are_not_allowed():
    from refengine.constrain.expr import Intersect, repeat, ANY_CHAR
    vocab = synthetic_vocab()
    # "a" then anything then "b", at most 3 characters: after "aaa" no completion exists
    tree = Intersect((full_match(r"a.*b"), repeat(ANY_CHAR, 0, 3)))
    from refengine.constrain.index import Constraint
    constraint = Constraint(Automaton(Grammar(tree)), vocab)
    state = constraint.advance(constraint.initial_state, ord("a"))
    state = constraint.advance(state, ord("a"))
    mask = constraint.allowed(state)
    assert mask[ord("b")] and not mask[ord("a")]
    assert not mask[token_ids(vocab, b"ab")[0]]          # "aaab" is too long


def walk_text(constraint, text: bytes) -> int:
    """The state after `text`, one single-byte token at a time."""
    state = constraint.initial_state
    for byte in text:
        state = constraint.advance(state, byte)
    return state


def test_dead_ends_inside_an_intersection_within_json_are_not_allowed():
    """Only states wholly inside an intersection are searched for a way out; the dead ends found there
    are still refused (here a string whose pattern and length leave "b" as the only way on)."""
    from refengine.constrain.index import Constraint
    vocab = synthetic_vocab()
    schema = {"type": "object", "properties": {"code": {"type": "string", "pattern": "^a.*b$", "maxLength": 3}},
              "required": ["code"], "additionalProperties": False}
    automaton = Automaton(build_grammar("json_schema", schema))
    constraint = Constraint(automaton, vocab)
    mask = constraint.allowed(walk_text(constraint, b'{"code":"aa'))
    assert automaton.builder.intersect_nodes and not automaton.builder.may_dead_end
    assert mask[ord("b")] and not mask[ord("a")] and not mask[ord('"')]
    assert not mask[token_ids(vocab, b"ba")[0]]               # "aab" then "a": too long
    assert not mask[token_ids(vocab, b'"}')[0]]               # not closed before its "b"
    mask = constraint.allowed(walk_text(constraint, b'{"code":"a'))
    assert mask[ord("a")] and mask[ord("b")] and mask[token_ids(vocab, b"ab")[0]]
    assert not mask[token_ids(vocab, b"abc")[0]]              # "aabc" is too long, "abc" does not end in b


def test_a_product_tuple_is_searched_from_where_it_stands_and_what_a_search_proves_is_kept():
    """Liveness inside an intersection is searched over the operands' automata from the item's tuple of
    states (no DFA state is built for it): here "a", then anything, then "b", in at most 3 characters."""
    from refengine.constrain.expr import ANY_CHAR, repeat
    from refengine.constrain.nfa import Product
    operands = [Automaton(Grammar(x), max_depth=0) for x in (full_match(r"a.*b"), repeat(ANY_CHAR, 0, 3))]
    product = Product(operands, n_pos=2)

    def after(text: bytes) -> tuple:
        return tuple(operand.walk(operand.initial, text) for operand in operands)

    assert product.search(after(b"a")) is True                 # "ab", "axb"
    assert product.search(after(b"aa")) is True                # "aab"
    assert product.search(after(b"aaa")) is False              # three characters, not ending in "b"
    assert after(b"a") in product._live and after(b"aaa") in product._dead
    assert product.search(after(b"aaa")) is False              # answered from what was kept
    wide = Product([Automaton(Grammar(full_match(r"[ab]{20}c")), max_depth=0)], n_pos=1)
    assert wide.search(wide.initial, budget=4) is None         # out of budget: not settled
    assert wide.search(wide.initial) is True


def test_an_empty_intersection_makes_every_state_searched():
    """An intersection with no string at all strands whatever leads into it: the automaton then searches
    every state, so a key whose value cannot be written is never begun."""
    from refengine.constrain.expr import Intersect, repeat, ANY_CHAR
    from refengine.constrain.index import Constraint
    from refengine.constrain.nfa import Product
    empty = Intersect((full_match(r"a.*b"), repeat(ANY_CHAR, 0, 1)))        # "a...b" in at most one char
    operands = [Automaton(Grammar(x), max_depth=0) for x in empty.positives]
    assert not Product(operands, n_pos=len(operands)).reaches_acceptance()
    assert Product([Automaton(Grammar(full_match(r"a.*b")))], n_pos=1).reaches_acceptance()
    assert not Product([Automaton(Grammar(full_match(r"a.*b"))),
                        Automaton(Grammar(full_match(r"a.*b")))], n_pos=1).reaches_acceptance()   # negated
    vocab = synthetic_vocab()
    schema = {"type": "object", "properties": {"x": {"type": "string", "pattern": "^a.*b$", "maxLength": 1}},
              "additionalProperties": False}
    automaton = Automaton(build_grammar("json_schema", schema))
    constraint = Constraint(automaton, vocab)
    mask = constraint.allowed(walk_text(constraint, b'{"'))         # the value's automaton is built here
    assert automaton.builder.may_dead_end
    assert not mask[ord("x")]
