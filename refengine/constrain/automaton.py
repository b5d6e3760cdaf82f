"""Expression tree → byte-level NFA with rule calls → lazily built deterministic automaton.

The NFA is Thompson's construction over UTF-8 bytes (a character class becomes the byte-range sequences
of its UTF-8 encodings, sharing suffixes). A `Call` edge enters a rule and pushes the node to return to;
reaching the rule's exit pops it. The return stack is bounded (`max_depth`), so the language stays regular
and the determinised automaton stays finite — that bound is how recursive schemas and grammars (and
arbitrarily nested `json_object`s, up to the bound) are supported without unrolling them up front.

A DFA state is a set of NFA items (node, return stack); it is built only when first reached, one 256-entry
row of the transition table at a time. State 0 is the dead state (no item left).
"""
from __future__ import annotations

import numpy as np

from .expr import Alt, Call, Chars, ConstraintError, Grammar, Lit, Members, Repeat, Seq, seq

DEAD = 0


def utf8_sequences(lo: int, hi: int) -> list[tuple[tuple[int, int], ...]]:
    """The code points lo..hi as sequences of byte ranges (each sequence: one range per byte position)."""
    out = []
    todo = [(lo, hi)]
    while todo:
        lo, hi = todo.pop()
        if lo > hi:
            continue
        if lo <= 0xDFFF and hi >= 0xD800:          # surrogates have no UTF-8 encoding
            todo += [(lo, 0xD7FF), (0xE000, hi)]
            continue
        for boundary in (0x7F, 0x7FF, 0xFFFF):    # one encoded length per piece
            if lo <= boundary < hi:
                todo += [(lo, boundary), (boundary + 1, hi)]
                break
        else:
            if hi <= 0x7F:
                out.append(((lo, hi),))
                continue
            for i in range(1, 4):                  # split until every byte position is a full range
                mask = (1 << (6 * i)) - 1
                if lo & ~mask != hi & ~mask:
                    if lo & mask:
                        todo += [(lo, lo | mask), ((lo | mask) + 1, hi)]
                        break
                    if hi & mask != mask:
                        todo += [(lo, (hi & ~mask) - 1), (hi & ~mask, hi)]
                        break
            else:
                a, b = chr(lo).encode("utf-8"), chr(hi).encode("utf-8")
                out.append(tuple(zip(a, b)))
    return sorted(out)


class NFA:
    """Parallel lists indexed by node id: byte edges, epsilon edges; calls and rule exits on the side."""

    def __init__(self, max_nodes: int):
        self.edges: list[list[tuple[int, int, int]]] = []   # (lo byte, hi byte, target)
        self.eps: list[list[int]] = []
        self.calls: dict[int, tuple[str, int]] = {}          # node -> (rule, return node)
        self.max_nodes = max_nodes

    def node(self) -> int:
        if len(self.edges) >= self.max_nodes:
            raise ConstraintError(f"constraint too large (over {self.max_nodes} automaton nodes)", keyword="size")
        self.edges.append([])
        self.eps.append([])
        return len(self.edges) - 1


