"""Expression tree → byte-level NFA with rule calls (the automaton's first stage; automaton.py determinises it).

Thompson's construction over UTF-8 bytes: a character class becomes the byte-range sequences of its UTF-8
encodings, sharing suffixes. A `Call` edge enters a rule and pushes the node to return to; reaching the
rule's exit pops it (the automaton keeps the stacks and bounds their depth).

Parts of the NFA are built only when first reached (`NFA.lazy`): the copies of large bounded repeats
(`{0,131072}` costs nothing up front), the per-gap key tries of JSON objects (`Properties`,
properties.py) and the product states of automaton intersections (`Intersect`). A part placed many times
(a repeat's copies, an object's values) is built once, as a shared rule (`NFABuilder.build_shared`).
"""
from __future__ import annotations

import numpy as np

from .expr import (NOTHING, Alt, Call, Chars, ConstraintError, Divisible, Grammar, Intersect, Lit, Members,
                   Properties, Repeat, Seq, call_free, seq)
from .properties import PropertiesBuilder

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
        self.edges: list[tuple[tuple[int, int, int], ...]] = []   # (lo byte, hi byte, target)
        self.eps: list[tuple[int, ...]] = []
        self.calls: dict[int, tuple[str, int]] = {}          # node -> (rule, return node)
        # node -> (expander, its arguments): builds the node's edges when first reached (`defer`)
        self.lazy: dict[int, tuple] = {}
        self.expanders: list = []
        self._expander_ids: dict = {}
        self.max_nodes = max_nodes

    def defer(self, node: int, expand, *args) -> None:
        """Have `expand(*args)` build `node`'s edges when the automaton first reaches it. Kept as an
        index and a tuple of arguments, not as a closure a node: a large automaton defers tens of
        thousands of nodes, and each closure (a function, its cells) is more for the garbage collector
        to scan."""
        index = self._expander_ids.get(expand)
        if index is None:
            index = self._expander_ids[expand] = len(self.expanders)
            self.expanders.append(expand)
        self.lazy[node] = (index, *args)

    def expand(self, node: int) -> None:
        """Build a deferred node's edges (once)."""
        index, *args = self.lazy.pop(node)
        self.expanders[index](*args)

    def node(self) -> int:
        if len(self.edges) >= self.max_nodes:
            raise ConstraintError(f"constraint too large (over {self.max_nodes} automaton nodes)", keyword="size")
        self.edges.append(())         # (tuples of ints, not lists: the garbage collector leaves them out of
        self.eps.append(())           # its passes, which otherwise scan two lists a node of a large NFA)
        return len(self.edges) - 1


class Product:
    """The operand automata of an intersection (automaton.Automaton), `n_pos` positive ones and then the
    negated ones, stepped together: a tuple of their states accepts when every positive operand accepts
    and no negated one does."""

    def __init__(self, operands: list, n_pos: int):
        self.operands = operands
        self.n_pos = n_pos
        self.initial = tuple(a.initial for a in operands)
        self._live: set[tuple] = set()             # tuples a search found a way to acceptance from
        self._dead: set[tuple] = set()             # tuples an exhausted search found none from

    def accepts(self, states: tuple) -> bool:
        accepting = [a.is_accepting(s) for a, s in zip(self.operands, states)]
        return all(accepting[:self.n_pos]) and not any(accepting[self.n_pos:])

    def rows(self, states: tuple) -> tuple[np.ndarray, np.ndarray]:
        """Each operand's row from its state [operands, 256], and the bytes every positive one survives [256]."""
        from .automaton import DEAD                # (automaton.py imports this module)
        rows = np.stack([a.row(s) for a, s in zip(self.operands, states)])
        return rows, np.all(rows[:self.n_pos] != DEAD, axis=0)

    def reaches_acceptance(self, budget: int = 256) -> bool:
        """Whether some string is in every positive operand's language and in no negated one's; False
        also when `budget` tuples were searched without finding one."""
        return self.search(self.initial, budget) is True

    def search(self, start: tuple, budget: int = 256) -> bool | None:
        """Whether some string takes the tuple of states `start` to acceptance, by a depth-first search
        over the tuples: True when one is found, False when every tuple reachable was searched without
        one, None when `budget` tuples were searched first. What a search proves is kept: the tuples on
        the path it found lead to acceptance, and those an exhausted search saw do not."""
        if start in self._dead:
            return False
        parent = {start: None}
        todo = [start]
        found = None
        while todo and found is None:
            if len(parent) > budget:
                return None
            states = todo.pop()
            if states in self._live or self.accepts(states):
                found = states
                break
            rows, alive = self.rows(states)                                 # [operands, 256], [256]
            for following in self._distinct_columns(rows[:, alive]):
                if following in self._live:
                    parent.setdefault(following, states)
                    found = following
                    break
                if following not in parent and following not in self._dead:
                    parent[following] = states
                    todo.append(following)
        if found is None:
            self._dead.update(parent)
            return False
        while found is not None:
            self._live.add(found)
            found = parent[found]
        return True

    @staticmethod
    def _distinct_columns(rows: np.ndarray) -> list[tuple]:
        """The distinct columns of an [operands, N] array of states, as tuples."""
        if len(rows) == 1:
            return [(s,) for s in np.unique(rows[0]).tolist()]
        if len(rows) == 2:                                  # (the usual pair: one int64 key a column)
            keys = np.unique(rows[0].astype(np.int64) << 32 | rows[1].astype(np.int64))
            return list(zip((keys >> 32).tolist(), (keys & 0xFFFFFFFF).tolist()))
        return [tuple(column) for column in np.unique(rows, axis=1).T.tolist()]


