"""The language of a constraint, as a small expression tree over Unicode text.

Every front end (regex text, JSON Schema, Lark grammar) builds one of these; `automaton.py` turns it into a
byte-level automaton. `Call` names a rule of the `Grammar`, which is how JSON Schema `$ref`s, shared JSON
values and recursive grammars are expressed without copying: the automaton keeps a bounded return stack.
"""
from __future__ import annotations

from dataclasses import dataclass, field

MAX_CODE_POINT = 0x10FFFF
SURROGATES = (0xD800, 0xDFFF)


class ConstraintError(ValueError):
    """A constraint the user asked for that cannot be compiled (the server answers 400 with the message).

    `keyword` names the offending JSON Schema keyword / regex feature / grammar construct when there is one;
    `path` the part of a composite constraint (an llguidance grammar list) it is in.
    """

    def __init__(self, message: str, keyword: str | None = None, path: str | None = None):
        super().__init__(message)
        self.message = message
        self.keyword = keyword
        self.path = path          # where in the request's constraint value, e.g. "grammars[1].json_schema"


@dataclass(frozen=True)
class Chars:
    """One character out of a set, given as sorted, disjoint, non-adjacent code point ranges."""
    ranges: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Lit:
    """These exact UTF-8 bytes."""
    data: bytes


@dataclass(frozen=True)
class Seq:
    items: tuple


@dataclass(frozen=True)
class Alt:
    items: tuple


@dataclass(frozen=True)
class Repeat:
    item: object
    min: int
    max: int | None          # None: unbounded


@dataclass(frozen=True)
class Call:
    """The language of the grammar rule `name` (entered through the automaton's return stack)."""
    name: str


@dataclass(frozen=True)
class Members:
    """The inside of a JSON object (or any separated list): `items` in order, each (expr, required) present
    or skipped, any number of `extra` members (None: none) in every gap between them, `sep` between two
    present members, and a member count within [min_count, max_count]. A node of its own because as a tree
    it would be quadratic (which member comes first decides where separators go)."""
    items: tuple
    extra: object
    sep: object
    min_count: int = 0
    max_count: int | None = None


@dataclass(frozen=True)
class Properties:
    """The inside of a JSON object by key: declared properties in schema order (required ones must come,
    optional ones may be skipped), members with any other key (value `extra_value`; None: not allowed)
    in every gap, `sep` between members, `key_sep` between key and value, a member count within
    [min_count, max_count]; with `any_order`, declared properties in any order, each at most once.
    `keys` are the JSON-string spellings of the names (one character or escape
    sequence per unit). The automaton reads a key through one trie of all names, so a state holds a
    couple of items, not one per candidate property."""
    keys: tuple[tuple[str, ...], ...]
    values: tuple
    required: tuple[bool, ...]
    extra_value: object
    sep: object
    key_sep: object
    min_count: int = 0
    max_count: int | None = None
    any_order: bool = False          # declared properties in any order (each at most once)


@dataclass(frozen=True)
class Intersect:
    """Strings in every `positives` language and in none of the `negatives` (call-free expressions).
    Built as a lazily explored product of their automata (regex intersection and complement)."""
    positives: tuple
    negatives: tuple = ()


@dataclass(frozen=True)
class Divisible:
    """A JSON integer (`-?(0|[1-9][0-9]*)`) divisible by `divisor`: the remainder so far is the state."""
    divisor: int


@dataclass(frozen=True)
class Anchor:
    """`^` or `$` in a parsed regex; only allowed at the ends (resolved by regex.apply_anchors)."""
    kind: str


EMPTY = Seq(())          # matches the empty string
NOTHING = Alt(())        # matches nothing


@dataclass
class Grammar:
    """A start expression plus named rules that `Call` refers to (possibly recursively)."""
    start: object
    rules: dict[str, object] = field(default_factory=dict)


# --- code point sets -------------------------------------------------------------------------------------

def normalize_ranges(ranges) -> tuple[tuple[int, int], ...]:
    """Sort, clip to Unicode and merge overlapping or adjacent ranges."""
    out: list[list[int]] = []
    for lo, hi in sorted((max(0, lo), min(MAX_CODE_POINT, hi)) for lo, hi in ranges):
        if lo > hi:
            continue
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return tuple((lo, hi) for lo, hi in out)


def char_set(ranges) -> Chars:
    return Chars(normalize_ranges(ranges))


