"""What one automaton state allows, and where each token leads, as kept in a constraint's index.

Compact, because states are many and most allow most of the vocabulary: the [V] mask packed to bits, the
set bits before each 64-token block (`rank`), and for each allowed token, in token order, a small slot
number into the distinct states the tokens lead to (a handful, rarely over 255). A state allowing 45k of
49k tokens costs ~55 kB instead of ~370 kB as token ids and next states: fewer fresh pages to fault in
(a copy of 180 kB cost ~50 us for its page faults, more than the walk's own tail) and more states kept.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .automaton import DEAD

LAZY = -2      # a token's next state, when the walk took it without following it: found when it is taken


@dataclass(frozen=True, eq=False)
class StateTokens:
    packed_mask: np.ndarray    # [ceil(V / 64) * 8] uint8: np.packbits' order; EOS set where it may end here
    rank: np.ndarray           # [ceil(V / 64)] int32: the set bits before each block of 64 tokens
    slots: np.ndarray          # [A] uint8 (uint16 past 255 targets): each set bit's index into `targets`
    targets: np.ndarray        # [K] int32: the distinct states the tokens lead to (LAZY among them maybe)
    followed: dict = field(default_factory=dict, compare=False)   # LAZY token id -> the state it leads to

    @property
    def nbytes(self) -> int:
        return self.packed_mask.nbytes + self.rank.nbytes + self.slots.nbytes + self.targets.nbytes

    def next_state(self, token: int) -> int | None:
        """Where `token` leads (LAZY: not followed yet), or None where it is not allowed."""
        word = int(self.packed_mask[(token >> 6) * 8:(token >> 6) * 8 + 8].view(">u8")[0])
        bit = 63 - (token & 63)
        if not word >> bit & 1:
            return None
        return int(self.targets[self.slots[int(self.rank[token >> 6]) + (word >> (bit + 1)).bit_count()]])

    def token_ids(self, size: int) -> np.ndarray:
        """The allowed token ids (EOS included where set), increasing."""
        return np.flatnonzero(np.unpackbits(self.packed_mask, count=size))

    def next_states(self) -> np.ndarray:
        """Where each of token_ids() leads, in the same order."""
        return self.targets[self.slots]


def state_tokens(ids: np.ndarray, next_states: np.ndarray, eos: np.ndarray, state: int, size: int) -> StateTokens:
    """From sorted token ids and the state each leads to, plus the EOS ids to allow (leading to `state`
    itself: EOS leaves the state as it is). The numpy reference of compiled_walk.index_state."""
    dense = np.full(size, DEAD, dtype=np.int32)                       # [V]
    dense[ids] = next_states
    dense[eos] = state
    allowed = dense != DEAD                                           # [V]
    words = -(-size // 64)
    bits = np.zeros(words * 64, dtype=bool)
    bits[:size] = allowed
    packed = np.packbits(bits)                                        # [words * 8]
    counts = bits.reshape(words, 64).sum(axis=1)
    rank = (np.cumsum(counts) - counts).astype(np.int32)              # [words]
    targets, slots = np.unique(dense[allowed], return_inverse=True)
    return StateTokens(packed, rank, slots.astype(np.uint8 if len(targets) <= 256 else np.uint16),
                       targets.astype(np.int32))
