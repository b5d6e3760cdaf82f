"""The vocabulary walk compiled with numba: `index_state`, the same answer as index.index_state (the numpy
reference), in a fraction of the time, which is most of what a state reached for the first time costs.

One depth-first pass over the trie (vocab.DepthFirstTrie) through the automaton's transition table: a
node's state is its parent's advanced by the node's byte; a dead node's subtree is skipped. Most bytes
of a string's state lead to one next state (the automaton's `uniform_next`): the state itself in an
unbounded string, the next position in one of bounded length. Where every byte on a node's subtree is
such a byte, all along the chain of next states, each of the subtree's tokens leads to the chain's state
at its length, and the subtree is settled without walking it: a string state visits a few thousand
nodes of the hundred thousand. The table is built lazily, so the pass leaves the nodes whose transition
is not computed yet, grouped by state; the caller computes those transitions (in Python, all of them at
once) and walks those nodes' subtrees in the next pass, until none is left.

At an object's key where undeclared keys are allowed, any plain text can be read and finished, and each
set of properties present has its own states for the trie of names: following every token there would
build a couple of hundred states, of which the chosen token needs a few. So a token that is plain text
from such a state on is taken without being followed (its next state LAZY); `Constraint.advance` follows
the one chosen.

The walk's tail stays compiled too: the liveness of the states reached (asked only where the automaton
can strand a prefix, and only of states not settled before), then the state's tokens packed into the
compact form it is kept in (state_tokens.StateTokens) straight from the per-token scratch array.
"""
from __future__ import annotations

import threading

import numpy as np
from numba import njit

from .automaton import DEAD, UNKNOWN, Automaton
from .state_tokens import LAZY, StateTokens
from .vocab import Vocab


@njit(cache=True)
def _within(node_bytes, uniform_bytes, state):
    """Whether every byte of node_bytes (256 bits) is one of `state`'s uniform bytes."""
    return (node_bytes[0] & ~uniform_bytes[state, 0]) == 0 and (node_bytes[1] & ~uniform_bytes[state, 1]) == 0 \
        and (node_bytes[2] & ~uniform_bytes[state, 2]) == 0 and (node_bytes[3] & ~uniform_bytes[state, 3]) == 0


@njit(cache=True)
def _walk(table, uniform_next, uniform_bytes, plain_open, byte, depth, skip, height, subtree_bytes, plain_below,
          token_start, token_ids, token_depth, node_token, task_node, task_state, next_state, path, chain,
          pending_node, pending_state):
    """Walk each task's subtree: the whole trie from state task_state[k] when task_node[k] is -1, else
    node task_node[k]'s subtree with task_state[k] as its parent's state. Writes each token's state into
    next_state[token id] (next_state[V]: a scratch slot for nodes no token ends at, so the write needs no
    branch). A node whose transition is not computed yet is left, with its parent's state, in
    pending_node/pending_state, a task for the next call; returns how many."""
    n_pending = 0
    for k in range(len(task_node)):
        first = task_node[k]
        end = len(byte) if first < 0 else skip[first]
        i = 0 if first < 0 else first
        base = 0 if first < 0 else depth[first] - 1
        path[base] = task_state[k]                     # path[d]: the state after the node's first d bytes
        # chain[j]: the state after j uniform bytes from the task's start state (a string's next positions);
        # where it ends in a loop (a state whose uniform bytes lead to itself), it stays there: `last`
        chain[0] = task_state[k]
        n_chain = 1
        while n_chain < len(chain) and uniform_next[chain[n_chain - 1]] != DEAD \
                and uniform_next[chain[n_chain - 1]] != chain[n_chain - 1]:
            chain[n_chain] = uniform_next[chain[n_chain - 1]]
            n_chain += 1
        last = n_chain - 1 if uniform_next[chain[n_chain - 1]] == chain[n_chain - 1] else len(chain)
        while i < end:
            d = depth[i]
            parent = path[d - 1]
            offset = d - 1 - base
            if uniform_next[parent] != DEAD and _within(subtree_bytes[i], uniform_bytes, parent):
                # every byte below may be uniform: along the chain (or a loop), each token's state is the
                # chain's at its length, so the subtree is settled without walking it
                if uniform_next[parent] == parent:
                    along = True
                    for t in range(token_start[i], token_start[skip[i]]):
                        next_state[token_ids[t]] = parent
                else:
                    along = offset < n_chain and chain[offset] == parent and \
                        (offset + height[i] < n_chain or last < len(chain))
                    j = offset + 1
                    while along and j < min(offset + height[i], n_chain):
                        along = _within(subtree_bytes[i], uniform_bytes, chain[j])
                        j += 1
                    if along:
                        for t in range(token_start[i], token_start[skip[i]]):
                            next_state[token_ids[t]] = chain[min(offset + token_depth[t] - d + 1, last)]
                if along:
                    i = skip[i]
                    continue
            if plain_open[parent] and plain_below[i]:
                # plain text from here on, read from a state where any plain text can be read and finished
                # (an object's key, undeclared keys allowed): every token below is taken as it is; where
                # one leads is walked when it is chosen
                for t in range(token_start[i], token_start[skip[i]]):
                    next_state[token_ids[t]] = LAZY
                i = skip[i]
                continue
            state = table[parent, byte[i]]
            if state == UNKNOWN:
                pending_node[n_pending] = i
                pending_state[n_pending] = parent
                n_pending += 1
                i = skip[i]
            elif state == DEAD:
                i = skip[i]
            else:
                path[d] = state
                next_state[node_token[i]] = state
                i += 1
    return n_pending


