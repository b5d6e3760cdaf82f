"""The NFA of a JSON object's members by key (`expr.Properties`), built lazily as the automaton reaches it.

Node (gap i, count c) is "before a member at position i, c members so far": i is the index of the next
declared property in schema order, or (any order) the frozenset of the declared properties present. Node
(i, c, trie node) is "inside a key": keys are read through one trie of the declared names, so a DFA state
holds a couple of items rather than one per candidate property; a key that leaves the trie is an undeclared
name (when those are allowed), which takes the extra value. Every node gets its edges when first reached.
"""
from __future__ import annotations

from .expr import NOTHING, Chars, Lit, Properties, chars_of, intersect, lit, seq, subtract
from .json_text import HEX, PLAIN, STRING_CHAR

ASCII = Chars(((0, 0x7F),))


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
        # the last property a member at gap i may be: up to and including the first required one
        self.stop = [next((j for j in range(i, n) if tree.required[j]), n - 1) for i in range(n + 1)]
        self.trie: dict = {}
        self.subtree_names: dict[int, list[int]] = {}       # id(trie node) -> names below it
        for j, key in enumerate(tree.keys):
            node = self.trie
            for unit in key:
                self.subtree_names.setdefault(id(node), []).append(j)
                node = node.setdefault(unit, {})
            self.subtree_names.setdefault(id(node), []).append(j)
            node[None] = j
        self.possible = [tree.values[j] != NOTHING for j in range(n)]
        # the separators placed at every gap and after every key, each built once and shared (a
        # flexible whitespace run alone is 16 nodes, rebuilt per key per set of keys present otherwise)
        self.open_key = lit('"')
        self.next_key = seq(tree.sep, lit('"'))
        self.close_key = seq(lit('"'), tree.key_sep)
        self.gaps: dict[tuple[int, int], int] = {}
        self.key_nodes: dict[tuple[int, int, int], int] = {}
        self.free_keys: dict[tuple[int, int], tuple[int, int]] = {}
        self.escapes: dict[tuple[int, str], int] = {}
        self.deviations: dict[str, tuple[Chars, Chars]] = {}
        self.exit = None

    def build(self, entry: int) -> int:
        self.exit = self.nfa.node()
        first = self.gap(frozenset() if self.tree.any_order else 0, 0)
        if first is None:                  # too few members could ever come: no object at all
            self.b.may_dead_end = True
        else:
            self.nfa.eps[entry].append(first)
        return self.exit

    def after(self, c: int) -> int:
        return c + 1 if self.bounded else min(c + 1, self.cap)

    # A gap's position i is the index of the next property in schema order, or (any_order) the frozenset
    # of the properties already present.

    def may_come(self, i, j: int) -> bool:
        """Whether property j may be the member at position i."""
        if not self.possible[j]:
            return False
        return j not in i if self.tree.any_order else i <= j <= self.stop[i]

    def after_member(self, i, j: int):
        return i | {j} if self.tree.any_order else j + 1

    def required_left(self, i) -> int:
        if self.tree.any_order:
            return sum(1 for j, required in enumerate(self.tree.required) if required and j not in i)
        return sum(self.tree.required[i:])

    def gap(self, i, c: int) -> int | None:
        if c > self.cap or (self.bounded and c + self.required_left(i) > self.tree.max_count):
            return None
        key = (i, c)
        if key not in self.gaps and self.tree.extra_value is None and c < self.tree.min_count and \
                c + sum(self.may_come(i, j) for j in range(self.n)) < self.tree.min_count:
            return None                            # too few members could still come
        if key not in self.gaps:
            node = self.nfa.node()
            self.gaps[key] = node
            self.nfa.lazy[node] = lambda: self.expand_gap(node, i, c)
        return self.gaps[key]

    def expand_gap(self, node: int, i: int, c: int) -> None:
        if self.required_left(i) == 0 and c >= self.tree.min_count:
            self.nfa.eps[node].append(self.exit)
        if not self.bounded or c < self.tree.max_count:
            if self.tree.extra_value is not None or self.leads_to_candidate(i, self.trie):
                start = self.b.build_shared(self.next_key if c else self.open_key, self.b.fresh(node))
                self.nfa.eps[start].append(self.key_node(i, c, self.trie))

    def key_node(self, i: int, c: int, trie: dict) -> int:
        key = (i, c, id(trie))
        if key not in self.key_nodes:
            node = self.nfa.node()
            self.key_nodes[key] = node
            self.nfa.lazy[node] = lambda: self.expand_key(node, i, c, trie)
        return self.key_nodes[key]

    def expand_key(self, node: int, i: int, c: int, trie: dict) -> None:
        b, tree, nfa = self.b, self.tree, self.nfa
        for unit, child in trie.items():
            if unit is None:
                continue
            if tree.extra_value is None and not self.leads_to_candidate(i, child):
                continue                           # a dead end: only names that cannot come here
            data = unit.encode("utf-8")
            if len(data) == 1:
                nfa.edges[node].append((data[0], data[0], self.key_node(i, c, child)))
            else:
                nfa.eps[b.branch(Lit(data), node)].append(self.key_node(i, c, child))
        end = trie.get(None)
        if end is not None:                        # a declared name: its value, if it may come here
            if self.may_come(i, end):
                target = self.gap(self.after_member(i, end), self.after(c))
                if target is not None:
                    value_end = b.build_shared(tree.values[end], b.build_shared(self.close_key, b.fresh(node)))
                    nfa.eps[value_end].append(target)
        if tree.extra_value is None:
            return
        target = self.gap(i, self.after(c))
        if target is None:
            return
        free = self.free_key(i, c, target)
        if end is None:                            # a proper prefix of names, closed here: another key
            nfa.edges[node].append((0x22, 0x22, free[1]))
        # leaving the trie: any other character or escape, then any string
        plain = "".join(u for u in trie if u is not None and len(u) == 1)
        escapes = "".join(u[1] for u in trie if u is not None and len(u) == 2)
        for chars in self.other_chars(plain):
            b.chars_to(chars, node, free[0])
        nfa.edges[node].append((0x5C, 0x5C, self.escape_node(free[0], escapes)))

    def other_chars(self, plain: str) -> tuple[Chars, Chars]:
        """Characters a key may continue with, raw in a JSON string, other than `plain`: the ASCII ones,
        and the rest (apart, so that the second, the same for nearly every trie node, has its edges
        cached by the NFA builder)."""
        chars = self.deviations.get(plain)
        if chars is None:
            other = subtract(PLAIN, chars_of(plain))
            chars = self.deviations[plain] = (intersect(other, ASCII), subtract(other, ASCII))
        return chars

    def leads_to_candidate(self, i: int, trie: dict) -> bool:
        """Whether some name below `trie` may be the member at gap i."""
        return any(self.may_come(i, j) for j in self.subtree_names.get(id(trie), ()))

    def free_key(self, i: int, c: int, target: int) -> tuple[int, int]:
        """(rest of a key that is none of the names: any characters, the quote, the extra value;
        the same right after the closing quote)."""
        key = (i, c)
        if key not in self.free_keys:
            rest = self.nfa.node()
            closed = self.nfa.node()
            loop = self.b.branch(STRING_CHAR, rest)
            self.nfa.eps[loop].append(rest)
            self.nfa.edges[rest].append((0x22, 0x22, closed))
            end = self.b.build_shared(self.tree.extra_value, self.b.build_shared(self.tree.key_sep, closed))
            self.nfa.eps[end].append(target)
            self.free_keys[key] = (rest, closed)
        return self.free_keys[key]

    def escape_node(self, free: int, excluded: str) -> int:
        """After a backslash that leaves the trie: an escape (not one of the trie's) into `free`."""
        key = (free, excluded)
        if key not in self.escapes:
            node = self.nfa.node()
            short = "".join(c for c in '"\\/bfnrt' if c not in excluded)
            if short:
                self.b.chars_to(chars_of(short), node, free)
            hex_end = self.b.build(seq(HEX, HEX, HEX, HEX), self.b.build(lit("u"), node))
            self.nfa.eps[hex_end].append(free)
            self.escapes[key] = node
        return self.escapes[key]
