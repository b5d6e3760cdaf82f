"""Expression tree → byte-level NFA with rule calls → lazily built deterministic automaton.

The NFA is Thompson's construction over UTF-8 bytes (a character class becomes the byte-range sequences
of its UTF-8 encodings, sharing suffixes). A `Call` edge enters a rule and pushes the node to return to;
reaching the rule's exit pops it. The return stack is bounded (`max_depth`), so the language stays regular
and the determinised automaton stays finite — that bound is how recursive schemas and grammars (and
arbitrarily nested `json_object`s, up to the bound) are supported without unrolling them up front.

Parts of the NFA are themselves built only when first reached (`NFA.lazy`): the copies of large bounded
repeats (`{0,131072}` costs nothing up front), the per-gap key tries of JSON objects (`Properties`,
properties.py) and the product states of automaton intersections (`Intersect`).

A DFA state is a set of NFA items (node, return stack); it is built only when first reached, and its
transitions are computed as they are asked for: a few cells, or its whole 256-entry row at once. State 0 is the dead state (no item left). Where the grammar can
strand a prefix (intersections, cut recursion, empty rules), `live()` tells the states that can still reach
acceptance, so no token leads into a dead end.
"""
from __future__ import annotations

import numpy as np

from .expr import (NOTHING, Alt, Call, Chars, ConstraintError, Divisible, Grammar, Intersect, Lit, Members,
                   Properties, Repeat, Seq, call_free, seq)
from .properties import PropertiesBuilder

DEAD = 0
UNKNOWN = -1          # a transition not computed yet
FULL_ROW_BYTES = 16   # more bytes of one state wanted at once: its whole row, computed in one pass
# bytes tried first when looking for a way to acceptance: closers, then plain text
_LIVENESS_ORDER = np.array(list(b'"}]') + [b for b in range(256) if b not in b'"}]'])
# a row's uniform next state: where "a" leads, when at least UNIFORM_BYTES bytes lead there (text in a string)
UNIFORM_PROBE = ord("a")
UNIFORM_BYTES = 8
LAZY_REPEAT = 32      # bounded repeats with more copies are built copy by copy, as the input reaches them


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
        self.lazy: dict[int, object] = {}                    # node -> builds its edges when first reached
        self.max_nodes = max_nodes

    def node(self) -> int:
        if len(self.edges) >= self.max_nodes:
            raise ConstraintError(f"constraint too large (over {self.max_nodes} automaton nodes)", keyword="size")
        self.edges.append([])
        self.eps.append([])
        return len(self.edges) - 1


