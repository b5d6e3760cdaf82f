"""One sequence's tokens as the penalties see them (`TokenHistory`), kept incrementally, and DRY's sequence
breakers (`DryBreakers`); the penalties themselves are in processors.py.

DRY's bookkeeping: for every position of the context, the length of the longest suffix of the context
that also ends there (`suffix_match_lengths`), extended in O(context) numpy work per appended token. A
sequence breaker (llama.cpp's `dry_sequence_breakers`) is given as text; a token that contains a whole
breaker is one on its own, and a breaker spread over several tokens is matched by its head token and
the tokens that may follow it.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

DRY_MAX_BREAKER_BYTES = 40        # llama.cpp truncates longer breakers
DRY_MAX_TAIL_TOKENS = 20          # ... and caps the tokens that complete a breaker after its head


def _with_room(buffer: np.ndarray, used: int) -> np.ndarray:
    """`buffer` if it has room for one more element after `used`, else a copy twice as large."""
    if used < buffer.shape[0]:
        return buffer
    grown = np.zeros(max(16, 2 * buffer.shape[0]), dtype=buffer.dtype)
    grown[:used] = buffer[:used]
    return grown


@dataclass(frozen=True)
class DryBreakers:
    """DRY sequence breakers as token sequences: a head token, then tails that complete it.

    `tails[head]` lists the token tuples that may follow `head` to form a breaker; the empty tuple
    means `head` alone is a breaker. Build with `dry_sequence_breakers` (from strings) or
    `DryBreakers.from_token_sequences`.
    """
    tails: Mapping[int, tuple[tuple[int, ...], ...]]
    is_head: np.ndarray               # [V] bool: the token starts some breaker
    is_breaker: np.ndarray            # [V] bool: the token alone is a breaker

    @classmethod
    def from_token_sequences(cls, sequences: Iterable[Sequence[int]], vocab_size: int) -> DryBreakers:
        tails: dict[int, list[tuple[int, ...]]] = {}
        for sequence in sequences:
            if not sequence:
                continue
            head, tail = int(sequence[0]), tuple(int(t) for t in sequence[1:DRY_MAX_TAIL_TOKENS + 1])
            if tail not in tails.setdefault(head, []):
                tails[head].append(tail)
        is_head = np.zeros(vocab_size, dtype=bool)
        is_breaker = np.zeros(vocab_size, dtype=bool)
        is_head[list(tails)] = True
        is_breaker[[head for head, ts in tails.items() if () in ts]] = True
        return cls({head: tuple(ts) for head, ts in tails.items()}, is_head, is_breaker)


def dry_sequence_breakers(breakers: Iterable[str], token_bytes: Sequence[bytes],
                          tokenize: Callable[[str], Sequence[int]] | None = None) -> DryBreakers:
    """Map breaker strings to token sequences the way koboldcpp / llama.cpp do.

    A token whose bytes contain a whole breaker is a breaker on its own. A token whose bytes end with
    a proper prefix of a breaker starts a breaker completed by the tokenization of the rest (needs
    `tokenize`; without it only whole-breaker tokens count, which is exact for one-character breakers
    such as the defaults). Tens of milliseconds for a 50k vocabulary: cache the result per
    (tokenizer, breakers).
    """
    vocabulary = _Vocabulary.of(token_bytes)
    sequences: list[tuple[int, ...]] = []
    for breaker in breakers:
        pattern = breaker.encode("utf-8")[:DRY_MAX_BREAKER_BYTES]
        if not pattern:
            continue
        whole = vocabulary.tokens_containing(pattern)
        sequences.extend((token_id,) for token_id in whole)
        if tokenize is not None and len(pattern) > 1:
            whole_set = set(whole)
            for token_id in vocabulary.tokens_containing(pattern[:1]):
                if token_id not in whole_set:
                    sequences.extend((token_id, *tail) for tail in
                                     _breaker_tails(token_bytes[token_id], pattern, tokenize))
    return DryBreakers.from_token_sequences(sequences, len(token_bytes))


@dataclass(frozen=True)
class _Vocabulary:
    """All token bytes in one string, so a substring search runs in C instead of per token."""
    joined: bytes
    starts: np.ndarray                 # [V] where each token begins in `joined`
    ends: np.ndarray                   # [V] where it ends

    @classmethod
    def of(cls, token_bytes: Sequence[bytes]) -> _Vocabulary:
        lengths = np.fromiter(map(len, token_bytes), dtype=np.int64, count=len(token_bytes))
        ends = np.cumsum(lengths)
        return cls(b"".join(token_bytes), ends - lengths, ends)

    def tokens_containing(self, pattern: bytes) -> list[int]:
        """Ids of the tokens whose bytes contain `pattern`, ascending."""
        hits = []
        position = self.joined.find(pattern)
        while position >= 0:                       # overlapping hits: one may straddle two tokens
            hits.append(position)
            position = self.joined.find(pattern, position + 1)
        hits = np.asarray(hits, dtype=np.int64)
        tokens = np.searchsorted(self.starts, hits, side="right") - 1     # token each hit starts in
        inside = hits + len(pattern) <= self.ends[tokens]
        return np.unique(tokens[inside]).tolist()


def _breaker_tails(piece: bytes, pattern: bytes, tokenize: Callable[[str], Sequence[int]]):
    """Token tails completing `pattern` after a token `piece` that ends with a proper prefix of it."""
    for overlap in range(1, len(pattern)):
        if piece.endswith(pattern[:overlap]):
            try:
                rest = pattern[overlap:].decode("utf-8")
            except UnicodeDecodeError:     # the overlap splits a character: no token sequence does that
                continue
            yield tuple(tokenize(rest))


def suffix_match_lengths(context: np.ndarray) -> np.ndarray:
    """[L] int32: for each position i, how many tokens ending at i equal the tokens ending the context.

    Entry i is the length of the longest common suffix of context[:i+1] and context (the last entry,
    the context itself, is 0). Z-algorithm on the reversed context: O(L).
    """
    reversed_tokens = context[::-1].tolist()
    length = len(reversed_tokens)
    z = [0] * length                                   # z[k]: common prefix of reversed and reversed[k:]
    left = right = 0                                   # the Z-box [left, right) found so far
    for k in range(1, length):
        n = min(right - k, z[k - left]) if k < right else 0
        while k + n < length and reversed_tokens[n] == reversed_tokens[k + n]:
            n += 1
        z[k] = n
        if k + n > right:
            left, right = k, k + n
    matches = np.zeros(length, dtype=np.int32)
    if length > 1:
        matches[:-1] = np.asarray(z[1:], dtype=np.int32)[::-1]   # position i = length - 1 - k
    return matches


@dataclass(eq=False)
class TokenHistory:
    """What the penalties need to know about one sequence's tokens, kept incrementally.

    Start with `TokenHistory.start(prompt_ids, vocab_size, dry_breakers)` (pass the breakers only when
    DRY is on: they switch on its O(context) per-token bookkeeping), then `append(token)` after each
    sampled token. Appending is O(1) without DRY, O(context) numpy work with it.
    """
    vocab_size: int
    prompt_length: int
    context: np.ndarray               # [capacity] int32: prompt + output tokens, first `length` valid
    length: int
    output_counts: np.ndarray         # [V] int32: how often each token was generated
    output_ids: np.ndarray            # [capacity] int32: distinct generated tokens, first `n_output_ids`
    n_output_ids: int
    seen: np.ndarray                  # [V] bool: the token occurs in prompt or output
    seen_ids: np.ndarray              # [capacity] int32: distinct prompt + output tokens, first `n_seen_ids`
    n_seen_ids: int
    dry_breakers: DryBreakers | None = None
    suffix_matches: np.ndarray | None = field(default=None)   # [capacity] int32, see suffix_match_lengths

    @classmethod
    def start(cls, prompt_ids: Sequence[int], vocab_size: int,
              dry_breakers: DryBreakers | None = None) -> TokenHistory:
        prompt = np.asarray(prompt_ids, dtype=np.int32)          # [P]
        capacity = max(64, 2 * prompt.shape[0])
        context = np.zeros(capacity, dtype=np.int32)
        context[:prompt.shape[0]] = prompt
        distinct = np.unique(prompt)                             # [P] -> [U]
        seen = np.zeros(vocab_size, dtype=bool)
        seen[distinct] = True
        seen_ids = np.zeros(max(64, 2 * distinct.shape[0]), dtype=np.int32)
        seen_ids[:distinct.shape[0]] = distinct
        suffix_matches = None
        if dry_breakers is not None:
            suffix_matches = np.zeros(capacity, dtype=np.int32)
            suffix_matches[:prompt.shape[0]] = suffix_match_lengths(prompt)
        return cls(vocab_size=vocab_size, prompt_length=prompt.shape[0], context=context,
                   length=prompt.shape[0], output_counts=np.zeros(vocab_size, dtype=np.int32),
                   output_ids=np.zeros(64, dtype=np.int32), n_output_ids=0, seen=seen,
                   seen_ids=seen_ids, n_seen_ids=distinct.shape[0], dry_breakers=dry_breakers,
                   suffix_matches=suffix_matches)

    def append(self, token_id: int) -> None:
        """Record one generated token."""
        token_id = int(token_id)
        if self.output_counts[token_id] == 0:
            self.output_ids = _with_room(self.output_ids, self.n_output_ids)
            self.output_ids[self.n_output_ids] = token_id
            self.n_output_ids += 1
        self.output_counts[token_id] += 1
        if not self.seen[token_id]:
            self.seen[token_id] = True
            self.seen_ids = _with_room(self.seen_ids, self.n_seen_ids)
            self.seen_ids[self.n_seen_ids] = token_id
            self.n_seen_ids += 1
        old_length = self.length
        self.context = _with_room(self.context, old_length)
        self.context[old_length] = token_id
        self.length = old_length + 1
        if self.suffix_matches is not None:
            self.suffix_matches = _with_room(self.suffix_matches, old_length)
            self.suffix_matches[:self.length] = _extend_suffix_matches(
                self.context[:self.length], self.suffix_matches[:old_length])

    def tokens(self) -> np.ndarray:
        """[L] int32 view of prompt + output tokens."""
        return self.context[:self.length]

    def output_token_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """([N] distinct generated ids, [N] how often each was generated)."""
        ids = self.output_ids[:self.n_output_ids]
        return ids, self.output_counts[ids]

    def seen_token_ids(self) -> np.ndarray:
        """[N] distinct ids of prompt + output tokens."""
        return self.seen_ids[:self.n_seen_ids]


def _extend_suffix_matches(context: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """Suffix match lengths of `context` from those of context[:-1]: O(L), no search.

    Position i matches the new end iff context[i] is the new token, and then it extends the match
    that position i-1 had with the old end by one.
    """
    length = context.shape[0]
    matches = np.zeros(length, dtype=np.int32)                   # [L]; the last entry (itself) stays 0
    if length < 2:
        return matches
    same = context[:-1] == context[-1]                           # [L-1]
    matches[0] = same[0]
    matches[1:-1] = np.where(same[1:], previous[:-1] + 1, 0)      # [L-2]
    return matches
