"""NFA (nfa.py) → lazily built deterministic automaton over bytes.

An NFA item is (node, return stack). The return stack is bounded (`max_depth` rule calls; shared parts
do not count), so the language stays regular and the determinised automaton stays finite — that bound
is how recursive schemas and grammars (and arbitrarily nested `json_object`s, up to the bound) are
supported without unrolling them up front.

A DFA state is a set of NFA items; it is built only when first reached, and its transitions are computed
as they are asked for: a few cells, or its whole 256-entry row at once. State 0 is the dead state (no
item left). Where the grammar can strand a prefix (intersections, cut recursion, empty rules), `live()`
tells the states that can still reach acceptance, so no token leads into a dead end.
"""
from __future__ import annotations

import numpy as np

from .expr import ConstraintError, Grammar
from .nfa import NFABuilder

DEAD = 0
UNKNOWN = -1          # a transition not computed yet
FULL_ROW_BYTES = 16   # more bytes of one state wanted at once: its whole row, computed in one pass
# bytes tried first when looking for a way to acceptance: closers, then plain text
_LIVENESS_ORDER = np.array(list(b'"}]') + [b for b in range(256) if b not in b'"}]'])
# a row's uniform next state: where "a" leads, when at least UNIFORM_BYTES bytes lead there (text in a string)
UNIFORM_PROBE = ord("a")
UNIFORM_BYTES = 8