class _Builder:
    def __init__(self, grammar: Grammar, max_nodes: int, share: bool = True):
        self.grammar = grammar
        self.nfa = NFA(max_nodes)
        self.rule_entry: dict[str, int] = {}
        self.rule_exit: dict[int, str] = {}
        self.share = share                 # build repeated parts once, entered through the return stack
        self.shared: dict[object, str] = {}     # expression -> the name of its shared rule
        self.shared_rules: dict[str, object] = {}     # and back
        self.utf8_cache: dict[tuple, list] = {}
        self.suffix_nodes: dict[tuple, int] = {}
        self.may_dead_end = False          # set by constructs whose automaton can strand a prefix

    def rule(self, name: str) -> int:
        if name not in self.rule_entry:
            tree = self.shared_rules[name] if name in self.shared_rules else self.grammar.rules.get(name)
            if tree is None:
                raise ConstraintError(f"undefined rule {name!r}", keyword="rule")
            entry = self.nfa.node()
            self.rule_entry[name] = entry
            if tree == NOTHING:
                self.may_dead_end = True
            exit_ = self.build(tree, entry)
            self.rule_exit[exit_] = name
        return self.rule_entry[name]

    def build_shared(self, tree, entry: int) -> int:
        """`tree` from `entry`, as `build`; but a part that is placed many times (a bounded repeat's
        copies, an object's value after each possible set of keys before it) is built once, as a rule
        the automaton calls, instead of once per place. Its calls do not count toward the depth bound
        (they always return: a shared part never contains itself)."""
        if not self.share or isinstance(tree, (Lit, Chars)):
            return self.build(tree, entry)
        name = self.shared.get(tree)
        if name is None:
            name = self.shared[tree] = f"shared {len(self.shared)}"   # no grammar rule has a space
            self.shared_rules[name] = tree
        exit_ = self.nfa.node()
        self.rule(name)
        self.nfa.calls[self.fresh(entry)] = (name, exit_)
        return exit_

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
            if tree.max is not None and tree.max > LAZY_REPEAT:
                exit_ = nfa.node()                 # copies are built when first reached
                self.lazy_repeat(self.fresh(entry), tree.item, tree.min, tree.max, exit_)
                return exit_
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
        if isinstance(tree, Properties):
            return PropertiesBuilder(self, tree).build(entry)
        if isinstance(tree, Intersect):
            return self.intersect(tree, entry)
        if isinstance(tree, Divisible):
            return self.divisible(tree.divisor, entry)
        raise TypeError(f"not an expression: {tree!r}")

    def divisible(self, divisor: int, entry: int) -> int:
        """A node per remainder: digit d takes remainder r to (10 r + d) mod divisor."""
        nfa = self.nfa
        start, exit_ = nfa.node(), nfa.node()
        nfa.eps[entry].append(start)
        nfa.edges[entry].append((0x2D, 0x2D, start))                    # "-"
        nfa.edges[start].append((0x30, 0x30, exit_))                    # "0"
        remainders = [nfa.node() for _ in range(divisor)]
        nfa.eps[remainders[0]].append(exit_)
        for d in range(1, 10):
            nfa.edges[start].append((0x30 + d, 0x30 + d, remainders[d % divisor]))
        for r, node in enumerate(remainders):
            for d in range(10):
                nfa.edges[node].append((0x30 + d, 0x30 + d, remainders[(10 * r + d) % divisor]))
        return exit_

    def intersect(self, tree: Intersect, entry: int) -> int:
        """One NFA node per reached tuple of the operands' DFA states, each built when first reached."""
        self.may_dead_end = True
        if not all(call_free(x) for x in tree.positives + tree.negatives):
            raise ConstraintError("intersection or negation of objects and arrays is not supported",
                                  keyword="not")
        operands = [Automaton(Grammar(x), max_depth=0, max_nodes=self.nfa.max_nodes)
                    for x in tree.positives + tree.negatives]
        n_pos = len(tree.positives)
        nfa = self.nfa
        exit_ = nfa.node()
        nodes: dict[tuple, int] = {}

        def node_for(states: tuple) -> int:
            node = nodes.get(states)
            if node is None:
                node = nfa.node()
                nodes[states] = node
                nfa.lazy[node] = lambda: expand(node, states)
            return node

        def expand(node: int, states: tuple) -> None:
            accepting = [a.is_accepting(s) for a, s in zip(operands, states)]
            if all(accepting[:n_pos]) and not any(accepting[n_pos:]):
                nfa.eps[node].append(exit_)
            rows = np.stack([a.row(s) for a, s in zip(operands, states)])          # [operands, 256]
            alive = np.all(rows[:n_pos] != DEAD, axis=0)                           # [256]
            rows = np.where(alive, rows, -1)                                       # dead bytes alike
            # runs of bytes leading to the same tuple of states: one edge each
            starts = np.flatnonzero(np.concatenate([[True], np.any(rows[:, 1:] != rows[:, :-1], axis=0)]))
            ends = np.append(starts[1:], 256) - 1
            for lo, hi in zip(starts.tolist(), ends.tolist()):
                if alive[lo]:
                    nfa.edges[node].append((lo, hi, node_for(tuple(rows[:, lo].tolist()))))

        nfa.eps[entry].append(node_for(tuple(a.initial for a in operands)))
        return exit_

    def fresh(self, source: int) -> int:
        """A new node reached from `source` by epsilon."""
        node = self.nfa.node()
        self.nfa.eps[source].append(node)
        return node

    def lazy_repeat(self, node: int, item, lo: int, hi: int, exit_: int) -> None:
        """Copies lo..hi of `item` start at `node`; each is built when the automaton first reaches it."""
        def expand():
            if lo == 0:
                self.nfa.eps[node].append(exit_)
            if hi > 0:
                self.lazy_repeat(self.build_shared(item, self.fresh(node)), item, max(lo - 1, 0), hi - 1, exit_)
        self.nfa.lazy[node] = expand

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
        # every node kept below can still reach the exit (taking the required items, and optional or extra
        # ones until min_count), unless the counts cannot be met at all
        self.may_dead_end |= (bounded and tree.min_count > tree.max_count) or \
            (tree.extra is None and len(tree.items) < tree.min_count)
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
        exit_ = self.nfa.node()
        self.chars_to(chars, entry, exit_)
        return exit_

    def chars_to(self, chars: Chars, entry: int, exit_: int) -> None:
        """Edges from `entry` to `exit_` over the UTF-8 encodings of `chars`; the continuation-byte nodes
        are shared by every class that leads to the same `exit_`."""
        sequences = self.utf8_cache.get(chars.ranges)
        if sequences is None:
            sequences = [s for lo, hi in chars.ranges for s in utf8_sequences(lo, hi)]
            self.utf8_cache[chars.ranges] = sequences
        nfa = self.nfa

        def node_for(suffix: tuple) -> int:
            if not suffix:
                return exit_
            key = (suffix, exit_)
            node = self.suffix_nodes.get(key)
            if node is None:
                node = nfa.node()
                nfa.edges[node].append((*suffix[0], node_for(suffix[1:])))
                self.suffix_nodes[key] = node
            return node

        for sequence in sequences:
            nfa.edges[entry].append((*sequence[0], node_for(sequence[1:])))