class NFABuilder:
    def __init__(self, grammar: Grammar, max_nodes: int, share: bool = True):
        self.grammar = grammar
        self.nfa = NFA(max_nodes)
        self.rule_entry: dict[str, int] = {}
        self.rule_exit: dict[int, str] = {}
        self.share = share                 # build repeated parts once, entered through the return stack
        # id(expression) -> the name of its shared rule, and back (by identity: hashing a frozen tree walks
        # all of it; shared_rules holds each tree, so no other object can take its id)
        self.shared: dict[int, str] = {}
        self.shared_rules: dict[str, object] = {}
        self.utf8_cache: dict[tuple, list] = {}
        self.suffix_nodes: dict[tuple, int] = {}
        self.may_dead_end = False          # set by constructs whose automaton can strand a prefix
        # the product nodes of intersections (proven non-empty when built), each with its product (an
        # index in `products`) and tuple of operand states (ints only: the garbage collector leaves such
        # tuples out of its passes): prefixes can be stranded there only, so a DFA state with an item
        # elsewhere, or at a node whose tuple can reach acceptance, is live unless `may_dead_end` says
        # otherwise
        self.intersect_nodes: dict[int, tuple[int, tuple]] = {}
        self.products: list[Product] = []
        self._intersect_node_live: dict[int, bool] = {}
        # nodes from which every string of plain characters (JSON string text, unescaped) can be read and
        # still finished (an object's key where undeclared keys are allowed): the vocabulary walk takes
        # every plain-text token there without following it (compiled_walk)
        self.plain_open_nodes: set[int] = set()

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

    def shared_part(self, name: str, entry: int, exit_: int) -> None:
        """Register a part built by hand as a shared rule: entered at `entry` through calls (which, as
        calls of shared parts, do not count toward the depth bound), left at `exit_`. Several parts may
        share one exit: a part with several entries."""
        self.shared_rules[name] = None            # built already: `rule` never looks its tree up
        self.rule_entry[name] = entry
        self.rule_exit[exit_] = name

    def build_shared(self, tree, entry: int) -> int:
        """`tree` from `entry`, as `build`; but a part that is placed many times (a bounded repeat's
        copies, an object's value after each possible set of keys before it) is built once, as a rule
        the automaton calls, instead of once per place. Its calls do not count toward the depth bound
        (they always return: a shared part never contains itself)."""
        if not self.share or isinstance(tree, (Lit, Chars)):
            return self.build(tree, entry)
        name = self.shared.get(id(tree))
        if name is None:
            name = self.shared[id(tree)] = f"shared {len(self.shared)}"   # no grammar rule has a space
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
                nfa.edges[node] += ((byte, byte, nxt),)
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
                nfa.eps[entry] += (start,)
                nfa.eps[self.build(item, start)] += (exit_,)
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
                nfa.eps[node] += (start,)
                nfa.eps[self.build(tree.item, start)] += (node,)
                exit_ = nfa.node()
                nfa.eps[node] += (exit_,)
                return exit_
            exit_ = nfa.node()
            for _ in range(tree.max - tree.min):
                nfa.eps[node] += (exit_,)
                node = self.build(tree.item, node)
            nfa.eps[node] += (exit_,)
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
        nfa.eps[entry] += (start,)
        nfa.edges[entry] += ((0x2D, 0x2D, start),)                    # "-"
        nfa.edges[start] += ((0x30, 0x30, exit_),)                    # "0"
        remainders = [nfa.node() for _ in range(divisor)]
        nfa.eps[remainders[0]] += (exit_,)
        for d in range(1, 10):
            nfa.edges[start] += ((0x30 + d, 0x30 + d, remainders[d % divisor]),)
        for r, node in enumerate(remainders):
            for d in range(10):
                nfa.edges[node] += ((0x30 + d, 0x30 + d, remainders[(10 * r + d) % divisor]),)
        return exit_

    def intersect(self, tree: Intersect, entry: int) -> int:
        """One NFA node per reached tuple of the operands' DFA states, each built when first reached."""
        if not all(call_free(x) for x in tree.positives + tree.negatives):
            raise ConstraintError("intersection or negation of objects and arrays is not supported",
                                  keyword="not")
        from .automaton import Automaton          # the operands are automata of their own (a cycle of modules)
        product = Product([Automaton(Grammar(x), max_depth=0, max_nodes=self.nfa.max_nodes)
                           for x in tree.positives + tree.negatives], len(tree.positives))
        if not product.reaches_acceptance():
            self.may_dead_end = True       # empty (or not shown otherwise): every state is searched
        product_id = len(self.products)
        self.products.append(product)
        nfa = self.nfa
        exit_ = nfa.node()
        nodes: dict[tuple, int] = {}

        def node_for(states: tuple) -> int:
            node = nodes.get(states)
            if node is None:
                node = nfa.node()
                nodes[states] = node
                self.intersect_nodes[node] = (product_id, states)
                nfa.defer(node, expand, node, states)
            return node

        def expand(node: int, states: tuple) -> None:
            if product.accepts(states):
                nfa.eps[node] += (exit_,)
            rows, alive = product.rows(states)                                     # [operands, 256], [256]
            rows = np.where(alive, rows, -1)                                       # dead bytes alike
            # runs of bytes leading to the same tuple of states: one edge each
            starts = np.flatnonzero(np.concatenate([[True], np.any(rows[:, 1:] != rows[:, :-1], axis=0)]))
            ends = np.append(starts[1:], 256) - 1
            for lo, hi in zip(starts.tolist(), ends.tolist()):
                if alive[lo]:
                    target = node_for(tuple(rows[:, lo].tolist()))
                    nfa.edges[node] += ((lo, hi, target),)

        first = node_for(product.initial)
        nfa.eps[entry] += (first,)
        return exit_

    def intersection_node_live(self, node: int) -> bool:
        """Whether the product node `node` can still reach its intersection's exit: searched over the
        operands' (small) automata, not over DFA states; a search that runs out of budget counts as
        live (a constraint is never narrowed by a guess)."""
        live = self._intersect_node_live.get(node)
        if live is None:
            product_id, states = self.intersect_nodes[node]
            live = self._intersect_node_live[node] = self.products[product_id].search(states) is not False
        return live

    def fresh(self, source: int) -> int:
        """A new node reached from `source` by epsilon."""
        node = self.nfa.node()
        self.nfa.eps[source] += (node,)
        return node

    def lazy_repeat(self, node: int, item, lo: int, hi: int, exit_: int) -> None:
        """Copies lo..hi of `item` start at `node`; each is built when the automaton first reaches it."""
        self.nfa.defer(node, self.expand_repeat, node, item, lo, hi, exit_)

    def expand_repeat(self, node: int, item, lo: int, hi: int, exit_: int) -> None:
        if lo == 0:
            self.nfa.eps[node] += (exit_,)
        if hi > 0:
            self.lazy_repeat(self.build_shared(item, self.fresh(node)), item, max(lo - 1, 0), hi - 1, exit_)

    def branch(self, tree, source: int) -> int:
        """Add `tree` on a fresh node reached from `source` by epsilon (so `source` can have several)."""
        start = self.nfa.node()
        self.nfa.eps[source] += (start,)
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
                        nfa.eps[end] += (target,)
                if i == n:
                    if c >= tree.min_count:
                        nfa.eps[here] += (exit_,)
                    continue
                item, required = tree.items[i]
                target = node(i + 1, after(c))
                if target is not None:
                    end = self.branch(item if c == 0 else seq(tree.sep, item), here)
                    nfa.eps[end] += (target,)
                if not required:
                    skip = node(i + 1, c)
                    if skip is not None:
                        nfa.eps[here] += (skip,)
        return exit_

    def chars(self, chars: Chars, entry: int) -> int:
        exit_ = self.nfa.node()
        self.chars_to(chars, entry, exit_)
        return exit_

    def chars_to(self, chars: Chars, entry: int, exit_: int) -> None:
        """Edges from `entry` to `exit_` over the UTF-8 encodings of `chars`; the continuation-byte nodes
        are shared by every class that leads to the same `exit_`."""
        edges = self.char_edges(chars, exit_)
        self.nfa.edges[entry] += tuple(edges)

    def char_edges(self, chars: Chars, exit_: int) -> list[tuple[int, int, int]]:
        """The byte edges a node needs to reach `exit_` over the UTF-8 encodings of `chars`."""
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
                following = node_for(suffix[1:])
                nfa.edges[node] += ((*suffix[0], following),)
                self.suffix_nodes[key] = node
            return node

        return [(*sequence[0], node_for(sequence[1:])) for sequence in sequences]