@njit(cache=True)
def _walk_round(table, uniform_next, uniform_bytes, plain_open, byte, depth, skip, height, subtree_bytes,
                plain_below, token_start, token_ids, token_depth, node_token, task_node, task_state, next_state,
                path, chain, pending_node, pending_state, group_state, group_end, group_bytes, group_asked_before):
    """One pass of `_walk` over the tasks, then the transitions its pending nodes wait for, as groups of
    distinct (state, byte) pairs by state: group g is state group_state[g], its bytes
    group_bytes[group_end[g - 1]:group_end[g]], and whether it had some transition computed already.
    Returns (pending nodes, groups). One compiled call a round: a round's Python around it (numpy's
    unique, a loop over the pairs) cost more than the few transitions themselves."""
    n = _walk(table, uniform_next, uniform_bytes, plain_open, byte, depth, skip, height, subtree_bytes,
              plain_below, token_start, token_ids, token_depth, node_token, task_node, task_state, next_state,
              path, chain, pending_node, pending_state)
    keys = np.empty(n, dtype=np.int64)
    for k in range(n):
        keys[k] = np.int64(pending_state[k]) * 256 + byte[pending_node[k]]
    keys.sort()
    groups = 0
    count = 0
    for k in range(n):
        if k > 0 and keys[k] == keys[k - 1]:
            continue
        state = keys[k] >> 8
        if groups == 0 or group_state[groups - 1] != state:
            if groups > 0:
                group_end[groups - 1] = count
            group_state[groups] = state
            group_asked_before[groups] = 0
            for b in range(256):
                if table[state, b] != UNKNOWN:
                    group_asked_before[groups] = 1
                    break
            groups += 1
        group_bytes[count] = keys[k] & 255
        count += 1
    if groups > 0:
        group_end[groups - 1] = count
    return n, groups


@njit(cache=True)
def _unsettled(next_state, liveness, out):
    """The distinct states the tokens lead to whose liveness is not known yet (0), into `out`; returns how
    many. (DEAD and LAZY skipped.)"""
    count = 0
    for state in next_state:
        if state > 0 and liveness[state] == 0:
            liveness[state] = 2                        # (seen: listed once)
            out[count] = state
            count += 1
    for k in range(count):
        liveness[out[k]] = 0
    return count


@njit(cache=True)
def _drop_dead(next_state, liveness):
    """No token into a state that cannot reach acceptance. (A LAZY token stays: plain text read from a
    live state, there only, is live.)"""
    for token in range(len(next_state)):
        state = next_state[token]
        if state > 0 and liveness[state] < 0:
            next_state[token] = DEAD


@njit(cache=True)
def _number_targets(next_state, slot_of, targets):
    """Number the distinct states the tokens lead to (LAZY among them) in the order first met:
    targets[slot] = state, slot_of[state - LAZY] = slot. Returns (tokens, distinct states)."""
    count = 0
    distinct = 0
    for token in range(len(next_state)):
        state = next_state[token]
        if state != DEAD:
            count += 1
            if slot_of[state - LAZY] < 0:
                slot_of[state - LAZY] = distinct
                targets[distinct] = state
                distinct += 1
    return count, distinct


@njit(cache=True)
def _fill_tokens(next_state, slot_of, targets, distinct, packed, rank, slots):
    """The mask packed to bits, the set bits before each block of 64 tokens, and each token's slot; then
    next_state and slot_of cleared for the next walk."""
    count = 0
    for token in range(len(next_state)):
        if token & 63 == 0:
            rank[token >> 6] = count
        state = next_state[token]
        if state != DEAD:
            packed[token >> 3] |= np.uint8(0x80 >> (token & 7))
            slots[count] = slot_of[state - LAZY]
            count += 1
            next_state[token] = DEAD
    for k in range(distinct):
        slot_of[targets[k] - LAZY] = -1


class _Scratch(threading.local):
    """Per-thread buffers, kept between walks (fresh ones cost page faults: ~50 us for a [V] array)."""
    next_state = None          # [V + 1] int32, all DEAD between walks
    tasks = None               # [2, 2, N] int32: a round's (node, parent state) tasks, and the next round's
    groups = None              # [4, N] int64: the transitions a round's pending tasks wait for (_walk_round)
    targets = None             # [V] int32: the distinct states the tokens lead to (_number_targets), and
                               # before that the states whose liveness is not known yet (_unsettled)
    slot_of = None             # [states - LAZY] int32: each such state's slot, -1 between walks


