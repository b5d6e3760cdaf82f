"""Token ids -> text, safely for streaming: whole UTF-8 characters only, never past a stop string.

    detokenizer = IncrementalDetokenizer(token_bytes)    # token_bytes[i]: exact UTF-8 bytes of token i
    stops = StopChecker(stop_strings)
    for each token:  text, stopped = stops.push(detokenizer.push(token))
    at the end:      text = stops.push(detokenizer.flush())[0] + stops.flush()   (unless stopped)

The released pieces concatenate to the non-streamed text: the whole text cut before the first stop
string. "First" means the occurrence that completes first (smallest end; on a tie, the one starting
earliest): generation halts the moment a stop string is complete, so this choice does not depend on
how the text was split into pushes.
"""
from __future__ import annotations

import codecs
from collections.abc import Iterable, Sequence


class IncrementalDetokenizer:
    """Bytes of pushed tokens -> complete UTF-8 characters; an incomplete character waits.

    Invalid bytes become U+FFFD as soon as they are known to be invalid; flush() also turns a
    trailing incomplete character into U+FFFD.
    """

    def __init__(self, token_bytes: Sequence[bytes]):
        self._token_bytes = token_bytes
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self._decoder.decode(self._token_bytes[token_id], final=False)

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


class StopChecker:
    """Finds stop strings in streamed text; holds back only what could still start one.

    push(text) -> (text to release now, stopped). Once stopped, the stop string (unless `include_stop`)
    and everything after it are dropped and later pushes release nothing. `detect=False` (e.g. before
    min_tokens) releases text without stopping on it; a stop string counts only if it completes in detected
    text.
    """

    def __init__(self, stop_strings: Iterable[str], include_stop: bool = False):
        self._stops = tuple(s for s in stop_strings if s)
        self._include = include_stop
        self._held = ""
        self.stopped = False

    def push(self, text: str, detect: bool = True) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        pending = self._held + text
        if detect:
            found = self._first_stop(pending, completed_after=len(self._held))
            if found is not None:
                self._held = ""
                self.stopped = True
                start, end = found
                return pending[:end if self._include else start], True
        hold = self._longest_partial_stop(pending)
        self._held = pending[len(pending) - hold:]
        return pending[:len(pending) - hold], False

    def flush(self) -> str:
        """Release the held tail at the end of generation (it never became a stop string)."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _first_stop(self, text: str, completed_after: int) -> tuple[int, int] | None:
        """(start, end) of the stop string that completes first in `text` past `completed_after` chars."""
        best: tuple[int, int] | None = None                     # (end, start)
        for stop in self._stops:
            start = text.find(stop, max(0, completed_after - len(stop) + 1))
            if start >= 0 and (best is None or (start + len(stop), start) < best):
                best = (start + len(stop), start)
        return None if best is None else (best[1], best[0])

    def _longest_partial_stop(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
        longest = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:size]):
                    longest = size
                    break
        return longest