def chars_of(text: str) -> Chars:
    return char_set((ord(c), ord(c)) for c in text)


def negate(c: Chars) -> Chars:
    out, start = [], 0
    for lo, hi in c.ranges:
        if lo > start:
            out.append((start, lo - 1))
        start = hi + 1
    if start <= MAX_CODE_POINT:
        out.append((start, MAX_CODE_POINT))
    return Chars(tuple(out))


def union(*sets: Chars) -> Chars:
    return char_set(r for c in sets for r in c.ranges)


def intersect(a: Chars, b: Chars) -> Chars:
    out = []
    for lo1, hi1 in a.ranges:
        for lo2, hi2 in b.ranges:
            lo, hi = max(lo1, lo2), min(hi1, hi2)
            if lo <= hi:
                out.append((lo, hi))
    return char_set(out)


def subtract(a: Chars, b: Chars) -> Chars:
    return intersect(a, negate(b))


def contains(c: Chars, code_point: int) -> bool:
    return any(lo <= code_point <= hi for lo, hi in c.ranges)


ANY_CHAR = Chars(((0, MAX_CODE_POINT),))


# --- builders --------------------------------------------------------------------------------------------

def lit(text: str) -> Lit:
    return Lit(text.encode("utf-8"))


def seq(*items) -> object:
    flat = []
    for item in items:
        if isinstance(item, Seq):
            flat.extend(item.items)
        else:
            flat.append(item)
    if any(item == NOTHING for item in flat):
        return NOTHING
    merged: list = []
    for item in flat:     # adjacent literals become one (fewer, longer chains)
        if isinstance(item, Lit) and merged and isinstance(merged[-1], Lit):
            merged[-1] = Lit(merged[-1].data + item.data)
        else:
            merged.append(item)
    return merged[0] if len(merged) == 1 else Seq(tuple(merged))


def alt(*items) -> object:
    flat: dict = {}                   # in order, each once (a dict: no quadratic search in long alternations)
    for item in items:
        for sub in (item.items if isinstance(item, Alt) else (item,)):
            flat.setdefault(sub)
    return next(iter(flat)) if len(flat) == 1 else Alt(tuple(flat))


def opt(item) -> object:
    return Repeat(item, 0, 1)


def star(item) -> object:
    return Repeat(item, 0, None)


def repeat(item, lo: int, hi: int | None) -> object:
    if hi is not None and hi < lo:
        return NOTHING
    if hi == 0:
        return EMPTY
    if lo == hi == 1:
        return item
    return Repeat(item, lo, hi)


def call_free(tree) -> bool:
    """Whether `tree` is a plain regular expression (no rule calls, no object nodes)."""
    if isinstance(tree, (Call, Properties, Members)):
        return False
    if isinstance(tree, (Seq, Alt)):
        return all(call_free(item) for item in tree.items)
    if isinstance(tree, Repeat):
        return call_free(tree.item)
    if isinstance(tree, Intersect):
        return all(call_free(x) for x in tree.positives + tree.negatives)
    return True


def rename_calls(tree, rename, memo: dict | None = None):
    """`tree` with every rule call `Call(n)` made `Call(rename(n))` (to merge grammars without clashes)."""
    memo = {} if memo is None else memo
    key = id(tree)
    if key in memo:
        return memo[key][1]

    def again(sub):
        return rename_calls(sub, rename, memo)
    if isinstance(tree, Call):
        out = Call(rename(tree.name))
    elif isinstance(tree, (Seq, Alt)):
        out = type(tree)(tuple(again(item) for item in tree.items))
    elif isinstance(tree, Repeat):
        out = Repeat(again(tree.item), tree.min, tree.max)
    elif isinstance(tree, Members):
        out = Members(tuple((again(e), required) for e, required in tree.items),
                      None if tree.extra is None else again(tree.extra), again(tree.sep), tree.min_count,
                      tree.max_count)
    elif isinstance(tree, Properties):
        out = Properties(tree.keys, tuple(again(v) for v in tree.values), tree.required,
                         None if tree.extra_value is None else again(tree.extra_value), again(tree.sep),
                         again(tree.key_sep), tree.min_count, tree.max_count, tree.any_order)
    else:                                  # Lit, Chars, Intersect (call-free), Anchor
        out = tree
    memo[key] = (tree, out)                # the tree is kept so that its id stays its own
    return out