class Automaton:
    """The lazily determinised automaton of a grammar. Thread-unsafe: the caller serialises access."""

    def __init__(self, grammar: Grammar, *, max_depth: int = 24, max_nodes: int = 1_000_000,
                 max_states: int = 200_000):
        builder = NFABuilder(grammar, max_nodes, share=max_depth > 0)
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
        # (node, stack) -> (items, accepting, plain_open): its closure, as `_closure` returns it
        # (items are sorted tuples of (node, stack) pairs, not frozensets: tuples of ints are left out of
        # the garbage collector's passes, which otherwise scan every item set of a large automaton)
        self.closures: dict[tuple[int, int], tuple[tuple, bool, bool]] = {}
        # DFA states: id -> items; the transition table grows as rows are computed
        self.state_items: list[tuple] = []
        self.state_accepting: list[bool] = []
        self.state_ids: dict[tuple[tuple, bool], int] = {}
        self.table = np.full((64, 256), UNKNOWN, dtype=np.int32)
        self.row_ready = np.zeros(64, dtype=bool)            # the whole row computed
        self.liveness = np.zeros(64, dtype=np.int8)          # 1 live, -1 dead (cannot reach acceptance), 0 unknown
        # the state most of a state's bytes lead to (DEAD: none known), and those bytes as 256 bits (for
        # the compiled vocabulary walk: inside a string, a chain of such states, or one that loops)
        self.uniform_next = np.zeros(64, dtype=np.int32)
        self.uniform_bytes = np.zeros((64, 4), dtype=np.uint64)
        # 1 where the state holds an item from which any plain text can be read and finished
        # (NFABuilder.plain_open_nodes): the vocabulary walk need not follow plain-text tokens there
        self.plain_open = np.zeros(64, dtype=np.int8)
        self._intern((), False, False)                      # DEAD, which every byte keeps dead
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

    def _closure(self, node: int, stack: int) -> tuple[tuple, bool, bool]:
        """Items with byte edges reachable from (node, stack) by epsilons, calls and returns; whether
        the accepting end is reachable; and whether an item is at a plain-open node."""
        key = (node, stack)
        cached = self.closures.get(key)
        if cached is not None:
            return cached
        nfa = self.nfa
        edges, eps, calls, lazy, rule_exit = nfa.edges, nfa.eps, nfa.calls, nfa.lazy, self.rule_exit
        plain_open_nodes = self.builder.plain_open_nodes
        seen = set()
        todo = [key]
        items = []
        accepting = plain_open = False
        while todo:
            item = todo.pop()
            if item in seen:
                continue
            seen.add(item)
            n, s = item
            if n in lazy:
                nfa.expand(n)
            if edges[n]:
                items.append(item)
                plain_open = plain_open or n in plain_open_nodes
            for e in eps[n]:
                todo.append((e, s))
            call = calls.get(n)
            if call is not None:
                shared = call[0] in self.builder.shared_rules
                if shared or self.stack_depth[s] < self.max_depth:
                    todo.append((self.rule_entry[call[0]], self._push(s, call[1], counted=not shared)))
                else:
                    self.builder.may_dead_end = True          # the depth bound cut this path
            if s != 0 and n in rule_exit:
                todo.append((self.stack_return[s], self.stack_parent[s]))
            if n == self.accept_node and s == 0:
                accepting = True
        result = (tuple(sorted(items)), accepting, plain_open)
        self.closures[key] = result
        return result

    def _intern(self, items: tuple, accepting: bool, plain_open: bool) -> int:
        """The id of the state of `items` (sorted (node, stack) pairs), new or known."""
        key = (items, accepting)
        sid = self.state_ids.get(key)
        if sid is None:
            sid = len(self.state_items)
            if sid >= self.max_states:
                raise ConstraintError(f"constraint too large (over {self.max_states} automaton states)",
                                      keyword="size")
            self.state_ids[key] = sid
            self.state_items.append(items)
            self.state_accepting.append(accepting)
            if sid >= len(self.row_ready):
                grow = len(self.row_ready)
                self.table = np.concatenate([self.table, np.full((grow, 256), UNKNOWN, dtype=np.int32)])
                self.row_ready = np.concatenate([self.row_ready, np.zeros(grow, dtype=bool)])
                self.liveness = np.concatenate([self.liveness, np.zeros(grow, dtype=np.int8)])
                self.uniform_next = np.concatenate([self.uniform_next, np.zeros(grow, dtype=np.int32)])
                self.uniform_bytes = np.concatenate([self.uniform_bytes, np.zeros((grow, 4), dtype=np.uint64)])
                self.plain_open = np.concatenate([self.plain_open, np.zeros(grow, dtype=np.int8)])
            self.plain_open[sid] = plain_open
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
            self.compute(state, byte_list, bool((self.table[state] != UNKNOWN).any()))
        return self.table[states, data]

    def compute(self, state: int, byte_list: list[int], asked_before: bool) -> None:
        """The transitions of `state` on `byte_list` (distinct bytes, not computed yet), or its whole row
        when many are wanted, or when some cells were known already (`asked_before`): a state asked
        again will likely be asked for more."""
        if len(byte_list) > FULL_ROW_BYTES or asked_before:
            self._compute_row(state)
        else:
            self._compute_cells(state, byte_list)

    @property
    def can_strand(self) -> bool:
        """Whether some prefix may lead where acceptance cannot be reached (intersections, minimum counts,
        empty rules, calls cut by the depth bound): otherwise every state but DEAD is live."""
        return self.builder.may_dead_end or bool(self.builder.intersect_nodes)

    def live(self, states: np.ndarray) -> np.ndarray:
        """Which of `states` can still reach acceptance (bool array). Only grammars whose automaton
        `can_strand` need the search. Where intersections are the only such construct, a state is
        settled by its items (`_items_live`), else searched."""
        if not self.can_strand:
            return states != DEAD
        status = self.liveness[states]
        if (status == 0).any():
            for state in np.unique(states[status == 0]).tolist():
                self.settle_liveness(state)
            status = self.liveness[states]
        return status > 0

    def settle_liveness(self, state: int) -> None:
        """Set liveness[state] (1 live, -1 dead)."""
        live = self._items_live(state)
        if live is None:
            self._check_live(state)
        else:
            self.liveness[state] = 1 if live else -1

    def _items_live(self, state: int) -> bool | None:
        """Whether `state` is live, told by its items when intersections alone (each shown non-empty when
        built) can strand a prefix: an item outside them can finish, and so can one at a product node
        whose tuple of operand states can reach acceptance. None when something else may strand one
        (`may_dead_end`): then only a search over the DFA tells. (An accepting state is live.)"""
        if self.builder.may_dead_end:
            return None
        intersect_nodes = self.builder.intersect_nodes
        items = self.state_items[state]
        return self.state_accepting[state] or any(node not in intersect_nodes for node, _ in items) or \
            any(self.builder.intersection_node_live(node) for node, _ in items)

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
            key = frozenset([(target, stack) for lo, hi, target, stack in moves if lo <= byte <= hi])
            target = self._target(key)
            self.table[state, byte] = target
            if target == state and self.uniform_next[state] in (DEAD, state):      # a loop, known so far
                self.uniform_next[state] = state
                self.uniform_bytes[state, byte >> 6] |= np.uint64(1) << np.uint64(byte & 63)

    def _target(self, key: frozenset) -> int:
        """The state of the closed set of items reached by the (node, stack) moves in `key`."""
        if not key:
            return DEAD
        if len(key) == 1:                                  # one move (most): its closure is the state
            (t, s), = key
            return self._closed(t, s)
        items: set = set()
        accepting = plain_open = False
        for t, s in key:
            closure_items, closure_accepting, closure_plain_open = self._closure(t, s)
            items.update(closure_items)
            accepting |= closure_accepting
            plain_open |= closure_plain_open
        return self._intern(tuple(sorted(items)), accepting, plain_open) if (items or accepting) else DEAD

    def _closed(self, node: int, stack: int) -> int:
        """The state of the closure of the one item (node, stack)."""
        items, accepting, plain_open = self._closure(node, stack)
        return self._intern(items, accepting, plain_open) if (items or accepting) else DEAD

    def _compute_row(self, state: int) -> None:
        """Row `state` of the table: for each byte, the state of the closed set of items it leads to."""
        edges = self.nfa.edges
        moves = [(lo, hi, target, stack) for node, stack in self.state_items[state]
                 for lo, hi, target in edges[node]]
        row = np.zeros(256, dtype=np.int32)
        moves.sort()
        if all(moves[k][1] < moves[k + 1][0] for k in range(len(moves) - 1)):
            # no two moves share a byte (a key's trie, a literal): each range leads to one move's closure
            for lo, hi, target, stack in moves:
                row[lo:hi + 1] = self._closed(target, stack)
            self._set_row(state, row)
            return
        bounds = sorted({lo for lo, _, _, _ in moves} | {hi + 1 for _, hi, _, _ in moves})
        position = {b: i for i, b in enumerate(bounds)}
        buckets: list[set] = [set() for _ in bounds]         # bucket i: bytes bounds[i] .. bounds[i+1]-1
        for lo, hi, target, stack in moves:
            for i in range(position[lo], position[hi + 1]):
                buckets[i].add((target, stack))
        seen: dict[frozenset, int] = {}
        for i, targets in enumerate(buckets):
            if not targets:
                continue
            key = frozenset(targets)
            if key not in seen:
                seen[key] = self._target(key)
            row[bounds[i]:bounds[i + 1]] = seen[key]
        self._set_row(state, row)

    def _set_row(self, state: int, row: np.ndarray) -> None:
        self.table[state] = row
        self.row_ready[state] = True
        uniform = row == row[UNIFORM_PROBE]               # [256] (cheaper than counting every target)
        if row[UNIFORM_PROBE] != DEAD and uniform.sum() >= UNIFORM_BYTES:
            self.uniform_next[state] = row[UNIFORM_PROBE]
            self.uniform_bytes[state] = np.packbits(uniform, bitorder="little").view(np.uint64)

    @property
    def n_states(self) -> int:
        return len(self.state_items)
