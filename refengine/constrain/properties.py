"""The NFA of a JSON object's members by key (`expr.Properties`), built lazily as the automaton reaches it.

Node (gap i, count c) is "before a member at position i, c members so far": i is the index of the next
declared property in schema order, or (any order) the set of the declared properties present, as a
bitmask. Node (i, c, trie node) is "inside a key": keys are read through one trie of the declared names,
so a DFA state holds a couple of items rather than one per candidate property; a key that leaves the trie
is an undeclared name (when those are allowed), which takes the extra value. Every node gets its edges
when first reached: a gap's key trie is built again for each set of properties present (any order), so
what a trie node's edges need that does not depend on the gap is worked out once, in `KeyTrieNode`.
"""
from __future__ import annotations

from functools import lru_cache

from .expr import NOTHING, Chars, Lit, Properties, chars_of, intersect, lit, seq, subtract
from .json_text import HEX, PLAIN, STRING_CHAR

ASCII = Chars(((0, 0x7F),))
UNICODE_ESCAPE = seq(lit("u"), HEX, HEX, HEX, HEX)


@lru_cache(maxsize=4096)
def leaving_chars(plain: str) -> tuple[tuple[tuple[int, int], ...], Chars]:
    """The characters a key may go on with, raw in a JSON string, other than those in `plain`: the ASCII
    ones as byte ranges, and the rest (the same for every `plain` of ASCII characters)."""
    other = subtract(PLAIN, chars_of(plain))
    return intersect(other, ASCII).ranges, subtract(other, ASCII)


class KeyTrieNode:
    """One node of the trie of declared names, with what its NFA node's edges need whatever the gap."""
    __slots__ = ("index", "units", "end", "names", "single", "multi", "other_ascii", "other_rest", "escapes")

    def __init__(self, index: int):
        self.index = index
        self.units: dict[str, KeyTrieNode] = {}
        self.end: int | None = None          # the declared name spelled out here
        self.names = 0                       # bitmask of the names at or below this node
        self.single = None                   # set by `finish`, when the node is first expanded

    def finish(self) -> None:
        """The edges to the children by kind, and the characters and escapes that leave the trie here
        (a key that is none of the names)."""
        self.single = [(unit.encode("utf-8")[0], child) for unit, child in self.units.items()
                       if len(unit.encode("utf-8")) == 1]
        self.multi = [(unit.encode("utf-8"), child) for unit, child in self.units.items()
                      if len(unit.encode("utf-8")) > 1]
        self.other_ascii, self.other_rest = leaving_chars("".join(sorted(u for u in self.units if len(u) == 1)))
        self.escapes = "".join(unit[1] for unit in self.units if len(unit) == 2)