_scratch = _Scratch()


def _follow_uniform_chain(automaton: Automaton, state: int, length: int) -> None:
    """The rows of `state` and of the states its uniform bytes lead to, one after another (a bounded
    string's next positions), up to `length`: computed before the walk, they let it settle every subtree
    of uniform bytes in its first pass, instead of one trie level a pass."""
    for _ in range(length):
        row_known = automaton.row_ready[state]
        automaton.row(state)
        following = int(automaton.uniform_next[state])
        if following in (DEAD, state) or row_known and automaton.row_ready[following]:
            break
        state = following


def index_state(automaton: Automaton, vocab: Vocab, state: int, eos: np.ndarray) -> StateTokens:
    """What `state` allows and where each token leads: every token that keeps `automaton` alive from
    there, and the `eos` ids when it accepts or when nothing else does (EOS leaves the state as it is).
    The numpy reference: state_tokens.state_tokens over index.walk_vocabulary."""
    trie = vocab.depth_first_trie
    if _scratch.next_state is None or len(_scratch.next_state) != vocab.size + 1:
        _scratch.next_state = np.zeros(vocab.size + 1, dtype=np.int32)
        _scratch.tasks = np.empty((2, 2, len(trie.byte)), dtype=np.int32)
        _scratch.groups = np.empty((4, len(trie.byte)), dtype=np.int64)
        _scratch.targets = np.empty(vocab.size, dtype=np.int32)
        _scratch.slot_of = np.full(0, -1, dtype=np.int32)
    next_state, (tasks, pending), groups = _scratch.next_state, _scratch.tasks, _scratch.groups
    path = np.zeros(trie.max_depth + 1, dtype=np.int32)               # [max token bytes + 1]
    chain = np.zeros(trie.max_depth + 2, dtype=np.int32)
    _follow_uniform_chain(automaton, state, len(chain))
    tasks[:, 0] = -1, state                                           # the whole trie from `state`
    n_tasks = 1
    while n_tasks:
        # where something else may strand a prefix (the automaton's `may_dead_end`), every token is followed
        plain_open = np.zeros_like(automaton.plain_open) if automaton.builder.may_dead_end else automaton.plain_open
        # the table is passed afresh each round: computing transitions may have grown (reallocated) it
        n_tasks, n_groups = _walk_round(
            automaton.table, automaton.uniform_next, automaton.uniform_bytes, plain_open, trie.byte, trie.depth,
            trie.skip, trie.height, trie.subtree_bytes, trie.plain_below, trie.token_start, trie.token_ids,
            trie.token_depth, trie.node_token, tasks[0, :n_tasks], tasks[1, :n_tasks], next_state, path, chain,
            pending[0], pending[1], groups[0], groups[1], groups[2], groups[3])
        tasks, pending = pending, tasks                               # the pending nodes: the next tasks
        start = 0
        for group_state, end, asked_before in zip(groups[0, :n_groups].tolist(), groups[1, :n_groups].tolist(),
                                                  groups[3, :n_groups].tolist()):
            automaton.compute(group_state, groups[2, start:end].tolist(), bool(asked_before))
            start = end
    if len(trie.twins):                                               # tokens spelled like an earlier one
        next_state[trie.twins[:, 0]] = next_state[trie.twins[:, 1]]
    tokens = next_state[:vocab.size]                                  # [V] (next_state[V]: the scratch slot)
    if automaton.can_strand:                                          # no token into a dead end
        unsettled = _unsettled(tokens, automaton.liveness, _scratch.targets)
        for following in _scratch.targets[:unsettled].tolist():
            automaton.settle_liveness(following)
        _drop_dead(tokens, automaton.liveness)                        # (liveness may have grown meanwhile)
    if len(_scratch.slot_of) < automaton.n_states - LAZY:
        _scratch.slot_of = np.full(2 * automaton.n_states - LAZY, -1, dtype=np.int32)
    if automaton.is_accepting(state):                                 # EOS, which leaves the state as it is
        tokens[eos] = state
    count, distinct = _number_targets(tokens, _scratch.slot_of, _scratch.targets)
    if count == 0 and len(eos):                                       # nothing else may follow: EOS forced
        tokens[eos] = state
        count, distinct = _number_targets(tokens, _scratch.slot_of, _scratch.targets)
    words = -(-vocab.size // 64)
    packed, rank = np.zeros(words * 8, dtype=np.uint8), np.empty(words, dtype=np.int32)
    slots = np.empty(count, dtype=np.uint8 if distinct <= 256 else np.uint16)
    _fill_tokens(tokens, _scratch.slot_of, _scratch.targets, distinct, packed, rank, slots)
    return StateTokens(packed, rank, slots, _scratch.targets[:distinct].copy())
