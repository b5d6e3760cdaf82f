"""Automaton × vocabulary: which tokens each state allows and where each leads.

A state's token set is computed the first time it is asked for, by walking the vocabulary trie from that
state (compiled_walk; the numpy reference here walks it one level, a byte position, at a time over the
whole frontier), and cached compactly (state_tokens.StateTokens): a new state costs a fraction of a
millisecond (much more in a hard schema's fresh states), a known one a lookup. The cache is bounded in
bytes, least recently used states out (they are recomputed if reached again). `ready(state)`
says whether a state is indexed, so the scheduler can have a fresh state indexed by another thread
instead of stalling every stream for it.
"""
from __future__ import annotations

import threading

import numpy as np

from ..lru import LRUCache
from .automaton import DEAD, Automaton
from .state_tokens import LAZY, StateTokens, state_tokens
from .vocab import Vocab

MAX_INDEX_BYTES = 64 * 2**20                 # per constraint: the token sets of its states reached lately
WARM_STATES = 16                             # states indexed when a constraint is compiled for serving


class Constraint:
    """Token-level view of an automaton. States are ints; `initial_state` is where generation starts.

    `allowed(state)` is a bool mask over the vocabulary: tokens whose bytes keep the automaton alive, plus
    the EOS ids when the state is accepting (or when nothing else can continue: EOS is then forced).
    Special tokens are never allowed. Safe to use from several threads: the automaton, which grows as
    it is explored, is only touched under the lock.
    """

    def __init__(self, automaton: Automaton, vocab: Vocab, max_index_bytes: int = MAX_INDEX_BYTES,
                 max_tokens: int | None = None):
        self.automaton = automaton
        self.vocab = vocab
        self.max_tokens = max_tokens               # the most tokens the constrained output may take
        self._eos = np.array(sorted(vocab.eos_ids), dtype=np.int64)
        self._states = LRUCache(max_index_bytes, size_of=lambda tokens: tokens.nbytes)   # state -> StateTokens
        self._lock = threading.Lock()

    @property
    def initial_state(self) -> int:
        return self.automaton.initial

    def is_accepting(self, state: int) -> bool:
        return self.automaton.is_accepting(state)

    def ready(self, state: int) -> bool:
        """Whether `state`'s tokens are indexed (`allowed` and `advance` answer without computing)."""
        return state in self._states

    def allowed(self, state: int) -> np.ndarray:
        return np.unpackbits(self._indexed(state).packed_mask, count=self.vocab.size).view(np.bool_)   # [V]

    def allowed_ids(self, state: int) -> np.ndarray:
        """The non-EOS token ids `state` allows (sorted)."""
        ids = self._indexed(state).token_ids(self.vocab.size)
        return ids[~np.isin(ids, self._eos)]

    def advance(self, state: int, token_id: int) -> int:
        """The state after `token_id`. EOS leaves the state as it is; a token `allowed` forbids raises."""
        if token_id in self.vocab.eos_ids:
            return state
        tokens = self._indexed(state)
        following = tokens.next_state(token_id)
        if following is None:
            raise ValueError(f"token {token_id} is not allowed in constraint state {state}")
        if following == LAZY:                      # taken by the walk without following it: follow it now
            following = tokens.followed.get(token_id)
            if following is None:
                following = tokens.followed[token_id] = self.walk(state, self.vocab.token_bytes[token_id])
        return following

    def warm(self, limit: int = WARM_STATES) -> None:
        """Index the start state and, breadth first, the states its tokens lead to (up to `limit` states, a
        forced prefix followed to its end): the masks a request needs first, computed where the constraint
        is compiled (the request's thread, once per cached constraint) instead of while its first tokens wait."""
        frontier, seen = [self.initial_state], {self.initial_state}
        while frontier and len(seen) <= limit:
            state = frontier.pop(0)
            for nxt in self._indexed(state).targets.tolist():
                if nxt not in seen and nxt != LAZY and len(seen) < limit:
                    seen.add(nxt)
                    frontier.append(nxt)

    def walk(self, state: int, data: bytes) -> int:
        """The state after the bytes `data` (DEAD when they leave the language)."""
        with self._lock:
            return self.automaton.walk(state, data)

    def _indexed(self, state: int) -> StateTokens:
        tokens = self._states.get(state)
        if tokens is None:
            with self._lock:
                tokens = self._states.get(state)          # another thread may have indexed it meanwhile
                if tokens is None:
                    tokens = self._index(state)
                    self._states.put(state, tokens)
        return tokens

    def _index(self, state: int) -> StateTokens:
        return _index_state(self.automaton, self.vocab, state, self._eos)

    @property
    def n_states_indexed(self) -> int:
        return len(self._states)


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
        states = automaton.transitions(parent_states, trie.byte[nodes])   # [F]
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


def index_state(automaton: Automaton, vocab: Vocab, state: int, eos: np.ndarray) -> StateTokens:
    """What `state` allows and where each token leads, EOS included where the state accepts or where
    nothing else may follow (the numpy reference of compiled_walk.index_state)."""
    ids, next_states = walk_vocabulary(automaton, vocab, state)
    eos = eos if automaton.is_accepting(state) or len(ids) == 0 else eos[:0]
    return state_tokens(ids, next_states, eos, state, vocab.size)


try:                                   # compiled where numba is installed (it is a dependency)
    from .compiled_walk import index_state as _index_state
except ImportError:                    # pragma: no cover - numpy alone (whose walk follows every token)
    _index_state = index_state