class _Builder:
    def __init__(self, grammar: Grammar, max_nodes: int):
        self.grammar = grammar
        self.nfa = NFA(max_nodes)
        self.rule_entry: dict[str, int] = {}
        self.rule_exit: dict[int, str] = {}
        self.utf8_cache: dict[tuple, list] = {}

    def rule(self, name: str) -> int:
        if name not in self.rule_entry:
            if name not in self.grammar.rules:
                raise ConstraintError(f"undefined rule {name!r}", keyword="rule")
            entry = self.nfa.node()
            self.rule_entry[name] = entry
            exit_ = self.build(self.grammar.rules[name], entry)
            self.rule_exit[exit_] = name
        return self.rule_entry[name]

    def build(self, tree, entry: int) -> int:
        """Add `tree` starting at node `entry`; returns its exit node."""
        nfa = self.nfa
        if isinstance(tree, Lit):
            node = entry
            for byte in tree.data:
                nxt = nfa.node()
                nfa.edges[node].append((byte, byte, nxt))
                node = nxt
            return node
        if isinstance(tree, Chars):
            return self.chars(tree, entry)
        if isinstance(tree, Seq):
            node = entry
            for item in tree.items:
                node = self.build(item, node)
            return node
        if isinstance(tree, Alt):
            exit_ = nfa.node()
            for item in tree.items:
                start = nfa.node()
                nfa.eps[entry].append(start)
                nfa.eps[self.build(item, start)].append(exit_)
            return exit_
        if isinstance(tree, Repeat):
            node = entry
            for _ in range(tree.min):
                node = self.build(tree.item, node)
            if tree.max is None:           # loop: node -> body -> node, exit by epsilon
                start = nfa.node()
                nfa.eps[node].append(start)
                nfa.eps[self.build(tree.item, start)].append(node)
                exit_ = nfa.node()
                nfa.eps[node].append(exit_)
                return exit_
            exit_ = nfa.node()
            for _ in range(tree.max - tree.min):
                nfa.eps[node].append(exit_)
                node = self.build(tree.item, node)
            nfa.eps[node].append(exit_)
            return exit_
        if isinstance(tree, Call):
            exit_ = nfa.node()
            self.rule(tree.name)
            nfa.calls[entry] = (tree.name, exit_)
            return exit_
        if isinstance(tree, Members):
            return self.members(tree, entry)
        raise TypeError(f"not an expression: {tree!r}")

    def branch(self, tree, source: int) -> int:
        """Add `tree` on a fresh node reached from `source` by epsilon (so `source` can have several)."""
        start = self.nfa.node()
        self.nfa.eps[source].append(start)
        return self.build(tree, start)

    def members(self, tree: Members, entry: int) -> int:
        """Nodes (gap i, members so far c): member i moves to gap i + 1, an extra member stays in gap i.
        Counts are capped at `cap` when there is no maximum (only "at least min / at least one" matters)."""
        nfa = self.nfa
        n = len(tree.items)
        bounded = tree.max_count is not None
        cap = tree.max_count if bounded else max(tree.min_count, 1)
        remaining_required = [sum(req for _, req in tree.items[i:]) for i in range(n + 1)]
        nodes: dict[tuple[int, int], int] = {(0, 0): entry}
        exit_ = nfa.node()

        def node(i: int, c: int) -> int | None:
            if c > cap or (bounded and c + remaining_required[i] > tree.max_count):
                return None
            if tree.extra is None and c + (n - i) < tree.min_count:
                return None
            if (i, c) not in nodes:
                nodes[(i, c)] = nfa.node()
            return nodes[(i, c)]

        def after(c: int) -> int:
            return c + 1 if bounded else min(c + 1, cap)

        for i in range(n + 1):
            for c in range(cap + 1):
                here = nodes.get((i, c))
                if here is None:
                    continue
                if tree.extra is not None:
                    target = node(i, after(c))     # == here once the count is capped: a loop
                    if target is not None:
                        end = self.branch(tree.extra if c == 0 else seq(tree.sep, tree.extra), here)
                        nfa.eps[end].append(target)
                if i == n:
                    if c >= tree.min_count:
                        nfa.eps[here].append(exit_)
                    continue
                item, required = tree.items[i]
                target = node(i + 1, after(c))
                if target is not None:
                    end = self.branch(item if c == 0 else seq(tree.sep, item), here)
                    nfa.eps[end].append(target)
                if not required:
                    skip = node(i + 1, c)
                    if skip is not None:
                        nfa.eps[here].append(skip)
        return exit_

    def chars(self, chars: Chars, entry: int) -> int:
        sequences = self.utf8_cache.get(chars.ranges)
        if sequences is None:
            sequences = [s for lo, hi in chars.ranges for s in utf8_sequences(lo, hi)]
            self.utf8_cache[chars.ranges] = sequences
        nfa = self.nfa
        exit_ = nfa.node()
        by_suffix: dict[tuple, int] = {(): exit_}

        def node_for(suffix: tuple) -> int:
            if suffix not in by_suffix:
                node = nfa.node()
                nfa.edges[node].append((*suffix[0], node_for(suffix[1:])))
                by_suffix[suffix] = node
            return by_suffix[suffix]

        for sequence in sequences:
            nfa.edges[entry].append((*sequence[0], node_for(sequence[1:])))
        return exit_