class PropertiesBuilder:
    """Adds a `Properties` node's NFA to the automaton builder's (`builder`: nfa.NFABuilder)."""

    def __init__(self, builder, tree: Properties):
        self.b = builder
        self.nfa = builder.nfa
        self.tree = tree
        n = len(tree.keys)
        self.n = n
        self.bounded = tree.max_count is not None
        self.cap = tree.max_count if self.bounded else max(tree.min_count, 1)
        # the last property a member at gap i may be: up to and including the first required one
        self.stop = [next((j for j in range(i, n) if tree.required[j]), n - 1) for i in range(n + 1)]
        self.possible = sum(1 << j for j in range(n) if tree.values[j] != NOTHING)
        self.required = sum(1 << j for j in range(n) if tree.required[j])
        self.root = KeyTrieNode(0)
        n_trie_nodes = 1
        for j, key in enumerate(tree.keys):
            node = self.root
            node.names |= 1 << j
            for unit in key:
                if unit not in node.units:
                    node.units[unit] = KeyTrieNode(n_trie_nodes)
                    n_trie_nodes += 1
                node = node.units[unit]
                node.names |= 1 << j
            node.end = j
        # the separators placed at every gap and after every key, each built once and shared (a
        # flexible whitespace run alone is 16 nodes, rebuilt per key per set of keys present otherwise)
        self.open_key = lit('"')
        self.next_key = seq(tree.sep, lit('"'))
        self.close_key = seq(lit('"'), tree.key_sep)
        self.gaps: dict[tuple[int, int], int] = {}
        self.key_nodes: dict[tuple[int, int, int], int] = {}
        # a key that is none of the names (when extra members are allowed): the shared part `free_key`
        self.free_entries: dict[int, str] = {}     # trie node index -> the name of its entry
        self.free_exit = self.free_rest = self.free_closed = None
        self.escapes: dict[str, int] = {}          # escapes the trie takes at a node -> the other ones
        self.rest_edges: dict[Chars, list] = {}    # leaving characters past ASCII -> their edges
        self.exit = None

    def build(self, entry: int) -> int:
        self.exit = self.nfa.node()
        first = self.gap(0, 0)
        if first is None:                  # too few members could ever come: no object at all
            self.b.may_dead_end = True
        else:
            self.nfa.eps[entry] += (first,)
        return self.exit

    def after(self, c: int) -> int:
        return c + 1 if self.bounded else min(c + 1, self.cap)

    # A gap's position i is the index of the next property in schema order, or (any_order) the bitmask
    # of the properties already present.

    def candidates(self, i: int) -> int:
        """The bitmask of the properties that may be the member at position i."""
        if self.tree.any_order:
            return self.possible & ~i
        return self.possible & ((1 << (self.stop[i] + 1)) - (1 << i)) if i < self.n else 0

    def after_member(self, i: int, j: int) -> int:
        return i | (1 << j) if self.tree.any_order else j + 1

    def required_left(self, i: int) -> int:
        if self.tree.any_order:
            return (self.required & ~i).bit_count()
        return (self.required >> i).bit_count()

    def gap(self, i: int, c: int) -> int | None:
        if c > self.cap or (self.bounded and c + self.required_left(i) > self.tree.max_count):
            return None
        key = (i, c)
        if key not in self.gaps and self.tree.extra_value is None and c < self.tree.min_count and \
                c + self.candidates(i).bit_count() < self.tree.min_count:
            return None                            # too few members could still come
        if key not in self.gaps:
            node = self.nfa.node()
            self.gaps[key] = node
            self.nfa.defer(node, self.expand_gap, node, i, c)
        return self.gaps[key]

    def expand_gap(self, node: int, i: int, c: int) -> None:
        if self.required_left(i) == 0 and c >= self.tree.min_count:
            self.nfa.eps[node] += (self.exit,)
        if not self.bounded or c < self.tree.max_count:
            if self.tree.extra_value is not None or self.root.names & self.candidates(i):
                start = self.b.build_shared(self.next_key if c else self.open_key, self.b.fresh(node))
                first = self.key_node(i, c, self.root)
                self.nfa.eps[start] += (first,)

    def key_node(self, i: int, c: int, trie: KeyTrieNode) -> int:
        key = (i, c, trie.index)
        node = self.key_nodes.get(key)
        if node is None:
            node = self.key_nodes[key] = self.nfa.node()
            self.nfa.defer(node, self.expand_key, node, i, c, trie)
        return node

    def expand_key(self, node: int, i: int, c: int, trie: KeyTrieNode) -> None:
        b, tree, nfa = self.b, self.tree, self.nfa
        if trie.single is None:
            trie.finish()
        edges = []
        candidates = self.candidates(i)
        closed = tree.extra_value is None          # only declared names: a dead end where none may come
        for byte, child in trie.single:
            if not closed or child.names & candidates:
                edges.append((byte, byte, self.key_node(i, c, child)))
        nfa.edges[node] += tuple(edges)
        for data, child in trie.multi:
            if not closed or child.names & candidates:
                following = self.key_node(i, c, child)
                nfa.eps[b.branch(Lit(data), node)] += (following,)
        end = trie.end
        if end is not None and candidates >> end & 1:     # a declared name: its value, if it may come here
            target = self.gap(self.after_member(i, end), self.after(c))
            if target is not None:
                value_end = b.build_shared(tree.values[end], b.build_shared(self.close_key, b.fresh(node)))
                nfa.eps[value_end] += (target,)
        if closed:
            return
        target = self.gap(i, self.after(c))
        if target is not None:                     # leaving the trie: a key that is none of the names
            self.nfa.calls[b.fresh(node)] = (self.free_key(trie), target)
            # any plain character goes on along the trie or leaves it into a free key, and a free key
            # always finishes: no plain text read from here is a dead end
            b.plain_open_nodes.add(node)

    def free_key(self, trie: KeyTrieNode) -> str:
        """The shared part (its name) for a key that leaves the trie at `trie`: a character or escape no
        name goes on with there (or, where no name ends, the closing quote), the rest of any string, the
        key separator and the extra value. One part with an entry per trie node, whatever the gap: the
        gap is the return node of the call, so the edges are built once per trie node, and the states
        inside a free key are the same whichever trie node it left."""
        name = self.free_entries.get(trie.index)
        if name is not None:
            return name
        if self.free_exit is None:                 # the part every entry leads into, built once
            nfa, b = self.nfa, self.b
            self.free_exit, self.free_rest, self.free_closed = nfa.node(), nfa.node(), nfa.node()
            nfa.eps[b.build_shared(STRING_CHAR, b.fresh(self.free_rest))] += (self.free_rest,)
            nfa.edges[self.free_rest] += ((0x22, 0x22, self.free_closed),)
            value_end = b.build_shared(self.tree.extra_value, b.build_shared(self.tree.key_sep, self.free_closed))
            nfa.eps[value_end] += (self.free_exit,)
        entry = self.nfa.node()
        edges = [(lo, hi, self.free_rest) for lo, hi in trie.other_ascii]
        rest = self.rest_edges.get(trie.other_rest)
        if rest is None:
            rest = self.rest_edges[trie.other_rest] = self.b.char_edges(trie.other_rest, self.free_rest)
        edges.extend(rest)
        edges.append((0x5C, 0x5C, self.escape_node(trie.escapes)))
        if trie.end is None:                       # a proper prefix of names, closed here: another key
            edges.append((0x22, 0x22, self.free_closed))
        self.nfa.edges[entry] += tuple(edges)
        name = self.free_entries[trie.index] = f"free key {entry}"       # (its node: unique in the automaton)
        self.b.shared_part(name, entry, self.free_exit)
        if not trie.single and all(data[:1] == b"\\" for data, _ in trie.multi):
            self.b.plain_open_nodes.add(entry)    # no name goes on with a plain character: all of them leave
        return name

    def escape_node(self, excluded: str) -> int:
        """After a backslash that leaves the trie: an escape (not one of the trie's) into the rest of a
        free key."""
        node = self.escapes.get(excluded)
        if node is None:
            node = self.escapes[excluded] = self.nfa.node()
            short = "".join(c for c in '"\\/bfnrt' if c not in excluded)
            if short:
                self.b.chars_to(chars_of(short), node, self.free_rest)
            self.nfa.eps[self.b.build_shared(UNICODE_ESCAPE, node)] += (self.free_rest,)
        return node
