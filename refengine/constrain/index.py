"""Automaton × vocabulary: which tokens each state allows and where each leads.

A state's token set is computed the first time it is asked for, by walking the vocabulary trie from that
state one level (byte position) at a time over the whole frontier with numpy, and cached: a new state costs
about a millisecond, a known one a lookup.
"""
from __future__ import annotations

import threading

import numpy as np

from .automaton import DEAD, Automaton
from .vocab import Vocab


class Constraint:
    """Token-level view of an automaton. States are ints; `initial_state` is where generation starts.

    `allowed(state)` is a bool mask over the vocabulary: tokens whose bytes keep the automaton alive, plus
    the EOS ids when the state is accepting (or when nothing else can continue: EOS is then forced).
    Special tokens are never allowed.
    """

    def __init__(self, automaton: Automaton, vocab: Vocab):
        self.automaton = automaton
        self.vocab = vocab
        self._eos = np.array(sorted(vocab.eos_ids), dtype=np.int64)
        self._tokens: dict[int, tuple[np.ndarray, np.ndarray]] = {}    # state -> (sorted ids, next states)
        self._masks: dict[int, np.ndarray] = {}                         # state -> packed bits [ceil(V/8)]
        self._lock = threading.Lock()

    @property
    def initial_state(self) -> int:
        return self.automaton.initial

    def is_accepting(self, state: int) -> bool:
        return self.automaton.is_accepting(state)

    def allowed(self, state: int) -> np.ndarray:
        packed = self._masks.get(state)
        if packed is None:
            with self._lock:
                ids, _ = self._transitions(state)
                mask = np.zeros(self.vocab.size, dtype=bool)
                mask[ids] = True
                if self.automaton.is_accepting(state) or len(ids) == 0:
                    mask[self._eos] = True
                packed = np.packbits(mask)
                self._masks[state] = packed
        return np.unpackbits(packed, count=self.vocab.size).view(np.bool_)   # [V]

    def allowed_ids(self, state: int) -> np.ndarray:
        """The non-EOS token ids `state` allows (sorted)."""
        with self._lock:
            return self._transitions(state)[0]

    def advance(self, state: int, token_id: int) -> int:
        """The state after `token_id`. EOS leaves the state as it is; a token `allowed` forbids raises."""
        if token_id in self.vocab.eos_ids:
            return state
        with self._lock:
            ids, nxt = self._transitions(state)
        i = int(np.searchsorted(ids, token_id))
        if i == len(ids) or ids[i] != token_id:
            raise ValueError(f"token {token_id} is not allowed in constraint state {state}")
        return int(nxt[i])

    def _transitions(self, state: int) -> tuple[np.ndarray, np.ndarray]:
        cached = self._tokens.get(state)
        if cached is None:
            cached = walk_vocabulary(self.automaton, self.vocab, state)
            self._tokens[state] = cached
        return cached

    @property
    def n_states_indexed(self) -> int:
        return len(self._tokens)


def walk_vocabulary(automaton: Automaton, vocab: Vocab, state: int) -> tuple[np.ndarray, np.ndarray]:
    """All tokens that keep `automaton` alive from `state`: (sorted token ids, the state each leads to).

    One vectorised step per trie level: each node's state is its parent's state advanced by the node's
    byte. A level is processed whole (a gather over it) while many nodes are alive, and only as the
    children of the live nodes once few are; the walk stops when none is alive.
    """
    trie = vocab.trie
    node_state = np.zeros(len(trie.byte), dtype=np.int32)           # [N] state after each trie prefix
    start, end = trie.levels[0]
    nodes = np.arange(start, end)                                     # [F] live frontier
    parent_states = np.full(end - start, state, dtype=np.int32)      # [F]
    for depth in range(len(trie.levels)):
        automaton.ensure_rows(parent_states)
        states = automaton.table[parent_states, trie.byte[nodes]]    # [F]
        node_state[nodes] = states
        nodes = nodes[states != DEAD]
        if not len(nodes) or depth + 1 == len(trie.levels):
            break
        start, end = trie.levels[depth + 1]
        if len(nodes) * 16 < end - start:                             # few alive: expand their children
            counts = trie.child_count[nodes]
            parent_states = np.repeat(node_state[nodes], counts)
            nodes = np.repeat(trie.child_start[nodes] - np.cumsum(counts) + counts, counts) \
                + np.arange(int(counts.sum()))
        else:                                                          # many alive: the whole level
            nodes = np.arange(start, end)
            parent_states = node_state[trie.parent[start:end]]
    nxt = node_state[trie.token_node]                                 # [T]
    ids, nxt = trie.token_ids[nxt != DEAD], nxt[nxt != DEAD]
    live = automaton.live(nxt)                                        # no token into a dead end
    return ids[live], nxt[live]