class Automaton:
    """The lazily determinised automaton of a grammar. Thread-unsafe: the caller serialises access."""

    def __init__(self, grammar: Grammar, *, max_depth: int = 24, max_nodes: int = 400_000,
                 max_states: int = 200_000):
        builder = _Builder(grammar, max_nodes)
        nfa = builder.nfa
        start = nfa.node()
        self.accept_node = builder.build(grammar.start, start)
        self.nfa = nfa
        self.rule_entry = builder.rule_entry
        self.rule_exit = builder.rule_exit
        self.max_depth = max_depth
        self.max_states = max_states
        # return stacks, interned: id -> (parent id, return node, depth); 0 is the empty stack
        self.stack_parent = [0]
        self.stack_return = [-1]
        self.stack_depth = [0]
        self.stack_ids: dict[tuple[int, int], int] = {}
        self.closures: dict[tuple[int, int], tuple[frozenset, bool]] = {}
        # DFA states: id -> items; the transition table grows as rows are computed
        self.state_items: list[tuple] = []
        self.state_accepting: list[bool] = []
        self.state_ids: dict[tuple[frozenset, bool], int] = {}
        self.table = np.zeros((64, 256), dtype=np.int32)
        self.row_ready = np.zeros(64, dtype=bool)
        self._intern(frozenset(), False)                    # DEAD
        self.initial = self._intern(*self._closure(start, 0))

    # --- NFA items -----------------------------------------------------------------------------------------

    def _push(self, stack: int, node: int) -> int:
        key = (stack, node)
        sid = self.stack_ids.get(key)
        if sid is None:
            sid = len(self.stack_parent)
            self.stack_ids[key] = sid
            self.stack_parent.append(stack)
            self.stack_return.append(node)
            self.stack_depth.append(self.stack_depth[stack] + 1)
        return sid

    def _closure(self, node: int, stack: int) -> tuple[frozenset, bool]:
        """Items with byte edges reachable from (node, stack) by epsilons, calls and returns; and whether
        the accepting end is reachable."""
        key = (node, stack)
        cached = self.closures.get(key)
        if cached is not None:
            return cached
        nfa = self.nfa
        seen = set()
        todo = [key]
        items = []
        accepting = False
        while todo:
            item = todo.pop()
            if item in seen:
                continue
            seen.add(item)
            n, s = item
            if nfa.edges[n]:
                items.append(item)
            todo.extend((e, s) for e in nfa.eps[n])
            call = nfa.calls.get(n)
            if call is not None and self.stack_depth[s] < self.max_depth:
                todo.append((self.rule_entry[call[0]], self._push(s, call[1])))
            if n in self.rule_exit and s != 0:
                todo.append((self.stack_return[s], self.stack_parent[s]))
            if n == self.accept_node and s == 0:
                accepting = True
        result = (frozenset(items), accepting)
        self.closures[key] = result
        return result

    def _intern(self, items: frozenset, accepting: bool) -> int:
        key = (items, accepting)
        sid = self.state_ids.get(key)
        if sid is None:
            sid = len(self.state_items)
            if sid >= self.max_states:
                raise ConstraintError(f"constraint too large (over {self.max_states} automaton states)",
                                      keyword="size")
            self.state_ids[key] = sid
            self.state_items.append(tuple(items))
            self.state_accepting.append(accepting)
            if sid >= len(self.row_ready):
                grow = len(self.row_ready)
                self.table = np.concatenate([self.table, np.zeros((grow, 256), dtype=np.int32)])
                self.row_ready = np.concatenate([self.row_ready, np.zeros(grow, dtype=bool)])
        return sid

    # --- DFA -----------------------------------------------------------------------------------------------

    def is_accepting(self, state: int) -> bool:
        return self.state_accepting[state]

    def ensure_rows(self, states: np.ndarray) -> None:
        """Compute the transition rows of `states` that are not built yet."""
        ready = self.row_ready[states]
        if ready.all():
            return
        for state in np.unique(states[~ready]).tolist():
            self._compute_row(state)

    def step(self, state: int, byte: int) -> int:
        if not self.row_ready[state]:
            self._compute_row(state)
        return int(self.table[state, byte])

    def walk(self, state: int, data: bytes) -> int:
        for byte in data:
            state = self.step(state, byte)
            if state == DEAD:
                break
        return state

    def _compute_row(self, state: int) -> None:
        """Row `state` of the table: for each byte, the state of the closed set of items it leads to."""
        edges = self.nfa.edges
        moves = [(lo, hi, target, stack) for node, stack in self.state_items[state]
                 for lo, hi, target in edges[node]]
        bounds = sorted({lo for lo, _, _, _ in moves} | {hi + 1 for _, hi, _, _ in moves})
        position = {b: i for i, b in enumerate(bounds)}
        buckets: list[set] = [set() for _ in bounds]         # bucket i: bytes bounds[i] .. bounds[i+1]-1
        for lo, hi, target, stack in moves:
            for i in range(position[lo], position[hi + 1]):
                buckets[i].add((target, stack))
        row = np.zeros(256, dtype=np.int32)
        seen: dict[frozenset, int] = {}
        for i, targets in enumerate(buckets):
            if not targets:
                continue
            key = frozenset(targets)
            nxt = seen.get(key)
            if nxt is None:
                items: set = set()
                accepting = False
                for t, s in key:
                    closure_items, closure_accepting = self._closure(t, s)
                    items |= closure_items
                    accepting |= closure_accepting
                nxt = self._intern(frozenset(items), accepting) if (items or accepting) else DEAD
                seen[key] = nxt
            row[bounds[i]:bounds[i + 1]] = nxt
        self.table[state] = row
        self.row_ready[state] = True

    @property
    def n_states(self) -> int:
        return len(self.state_items)