class Automaton:
    """The lazily determinised automaton of a grammar. Thread-unsafe: the caller serialises access."""

    def __init__(self, grammar: Grammar, *, max_depth: int = 24, max_nodes: int = 1_000_000,
                 max_states: int = 200_000):
        builder = _Builder(grammar, max_nodes, share=max_depth > 0)
        self.builder = builder
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
        self.table = np.full((64, 256), UNKNOWN, dtype=np.int32)
        self.row_ready = np.zeros(64, dtype=bool)            # the whole row computed
        self.liveness = np.zeros(64, dtype=np.int8)          # 1 live, -1 dead (cannot reach acceptance), 0 unknown
        # the state most of a state's bytes lead to (DEAD: none known), and those bytes as 256 bits (for
        # the compiled vocabulary walk: inside a string, a chain of such states, or one that loops)
        self.uniform_next = np.zeros(64, dtype=np.int32)
        self.uniform_bytes = np.zeros((64, 4), dtype=np.uint64)
        self._intern(frozenset(), False)                    # DEAD, which every byte keeps dead
        self.table[DEAD] = DEAD
        self.row_ready[DEAD] = True
        self.initial = self._intern(*self._closure(start, 0))

    # --- NFA items -----------------------------------------------------------------------------------------

    def _push(self, stack: int, node: int, counted: bool = True) -> int:
        """The stack `stack` with return node `node` on top; `counted`: toward the depth bound."""
        key = (stack, node)
        sid = self.stack_ids.get(key)
        if sid is None:
            sid = len(self.stack_parent)
            self.stack_ids[key] = sid
            self.stack_parent.append(stack)
            self.stack_return.append(node)
            self.stack_depth.append(self.stack_depth[stack] + counted)
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
            if n in nfa.lazy:
                nfa.lazy.pop(n)()
            if nfa.edges[n]:
                items.append(item)
            todo.extend((e, s) for e in nfa.eps[n])
            call = nfa.calls.get(n)
            if call is not None:
                shared = call[0] in self.builder.shared_rules
                if shared or self.stack_depth[s] < self.max_depth:
                    todo.append((self.rule_entry[call[0]], self._push(s, call[1], counted=not shared)))
                else:
                    self.builder.may_dead_end = True          # the depth bound cut this path
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
                self.table = np.concatenate([self.table, np.full((grow, 256), UNKNOWN, dtype=np.int32)])
                self.row_ready = np.concatenate([self.row_ready, np.zeros(grow, dtype=bool)])
                self.liveness = np.concatenate([self.liveness, np.zeros(grow, dtype=np.int8)])
                self.uniform_next = np.concatenate([self.uniform_next, np.zeros(grow, dtype=np.int32)])
                self.uniform_bytes = np.concatenate([self.uniform_bytes, np.zeros((grow, 4), dtype=np.uint64)])
        return sid

    # --- DFA -----------------------------------------------------------------------------------------------

    def is_accepting(self, state: int) -> bool:
        return self.state_accepting[state]

    def transitions(self, states: np.ndarray, data: np.ndarray) -> np.ndarray:
        """The state after each (state, byte) pair, computing the transitions not known yet: a state asked
        for a few bytes gets just those (a vocabulary walk reaches most states through a few tokens), one
        asked for many, or asked again, its whole row."""
        out = self.table[states, data]
        missing = out == UNKNOWN
        if not missing.any():
            return out
        pairs = np.unique(states[missing].astype(np.int64) * 256 + data[missing])
        wanted: dict[int, list[int]] = {}
        for pair in pairs.tolist():
            wanted.setdefault(pair >> 8, []).append(pair & 255)
        for state, byte_list in wanted.items():
            # a state asked again (some cells known) will likely be asked for more: its whole row
            if len(byte_list) > FULL_ROW_BYTES or (self.table[state] != UNKNOWN).any():
                self._compute_row(state)
            else:
                self._compute_cells(state, byte_list)
        return self.table[states, data]

    def live(self, states: np.ndarray) -> np.ndarray:
        """Which of `states` can still reach acceptance (bool array). Only grammars whose automaton can
        have dead ends (intersections, minimum counts, empty rules, calls cut by the depth bound) need
        the search; for the rest every non-dead state is live."""
        if not self.builder.may_dead_end:
            return states != DEAD
        status = self.liveness[states]
        if (status == 0).any():
            for state in np.unique(states[status == 0]).tolist():
                self._check_live(state)
            status = self.liveness[states]
        return status > 0

    def _check_live(self, state: int, budget: int = 256) -> None:
        """Depth-first search for an accepting state, closing brackets and quotes first; the states on
        the path found are live too. Exhausting the reachable states proves them all dead; running out
        of budget counts as live (so a constraint is never narrowed by a guess). A state one closer away
        from a state known live is settled without computing its whole row (which costs much more)."""
        closers = list(b'"}]')
        if (self.table[state, closers] == UNKNOWN).any():
            self._compute_cells(state, closers)
        if (self.liveness[self.table[state, closers]] > 0).any():
            self.liveness[state] = 1
            return
        parent = {state: None}
        stack = [state]
        found = None
        while stack and found is None:
            current = stack.pop()
            if self.state_accepting[current] or self.liveness[current] > 0 or len(parent) > budget:
                found = current
                break
            row = self.row(current)[_LIVENESS_ORDER]                          # [256]
            targets, first = np.unique(row, return_index=True)
            targets = targets[np.argsort(first)]                               # in priority order
            targets = targets[(targets != DEAD) & (self.liveness[targets] >= 0)]
            known = targets[self.liveness[targets] > 0]
            if len(known):
                parent.setdefault(int(known[0]), current)
                found = int(known[0])
                break
            for target in reversed(targets.tolist()):
                if target not in parent:
                    parent[target] = current
                    stack.append(target)
        if found is None:
            for dead in parent:
                self.liveness[dead] = -1
            return
        while found is not None:
            self.liveness[found] = 1
            found = parent[found]

    def row(self, state: int) -> np.ndarray:
        if not self.row_ready[state]:
            self._compute_row(state)
        return self.table[state]

    def step(self, state: int, byte: int) -> int:
        if self.table[state, byte] == UNKNOWN:
            self._compute_cells(state, [byte])
        return int(self.table[state, byte])

    def walk(self, state: int, data: bytes) -> int:
        for byte in data:
            state = self.step(state, byte)
            if state == DEAD:
                break
        return state

    def _compute_cells(self, state: int, byte_list: list[int]) -> None:
        """The transitions of `state` on these bytes (the closed set of items each byte leads to)."""
        edges = self.nfa.edges
        moves = [(lo, hi, target, stack) for node, stack in self.state_items[state]
                 for lo, hi, target in edges[node]]
        for byte in byte_list:
            key = frozenset((target, stack) for lo, hi, target, stack in moves if lo <= byte <= hi)
            target = self._target(key)
            self.table[state, byte] = target
            if target == state and self.uniform_next[state] in (DEAD, state):      # a loop, known so far
                self.uniform_next[state] = state
                self.uniform_bytes[state, byte >> 6] |= np.uint64(1) << np.uint64(byte & 63)

    def _target(self, key: frozenset) -> int:
        """The state of the closed set of items reached by the (node, stack) moves in `key`."""
        if not key:
            return DEAD
        items: set = set()
        accepting = False
        for t, s in key:
            closure_items, closure_accepting = self._closure(t, s)
            items |= closure_items
            accepting |= closure_accepting
        return self._intern(frozenset(items), accepting) if (items or accepting) else DEAD

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
            if key not in seen:
                seen[key] = self._target(key)
            row[bounds[i]:bounds[i + 1]] = seen[key]
        self.table[state] = row
        self.row_ready[state] = True
        uniform = row == row[UNIFORM_PROBE]               # [256] (cheaper than counting every target)
        if row[UNIFORM_PROBE] != DEAD and uniform.sum() >= UNIFORM_BYTES:
            self.uniform_next[state] = row[UNIFORM_PROBE]
            self.uniform_bytes[state] = np.packbits(uniform, bitorder="little").view(np.uint64)

    @property
    def n_states(self) -> int:
        return len(self.state_items)
